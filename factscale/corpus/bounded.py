"""The build after parsing in bounded memory: the rules of ``build`` (its module docstring lists them) run on
parts of the raw facts in source order and on hash buckets of thin rows, never on the whole corpus, and
make the same corpus as ``build.build_into`` (the same ``facts.parquet`` bytes and tokenizer: the same hash).

Each rule that looks across facts is computed where all the facts it compares meet:

- dedupe and the multi-value rule per subject (buckets of ``subject_id``);
- ambiguous keys per label (buckets of ``subject_label``);
- the value prior and relation cardinality per (relation, value) (buckets of both);
- copyable facts, ``max_facts`` (source order), split, render and tokenization part by part;
- the rarity quartiles from a table per (relation, prior), as small as the number of distinct priors.

A bucket's verdicts go back to the facts as runs sorted by source position (``spillio.Run``), read in step with
the parts (a K-way merge). Label and (relation, value) buckets are aggregated batch by batch (``_groups``), so a
value shared by millions of facts is one row there. Memory is one part, one subject bucket and one bucket's
groups at a time, plus tables per relation and the BPE trainer's word counts (the tokenizer sees a sample past
``tokenizer_sample`` training facts).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import polars as pl

from factscale.corpus.build import TOKENIZER_SAMPLE, finish, rule_options
from factscale.corpus.output import FactsWriter, Stats
from factscale.corpus.render import render, tokenize, train_tokenizer
from factscale.corpus.rules import AMBIGUOUS_KEY_RULES, MULTI_VALUE_RULES, assign_split, copyable_facts, \
    tokenizer_texts
from factscale.corpus.spillio import OPEN, Buckets, Run, closing_on_failure, merged, n_buckets
from factscale.corpus.variants import difficulty_columns, merge_rarity, rarity_table
from factscale.errors import CorpusError

LOG = logging.getLogger("factscale.corpus")
PART_ROWS = 250_000  # raw facts per part at most (a part is rendered and tokenized whole)
MIN_PART_ROWS = 50_000  # and at least, whatever the buckets' size
_POS = {"pos": pl.UInt64}
_SUBJ = {"pos": pl.UInt64, "subject_id": pl.String, "subject_label": pl.String, "relation": pl.String,
         "value": pl.String}
_LABEL = {"pos": pl.UInt64, "subject_label": pl.String, "subject_id": pl.String}
_RV = {"pos": pl.UInt64, "rv": pl.String, "relation": pl.String, "value": pl.String, "subject_id": pl.String}


class _Parts:
    """Numbered parquet parts of one stage, in source order, each with its end position (exclusive)."""

    def __init__(self, root: Path):
        self.root, self.items = root, []
        root.mkdir(parents=True)

    def add(self, df: pl.DataFrame, hi: int):
        p = self.root / f"part-{len(self.items):07d}.parquet"
        df.write_parquet(p)
        self.items.append((p, hi))

    def __iter__(self):
        return self.read()

    def read(self, columns=None):
        for p, hi in self.items:
            yield pl.read_parquet(p, columns=columns), hi


def _n(n: int, what: str) -> str:
    return f"{n:,} {what}{'s' * (n != 1)}"


def _chunk(batch: int, k_n: int) -> int:
    """Rows per stored batch of a run: the K runs read as one merge hold one batch each, ~``batch`` rows in all."""
    return max(1024, batch // k_n)


def _groups(b: Buckets, k: int, keys: list[str], budget: int) -> pl.DataFrame | None:
    """Per group of ``keys`` in bucket ``k``: its facts (``n``) and whether several subjects share it (``shared``,
    as ``n_unique() > 1`` counts them: a null subject is one more), aggregated batch by batch, so memory is the
    bucket's groups, not its rows (one value of millions of facts is one row here). None for an empty bucket."""
    def reduce(tables):
        return pl.concat(tables).group_by(keys).agg(pl.col("n").sum(), pl.col("lo").min(), pl.col("hi").max(),
                                                    pl.col("null").any())

    tables, size = [], 0
    for rows in b.batches(k):
        tables.append(rows.group_by(keys).agg(n=pl.len(), lo=pl.col("subject_id").min(),
                                              hi=pl.col("subject_id").max(), null=pl.col("subject_id").is_null().any()))
        size += tables[-1].height
        if size > budget:
            tables = [reduce(tables)]
            size = tables[0].height
    if not tables:
        return None
    shared = (pl.col("lo") != pl.col("hi")).fill_null(False) | (pl.col("null") & pl.col("lo").is_not_null())
    return reduce(tables).with_columns(shared=shared).drop("lo", "hi", "null")


def _runs(b: Buckets) -> list[Run]:
    return [Run(b.path(k)) for k in range(b.k_n)]


def _buckets(work: Path, name: str, k_n: int, col: str, schema: dict, batch_rows: int) -> Buckets:
    b = Buckets(work / name, k_n, col, schema, batch_rows)
    OPEN.append(b)
    return b


def build_bounded(raw_parts, out_dir, *, bucket_facts: int, source_info: dict, counts: dict | None = None,
                  options: dict | None = None, multi_value: str, ambiguous_keys: str, heldout_frac: float,
                  vocab_size: int, seed: int, tokenizer_sample: int = TOKENIZER_SAMPLE, max_facts: int | None = None,
                  copyable: str | None = None, recipe: dict | None = None, prepare=None, to_many=None,
                  variants: dict | None = None) -> dict:
    """Raw facts in parts (parquet files, or frames already in memory), in source order -> the corpus
    ``build_into`` makes of their concatenation. ``prepare``: applied to each part's frame as it is read (e.g. a
    dump's columns to ``RAW_SCHEMA``);
    ``to_many``: the dump's to-many relations (``wikidata.raw.to_many_relations``), marked as ``_mark_to_many`` does."""
    if variants:
        raise CorpusError("study variants need the whole corpus in memory: build them without bucket_facts")
    if multi_value not in MULTI_VALUE_RULES:
        raise CorpusError(f"multi_value={multi_value!r}; allowed values: {list(MULTI_VALUE_RULES)}")
    if ambiguous_keys not in AMBIGUOUS_KEY_RULES:
        raise CorpusError(f"ambiguous_keys={ambiguous_keys!r}; allowed values: {list(AMBIGUOUS_KEY_RULES)}")
    t0, out = time.time(), Path(out_dir)
    work = out / "_bounded"
    try:
        with closing_on_failure():
            m = _build(raw_parts, out, work, bucket_facts, dict(counts or {}), prepare, to_many, t0=t0,
                       multi_value=multi_value, ambiguous_keys=ambiguous_keys, heldout_frac=heldout_frac,
                       vocab_size=vocab_size, seed=seed, tokenizer_sample=tokenizer_sample, max_facts=max_facts,
                       copyable=copyable)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stats, counts, n_texts, vocab = m
    opts = rule_options(options, multi_value=multi_value, ambiguous_keys=ambiguous_keys, heldout_frac=heldout_frac,
                        vocab_size=vocab_size, seed=seed, max_facts=max_facts, copyable=copyable,
                        tokenizer_sample=tokenizer_sample, variants=None)
    return finish(out, stats.manifest(counts=counts, entropy_bits=None, junk=False, vocab=vocab, recipe=recipe,
                                      source_info=source_info, options=opts, tokenizer_texts=n_texts, t0=t0))


def _ingest(raw_parts, work, bucket_facts, prepare, to_many):
    """Pass 0: number the raw facts (``pos``), cut them into parts, and deal thin rows into subject buckets."""
    total = sum(f.height if isinstance(f, pl.DataFrame) else pl.scan_parquet(f).select(pl.len()).collect().item()
                for f in raw_parts)
    # pass 1 holds three files per bucket open at once: the drop and shared runs it reads, the value buckets
    k_n = n_buckets(total, bucket_facts, sets=3, what="bucketed build")
    # parts are cut independently of the buckets: each part reads every bucket's run once (parts x K reads)
    batch = min(max(bucket_facts, MIN_PART_ROWS), PART_ROWS)
    raw = _Parts(work / "raw")
    subj = _buckets(work, "subjects", k_n, "subject_id", _SUBJ, batch)
    rv = _buckets(work, "to-many", k_n, "rv", _RV, batch) if to_many else None
    pos = 0
    for f in raw_parts:
        df = f if isinstance(f, pl.DataFrame) else pl.read_parquet(f)
        df = prepare(df) if prepare else df
        for part in df.iter_slices(batch):
            part = part.with_columns(pos=pl.int_range(pos, pos + part.height, dtype=pl.UInt64))
            pos += part.height
            raw.add(part, pos)
            subj.add(part.select(*_SUBJ))
            if rv is not None:
                v = pl.coalesce("value_id", "value")
                rv.add(part.filter(pl.col("relation").is_in(list(to_many))).select(
                    "pos", rv=pl.col("relation") + "\x1f" + v, relation="relation", value=v, subject_id="subject_id"))
    subj.close()
    if rv is not None:
        rv.close()
    return raw, subj, rv, total, k_n, batch


def _to_many_marks(rv: Buckets, to_many, batch: int) -> dict:
    """Cardinality of each to-many relation: N-M where some value is shared by subjects, else 1-M."""
    shared = set()
    for k in range(rv.k_n):
        t = _groups(rv, k, ["relation", "value"], batch)
        if t is not None:
            shared |= set(t.filter(pl.col("shared"))["relation"].to_list())
    return {r: "N-M" if r in shared else "1-M" for r in to_many}


def _keys(raw: _Parts, subj: Buckets, work, k_n, batch, multi_value, c: Counter):
    """Rules 1-2 per subject bucket (dedupe, multi-value), then the ambiguous labels per label bucket. Returns
    the runs of dropped positions and of positions whose label is shared."""
    drops = _buckets(work, "drops", k_n, "pos", _POS, batch)
    sr, srv = ["subject_id", "relation"], ["subject_id", "relation", "value"]
    for k in range(k_n):
        rows = subj.read(k)  # one bucket's subjects whole, in source order
        d = rows.unique(subset=srv, keep="first", maintain_order=True)
        c["dropped_exact_duplicate"] += rows.height - d.height
        n_vals = pl.col("value").n_unique().over(sr)
        multi = d.filter(n_vals > 1)
        c["multi_valued_pairs"] += multi.select(sr).unique().height
        before = d.height
        d = d.filter(n_vals == 1) if multi_value == "drop" else d.unique(subset=sr, keep="first", maintain_order=True)
        c["dropped_multi_valued"] += before - d.height
        gone = rows.join(d.select("pos"), on="pos", how="anti", maintain_order="left").select("pos")
        if gone.height:
            drops.write(k, gone, max_chunk=_chunk(batch, k_n))
    drops.close()
    shutil.rmtree(subj.root)
    # the kept facts' labels, dealt in source order: each label bucket is then in position order, and its
    # shared positions are written as they stream past (no bucket is sorted or held whole)
    labels, drop_runs = _buckets(work, "labels", k_n, "subject_label", _LABEL, batch), _runs(drops)
    for part, hi in raw.read(list(_LABEL)):
        labels.add(part.filter(~pl.col("pos").is_in(merged(drop_runs, hi, _POS)["pos"].implode())))
    labels.close()
    for r in drop_runs:
        r.close()
    shared = _buckets(work, "shared", k_n, "pos", _POS, batch)
    amb = _buckets(work, "ambiguous", k_n, "subject_id", {"subject_id": pl.String}, batch)
    for k in range(k_n):
        t = _groups(labels, k, ["subject_label"], batch)
        if t is None or not t["shared"].any():
            continue
        hot = t.filter(pl.col("shared")).select("subject_label")
        for rows in labels.batches(k):
            hit = rows.join(hot, on="subject_label", how="semi", nulls_equal=True, maintain_order="left")
            if hit.height:
                shared.write(k, hit.select("pos"), max_chunk=_chunk(batch, k_n))
                amb.add(hit.select("subject_id").unique())
    shared.close()
    amb.close()
    c["ambiguous_key_subjects"] += sum(amb.read(k)["subject_id"].n_unique() for k in range(k_n))
    shutil.rmtree(labels.root)
    shutil.rmtree(amb.root)
    return drops, shared


def _build(raw_parts, out: Path, work: Path, bucket_facts: int, counts: dict, prepare, to_many, *, t0, multi_value,
           ambiguous_keys, heldout_frac, vocab_size, seed, tokenizer_sample, max_facts, copyable):
    raw, subj, rv, total, k_n, batch = _ingest(raw_parts, work, bucket_facts, prepare, to_many)
    counts["raw_facts"] = total
    LOG.info(f"corpus: {total:,} raw facts in {_n(len(raw.items), 'part')}, {_n(k_n, 'bucket')}: applying the rules "
             "(dedupe, multi-value, ambiguous keys, copyable facts, split)")
    marks = _to_many_marks(rv, to_many, batch) if rv is not None else {}
    c = Counter()
    drops, shared = _keys(raw, subj, work, k_n, batch, multi_value, c)

    # pass 1, part by part: drops, keys, copyable facts, max_facts; deal (relation, value) rows into buckets
    stage1, stats_rv = _Parts(work / "stage1"), _buckets(work, "values", k_n, "rv", _RV, batch)
    drop_runs, shared_runs, kept = _runs(drops), _runs(shared), 0
    copy_counts = Counter()
    for part, hi in raw:
        part = part.filter(~pl.col("pos").is_in(merged(drop_runs, hi, _POS)["pos"].implode()))
        sh = pl.col("pos").is_in(merged(shared_runs, hi, _POS)["pos"].implode())
        if ambiguous_keys == "drop":
            before = part.height
            part = part.filter(~sh)
            c["dropped_ambiguous_key"] += before - part.height
            part = part.with_columns(key=pl.col("subject_label"))
        else:
            part = part.with_columns(key=pl.when(sh).then(pl.col("subject_label") + " (" + pl.col("subject_id") + ")")
                                     .otherwise(pl.col("subject_label")))
        if marks:
            part = part.with_columns(cardinality=pl.col("relation").replace_strict(marks, default=pl.col("cardinality")))
        if copyable is not None:
            cc = {}
            part = copyable_facts(part, copyable, cc)
            copy_counts.update(cc)
        n = part.height
        if max_facts is not None:
            part = part.head(max(0, max_facts - kept))
        kept += n
        if part.height:
            stage1.add(part, hi)
            stats_rv.add(part.select("pos", rv=pl.col("relation") + "\x1f" + pl.col("value"), relation="relation",
                                     value="value", subject_id="subject_id"))
    stats_rv.close()
    for r in (*drop_runs, *shared_runs):
        r.close()
    counts.update({k: int(v) for k, v in c.items()})
    counts.setdefault("dropped_ambiguous_key", 0)
    counts.update(copy_counts)
    if max_facts is not None and kept > max_facts:
        counts["dropped_max_facts"] = kept - max_facts
    if not stage1.items:
        raise CorpusError(f"no facts left after filtering; counts: {dict(counts)}")
    shutil.rmtree(raw.root)

    # the value prior per (relation, value) bucket; per relation, its facts and whether values are shared
    per_val = _buckets(work, "per-value", k_n, "pos", {"pos": pl.UInt64, "per_val": pl.UInt32}, batch)
    rel_tables = []
    for k in range(k_n):
        t = _groups(stats_rv, k, ["relation", "value"], batch)
        if t is None:
            continue
        rel_tables.append(t.group_by("relation").agg(per_rel=pl.col("n").cast(pl.Int64).sum(),
                                                     shared=pl.col("shared").any()))
        t = t.select("relation", "value", per_val=pl.col("n").cast(pl.UInt32))
        for rows in stats_rv.batches(k):  # in position order: each fact's run row is written as it streams past
            got = rows.join(t, on=["relation", "value"], how="left", nulls_equal=True, maintain_order="left")
            per_val.write(k, got.select("pos", "per_val"), max_chunk=_chunk(batch, k_n))
    per_val.close()
    shutil.rmtree(stats_rv.root)
    rel = pl.concat(rel_tables).group_by("relation").agg(pl.col("per_rel").sum(), pl.col("shared").any())

    # pass 2: statistics, split, render
    stage2, val_runs, n_train = _Parts(work / "stage2"), _runs(per_val), 0
    for part, hi in stage1:
        got = merged(val_runs, hi, {"pos": pl.UInt64, "per_val": pl.UInt32})
        part = part.join(got, on="pos", how="left", maintain_order="left").join(rel, on="relation", how="left",
                                                                                 maintain_order="left")
        part = part.with_columns(
            cardinality=pl.coalesce(pl.col("cardinality"), pl.when(pl.col("shared")).then(pl.lit("N-1"))
                                    .otherwise(pl.lit("1-1"))),
            prior_bits=pl.coalesce(pl.col("prior_bits"), -(pl.col("per_val") / pl.col("per_rel")).log(2)),
        ).drop("per_val", "per_rel", "shared")
        part = render(assign_split(part, heldout_frac, seed))
        n_train += int((part["split"] == "train").sum())
        stage2.add(part, hi)
    for r in val_runs:
        r.close()
    shutil.rmtree(stage1.root)

    LOG.info(f"corpus: rendered in {len(stage2.items)} parts: training the BPE tokenizer ({vocab_size:,} tokens), "
             f"tokenizing ({time.time() - t0:.1f} s so far)")
    n_texts = [0]

    def texts():
        for part, _ in stage2:
            t = tokenizer_texts(part, n_train, tokenizer_sample)
            n_texts[0] += len(t)
            yield t.to_list()

    tokenizer = train_tokenizer(texts(), vocab_size, out / "tokenizer")
    stage3, tables, n_bad = _Parts(work / "stage3"), [], 0
    for part, hi in stage2:
        part, bad = tokenize(part, tokenizer)
        n_bad += bad
        if part.height:
            tables.append(rarity_table(part))
            stage3.add(part, hi)
    shutil.rmtree(stage2.root)
    counts["dropped_value_not_token_aligned"] = n_bad
    if not stage3.items:
        raise CorpusError("no facts left after tokenization")
    ranks = merge_rarity(tables)
    writer, stats, done = FactsWriter(out / "facts.parquet"), Stats(), 0
    for part, _ in stage3:
        part = difficulty_columns(part, ranks).with_row_index("fact_id", offset=done)
        part = part.with_columns(pl.col("fact_id").cast(pl.Int64)).drop("template", "pos")
        done += part.height
        writer.add(part)
        stats.add(part)
    writer.close()
    return stats, counts, n_texts[0], len(tokenizer)
