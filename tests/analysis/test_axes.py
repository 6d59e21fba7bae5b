"""The new axes' statistics against known answers: the critical ratio, the forgetting forms (recovered
parameters, the form that generated the data preferred by held-out error), the junk table's pairing."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from factscale.analysis.axes import (
    _exponential,
    _power,
    critical_ratio,
    fit_forgetting,
    junk_per_seed,
    junk_summary,
)
from factscale.errors import PlotError


def test_critical_ratio_interpolates_in_log_one_plus_ratio():
    # retained 1.0, 0.8, 0.2 at ratios 0, 1, 3: crosses 0.5 halfway (in log(1 + r)) between 1 and 3
    c = critical_ratio([0, 1, 3], [1.0, 0.8, 0.2])
    assert c == pytest.approx(math.expm1((math.log(2) + math.log(4)) / 2))
    assert critical_ratio([0, 1, 3, 7], [1.0, 0.9, 0.7, 0.6]) is None  # never below one half
    assert critical_ratio([3, 0, 1], [0.2, 1.0, 0.8]) == pytest.approx(c)  # order of the input does not matter


@pytest.mark.parametrize("form, params", [("power", (2.0, 30.0, 0.8, 0.3)), ("exponential", (2.0, 150.0, 0.3))])
def test_forgetting_fit_recovers_the_generating_form(form, params):
    rng = np.random.default_rng(0)
    t = np.arange(0, 1200, 20.0)
    fn = _power if form == "power" else _exponential
    g = fn(t, *params) + rng.normal(0, 0.01, size=len(t))
    fit = fit_forgetting(t, g)
    assert fit["preferred"] == form
    names = ("a", "tau", "b", "c") if form == "power" else ("a", "tau", "c")
    for n, v in zip(names, params):
        assert fit[f"{form}_{n}"] == pytest.approx(v, rel=0.15, abs=0.05), n
    other = "exponential" if form == "power" else "power"
    assert fit[f"{other}_heldout_rmse"] > fit[f"{form}_heldout_rmse"]


def test_forgetting_fit_needs_enough_points():
    with pytest.raises(PlotError, match=">= 8"):
        fit_forgetting([0, 1, 2, 3, 4], [1, 0.9, 0.8, 0.7, 0.6])


def _junk_rows(values: dict) -> pl.DataFrame:
    """Final probe rows of a junk sweep: values[(size, tag, ratio, seed)] = keyed bits."""
    rows = []
    for (size, tag, ratio, seed), bits in values.items():
        rows.append({"cfg.model.size": size, "non_embedding_params": {"a": 100, "b": 400}[size], "cfg.seed": seed,
                     "cfg.train.junk_ratio": float(ratio), "cfg.train.domain_tag": tag, "cfg.train.epochs": 10,
                     "epoch": 10, "split": "train", "group_by": "all", "keyed_bits": bits,
                     "capacity_above_chance": bits / 6, "run_id": f"{size}{tag}{ratio}{seed}", "junk_exposures": 1.0})
    return pl.DataFrame(rows)


def test_junk_retained_is_paired_with_the_clean_run_of_the_seed():
    vals = {}
    for seed, clean in ((0, 100.0), (1, 200.0)):
        for tag in (False, True):
            for ratio, frac in ((0, 1.0), (1, 0.6 if not tag else 0.9), (3, 0.2 if not tag else 0.7)):
                vals[("a", tag, ratio, seed)] = clean * frac
    per_seed = junk_per_seed(_junk_rows(vals))
    r = per_seed.filter((pl.col("tag") == False) & (pl.col("ratio") == 3.0))["retained"]  # noqa: E712
    assert r.to_list() == pytest.approx([0.2, 0.2])  # each seed against its own clean run
    t = junk_summary(_junk_rows(vals))
    crit = {row["tag"]: row["mean"] for row in t.filter(pl.col("quantity") == "critical_ratio").iter_rows(named=True)}
    assert crit[False] == pytest.approx(critical_ratio([0, 1, 3], [1.0, 0.6, 0.2]))
    assert math.isnan(crit[True])  # the tagged runs keep >= 70%: not reached
    del vals[("a", False, 0, 1)]
    with pytest.raises(PlotError, match="no clean run"):
        junk_per_seed(_junk_rows(vals))
