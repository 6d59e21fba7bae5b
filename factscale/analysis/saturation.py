"""Saturation measured, not extrapolated: has a model size stopped gaining facts with more epochs?

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


def saturation(df: pl.DataFrame, threshold: float = GAIN_THRESHOLD, max_fill: float = MAX_FILL,
               ci: float = 0.95, measure: str = "capacity") -> pl.DataFrame:
    """One row per model size (smallest first): budgets compared, seeds paired, the mean relative gain of
    ``measure`` with its interval, the fill at the largest budget, the verdict and, as a bool, ``saturated``."""
    ends = final_probes(overall(df))
    rows = []
    for (size,), g in ends.group_by(SIZE, maintain_order=True):
        budgets = sorted(g["epoch"].unique().to_list())
        row = {"size": size, "non_embedding_params": int(g["non_embedding_params"][0]), "from_epochs": None,
               "to_epochs": None, "seeds": 0, "gain": None, "gain_ci_low": None, "gain_ci_high": None,
               "fill": None, "verdict": "undetermined", "why": None}
        if len(budgets) < 2:
            rows.append({**row, "why": f"one epoch budget ({budgets[0]}): nothing to compare"})
            continue
        prev, last = budgets[-2:]
        # a pair: the runs at both budgets that agree on every config field but the budget (the seed, and any
        # other axis of the grid: a learning rate, a corpus), so a seed's branches pair with each other
        key = [c for c in g.columns if c.startswith("cfg.") and c != "cfg.train.epochs" and g[c].n_unique() > 1]
        a = g.filter(pl.col("epoch") == prev).select(*key, pl.col(measure).cast(pl.Float64).alias("a"))
        b = g.filter(pl.col("epoch") == last).select(*key, pl.col(measure).cast(pl.Float64).alias("b"),
                                                      pl.col("capacity").alias("cap"), "n_facts")
        row.update(from_epochs=int(prev), to_epochs=int(last))
        if (key and (a.select(key).is_duplicated().any() or b.select(key).is_duplicated().any())) or \
                (not key and (a.height > 1 or b.height > 1)):
            rows.append({**row, "why": "several runs at one budget agree on every config field: they cannot be paired"})
            continue
        pairs = a.join(b, on=key) if key else a.join(b, how="cross")
        row["seeds"] = pairs.height
        if pairs.height == 0:
            rows.append({**row, "why": f"no run has both {prev} and {last} epochs"})
            continue
        if (pairs["a"] <= 0).any():  # nothing memorized at the earlier budget: a relative gain is undefined
            grew = bool((pairs.filter(pl.col("a") <= 0)["b"] > 0).all())
            rows.append({**row, "fill": float((pairs["cap"] / pairs["n_facts"]).mean()),
                         "verdict": "still gaining" if grew else "undetermined",
                         "why": f"{measure} <= 0 at {prev} epochs" + (f", > 0 at {last}" if grew else
                                                                       ": nothing memorized to compare")})
            continue
        gains = (pairs["b"] / pairs["a"] - 1).to_numpy().astype(float)
        row.update(gain=float(gains.mean()), fill=float((pairs["cap"] / pairs["n_facts"]).mean()))
        if len(gains) > 1 and np.all(np.isfinite(gains)):
            half = float(stats.t.ppf((1 + ci) / 2, len(gains) - 1)) * gains.std(ddof=1) / math.sqrt(len(gains))
            row.update(gain_ci_low=row["gain"] - half, gain_ci_high=row["gain"] + half)
        if row["fill"] > max_fill:
            row.update(verdict="capped by the corpus",
                       why=f"fills {row['fill']:.0%} of its facts at {last} epochs (> {max_fill:.0%}): the corpus, "
                           "not capacity, may be what levels off")
        elif row["gain_ci_low"] is None:
            row["why"] = "one seed: the gain has no interval (add seeds)" if len(gains) == 1 else "gain not finite"
        elif row["gain_ci_high"] < threshold:
            row["verdict"] = "saturated"
        elif row["gain_ci_low"] > threshold:
            row["verdict"] = "still gaining"
        else:
            row["why"] = f"the gain's interval contains the {threshold:.0%} threshold (add seeds or budgets)"
        rows.append(row)
    out = pl.DataFrame(rows, schema_overrides={"gain": pl.Float64, "gain_ci_low": pl.Float64,
                                               "gain_ci_high": pl.Float64, "fill": pl.Float64, "why": pl.String,
                                               "from_epochs": pl.Int64, "to_epochs": pl.Int64})
    return out.with_columns(saturated=pl.col("verdict") == "saturated").sort("non_embedding_params")


def saturation_text(row: dict, threshold: float = GAIN_THRESHOLD) -> str:
    """One line: the gain, its interval and the verdict."""
    if row["gain"] is None:
        return f"saturation {row['verdict']} ({row['why']})"
    ci = (f" [{row['gain_ci_low']:+.1%}, {row['gain_ci_high']:+.1%}]" if row["gain_ci_low"] is not None else "")
    return (f"gain {row['from_epochs']} -> {row['to_epochs']} epochs {row['gain']:+.1%}{ci} over {row['seeds']} "
            f"seeds: {row['verdict']} (threshold {threshold:.0%})" + (f"; {row['why']}" if row["why"] else ""))
