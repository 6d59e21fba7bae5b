"""Saturation is measured from the gain between the two largest budgets, paired by seed, against a threshold."""

from __future__ import annotations

import polars as pl
import pytest

from factscale.analysis.saturation import saturation, saturation_text

pytestmark = pytest.mark.unit


def table(caps: dict, n_facts: int = 10_000) -> pl.DataFrame:
    """Annealed end points: caps[size][seed] = capacities at budgets 100, 200."""
    params = {"a": 1000, "b": 2000, "c": 3000, "d": 4000, "e": 5000}
    rows = [{"run_id": f"{size}-{e}-{seed}", "split": "train", "group_by": "all", "epoch": e, "cfg.train.epochs": e,
             "cfg.model.size": size, "cfg.seed": seed, "non_embedding_params": params[size], "n_facts": n_facts,
             "capacity": float(c)}
            for size, seeds in caps.items() for seed, cs in enumerate(seeds) for e, c in zip((100, 200), cs)]
    return pl.DataFrame(rows)


def test_verdicts_follow_the_gain_interval_and_the_fill():
    df = table({"a": [(1000, 1020), (1100, 1118), (900, 922)],   # +2% each: saturated
                "b": [(1000, 1500), (1100, 1650), (900, 1340)],  # +50%: still gaining
                "c": [(1000, 1020), (1000, 1300)],               # +2% and +30%: the interval straddles 10%
                "d": [(1000, 1010)],                             # one seed: no interval
                "e": [(6900, 7000), (6950, 7050)]})              # 70% of the facts: the corpus caps it
    s = {r["size"]: r for r in saturation(df).iter_rows(named=True)}
    assert s["a"]["verdict"] == "saturated" and s["a"]["saturated"] and s["a"]["gain_ci_high"] < 0.1
    assert s["a"]["gain"] == pytest.approx((0.02 + 18 / 1100 + 22 / 900) / 3)
    assert s["b"]["verdict"] == "still gaining" and s["b"]["gain_ci_low"] > 0.1 and not s["b"]["saturated"]
    assert s["c"]["verdict"] == "undetermined" and "contains the 10%" in s["c"]["why"]
    assert s["d"]["verdict"] == "undetermined" and s["d"]["gain_ci_low"] is None and "one seed" in s["d"]["why"]
    assert s["e"]["verdict"] == "capped by the corpus" and s["e"]["fill"] > 0.6
    assert "saturated (threshold 10%)" in saturation_text(s["a"]) and "[+" in saturation_text(s["a"])
    # the t(2) interval by hand for size a
    import numpy as np
    from scipy import stats
    g = np.array([0.02, 18 / 1100, 22 / 900])
    half = stats.t.ppf(0.975, 2) * g.std(ddof=1) / np.sqrt(3)
    assert s["a"]["gain_ci_high"] == pytest.approx(g.mean() + half)


def test_one_budget_is_not_judged_and_seeds_pair_by_seed():
    one = table({"a": [(1000, 1020)]}).filter(pl.col("epoch") == 100)
    r = saturation(one).row(0, named=True)
    assert r["verdict"] == "undetermined" and "one epoch budget" in r["why"]
    # seeds pair: seed 0 gains +1%, seed 1 +1%, although seed 1's level is twice seed 0's
    df = table({"a": [(1000, 1010), (2000, 2020)]})
    r = saturation(df).row(0, named=True)
    assert r["gain"] == pytest.approx(0.01) and r["gain_ci_high"] == pytest.approx(0.01)
    assert r["verdict"] == "saturated"


def test_runs_pair_on_every_axis_but_the_budget_and_zero_is_not_a_gain():
    """Two seeds x two learning rates: 4 pairs (not a cross product of 8); capacity 0 at the earlier budget
    is still gaining if it rose, undetermined if it did not."""
    df = table({"a": [(1000, 1010), (1100, 1111)]})
    df = pl.concat([df.with_columns(**{"cfg.optim.lr": pl.lit(0.01)}),
                    df.with_columns(**{"cfg.optim.lr": pl.lit(0.003)}, capacity=pl.col("capacity") * 2)])
    r = saturation(df).row(0, named=True)
    assert r["seeds"] == 4 and r["gain"] == pytest.approx(0.01)
    zero = table({"a": [(0, 10), (0, 20)], "b": [(0, 0), (0, 0)]})
    s = {x["size"]: x for x in saturation(zero).iter_rows(named=True)}
    assert s["a"]["verdict"] == "still gaining" and s["b"]["verdict"] == "undetermined"
    assert "nothing memorized" in s["b"]["why"]


def data_table(plateau: float, noise: float = 0.01, seeds: int = 3, bits_per_fact: float = 96.0) -> pl.DataFrame:
    """Final probes of one size at doubling training sets: memorized bits min(D x h, B*) x (1 + seed noise)."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for d in (25, 50, 100, 200, 400, 800):
        for seed in range(seeds):
            bits = min(d * bits_per_fact, plateau) * (1 + noise * rng.standard_normal())
            rows.append({"run_id": f"{d}-{seed}", "split": "train", "group_by": "all", "epoch": 300,
                         "cfg.train.epochs": 300, "cfg.model.size": "2k", "cfg.seed": seed,
                         "cfg.corpus.max_facts": d, "train_facts": d, "non_embedding_params": 1656,
                         "n_facts": d, "capacity": 0.0, "capacity_bits": bits, "prior_bits": d * bits_per_fact})
    return pl.DataFrame(rows)


def test_the_data_plateau_is_found_where_the_bits_stop_growing():
    from factscale.analysis.saturation import data_plateau

    flat = data_plateau(data_table(plateau=10_000)).row(0, named=True)  # capacity reached at D ~ 104
    assert flat["verdict"] == "plateau" and (flat["from_facts"], flat["to_facts"]) == (400, 800)
    assert flat["seeds"] == 3 and flat["gain_ci_low"] <= flat["gain"] <= flat["gain_ci_high"] < 0.1
    assert flat["bits_at_largest"] == pytest.approx(10_000, rel=0.03)
    assert flat["bits_per_param_at_largest"] == pytest.approx(10_000 / 1656, rel=0.03)
    rising = data_plateau(data_table(plateau=1e9)).row(0, named=True)  # every set below capacity: the diagonal
    assert rising["verdict"] == "still rising" and rising["gain"] == pytest.approx(1.0, abs=0.05)
    assert rising["peak_facts"] == 800 and flat["peak_bits"] >= flat["bits_at_largest"]
    # past a peak: bits fall at the largest sets (a fixed budget no longer enough for them)
    falling = data_table(plateau=10_000).with_columns(
        capacity_bits=pl.when(pl.col("train_facts") == 800).then(pl.col("capacity_bits") * 0.6)
        .otherwise(pl.col("capacity_bits")))
    f = data_plateau(falling).row(0, named=True)
    assert f["verdict"] == "falling" and f["gain_ci_high"] < -0.1 and f["peak_facts"] in (200, 400)
    holes = data_table(plateau=10_000).with_columns(  # a probe without bits (an older table): not the peak
        capacity_bits=pl.when(pl.col("train_facts") == 25).then(None).otherwise(pl.col("capacity_bits")))
    assert data_plateau(holes).row(0, named=True)["peak_bits"] == pytest.approx(flat["peak_bits"])
    one = data_plateau(data_table(plateau=10_000, seeds=1)).row(0, named=True)
    assert one["verdict"] == "undetermined" and "one seed" in one["why"]


def test_the_bits_vs_data_figure_marks_the_plateau(tmp_path):
    from factscale import plots

    df = data_table(plateau=10_000)
    paths = plots.plot("bits-vs-data", df, tmp_path)
    assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths)
    fig = plots.FIGURES["bits-vs-data"](df)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    import re

    assert any(re.match(r"plateau (9|10),\d{3} bits = \d\.\d\d/non-emb param \(gain [+-]\d+% \[", t) for t in labels)
    with pytest.raises(plots.PlotError, match="needs runs at >= 2 training-set sizes at one model size"):
        plots.FIGURES["bits-vs-data"](df.filter(pl.col("train_facts") == 800))
    # data proportional to size (the demo's design): two sizes, one D each, is no D axis
    other = df.filter(pl.col("train_facts") == 400).with_columns(**{"cfg.model.size": pl.lit("5k")})
    with pytest.raises(plots.PlotError, match="at one model size"):
        plots.FIGURES["bits-vs-data"](pl.concat([df.filter(pl.col("train_facts") == 800), other]))
