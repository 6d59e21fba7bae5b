"""The build rules over the raw facts frame (``RAW_SCHEMA``): dedupe, multi-valued attributes, ambiguous
keys (``resolve``), copyable facts (``copyable_facts``), value priors (``add_statistics``) and the held-out
split by subject (``assign_split``); ``build`` applies them in order (its docstring lists it)."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from factscale.corpus.render import render
from factscale.errors import CorpusError

RAW_SCHEMA = {
    "subject_id": pl.String,
    "subject_label": pl.String,
    "relation": pl.String,
    "relation_label": pl.String,
    "value": pl.String,
    "value_id": pl.String,  # the value's entity id where it is an entity, else null
    "value_type": pl.String,  # item | time | quantity | string | monolingualtext | synthetic
    "source": pl.String,
    "popularity": pl.Float64,  # sitelinks (dump), alignment count (T-REx), null if unknown
    "template": pl.String,  # LAMA-style "[X] ... [Y]" or null (generic template)
    "cardinality": pl.String,  # 1-1 / N-1 / N-M from the source, or null (computed)
    "prior_bits": pl.Float64,  # known value entropy (synthetic) or null (empirical prior)
}

MULTI_VALUE_RULES = ("drop", "first")
AMBIGUOUS_KEY_RULES = ("disambiguate", "drop")
COPYABLE_RULES = ("drop", "keep")


def _words(e: pl.Expr) -> pl.Expr:
    """Lower-cased words separated by single spaces, padded: whole-word containment is a substring test."""
    return " " + e.str.to_lowercase().str.replace_all(r"[^\w]+", " ").str.strip_chars() + " "


def copyable_facts(df: pl.DataFrame, rule: str, counts: dict) -> pl.DataFrame:
    """Rule 5: count facts whose value a model can copy from the prompt, then drop them (``drop``) or keep
    them marked (``keep``: a boolean ``copyable`` column). ``value_is_key``: the value equals the subject's
    label (case and spacing aside); ``value_in_prompt``: otherwise the value's words appear, whole and in
    order, in the rendered prompt (``"1"`` is not in ``"2001"``)."""
    if rule not in COPYABLE_RULES:
        raise CorpusError(f"copyable={rule!r}; allowed values: {list(COPYABLE_RULES)}")
    value_words = _words(pl.col("value"))
    is_key = _words(pl.col("value")) == _words(pl.col("subject_label"))
    in_prompt = ~is_key & (value_words.str.strip_chars() != "") & _words(pl.col("_prompt")).str.contains(
        value_words, literal=True)
    prompts = render(df)["prompt"]  # the prompt each fact will have (before variants derive facts from it)
    flags = df.with_columns(_prompt=prompts).select(is_key.alias("k"), in_prompt.alias("p"))
    counts["copyable_value_is_key"] = int(flags["k"].sum())
    counts["copyable_value_in_prompt"] = int(flags["p"].sum())
    if rule == "keep":
        counts["dropped_value_is_key"] = counts["dropped_value_in_prompt"] = 0
        return df.with_columns(copyable=flags["k"] | flags["p"])
    counts["dropped_value_is_key"] = counts["copyable_value_is_key"]
    counts["dropped_value_in_prompt"] = counts["copyable_value_in_prompt"]
    return df.filter(~(flags["k"] | flags["p"]))


def raw_frame(rows: list[dict] | dict[str, list]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema_overrides=RAW_SCHEMA) if rows else pl.DataFrame(schema=RAW_SCHEMA)
    for col, dt in RAW_SCHEMA.items():
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dt).alias(col))
    return df.select([pl.col(c).cast(dt) for c, dt in RAW_SCHEMA.items()])


def _blake(values: pl.Series, seed: int) -> pl.Series:
    """blake2b(seed, string) as a UInt64 per string (nulls hash as ""), computed once per distinct string."""
    uniq = values.fill_null("").unique()
    salt = f"{seed}|".encode()
    u = np.fromiter((int.from_bytes(hashlib.blake2b(salt + v.encode(), digest_size=8).digest(), "little")
                     for v in uniq.to_list()), dtype=np.uint64, count=len(uniq))
    table = pl.DataFrame({"v": uniq, "u": pl.Series(u, dtype=pl.UInt64)})
    return pl.DataFrame({"v": values.fill_null("")}).join(table, on="v", how="left", maintain_order="left")["u"]


def stable_unit(values: pl.Series, seed: int) -> pl.Series:
    """A pseudo-random number in [0, 1) per string from blake2b(seed, string): independent of row order,
    of the polars version and of the machine (polars' own ``hash`` is not stable across versions)."""
    return (_blake(values, seed) // (1 << 11)).cast(pl.Float64) / float(1 << 53)


def stable_key(values: pl.Series, seed: int) -> pl.Series:
    """A pseudo-random 63-bit integer (Int64 >= 0) per string from blake2b(seed, string): a sort key that every
    row computes alone (no rank over the corpus), so a bucketed build gives the same column."""
    return (_blake(values, seed) // 2).cast(pl.Int64)


def resolve(raw: pl.DataFrame, multi_value: str, ambiguous_keys: str, counts: dict) -> pl.DataFrame:
    """Rules 1-3 of the module docstring; updates ``counts`` with what each rule dropped or changed."""
    if multi_value not in MULTI_VALUE_RULES:
        raise CorpusError(f"multi_value={multi_value!r}; allowed values: {list(MULTI_VALUE_RULES)}")
    if ambiguous_keys not in AMBIGUOUS_KEY_RULES:
        raise CorpusError(f"ambiguous_keys={ambiguous_keys!r}; allowed values: {list(AMBIGUOUS_KEY_RULES)}")
    df = raw.with_row_index("_order")
    n0 = df.height
    df = df.unique(subset=["subject_id", "relation", "value"], keep="first", maintain_order=True)
    counts["dropped_exact_duplicate"] = n0 - df.height

    n_vals = pl.col("value").n_unique().over(["subject_id", "relation"])
    multi = df.filter(n_vals > 1)
    counts["multi_valued_pairs"] = multi.select(["subject_id", "relation"]).unique().height
    if multi_value == "drop":
        counts["dropped_multi_valued"] = multi.height
        df = df.filter(n_vals == 1)
    else:
        before = df.height
        df = df.sort("_order").unique(subset=["subject_id", "relation"], keep="first", maintain_order=True)
        counts["dropped_multi_valued"] = before - df.height

    shared = pl.col("subject_id").n_unique().over("subject_label") > 1
    n_amb = df.filter(shared).select("subject_id").n_unique()
    counts["ambiguous_key_subjects"] = n_amb
    if ambiguous_keys == "drop":
        before = df.height
        df = df.filter(~shared)
        counts["dropped_ambiguous_key"] = before - df.height
        df = df.with_columns(key=pl.col("subject_label"))
    else:
        counts["dropped_ambiguous_key"] = 0
        df = df.with_columns(
            key=pl.when(shared)
            .then(pl.col("subject_label") + " (" + pl.col("subject_id") + ")")
            .otherwise(pl.col("subject_label"))
        )
    return df.sort("_order").drop("_order")


def add_statistics(df: pl.DataFrame) -> pl.DataFrame:
    """Relation cardinality (from the source, else from the data) and the value prior in bits.

    prior_bits is what a model that knows only the relation needs to name the value: the known entropy
    for synthetic facts, else the surprisal -log2 p(value | relation) under the relation's empirical
    value distribution in this corpus. Memorized bits are measured against it.
    """
    per_rel = pl.len().over("relation")
    per_val = pl.len().over(["relation", "value"])
    shared_values = (pl.col("subject_id").n_unique().over(["relation", "value"]) > 1).any().over("relation")
    return df.with_columns(
        cardinality=pl.coalesce(pl.col("cardinality"), pl.when(shared_values).then(pl.lit("N-1")).otherwise(pl.lit("1-1"))),
        prior_bits=pl.coalesce(pl.col("prior_bits"), -(per_val / per_rel).log(2)),
    )


def assign_split(df: pl.DataFrame, heldout_frac: float, seed: int) -> pl.DataFrame:
    """Held-out facts have unseen keys: the split is drawn per subject, not per fact. ``order`` is a seeded
    pseudo-random key per (subject, relation): "the first N training facts" (corpus-size sweeps) are the N
    smallest; the key is computed fact by fact (format /3; /2 stored its rank over the corpus)."""
    if not 0 <= heldout_frac < 1:
        raise CorpusError(f"heldout_frac must be in [0, 1), got {heldout_frac}")
    u = stable_unit(df["subject_id"], seed)
    o = stable_key(df["subject_id"] + "|" + df["relation"], seed + 1)
    return df.with_columns(
        split=pl.when(pl.lit(u) < heldout_frac).then(pl.lit("heldout")).otherwise(pl.lit("train")),
        order=pl.lit(o),
    )


def tokenizer_texts(df: pl.DataFrame, n_train: int, sample: int) -> pl.Series:
    """The rendered texts the BPE is trained on: every training fact's, or, past ``sample`` training facts, those
    whose ``order`` key falls in the lowest ``sample / n_train`` of its range (about ``sample`` texts, chosen
    fact by fact: a bucketed build picks the same ones)."""
    train = pl.col("split") == "train"
    if n_train > sample:
        train = train & (pl.col("order") < int(sample / n_train * float(1 << 63)))
    return df.filter(train)["text"]
