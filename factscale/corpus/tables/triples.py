"""Existing fact sets -> raw facts: T-REx/LAMA jsonl and BEAR jsonl.

T-REx/LAMA rows: ``{"sub_uri", "sub_label", "predicate_id", "obj_uri", "obj_label", "count"?}``.
BEAR rows: ``{"sub_id", "sub_label", "obj_id", "obj_label"}`` with the relation in the file name.
ID-triple TSV (``Q1000<TAB>P17<TAB>Q1000``, plain or gzip; see ``tsv``) is recognised by content, its
labels coming from ``--labels`` tables. A path may be a file or a directory of ``*.jsonl``/``*.tsv``/``*.txt``
(optionally ``.gz``). Relation templates, labels and cardinality types
come from a LAMA ``relations.jsonl`` (given, or found beside/above the data); other relation labels
from property-label files. The same fact listed twice (mTREx and mTRExf) is merged, keeping the
largest ``count``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl

from factscale.corpus.rules import raw_frame
from factscale.corpus.render import load_lama_templates
from factscale.corpus.tables.tsv import EXPECTED_TRIPLES, iter_lines, looks_like_tsv, read_id_triples
from factscale.corpus.wikidata.dump import MAX_ERRORS_KEPT
from factscale.errors import CorpusError

_PATTERNS = ("*.jsonl", "*.tsv", "*.txt", "*.jsonl.gz", "*.tsv.gz", "*.txt.gz")


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
        files = sorted({f for pat in _PATTERNS for f in path.glob(pat)} - {path / "relations.jsonl"})
        if not files:
            raise FileNotFoundError(f"no fact files ({', '.join(_PATTERNS)}) in {path}")
        return files
    return [path]


def read_triples(paths, templates: dict | None = None, labels: dict | None = None):
    """Return (raw facts frame, counts, errors, files read)."""
    templates = templates or {}
    labels = labels or {}
    counts: Counter = Counter()
    errors: list = []
    rows = {k: [] for k in ("subject_id", "subject_label", "relation", "value", "value_id", "popularity", "source",
                            "value_type")}
    files = [f for p in paths for f in _files(Path(p))]
    for f in files:
        if looks_like_tsv(f):
            tsv = read_id_triples(f, labels, counts, errors)
            n_tsv = len(tsv["value"])
            for k in ("subject_id", "subject_label", "relation", "value", "value_id", "value_type"):
                rows[k] += tsv[k]
            rows["popularity"] += [None] * n_tsv
            rows["source"] += ["tsv"] * n_tsv
            continue
        good, first_bad = 0, None
        for n, line in iter_lines(f, EXPECTED_TRIPLES):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                if not isinstance(r, dict):
                    raise TypeError(f"a JSON {type(r).__name__}, not an object")
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
                first_bad = first_bad or (n, f"{type(e).__name__}: {str(e)[:80]}")
                if len(errors) < MAX_ERRORS_KEPT:
                    errors.append((str(f), n, f"{type(e).__name__}: {e}"))
                continue
            good += 1
            counts["rows_read"] += 1
            for k, v in zip(rows, (*rec, "item")):
                rows[k].append(v)
        if good == 0:
            n, msg = first_bad or (1, "no fact line")
            raise CorpusError(f"{f}: line {n}: {msg}; no fact could be read; expected {EXPECTED_TRIPLES}")
    n_tsv_rows = counts["rows_read_tsv"]
    if n_tsv_rows and n_tsv_rows == counts["dropped_subject_no_label"] + counts["dropped_value_label_unresolved"]:
        raise CorpusError(f"no entity labels for any of the {n_tsv_rows} ID triples, so no fact can be written: "
                          "pass --labels FILE with entity labels (TSV 'Q42<TAB>Douglas Adams[<TAB>alias...]')")
    schema = {k: pl.String for k in rows} | {"popularity": pl.Float64}
    df = pl.DataFrame(rows, schema=schema)
    n0 = df.height
    # one fact listed in several files: merge, keep the strongest frequency signal (a literal is its own key)
    df = df.with_columns(_vkey=pl.coalesce("value_id", "value"))
    df = df.group_by(["subject_id", "relation", "_vkey"], maintain_order=True).agg(
        pl.col("subject_label", "value", "value_id", "source", "value_type").first(), pl.col("popularity").max()
    ).drop("_vkey")
    counts["merged_duplicate_rows"] = n0 - df.height
    rel_label = {r: t.get("label") for r, t in templates.items() if t.get("label")}
    df = df.with_columns(
        relation_label=pl.col("relation").replace_strict({**labels, **rel_label}, default=None, return_dtype=pl.String),
        template=pl.col("relation").replace_strict({r: t.get("template") for r, t in templates.items()},
                                                   default=None, return_dtype=pl.String),
        cardinality=pl.col("relation").replace_strict({r: t.get("type") for r, t in templates.items()},
                                                      default=None, return_dtype=pl.String),
    )
    no_label = df.filter(pl.col("relation_label").is_null())
    counts["dropped_property_no_label"] = no_label.height
    df = df.filter(pl.col("relation_label").is_not_null())
    if df.height == 0 and no_label.height:
        rels = sorted(no_label["relation"].unique().to_list())
        more = ", ..." if len(rels) > 5 else ""
        raise CorpusError(f"no labels for the {len(rels)} relations ({', '.join(rels[:5])}{more}), "
                          "so no fact can be written: pass --labels FILE with relation labels "
                          "(TSV 'P17<TAB>country[<TAB>alias...]' or JSON like properties/pid2name.json)")
    return raw_frame(df.to_dict(as_series=False)), dict(counts), errors, files


def templates_for(paths, templates_path=None) -> tuple[dict, str | None]:
    p = Path(templates_path) if templates_path else find_relations_file([Path(x) for x in paths])
    return (load_lama_templates(p), str(p)) if p else ({}, None)
