"""Existing fact sets -> raw facts: T-REx/LAMA jsonl and BEAR jsonl.

T-REx/LAMA rows: ``{"sub_uri", "sub_label", "predicate_id", "obj_uri", "obj_label", "count"?}``.
BEAR rows: ``{"sub_id", "sub_label", "obj_id", "obj_label"}`` with the relation in the file name.
A path may be a file or a directory of ``*.jsonl``. Relation templates, labels and cardinality types
come from a LAMA ``relations.jsonl`` (given, or found beside/above the data); other relation labels
from property-label files. The same fact listed twice (mTREx and mTRExf) is merged, keeping the
largest ``count``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl

from factscale.corpus.build import raw_frame
from factscale.corpus.render import load_lama_templates
from factscale.corpus.wikidata import MAX_ERRORS_KEPT


def find_relations_file(paths: list[Path]) -> Path | None:
    for p in paths:
        for d in (p if p.is_dir() else p.parent, (p if p.is_dir() else p.parent).parent):
            if (d / "relations.jsonl").exists():
                return d / "relations.jsonl"
    return None


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise FileNotFoundError(f"triples path not found: {path}")
    if path.is_dir():
        files = sorted(f for f in path.glob("*.jsonl") if f.name != "relations.jsonl")
        if not files:
            raise FileNotFoundError(f"no *.jsonl fact files in {path}")
        return files
    return [path]


def read_triples(paths, templates: dict | None = None, labels: dict | None = None):
    """Return (raw facts frame, counts, errors, files read)."""
    templates = templates or {}
    labels = labels or {}
    counts: Counter = Counter()
    errors: list = []
    rows = {k: [] for k in ("subject_id", "subject_label", "relation", "value", "value_id", "popularity", "source")}
    files = [f for p in paths for f in _files(Path(p))]
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    if "sub_uri" in r:  # T-REx / LAMA
                        rec = (r["sub_uri"], r["sub_label"], r["predicate_id"], r["obj_label"], r["obj_uri"],
                               r.get("count"), "trex")
                    elif "sub_id" in r:  # BEAR: relation = file name
                        rec = (r["sub_id"], r["sub_label"], f.stem, r["obj_label"], r["obj_id"], None, "bear")
                    else:
                        raise KeyError("neither sub_uri nor sub_id")
                    if not all(isinstance(x, str) and x for x in rec[:5]):
                        raise ValueError("empty id or label")
                except (ValueError, KeyError, TypeError) as e:
                    counts["lines_malformed"] += 1
                    if len(errors) < MAX_ERRORS_KEPT:
                        errors.append((str(f), n, f"{type(e).__name__}: {e}"))
                    continue
                counts["rows_read"] += 1
                for k, v in zip(rows, rec):
                    rows[k].append(v)
    df = pl.DataFrame(rows, schema_overrides={"popularity": pl.Float64})
    n0 = df.height
    # one fact listed in several files: merge, keep the strongest frequency signal
    df = df.group_by(["subject_id", "relation", "value_id"], maintain_order=True).agg(
        pl.col("subject_label", "value", "source").first(), pl.col("popularity").max()
    )
    counts["merged_duplicate_rows"] = n0 - df.height
    rel_label = {r: t.get("label") for r, t in templates.items()}
    df = df.with_columns(
        relation_label=pl.col("relation").replace_strict({**labels, **rel_label}, default=None, return_dtype=pl.String),
        template=pl.col("relation").replace_strict({r: t.get("template") for r, t in templates.items()},
                                                   default=None, return_dtype=pl.String),
        cardinality=pl.col("relation").replace_strict({r: t.get("type") for r, t in templates.items()},
                                                      default=None, return_dtype=pl.String),
        value_type=pl.lit("item"),
    )
    no_label = df.filter(pl.col("relation_label").is_null())
    counts["dropped_property_no_label"] = no_label.height
    df = df.filter(pl.col("relation_label").is_not_null())
    return raw_frame(df.to_dict(as_series=False)), dict(counts), errors, files


def templates_for(paths, templates_path=None) -> tuple[dict, str | None]:
    p = Path(templates_path) if templates_path else find_relations_file([Path(x) for x in paths])
    return (load_lama_templates(p), str(p)) if p else ({}, None)
