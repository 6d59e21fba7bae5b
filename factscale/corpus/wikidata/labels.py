"""Pass-1 spill and label resolution on disk: memory bounded by batch and bucket sizes, time linear in the dump.

Pass 1 (``wikidata.Pass1``) writes every kept fact and every (id, label) it reads, in file order, to parquet
part files of at most ``batch_rows`` rows in the build's private directory (``Spill``). ``resolve`` then
names the facts with a partitioned (grace) hash join, so every spilled row is read a fixed number of times:

1. **Partition**: one pass over the fact parts writes each referenced id (value id, unit id) with its fact's
   position (``pos``, the fact's index in file order) and file to the bucket of its id (hash of the id modulo
   K, K = (label rows + table rows + facts) / ``bucket_rows``); one pass over the label parts and the
   ``--labels`` tables does the same with (id, label, sequence number). Buckets are append-only Arrow IPC
   streams (``Buckets``), so a bucket holds its rows in fact (or label) order. Relation ids (a few thousand
   in a full dump) are kept in memory and joined to the buckets like the others.
2. **Labels**, per bucket: the ids wanted (its value and unit ids, its relation ids) get, in this order of
   precedence, (a) their label in the last file that refers to them (or, for a property, that holds it),
   last occurrence in that file; (b) the ``--labels`` tables (a later file wins); (c) their label anywhere
   in the dump (the last occurrence): entities read before anything referred to them, what the second pass
   over the dump used to find, now read from the spilled label rows instead of decompressing the dump
   again. This is the in-memory code's rule whenever an id's label is the same at each of its occurrences
   in a file (true of real dumps; its 1M-entry pending table only changed which of (b) and (c) came first
   beyond it). Each bucket's references with their labels go to a run (``runs/``) in ``pos`` order.
3. **Facts** in file order, per chunk of fact parts: the runs are read as a K-way merge (``Run``: one
   sequential reader per run hands out the chunk's ``pos`` range), so each run is read once. The named facts
   are partitioned again by subject; per subject bucket, each (subject, relation)'s values and unnamed values
   are counted and the positions of the facts the multi-value rule drops go to runs (``drops/``) merged in
   by a last pass, which applies the drop rules in the in-memory code's order, with its count names.

Only the relation labels and per-relation tallies (a few thousand relations), one batch per open bucket or
run, and the first ids of error messages stay in memory.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import polars as pl

from factscale.corpus.wikidata.datatypes import PLAIN_STRING_TYPES, STRING_ID, string_label_is_identifier
from factscale.corpus.spillio import Buckets, Run, bucket_of, closing_on_failure, merged, n_buckets

FACT_SCHEMA = {"subject_id": pl.String, "subject_label": pl.String, "relation": pl.String, "value": pl.String,
               "value_id": pl.String, "unit_id": pl.String, "datatype": pl.String, "sitelinks": pl.Int64}
LABEL_SCHEMA = {"id": pl.String, "label": pl.String}
BATCH_ROWS = 500_000  # facts or labels per part file (~25-60 MB in memory while written or read)
BUCKET_ROWS = 4_000_000  # label rows + referenced ids per resolution bucket
_REF = {"id": pl.String, "file": pl.UInt32, "pos": pl.UInt64, "unit": pl.Boolean}
_LAB = {"id": pl.String, "label": pl.String, "file": pl.UInt32, "seq": pl.UInt64}
_SUBJ = {"subject_id": pl.String, "relation": pl.String, "unnamed": pl.Boolean, "pos": pl.UInt64}


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


def _first_ids(ids: list[str], have: list[str], keep: int = 5) -> list[str]:
    return sorted({*have, *ids}, key=lambda x: (len(x), x))[:keep]


def _partition(spill: Spill, tables: list[dict], k_n: int):
    """Step 1: referenced ids and label rows into buckets; returns (refs, labels, tables) buckets and the
    relation ids."""
    root, batch = spill.root, spill.batch_rows
    refs = Buckets(root / "refs", k_n, "id", _REF, batch)
    rels, pos = pl.Series("id", [], dtype=pl.String), 0
    for f in spill.files("facts"):
        part = pl.read_parquet(f, columns=["relation", "value_id", "unit_id", "file"])
        part = part.with_columns(pos=pl.int_range(pos, pos + part.height, dtype=pl.UInt64))
        pos += part.height
        rels = pl.concat([rels, part["relation"].unique().alias("id")]).unique()  # a few thousand ids
        refs.add(pl.concat([part.select("file", "pos", id="value_id", unit=pl.lit(False)),
                            part.select("file", "pos", id="unit_id", unit=pl.lit(True))])
                 .drop_nulls("id").sort("pos", "unit"))
    refs.close()
    labs = Buckets(root / "labs", k_n, "id", _LAB, batch)
    seq = 0
    for f in spill.files("labels"):
        part = pl.read_parquet(f, columns=["id", "label", "file"])
        labs.add(part.with_columns(seq=pl.int_range(seq, seq + part.height, dtype=pl.UInt64)))
        seq += part.height
    labs.close()
    tabs, seq = Buckets(root / "tables", k_n, "id", _LAB, batch), 0
    for table in tables:  # a later --labels file wins: its rows come later
        tabs.add(pl.DataFrame({"id": list(table), "label": list(table.values())}, schema=LABEL_SCHEMA)
                 .with_columns(file=pl.lit(0, dtype=pl.UInt32), seq=pl.int_range(seq, seq + len(table), dtype=pl.UInt64)))
        seq += len(table)
    tabs.close()
    return refs, labs, tabs, rels.sort().to_frame()


def resolve_labels(spill: Spill, tables: list[dict]) -> tuple[dict, dict, list[Path]]:
    """Steps 1-2: -> (info: counts of ids left unnamed and the first of them, for the error lines; relation
    labels; runs ``runs/b-K.arrow`` of (pos, unit, label) per bucket, in ``pos`` order)."""
    k_n = n_buckets(spill.rows["labels"] + sum(map(len, tables)) + spill.rows["facts"], spill.bucket_rows)
    refs, labs, tabs, rels = _partition(spill, tables, k_n)
    rels = rels.with_columns(_k=bucket_of("id", k_n))
    runs = Buckets(spill.root / "runs", k_n, "pos", {"pos": pl.UInt64, "unit": pl.Boolean, "label": pl.String}, 1)
    run_batch = max(1024, spill.batch_rows // k_n)  # the merge holds one stored batch per run: ~batch_rows rows
    info = {"buckets": k_n, "needed": 0, "needed_unresolved": 0, "needed_first": [], "pids_unresolved": []}
    rel_labels = {}
    for k in range(k_n):
        ref = refs.read(k)
        rel = rels.filter(pl.col("_k") == k).select("id")
        wanted = pl.concat([ref.select("id"), rel]).unique()
        lab = labs.read(k).join(wanted, on="id", how="semi")
        own = (lab.join(ref.select("id", "file").unique().with_columns(ref=pl.lit(True)), on=["id", "file"], how="left")
               .with_columns(own=pl.col("ref").fill_null(False) | pl.col("id").str.starts_with("P")))
        in_dump = own.sort("seq").group_by("id").agg(
            a=pl.col("label").filter(pl.col("own")).last(), c=pl.col("label").last())
        tab = (tabs.read(k).join(wanted, on="id", how="semi").sort("seq").group_by("id")
               .agg(b=pl.col("label").last()))
        got = (wanted.join(in_dump, on="id", how="left").join(tab, on="id", how="left")
               .select("id", label=pl.coalesce("a", "b", "c")))
        missing = got.filter(pl.col("label").is_null())["id"]
        needed = ref["id"].unique()
        unnamed = needed.filter(needed.is_in(missing.implode()))
        info["needed"] += needed.len()
        info["needed_unresolved"] += unnamed.len()
        first = unnamed.to_frame().sort(pl.col("id").str.len_chars(), "id").head(5)["id"].to_list()
        info["needed_first"] = _first_ids(first, info["needed_first"])
        info["pids_unresolved"] += rel["id"].filter(rel["id"].is_in(missing.implode())).to_list()
        rel_labels.update(rel.join(got, on="id").drop_nulls("label").iter_rows())
        if ref.height:
            runs.write(k, ref.join(got, on="id", how="left", maintain_order="left").select("pos", "unit", "label"),
                       max_chunk=run_batch)
    runs.close()
    for b in (refs, labs, tabs):
        shutil.rmtree(b.root)
    return info, rel_labels, [runs.path(k) for k in range(k_n)]


def _rules(part: pl.DataFrame, keep_string_ids: bool, id_labels: dict, templates: dict, counts: Counter):
    """The in-memory code's drop rules, in its order and with its count names -> the kept rows, named."""
    if not keep_string_ids:
        for lab in part.filter(pl.col("datatype") == "string")["plabel"].drop_nulls().unique():
            if lab not in id_labels:
                id_labels[lab] = bool(string_label_is_identifier(lab))
    idl = [k for k, v in id_labels.items() if v]
    reason = (pl.when(pl.col("plabel").is_null()).then(pl.lit("dropped_property_no_label"))
              .when(pl.col("multi_drop")).then(pl.lit("dropped_multi_valued_with_unnamed_value"))
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
    return part.select("subject_id", "subject_label", "relation", relation_label="plabel", value=value,
                       value_id="value_id", value_type=vtype, popularity=pl.col("sitelinks").cast(pl.Float64),
                       template=pl.col("relation").replace_strict(tmpl, default=None, return_dtype=pl.String))


def resolve(spill: Spill, tables: list[dict], keep_string_ids: bool, templates: dict):
    """Spilled pass 1 -> (kept part files, counts, info, per-relation (subjects, multi-valued subjects)).

    Kept rows are those of ``wikidata.raw_from_passes``, in fact order, with its columns. On failure every
    spill file it opened is closed before the error propagates (the spill directory can then be removed)."""
    with closing_on_failure():
        return _resolve(spill, tables, keep_string_ids, templates)


def _resolve(spill: Spill, tables: list[dict], keep_string_ids: bool, templates: dict):
    info, rel_labels, run_paths = resolve_labels(spill, tables)
    plabels = pl.DataFrame({"relation": list(rel_labels), "plabel": list(rel_labels.values())},
                           schema={"relation": pl.String, "plabel": pl.String})
    named_dir, kept_dir = spill.root / "named", spill.root / "kept"
    for d in (named_dir, kept_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    k_s = n_buckets(spill.rows["facts"], spill.bucket_rows)  # open beside the K label runs: both fit the limit
    subj = Buckets(spill.root / "subjects", k_s, "subject_id", _SUBJ, spill.batch_rows)
    runs, named, lo = [Run(p) for p in run_paths], [], 0
    for n, files in enumerate(spill.chunks("facts", spill.bucket_rows)):
        part = pl.read_parquet(files)
        part = part.with_columns(pos=pl.int_range(lo, lo + part.height, dtype=pl.UInt64))
        lo += part.height
        got = merged(runs, lo, {"pos": pl.UInt64, "unit": pl.Boolean, "label": pl.String})
        for unit, name in ((False, "vlabel"), (True, "ulabel")):
            part = part.join(got.filter(pl.col("unit") == unit).select("pos", pl.col("label").alias(name)),
                             on="pos", how="left", maintain_order="left")
        part = part.join(plabels, on="relation", how="left", maintain_order="left").with_columns(
            unnamed=(pl.col("value_id").is_not_null() & pl.col("vlabel").is_null())
            | (pl.col("unit_id").is_not_null() & pl.col("ulabel").is_null()))
        named.append((named_dir / f"part-{n:07d}.parquet", lo))
        part.write_parquet(named[-1][0])
        subj.add(part.select(*_SUBJ))
    subj.close()
    for r in runs:
        r.close()
    shutil.rmtree(spill.root / "runs")

    # values per (subject, relation), over every file: the multi-value drop and the to-many marks need them
    drops = Buckets(spill.root / "drops", k_s, "pos", {"pos": pl.UInt64}, 1)
    per_rel = []
    for k in range(k_s):
        rows = subj.read(k)
        pairs = rows.group_by("subject_id", "relation").agg(n=pl.len(), unnamed=pl.col("unnamed").any())
        per_rel.append(pairs.group_by("relation").agg(subjects=pl.len(), multi=(pl.col("n") > 1).sum()))
        drop = pairs.filter((pl.col("n") > 1) & pl.col("unnamed")).select("subject_id", "relation")
        hit = rows.join(drop, on=["subject_id", "relation"], how="semi", maintain_order="left").select("pos")
        if hit.height:
            drops.write(k, hit, max_chunk=max(1024, spill.batch_rows // k_s))
    drops.close()
    shutil.rmtree(subj.root)
    tallies = (pl.concat(per_rel).group_by("relation").agg(pl.col("subjects", "multi").sum())
               if per_rel else pl.DataFrame(schema={"relation": pl.String, "subjects": pl.UInt32, "multi": pl.UInt32}))

    counts: Counter = Counter()
    id_labels: dict[str, bool] = {}
    kept, runs = [], [Run(drops.path(k)) for k in range(k_s)]
    for n, (f, hi) in enumerate(named):
        part = pl.read_parquet(f)
        dropped = merged(runs, hi, {"pos": pl.UInt64})["pos"]
        part = part.with_columns(multi_drop=pl.col("pos").is_in(dropped.implode()))
        kept.append(kept_dir / f"part-{n:07d}.parquet")
        _rules(part, keep_string_ids, id_labels, templates, counts).write_parquet(kept[-1])
    for r in runs:
        r.close()
    return kept, counts, info, tallies
