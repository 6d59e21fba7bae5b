"""The kept facts of a dump build (``labels.resolve``'s part files, in source order) -> the raw facts frame
(``rules.RAW_SCHEMA``), read whole (``raw_from_passes``) or part by part (``as_raw``, for ``corpus.bounded``);
the errors that say why no fact was kept; and the to-many marks of relations."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import polars as pl

from factscale.corpus.tables.tsv import load_label_table
from factscale.corpus.wikidata.datatypes import STRING_ID
from factscale.corpus.wikidata.labels import Spill, resolve
from factscale.errors import CorpusError

if TYPE_CHECKING:
    from factscale.corpus.wikidata.dump import DumpOptions


def _missing_labels_error(kind: str, ids, lang: str, flag_hint: str, total: int | None = None) -> CorpusError:
    some = ", ".join(sorted(ids, key=lambda x: (len(x), x))[:5])
    total = len(ids) if total is None else total
    return CorpusError(f"no '{lang}' labels for {total} {kind} ({some}{', ...' if total > 5 else ''}), "
                       f"so no fact can be written: {flag_hint}")


def resolved_parts(passes, opts: DumpOptions, spill: Spill, label_files=(), templates: dict | None = None):
    """Each file's pass 1 (``Pass1.finish``: counts, errors), in file order, and their ``spill`` -> (the kept
    facts' part files in source order, counts, errors, per-relation tallies). Labels and drop rules are
    resolved on disk (``labels.resolve``)."""
    counts: Counter = Counter()
    errors = []
    for c, e in passes:
        counts.update(c)
        errors += e
    tables = [load_label_table(lf) for lf in label_files]
    kept, dropped, info, tallies = resolve(spill, tables, STRING_ID in opts.datatypes, templates or {})
    counts["value_labels_unresolved"] = info["needed_unresolved"]
    counts["property_labels_unresolved"] = len(info["pids_unresolved"])
    counts.update(dropped)
    n_facts = spill.rows["facts"]
    if n_facts and not sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in kept):
        hint = ("the dump has no property entities with labels in this language; pass --labels FILE with "
                "property labels (TSV 'P17<TAB>country' or JSON like properties/pid2name.json)")
        if counts["dropped_property_no_label"] == n_facts:
            raise _missing_labels_error("properties", info["pids_unresolved"], opts.language, hint)
        if (counts["dropped_value_label_unresolved"] + counts["dropped_unit_label_unresolved"]
                + counts["dropped_multi_valued_with_unnamed_value"]):
            raise _missing_labels_error("value entities", info["needed_first"], opts.language,
                                        "the dump does not contain those entities; pass --labels FILE "
                                        "(TSV 'Q142<TAB>France') or build from a dump that includes them",
                                        total=info["needed_unresolved"])
    return kept, dict(counts), errors, tallies


def as_raw(df: pl.DataFrame) -> pl.DataFrame:
    """Kept dump facts -> the raw facts frame's columns (``RAW_SCHEMA``)."""
    from factscale.corpus.rules import RAW_SCHEMA, raw_frame

    if not df.height:
        return raw_frame([])
    df = df.with_columns(source=pl.lit("wikidata-dump"))
    df = df.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in RAW_SCHEMA.items() if c not in df.columns])
    return df.select([pl.col(c).cast(t) for c, t in RAW_SCHEMA.items()])


def raw_from_passes(passes, opts: DumpOptions, spill: Spill, label_files=(), templates: dict | None = None):
    """``resolved_parts`` read into one raw facts frame -> (raw facts frame, counts, errors)."""
    kept, counts, errors, tallies = resolved_parts(passes, opts, spill, label_files, templates)
    raw = as_raw(pl.read_parquet(kept) if kept else pl.DataFrame())
    return _mark_to_many(raw, tallies), counts, errors


def to_many_relations(tallies) -> list[str]:
    """Relations giving at least half their subjects several statements (see ``_mark_to_many``)."""
    return tallies.filter((pl.col("multi") > 0) & (2 * pl.col("multi") >= pl.col("subjects")))["relation"].to_list()


def _mark_to_many(df, tallies):
    """Relations giving at least half their subjects several statements are to-many: cardinality N-M (values
    shared by subjects) or 1-M. Counted before the multi-value rule drops such pairs, so the sentences of
    the facts that stay say "a twinned administrative body of", not "the" (``verbalize``). ``tallies``:
    per relation, subjects and subjects with several statements (``labels.resolve``)."""
    to_many = to_many_relations(tallies)
    if not to_many or df.height == 0:
        return df
    rel = pl.col("relation")
    shared = (df.filter(rel.is_in(to_many))
              .group_by("relation", pl.coalesce("value_id", "value").alias("v"))
              .agg(pl.col("subject_id").n_unique().alias("n"))
              .filter(pl.col("n") > 1)["relation"].unique().to_list())
    card = pl.when(rel.is_in(shared)).then(pl.lit("N-M")).otherwise(pl.lit("1-M"))
    return df.with_columns(cardinality=pl.when(rel.is_in(to_many)).then(card).otherwise(pl.col("cardinality")))
