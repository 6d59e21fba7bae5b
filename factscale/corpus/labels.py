"""Pass-1 spill and label resolution on disk: memory bounded by batch and bucket sizes, not by the dump.

Pass 1 (``wikidata.Pass1``) writes every kept fact and every (id, label) it reads, in file order, to parquet
part files of at most ``batch_rows`` rows in the build's private directory (``Spill``). ``resolve`` then
names the facts with polars over those files:

1. **Labels**, per bucket of ids (hash of the id modulo K, K = label rows / ``bucket_rows``): the ids wanted
   (value and unit ids of kept facts, relation ids) get, in this order of precedence,
   (a) their label in the last file that refers to them (or, for a property, that holds it), last
   occurrence in that file; (b) the ``--labels`` tables (a later file wins); (c) their label anywhere in the
   dump (the last occurrence): entities read before anything referred to them, what the second pass over
   the dump used to find, now read from the spilled label rows instead of decompressing the dump again.
   This is the in-memory code's rule whenever an id's label is the same at each of its occurrences in a file
   (true of real dumps; its 1M-entry pending table only changed which of (b) and (c) came first beyond it).
2. **Facts**, per fact part in file order: the labels of the part's ids are looked up in the resolved
   buckets (a streaming semi-join: memory of one part), and each (subject, relation)'s number of values and
   unnamed values are counted per bucket of subjects; a second pass per part applies the drop rules in the
   in-memory code's order, with its count names, and writes the kept rows. Fact order is file order.

Only the per-relation tallies (a few thousand relations) and the first ids of error messages stay in memory.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import polars as pl

from factscale.corpus.datatypes import PLAIN_STRING_TYPES, STRING_ID, string_label_is_identifier

FACT_SCHEMA = {"subject_id": pl.String, "subject_label": pl.String, "relation": pl.String, "value": pl.String,
               "value_id": pl.String, "unit_id": pl.String, "datatype": pl.String, "sitelinks": pl.Int64}
LABEL_SCHEMA = {"id": pl.String, "label": pl.String}
BATCH_ROWS = 500_000  # facts or labels per part file (~25-60 MB in memory while written or read)
BUCKET_ROWS = 4_000_000  # label rows per resolution bucket
_SEED = 0x5EED


class Spill:
    """Part files of pass 1 under ``root``: ``facts/`` (FACT_SCHEMA + file) and ``labels/`` (LABEL_SCHEMA + file),
    numbered in the order they were written, so reading the parts in name order is reading in file order."""

    def __init__(self, root, batch_rows: int = BATCH_ROWS, bucket_rows: int = BUCKET_ROWS):
        self.root, self.batch_rows, self.bucket_rows = Path(root), max(1, batch_rows), max(1, bucket_rows)
        for d in ("facts", "labels"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self._buf = {"facts": [], "labels": []}
        self._n = {"facts": 0, "labels": 0}
        self._file = {"facts": None, "labels": None}
        self.parts = {"facts": 0, "labels": 0}
        self.rows = {"facts": 0, "labels": 0}
        self.part_rows: dict[str, list[int]] = {"facts": [], "labels": []}

    def add(self, kind: str, rows, file_index: int):
        """``rows``: tuples (from the parser workers) or a polars frame (from a shard) of one file."""
        if self._file[kind] != file_index:
            self._flush(kind)
            self._file[kind] = file_index
        if not isinstance(rows, pl.DataFrame):
            if not rows:
                return
            rows = pl.DataFrame(rows, schema=FACT_SCHEMA if kind == "facts" else LABEL_SCHEMA, orient="row")
        self._buf[kind].append(rows)
        self._n[kind] += rows.height
        if self._n[kind] >= self.batch_rows:
            self._flush(kind)

    def _flush(self, kind: str):
        if not self._buf[kind]:
            return
        df = pl.concat(self._buf[kind])
        self._buf[kind].clear()
        self._n[kind] = 0
        for off in range(0, df.height, self.batch_rows):
            self._write(kind, df.slice(off, self.batch_rows), self._file[kind])

    def _write(self, kind: str, df: pl.DataFrame, file_index: int):
        if df.height == 0:
            return
        df = df.with_columns(file=pl.lit(file_index, dtype=pl.UInt32))
        df.write_parquet(self.root / kind / f"part-{self.parts[kind]:07d}.parquet")
        self.parts[kind] += 1
        self.rows[kind] += df.height
        self.part_rows[kind].append(df.height)

    def flush(self):
        for kind in self._buf:
            self._flush(kind)

    def files(self, kind: str) -> list[Path]:
        return sorted((self.root / kind).glob("part-*.parquet"))

    def chunks(self, kind: str, rows: int) -> list[list[Path]]:
        """Consecutive part files in groups of about ``rows`` rows: fewer, larger steps where each step scans
        a whole table (``resolve``'s lookups)."""
        out, n = [], rows
        for f, k in zip(self.files(kind), self.part_rows[kind]):
            if n + k > rows:
                out.append([])
                n = 0
            out[-1].append(f)
            n += k
        return out


def _scan(files, schema: dict) -> pl.LazyFrame:
    if not files:
        return pl.LazyFrame(schema={**schema, "file": pl.UInt32})
    return pl.scan_parquet(files)


def _bucket(col: str, k: int, n: int) -> pl.Expr:
    return (pl.col(col).hash(_SEED) % n) == k


def _first_ids(ids: list[str], have: list[str], keep: int = 5) -> list[str]:
    return sorted({*have, *ids}, key=lambda x: (len(x), x))[:keep]


def resolve_labels(spill: Spill, tables: list[dict]) -> dict:
    """Step 1: ``resolved/b-K.parquet`` (id, label) per bucket; returns the counts of ids left unnamed and the
    first of them (for the error lines)."""
    facts = _scan(spill.files("facts"), FACT_SCHEMA)
    labels = _scan(spill.files("labels"), LABEL_SCHEMA).with_row_index("seq")
    tdir = spill.root / "tables"
    tdir.mkdir(exist_ok=True)
    tfiles = []
    for n, table in enumerate(tables):  # a later --labels file wins: its rows come later
        if table:
            tfiles.append(tdir / f"part-{n:07d}.parquet")
            pl.DataFrame({"id": list(table), "label": list(table.values())},
                         schema=LABEL_SCHEMA).write_parquet(tfiles[-1])
    table_rows = pl.scan_parquet(tfiles).with_row_index("seq") if tfiles else None
    refs = pl.concat([facts.select("file", id="value_id"), facts.select("file", id="unit_id")]).drop_nulls("id")
    rels = facts.select(id="relation")
    k_n = max(1, -(-(spill.rows["labels"] + sum(map(len, tables))) // spill.bucket_rows))
    out = spill.root / "resolved"
    out.mkdir(exist_ok=True)
    info = {"buckets": k_n, "needed": 0, "needed_unresolved": 0, "needed_first": [], "pids_unresolved": []}
    for k in range(k_n):
        ref = refs.filter(_bucket("id", k, k_n)).unique().collect(engine="streaming")
        rel = rels.filter(_bucket("id", k, k_n)).unique().collect(engine="streaming")
        wanted = pl.concat([ref.select("id"), rel]).unique()
        lab = labels.filter(_bucket("id", k, k_n)).join(wanted.lazy(), on="id", how="semi").collect(engine="streaming")
        own = (lab.join(ref.with_columns(ref=pl.lit(True)), on=["id", "file"], how="left")
               .with_columns(own=pl.col("ref").fill_null(False) | pl.col("id").str.starts_with("P")))
        in_dump = own.sort("seq").group_by("id").agg(
            a=pl.col("label").filter(pl.col("own")).last(), c=pl.col("label").last())
        got = wanted.join(in_dump, on="id", how="left")
        if table_rows is not None:
            tab = (table_rows.filter(_bucket("id", k, k_n)).join(wanted.lazy(), on="id", how="semi")
                   .sort("seq").group_by("id").agg(b=pl.col("label").last()).collect(engine="streaming"))
            got = got.join(tab, on="id", how="left")
        else:
            got = got.with_columns(b=pl.lit(None, dtype=pl.String))
        got = got.select("id", label=pl.coalesce("a", "b", "c"))
        got.drop_nulls("label").write_parquet(out / f"b-{k:05d}.parquet")
        missing = got.filter(pl.col("label").is_null())["id"]
        needed = ref["id"].unique()
        unnamed = needed.filter(needed.is_in(missing.implode()))
        info["needed"] += needed.len()
        info["needed_unresolved"] += unnamed.len()
        info["needed_first"] = _first_ids(unnamed.sort().head(1000).to_list(), info["needed_first"])
        info["pids_unresolved"] += rel["id"].filter(rel["id"].is_in(missing.implode())).to_list()
    return info


def _lookup(resolved: list[Path], ids: pl.Series) -> pl.DataFrame:
    """Labels of ``ids`` from the resolved buckets, streaming (memory of the ids, not of the table)."""
    if not resolved:
        return pl.DataFrame(schema=LABEL_SCHEMA)
    return (pl.scan_parquet(resolved).join(pl.LazyFrame({"id": ids.unique().drop_nulls()}), on="id", how="semi")
            .collect(engine="streaming"))


def _named(part: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    for col, name in (("relation", "plabel"), ("value_id", "vlabel"), ("unit_id", "ulabel")):
        part = part.join(table.rename({"id": col, "label": name}), on=col, how="left", maintain_order="left")
    return part


def resolve(spill: Spill, tables: list[dict], keep_string_ids: bool, templates: dict):
    """Spilled pass 1 -> (kept part files, counts, info, per-relation (subjects, multi-valued subjects)).

    Kept rows are those of ``wikidata.raw_from_passes``, in fact order, with its columns."""
    info = resolve_labels(spill, tables)
    resolved = sorted((spill.root / "resolved").glob("b-*.parquet"))
    named_dir, kept_dir, pairs_dir = (spill.root / d for d in ("named", "kept", "pairs"))
    for d in (named_dir, kept_dir, pairs_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    named = []
    for n, f in enumerate(spill.chunks("facts", spill.bucket_rows)):
        part = pl.read_parquet(f)
        ids = pl.concat([part["relation"], part["value_id"], part["unit_id"]])
        part = _named(part, _lookup(resolved, ids)).with_columns(
            unnamed=(pl.col("value_id").is_not_null() & pl.col("vlabel").is_null())
            | (pl.col("unit_id").is_not_null() & pl.col("ulabel").is_null()))
        named.append(named_dir / f"part-{n:07d}.parquet")
        part.write_parquet(named[-1])

    # values per (subject, relation), over every file: the multi-value drop and the to-many marks need them
    k_n = max(1, -(-spill.rows["facts"] // spill.bucket_rows)) if named else 0
    per_rel = []
    pair_files = []
    for k in range(k_n):
        pairs = (pl.scan_parquet(named).filter(_bucket("subject_id", k, k_n))
                 .group_by("subject_id", "relation").agg(n=pl.len(), unnamed=pl.col("unnamed").any())
                 .collect(engine="streaming"))
        per_rel.append(pairs.group_by("relation").agg(subjects=pl.len(), multi=(pl.col("n") > 1).sum()))
        drop = pairs.filter((pl.col("n") > 1) & pl.col("unnamed")).select("subject_id", "relation")
        pair_files.append(pairs_dir / f"b-{k:05d}.parquet")
        drop.write_parquet(pair_files[-1])
    tallies = (pl.concat(per_rel).group_by("relation").agg(pl.col("subjects", "multi").sum())
               if per_rel else pl.DataFrame(schema={"relation": pl.String, "subjects": pl.UInt32, "multi": pl.UInt32}))

    counts: Counter = Counter()
    id_labels: dict[str, bool] = {}
    kept = []
    for n, f in enumerate(named):
        part = pl.read_parquet(f)
        drops = (pl.scan_parquet(pair_files).join(pl.LazyFrame({"subject_id": part["subject_id"].unique()}),
                                                  on="subject_id", how="semi").collect(engine="streaming"))
        part = part.join(drops.with_columns(multi_drop=pl.lit(True)), on=["subject_id", "relation"], how="left",
                         maintain_order="left")
        if not keep_string_ids:
            for lab in part.filter(pl.col("datatype") == "string")["plabel"].drop_nulls().unique():
                if lab not in id_labels:
                    id_labels[lab] = bool(string_label_is_identifier(lab))
        idl = [k for k, v in id_labels.items() if v]
        reason = (pl.when(pl.col("plabel").is_null()).then(pl.lit("dropped_property_no_label"))
                  .when(pl.col("multi_drop").fill_null(False)).then(pl.lit("dropped_multi_valued_with_unnamed_value"))
                  .when((pl.col("datatype") == "string") & pl.lit(not keep_string_ids) & pl.col("plabel").is_in(idl))
                  .then(pl.lit(f"dropped_datatype:{STRING_ID}"))  # "Commons category", "... ID"
                  .when(pl.col("value_id").is_not_null() & pl.col("vlabel").is_null())
                  .then(pl.lit("dropped_value_label_unresolved"))
                  .when(pl.col("unit_id").is_not_null() & pl.col("ulabel").is_null())
                  .then(pl.lit("dropped_unit_label_unresolved")))
        part = part.with_columns(reason=reason)
        counts.update(dict(part["reason"].drop_nulls().value_counts().iter_rows()))
        part = part.filter(pl.col("reason").is_null())
        value = pl.coalesce("vlabel", "value")
        value = pl.when(pl.col("unit_id").is_not_null()).then(pl.concat_str(value, pl.lit(" "), "ulabel")).otherwise(value)
        vtype = (pl.when(pl.col("value_id").is_not_null()).then(pl.lit("item"))
                 .when(pl.col("datatype").is_in(list(PLAIN_STRING_TYPES))).then(pl.lit("string")).otherwise(pl.col("datatype")))
        tmpl = {p: t["template"] for p, t in templates.items() if isinstance(t, dict) and t.get("template")}
        out = part.select("subject_id", "subject_label", "relation", relation_label="plabel", value=value,
                          value_id="value_id", value_type=vtype, popularity=pl.col("sitelinks").cast(pl.Float64),
                          template=pl.col("relation").replace_strict(tmpl, default=None, return_dtype=pl.String))
        kept.append(kept_dir / f"part-{n:07d}.parquet")
        out.write_parquet(kept[-1])
    return kept, counts, info, tallies
