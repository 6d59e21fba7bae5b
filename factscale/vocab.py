"""The results vocabulary: what the rows of a results table mean, in one place.

A results table has one row per (run, probe epoch, split, breakdown group). Fits, figures, studies and
the demo ask this module for the rows they use instead of restating the filters:

- the *overall* rows of a split: ``group_by == "all"`` (other rows break a split down by a column);
- the *final probe of a completed schedule*: ``epoch == cfg.train.epochs``. Only these points are
  annealed measurements (the learning-rate schedule has run its course); a probe in the middle of a
  schedule understates what a finished schedule reaches, so it is labelled ``annealed = False``;
- ``--where`` filters, with short aliases for the usual columns.

Nothing here has side effects at import.
"""

from __future__ import annotations

import polars as pl

ALIASES = {"epochs": "epoch", "size": "cfg.model.size", "arch": "cfg.model.arch", "seed": "cfg.seed",
           "facts": "train_facts", "params": "non_embedding_params"}
SIZE = "cfg.model.size"
BUDGET = "cfg.train.epochs"


class PlotError(ValueError):
    """The results table cannot support this figure (the message says what is missing)."""


def overall(df: pl.DataFrame, split: str = "train") -> pl.DataFrame:
    """The rows that measure a whole split (not a breakdown group)."""
    return df.filter((pl.col("split") == split) & (pl.col("group_by") == "all"))


def annealed() -> pl.Expr:
    """True on the final probe of a completed schedule (an end-of-schedule, annealed measurement)."""
    return pl.col("epoch") == pl.col(BUDGET)


def final_probes(df: pl.DataFrame) -> pl.DataFrame:
    """Each completed run's final probe (its full epoch budget)."""
    return df.filter(annealed())


def label_annealed(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(annealed=annealed())


def apply_where(df: pl.DataFrame, where: dict | None, error=ValueError) -> pl.DataFrame:
    """Keep the rows whose column (or alias) equals each ``where`` value (compared as strings)."""
    for k, v in (where or {}).items():
        col = ALIASES.get(k, k)
        if col not in df.columns:
            raise error(f"--where {k}: no such column; try one of {sorted(ALIASES)} or a results column")
        df = df.filter(pl.col(col).cast(pl.String) == str(v))
    return df


def where_alias(column: str) -> str:
    """The short --where name of a column (``epoch`` -> ``epochs``), for messages."""
    return next((k for k, v in ALIASES.items() if v == column), column)


def sizes_sorted(df: pl.DataFrame) -> list[str]:
    """Model size names, smallest non-embedding count first."""
    return (df.group_by(SIZE).agg(pl.col("non_embedding_params").first()).sort("non_embedding_params")
            [SIZE].to_list())


def summary_fields(df: pl.DataFrame) -> dict:
    """What a run summary prints from its rows: capacity with its standard error, bits per parameter,
    and the calibration check - memorized bits on held-out facts (unseen keys), which for random
    attributes must be ~0 (a fraction of the prior well under 1%)."""
    last = df.filter((pl.col("epoch") == df["epoch"].max()) & (pl.col("group_by") == "all"))
    out = {}
    for r in last.iter_rows(named=True):
        s = r["split"]
        out[f"{s}_capacity_se"] = r.get("capacity_se")
        out[f"{s}_bits"] = r.get("capacity_bits")
        out[f"{s}_net_bits"] = r.get("net_bits")
        out[f"{s}_bits_frac_of_prior"] = (r["capacity_bits"] / r["prior_bits"]) if r.get("prior_bits") else None
        if s == "train":
            out["bits_per_param"] = r.get("bits_per_param")
            out["bits_per_total_param"] = r.get("bits_per_total_param")
    return out
