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


PRECISION_WEIGHTS = {"32-true": "fp32", "bf16-mixed": "bf16 mixed", "bf16-true": "bf16", "16-mixed": "fp16 mixed"}
"""A run's training precision (the ``precision`` column) in the weights vocabulary of the capacity table."""
PREFERENCE_COLUMNS = ("freq_level", "rarity_bucket", "value_len")
"""The group columns a preference study compares (frequency level, difficulty bucket, value length)."""
STUDIES = ("overwriting", "compatibility", "preference", "generalization", "junk", "forgetting")
"""The studies ``factscale study`` summarises (``analysis.studies``; junk and forgetting: ``analysis.axes``)."""


def facts_per_size(df: pl.DataFrame) -> int:
    """The most distinct training-set sizes any one model size has: a law or figure in D needs them within a
    size (a design with data proportional to size has one D per size, which is no D axis)."""
    if df.height == 0:
        return 0
    return int(df.group_by(SIZE).agg(pl.col("train_facts").n_unique())["train_facts"].max())


def sizes_sorted(df: pl.DataFrame) -> list[str]:
    """Model size names, smallest non-embedding count first."""
    return (df.group_by(SIZE).agg(pl.col("non_embedding_params").first()).sort("non_embedding_params")
            [SIZE].to_list())
