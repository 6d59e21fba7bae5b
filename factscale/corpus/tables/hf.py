"""Hugging Face ``datasets`` in and out: import a fact set from any local ``datasets`` source, export a corpus.

Import: a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or parquet,
json/jsonl or csv files (read by the ``datasets`` packaged builders; nothing is fetched from a hub).
A column mapping says which columns hold the fact: ``subject`` (the key's label), ``relation`` and
``value`` are required; ``subject_id``, ``relation_label``, ``value_id``, ``popularity`` and
``template`` are optional. Columns that already carry these names need no mapping. Rows with an empty
required field are dropped and counted.

Export: ``export_corpus(corpus, out)`` writes ``facts.parquet`` as a ``datasets`` dataset
(``datasets.load_from_disk(out)`` returns the same rows, same order, same columns) with the corpus
manifest as JSON in the dataset's ``description`` and a README.md dataset card beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl

from factscale.corpus.build import load_corpus
from factscale.corpus.rules import raw_frame
from factscale.errors import CorpusError

# mapping keys -> raw columns
FIELDS = {"subject": "subject_label", "subject_label": "subject_label", "subject_id": "subject_id",
          "relation": "relation", "relation_label": "relation_label", "value": "value", "value_id": "value_id",
          "popularity": "popularity", "template": "template"}
REQUIRED = ("subject_label", "relation", "value")
_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def parse_columns(text: str | None) -> dict[str, str]:
    """``subject=sub_label,relation=predicate_id,value=obj_label`` -> {raw column: source column}."""
    out = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, col = part.partition("=")
        if not sep or key.strip() not in FIELDS or not col.strip():
            raise CorpusError(f"--hf-columns: {part!r}; expected FIELD=COLUMN with FIELD in {', '.join(FIELDS)}")
        out[FIELDS[key.strip()]] = col.strip()
    return out


def _load(source: list[Path], split: str | None):
    import datasets

    datasets.disable_progress_bars()
    first = source[0]
    if first.is_dir():
        if len(source) > 1:
            raise CorpusError("give one saved dataset directory, or data files (parquet/json/csv)")
        try:
            ds = datasets.load_from_disk(str(first))
        except FileNotFoundError as e:
            raise CorpusError(f"{first}: not a saved datasets directory ({e}); expected a directory written by "
                              "save_to_disk, or parquet/json/jsonl/csv files") from None
    else:
        kinds = {_BUILDERS.get(p.suffix.lower()) for p in source}
        if None in kinds or len(kinds) != 1:
            raise CorpusError(f"{source[0]}: expected files of one kind: .parquet, .json/.jsonl or .csv "
                              "(or a directory written by Dataset.save_to_disk)")
        with tempfile.TemporaryDirectory() as cache:  # no lasting cache next to the user's data
            try:
                ds = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in source], cache_dir=cache,
                                           keep_in_memory=True)
            except Exception as e:  # the builders raise many types for unreadable files; report the file
                raise CorpusError(f"{source[0]}: cannot be read as {_BUILDERS[source[0].suffix.lower()]} "
                                  f"({type(e).__name__}: {str(e)[:120]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is not None:
            if split not in ds:
                raise CorpusError(f"--hf-split {split!r}: the dataset has splits {list(ds)}")
            ds = ds[split]
        else:
            ds = datasets.concatenate_datasets([ds[s] for s in ds])
    return ds


def read_datasets(source, columns: dict[str, str] | None = None, split: str | None = None,
                  labels: dict | None = None, templates: dict | None = None):
    """Return (raw facts frame, counts, errors, files) from a local ``datasets`` source."""
    paths = [Path(p) for p in (source if isinstance(source, (list, tuple)) else [source])]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"datasets source not found: {p}")
    ds = _load(paths, split)
    df = ds.to_polars()
    mapping = {c: c for c in FIELDS.values() if c in df.columns} | (columns or {})
    missing = [c for c in mapping.values() if c not in df.columns]
    need = [c for c in REQUIRED if c not in mapping]
    if missing or need:
        what = f"no column {missing[0]!r}" if missing else f"no column for {need[0]!r}"
        raise CorpusError(f"{paths[0]}: {what}; the dataset has columns {df.columns}; map them with --hf-columns "
                          "subject=COL,relation=COL,value=COL[,subject_id=COL,value_id=COL,relation_label=COL]")
    df = df.select([pl.col(src).alias(dst) for dst, src in mapping.items()])
    df = df.with_columns([pl.col(c).cast(pl.String) for c in df.columns if c != "popularity"])
    counts: Counter = Counter(rows_read=df.height)
    ok = pl.all_horizontal([pl.col(c).is_not_null() & (pl.col(c).str.strip_chars() != "") for c in REQUIRED])
    counts["rows_missing_field"] = df.height - df.filter(ok).height
    df = df.filter(ok)
    if "subject_id" not in df.columns:
        df = df.with_columns(subject_id=pl.col("subject_label"))  # the label is the identity
    rel_labels = {**(labels or {}), **{r: t["label"] for r, t in (templates or {}).items() if t.get("label")}}
    if "relation_label" not in df.columns:
        # an id ("P36") takes its label from --labels/templates; a relation given as words is its own label
        lab = pl.col("relation").replace_strict(rel_labels, default=None, return_dtype=pl.String)
        is_id = pl.col("relation").str.contains(r"^P\d+$")
        df = df.with_columns(relation_label=pl.when(lab.is_null() & ~is_id).then(pl.col("relation")).otherwise(lab))
    if "template" not in df.columns and templates:
        df = df.with_columns(template=pl.col("relation").replace_strict(
            {r: t.get("template") for r, t in templates.items()}, default=None, return_dtype=pl.String))
    no_label = df.filter(pl.col("relation_label").is_null())
    counts["dropped_property_no_label"] = no_label.height
    if df.height and no_label.height == df.height:
        rels = sorted(no_label["relation"].unique().to_list())
        raise CorpusError(f"no labels for the {len(rels)} relations ({', '.join(rels[:5])}), so no fact can be written: "
                          "pass --labels FILE (TSV 'P17<TAB>country' or JSON) or map relation_label=COLUMN")
    df = df.filter(pl.col("relation_label").is_not_null())
    df = df.with_columns(source=pl.lit("datasets"),
                         value_type=pl.when(pl.col("value_id").is_not_null()).then(pl.lit("item")).otherwise(pl.lit("string"))
                         if "value_id" in df.columns else pl.lit("string"))
    files = [f for p in paths for f in (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])]
    return raw_frame(df.to_dict(as_series=False)), dict(counts), [], files


def export_corpus(corpus_dir, out_dir) -> Path:
    """Corpus directory -> a ``datasets`` dataset saved at ``out_dir`` (atomic: written beside, then renamed)."""
    import datasets
    import pyarrow.parquet as pq

    datasets.disable_progress_bars()
    df, manifest = load_corpus(corpus_dir)  # validates the directory
    table = pq.read_table(Path(corpus_dir) / "facts.parquet")
    info = datasets.DatasetInfo(
        description=json.dumps(manifest, sort_keys=True),
        homepage="factscale corpus " + manifest.get("corpus_hash", ""),
        license="CC0-1.0" if manifest.get("source", {}).get("kind") in ("wikidata-dump", "triples") else "",
    )
    ds = datasets.Dataset(table, info=info)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CorpusError(f"{out} exists and is not empty; give a new directory for the export")
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent if out.parent.exists() else None))
    try:
        ds.save_to_disk(str(tmp))
        card = (f"# factscale corpus {manifest.get('corpus_hash', '')}\n\n{df.height} facts, "
                f"{len(manifest.get('facts_per_relation', {}))} relations. Load with `datasets.load_from_disk`.\n\n"
                f"## Manifest\n\n```json\n{json.dumps(manifest, indent=2)}\n```\n")
        (tmp / "README.md").write_text(card)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
