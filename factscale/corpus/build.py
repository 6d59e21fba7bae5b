"""Raw facts from any source -> an unambiguous, split, rendered, tokenized corpus directory.

Every source (dump, triple files, synthetic) yields the same raw columns (``RAW_SCHEMA``); this module
applies the documented rules, in order, and counts what each rule did:

1. exact repeats of (subject_id, relation, value) are deduplicated;
2. multi-valued attributes - one (subject, relation) with several values - are resolved by
   ``multi_value``: ``drop`` (default: drop every value of that pair; it cannot be one fact) or
   ``first`` (keep the first value in source order, e.g. Wikidata's statement order);
3. ambiguous keys - one label shared by different subjects - are resolved by ``ambiguous_keys``:
   ``disambiguate`` (default: the key becomes ``label (subject_id)``) or ``drop``;
4. held-out split by subject (unseen keys, same relations), seeded;
5. render, train the tokenizer, tokenize, check value alignment.

Output: ``facts.parquet``, ``tokenizer/`` (``AutoTokenizer.from_pretrained``), ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import polars as pl

from factscale.corpus.render import render, tokenize, train_tokenizer
from factscale.corpus.variants import apply_variants, difficulty_columns

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


class CorpusError(ValueError):
    """The corpus cannot be built (no facts left, bad option); the message says why."""


def raw_frame(rows: list[dict] | dict[str, list]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema_overrides=RAW_SCHEMA) if rows else pl.DataFrame(schema=RAW_SCHEMA)
    for col, dt in RAW_SCHEMA.items():
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dt).alias(col))
    return df.select([pl.col(c).cast(dt) for c, dt in RAW_SCHEMA.items()])


def _stable_unit(s: pl.Expr, seed: int) -> pl.Expr:
    """A deterministic pseudo-random number in [0, 1) per string, independent of row order."""
    return (s.hash(seed=seed) % 1_000_003).cast(pl.Float64) / 1_000_003


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
    """Held-out facts have unseen keys: the split is drawn per subject, not per fact."""
    if not 0 <= heldout_frac < 1:
        raise CorpusError(f"heldout_frac must be in [0, 1), got {heldout_frac}")
    u = _stable_unit(pl.col("subject_id"), seed)
    return df.with_columns(
        split=pl.when(u < heldout_frac).then(pl.lit("heldout")).otherwise(pl.lit("train")),
        # seeded order used to take "the first N training facts" for corpus-size sweeps
        order=_stable_unit(pl.col("subject_id") + "|" + pl.col("relation"), seed + 1).rank("ordinal").cast(pl.Int64),
    )


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("factscale", "torch", "lightning", "transformers", "tokenizers", "polars", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def build_corpus(
    raw: pl.DataFrame,
    out_dir: str | Path,
    *,
    source_info: dict,
    counts: dict | None = None,
    options: dict | None = None,
    multi_value: str = "drop",
    ambiguous_keys: str = "disambiguate",
    heldout_frac: float = 0.1,
    vocab_size: int = 2048,
    seed: int = 0,
    max_facts: int | None = None,
    entropy_bits: float | None = None,
    extra_columns: pl.DataFrame | None = None,
    variants: dict | None = None,
) -> dict:
    """Run the rules, write the corpus directory atomically enough (manifest last), return the manifest."""
    t0 = time.time()
    counts = dict(counts or {})
    counts["raw_facts"] = raw.height
    df = resolve(raw, multi_value, ambiguous_keys, counts)
    if max_facts is not None and df.height > max_facts:
        counts["dropped_max_facts"] = df.height - max_facts
        df = df.head(max_facts)
    if df.height == 0:
        raise CorpusError(f"no facts left after filtering; counts: {json.dumps(counts)}")
    if variants and "compatibility" in variants and heldout_frac > 0:
        raise CorpusError("the compatibility variant pairs facts across keys: build it with heldout_frac=0")
    try:
        df = apply_variants(df, variants, seed, counts)
    except ValueError as e:
        raise CorpusError(str(e)) from None
    df = add_statistics(df)
    df = assign_split(df, heldout_frac, seed)
    df = render(df)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(df["text"].to_list(), vocab_size, out / "tokenizer")
    df, n_bad = tokenize(df, tokenizer)
    counts["dropped_value_not_token_aligned"] = n_bad
    if df.height == 0:
        raise CorpusError("no facts left after tokenization")
    df = difficulty_columns(df)
    df = df.with_row_index("fact_id").with_columns(pl.col("fact_id").cast(pl.Int64))
    if extra_columns is not None:
        df = df.join(extra_columns, on=["subject_id", "relation"], how="left")
    df = df.drop("template")

    tmp = out / "facts.parquet.tmp"
    df.write_parquet(tmp)
    os.replace(tmp, out / "facts.parquet")

    per_rel = df.group_by("relation", "relation_label").agg(pl.len().alias("facts")).sort("facts", descending=True)
    split_counts = dict(df.group_by("split").len().iter_rows())
    train = df.filter(pl.col("split") == "train")
    manifest = {
        "format": "factscale-corpus/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source_info,
        "options": {
            **(options or {}),
            "multi_value": multi_value,
            "ambiguous_keys": ambiguous_keys,
            "heldout_frac": heldout_frac,
            "vocab_size": vocab_size,
            "seed": seed,
            "max_facts": max_facts,
            "variants": variants or {},
        },
        "counts": {**counts, "kept_facts": df.height, **{f"kept_{k}": v for k, v in split_counts.items()}},
        "facts_per_relation": {r: n for r, _, n in per_rel.iter_rows()},
        "facts_per_group": {c: dict(df.group_by(c).len().sort(c).iter_rows())
                            for c in ("variant", "freq_level", "phase", "rarity_bucket", "value_len") if c in df.columns},
        "relation_labels": {r: lab for r, lab, _ in per_rel.iter_rows()},
        "entropy_bits": {
            # exact for synthetic corpora; for real ones the sum of empirical value surprisals
            "kind": "exact" if entropy_bits is not None else "empirical_prior",
            "train": float(train["prior_bits"].sum()),
            "all": float(df["prior_bits"].sum()) if entropy_bits is None else float(entropy_bits),
        },
        "tokens": {
            "vocab_size": len(tokenizer),
            "mean_tokens_per_fact": float(df["input_ids"].list.len().mean()),
            "mean_value_tokens": float(df["n_value_tokens"].mean()),
            "train_tokens_per_epoch": int(train["input_ids"].list.len().sum()),
        },
        "versions": versions(),
        "build_seconds": round(time.time() - t0, 3),
    }
    manifest["corpus_hash"] = hashlib.sha256(
        json.dumps({k: manifest[k] for k in ("source", "options", "counts")}, sort_keys=True).encode()
    ).hexdigest()[:12]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def load_corpus(path: str | Path) -> tuple[pl.DataFrame, dict]:
    p = Path(path)
    if not (p / "facts.parquet").exists() or not (p / "manifest.json").exists():
        raise CorpusError(f"{p} is not a corpus directory (need facts.parquet and manifest.json); "
                          "make one with `factscale corpus build`")
    return pl.read_parquet(p / "facts.parquet"), json.loads((p / "manifest.json").read_text())

