"""Saturation measured, not extrapolated: has a model size stopped gaining facts with more epochs
(``saturation``), or memorized bits with more data (``data_plateau``)?

Per model size, the relative capacity gain between its two largest epoch budgets (annealed end points),
paired by seed (a seed's branches share its trunk; pairing removes the trunk effect; runs pair when they
agree on every config field but the budget), with a t-interval over the pairs (pairs - 1 degrees of
freedom). The threshold is per step between the two budgets, whatever their ratio (100 -> 200 or 300 ->
1000): compare sweeps at the same ratio. The verdict:

- ``saturated``: the gain's whole interval lies below ``threshold`` (default 10%);
- ``still gaining``: its whole interval lies above it;
- ``undetermined``: the interval straddles it, or one seed gives no interval;
- ``capped by the corpus``: the size fills more than ``max_fill`` of the facts it trained on at the
  largest budget, so a levelling off says nothing about the model's capacity.

The fitted asymptote C* of ``exp-epochs`` stays a secondary view: extrapolated from a few budgets, it is
often at its bound (the facts trained on) or beyond every budget tried.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy import stats

from factscale.analysis.fit import MAX_FILL
from factscale.analysis.vocab import SIZE, final_probes, overall

GAIN_THRESHOLD = 0.10


def _paired(g: pl.DataFrame, axis: str, axis_cfg: str, measure: str) -> tuple[int | None, int | None, object]:
    """The two largest values of ``axis`` in one size's end points and their runs paired: (prev, last, pairs with
    columns a, b, cap, n_facts), or (prev, last, why) when they cannot be paired. Runs pair when they agree on
    every config field but ``axis_cfg`` (the seed, and any other axis of the grid: a learning rate, a corpus),
    so a seed's cooldown branches pair with each other."""
    xs = sorted(g[axis].unique().to_list())
    if len(xs) < 2:
        return None, None, f"one value of {axis} ({xs[0]}): nothing to compare"
    prev, last = xs[-2:]
    key = [c for c in g.columns if c.startswith("cfg.") and c != axis_cfg
           and g[c].n_unique() > 1]
    a = g.filter(pl.col(axis) == prev).select(*key, pl.col(measure).cast(pl.Float64).alias("a"))
    b = g.filter(pl.col(axis) == last).select(*key, pl.col(measure).cast(pl.Float64).alias("b"),
                                              pl.col("capacity").alias("cap"), "n_facts")
    if (key and (a.select(key).is_duplicated().any() or b.select(key).is_duplicated().any())) or \
            (not key and (a.height > 1 or b.height > 1)):
        return prev, last, f"several runs at one {axis} agree on every config field: they cannot be paired"
    pairs = a.join(b, on=key) if key else a.join(b, how="cross")
    return prev, last, pairs if pairs.height else f"no run has both {axis} {prev} and {last}"


def _gain(pairs: pl.DataFrame, ci: float) -> dict:
    """The mean relative gain b/a - 1 over the pairs with its t-interval (pairs - 1 dof; none from one pair)."""
    gains = (pairs["b"] / pairs["a"] - 1).to_numpy().astype(float)
    out = {"gain": float(gains.mean()), "gain_ci_low": None, "gain_ci_high": None}
    if len(gains) > 1 and np.all(np.isfinite(gains)):
        half = float(stats.t.ppf((1 + ci) / 2, len(gains) - 1)) * gains.std(ddof=1) / math.sqrt(len(gains))
        out.update(gain_ci_low=out["gain"] - half, gain_ci_high=out["gain"] + half)
    return out


def _verdict(row: dict, threshold: float, flat: str, rising: str, falling: str | None = None) -> dict:
    """``flat``: the gain's interval below ``threshold`` (with ``falling`` given: within +-threshold, and
    ``falling`` when it lies wholly below -threshold); ``rising``: wholly above threshold."""
    if row["gain_ci_low"] is None:
        return {**row, "why": "one seed: the gain has no interval (add seeds)" if row["seeds"] == 1 else
                "gain not finite"}
    lo, hi = row["gain_ci_low"], row["gain_ci_high"]
    if falling is not None and hi < -threshold:
        return {**row, "verdict": falling}
    if hi < threshold and (falling is None or lo > -threshold):
        return {**row, "verdict": flat}
    if lo > threshold:
        return {**row, "verdict": rising}
    if falling is None:
        return {**row, "why": f"the gain's interval contains the {threshold:.0%} threshold (add seeds or budgets)"}
    return {**row, "why": f"the gain's interval [{lo:+.0%}, {hi:+.0%}] is neither within +-{threshold:.0%} nor "
                          "wholly beyond it (add seeds or points)"}


def saturation(df: pl.DataFrame, threshold: float = GAIN_THRESHOLD, max_fill: float = MAX_FILL,
               ci: float = 0.95, measure: str = "capacity") -> pl.DataFrame:
    """One row per model size (smallest first): budgets compared, seeds paired, the mean relative gain of
    ``measure`` with its interval, the fill at the largest budget, the verdict and, as a bool, ``saturated``."""
    ends = final_probes(overall(df))
    rows = []
    for (size,), g in ends.group_by(SIZE, maintain_order=True):
        row = {"size": size, "non_embedding_params": int(g["non_embedding_params"][0]), "from_epochs": None,
               "to_epochs": None, "seeds": 0, "gain": None, "gain_ci_low": None, "gain_ci_high": None,
               "fill": None, "verdict": "undetermined", "why": None}
        prev, last, pairs = _paired(g, "epoch", "cfg.train.epochs", measure)
        row.update(from_epochs=prev, to_epochs=last)
        if isinstance(pairs, str):
            rows.append({**row, "why": pairs.replace("one value of epoch", "one epoch budget")})
            continue
        row.update(seeds=pairs.height, fill=float((pairs["cap"] / pairs["n_facts"]).mean()))
        if (pairs["a"] <= 0).any():  # nothing memorized at the earlier budget: a relative gain is undefined
            grew = bool((pairs.filter(pl.col("a") <= 0)["b"] > 0).all())
            rows.append({**row, "verdict": "still gaining" if grew else "undetermined",
                         "why": f"{measure} <= 0 at {prev} epochs" + (f", > 0 at {last}" if grew else
                                                                       ": nothing memorized to compare")})
            continue
        row.update(_gain(pairs, ci))
        if row["fill"] > max_fill:
            rows.append({**row, "verdict": "capped by the corpus",
                         "why": f"fills {row['fill']:.0%} of its facts at {last} epochs (> {max_fill:.0%}): the "
                                "corpus, not capacity, may be what levels off"})
        else:
            rows.append(_verdict(row, threshold, "saturated", "still gaining"))
    out = pl.DataFrame(rows, schema_overrides={"gain": pl.Float64, "gain_ci_low": pl.Float64,
                                               "gain_ci_high": pl.Float64, "fill": pl.Float64, "why": pl.String,
                                               "from_epochs": pl.Int64, "to_epochs": pl.Int64})
    return out.with_columns(saturated=pl.col("verdict") == "saturated").sort("non_embedding_params")


def data_plateau(df: pl.DataFrame, threshold: float = GAIN_THRESHOLD, ci: float = 0.95,
                 measure: str = "capacity_bits") -> pl.DataFrame:
    """Capacity as a plateau in the data (Morris et al.'s definition): per model size, memorized bits at each
    training-set size D (final probes, mean over seeds), and whether they stopped growing: the relative gain
    between the two largest D, paired by seed, with its t-interval against ``threshold``. Verdicts:
    ``plateau`` (the interval within +-threshold; the plateau value is the mean at the largest D, also per
    non-embedding parameter), ``still rising`` (wholly above: the largest D is below the model's capacity,
    or the budget too short), ``falling`` (wholly below -threshold: past a peak, e.g. a fixed epoch budget
    no longer enough for the larger sets), ``undetermined``. The peak over D (Allen-Zhu & Li's ratio is the
    peak over N people) is reported beside it: ``peak_bits`` at ``peak_facts``."""
    ends = final_probes(overall(df))
    rows = []
    for (size,), g in ends.group_by(SIZE, maintain_order=True):
        g = g.filter(pl.col("epoch") == g["epoch"].max())  # at one budget: the largest
        n = int(g["non_embedding_params"][0])
        last_d = g.filter(pl.col("train_facts") == g["train_facts"].max())
        means = (g.filter(pl.col(measure).is_not_null() & pl.col(measure).is_not_nan())
                 .group_by("train_facts").agg(pl.col(measure).mean()).sort(measure, descending=True))
        if means.height == 0:
            rows.append({"size": size, "non_embedding_params": n, "verdict": "undetermined",
                         "why": f"no finite {measure} at any training-set size"})
            continue
        row = {"size": size, "non_embedding_params": n, "from_facts": None, "to_facts": None, "seeds": 0,
               "peak_bits": float(means[measure][0]), "peak_facts": int(means["train_facts"][0]),
               "peak_bits_per_param": float(means[measure][0]) / n,
               "gain": None, "gain_ci_low": None, "gain_ci_high": None,
               "bits_at_largest": float(last_d[measure].mean()),
               "bits_per_param_at_largest": float(last_d[measure].mean()) / n,
               "verdict": "undetermined", "why": None}
        prev, last, pairs = _paired(g, "train_facts", "cfg.corpus.max_facts", measure)
        row.update(from_facts=prev, to_facts=last)
        if isinstance(pairs, str):
            rows.append({**row, "why": pairs})
            continue
        row["seeds"] = pairs.height
        if (pairs["a"] <= 0).any():
            rows.append({**row, "why": f"{measure} <= 0 at D = {prev}: a relative gain is undefined"})
            continue
        rows.append(_verdict({**row, **_gain(pairs, ci)}, threshold, "plateau", "still rising", "falling"))
    out = pl.DataFrame(rows, schema_overrides={"gain": pl.Float64, "gain_ci_low": pl.Float64, "why": pl.String,
                                               "gain_ci_high": pl.Float64, "from_facts": pl.Int64,
                                               "to_facts": pl.Int64})
    return out.sort("non_embedding_params")


def saturation_text(row: dict, threshold: float = GAIN_THRESHOLD) -> str:
    """One line: the gain, its interval and the verdict."""
    if row["gain"] is None:
        return f"saturation {row['verdict']} ({row['why']})"
    ci = (f" [{row['gain_ci_low']:+.1%}, {row['gain_ci_high']:+.1%}]" if row["gain_ci_low"] is not None else "")
    return (f"gain {row['from_epochs']} -> {row['to_epochs']} epochs {row['gain']:+.1%}{ci} over {row['seeds']} "
            f"seeds: {row['verdict']} (threshold {threshold:.0%})" + (f"; {row['why']}" if row["why"] else ""))
