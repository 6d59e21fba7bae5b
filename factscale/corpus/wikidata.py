"""Stream a Wikidata JSON dump into raw facts, in constant memory per entity.

Reads ``.json``, ``.json.gz`` and ``.json.bz2`` (decompressed on all cores, see ``dumpio``), in the
dump's array layout (``[``, one entity per line ending in ``,``, possibly truncated without ``]``) or
newline-delimited. Lines are parsed in a process pool (``workers``); the reader, the label table and the
kept facts are the only state in the main process. Value entities' labels come from the dump itself (a
second, cheap pass picks up entities that appeared before anything referred to them) or from a label
table; property labels from the dump's property entities (a full dump has them) or ``--labels``.

Statement rules: statements are selected by the mainsnak datatype (``datatypes`` module: by default
items, times, quantities, monolingual texts and non-identifier strings); deprecated statements are
skipped; if any statement of a property is preferred, only preferred ones are kept;
``somevalue``/``novalue`` snaks are skipped; times render at their precision (year / month / day, decade
as "1950s"), quantities as amount + unit label, monolingual text only in the chosen language.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

from factscale.corpus.build import CorpusError
from factscale.corpus.datatypes import (DEFAULT_DATATYPES, PLAIN_STRING_TYPES, STRING_ID, format_amount,
                                        format_coordinate, format_time, snak_datatype, string_label_is_identifier,
                                        string_value_is_identifier)
from factscale.corpus.decode import default_backend, make_loads
from factscale.corpus.dumpio import file_size, open_dump
from factscale.corpus.tsv import load_label_table

try:  # orjson parses dump lines ~2x faster; the json module is the fallback
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    orjson = None
    _loads = json.loads

_ID_RE = re.compile(rb'"id"\s*:\s*"([PQL]\d+)"')
MAX_ERRORS_KEPT = 20
EXPECTED_DUMP = ("a Wikidata JSON dump: .json, .json.gz or .json.bz2, in the dump's array layout "
                 "or one entity object per line")


@dataclass
class DumpOptions:
    language: str = "en"
    allow_properties: set[str] | None = None
    deny_properties: set[str] = field(default_factory=set)
    subject_filter: list[tuple[str, str]] = field(default_factory=list)
    """Keep subjects having every (property, item) claim, e.g. [("P31", "Q5")] = humans."""
    subject_exclude: list[tuple[str, str]] = field(default_factory=list)
    """Skip subjects having any (property, item) claim, e.g. [("P31", "Q13442814")] = scholarly articles."""
    datatypes: frozenset = DEFAULT_DATATYPES
    """Mainsnak datatypes to keep (``datatypes.parse_datatypes``)."""
    max_facts: int | None = None
    json_backend: str = field(default_factory=default_backend)
    """msgspec (typed, skips unused fields), orjson or json: same facts (``decode`` module)."""


def parse_line(line: bytes, loads=_loads):
    """One dump line -> entity dict, None for layout lines (``[``, ``]``, blank); raises ValueError if bad."""
    s = line.strip()
    if s.endswith(b","):
        s = s[:-1]
    if not s or s in (b"[", b"]"):
        return None
    try:
        ent = loads(s)
    except Exception as e:  # orjson.JSONDecodeError and json.JSONDecodeError are both ValueErrors
        raise ValueError(f"invalid JSON ({str(e)[:60]})") from None
    if not isinstance(ent, dict) or "id" not in ent:
        raise ValueError("not an entity object")
    return ent


def _label(ent: dict, lang: str) -> str | None:
    labels = ent.get("labels")
    lab = labels.get(lang) if isinstance(labels, dict) else None  # an empty map may be written as []
    return lab.get("value") if isinstance(lab, dict) else None


def _item_values(claims: dict, pid: str) -> set:
    return {((s.get("mainsnak") or {}).get("datavalue") or {}).get("value", {}).get("id")
            for s in claims.get(pid, []) if isinstance(s, dict) and isinstance(
                ((s.get("mainsnak") or {}).get("datavalue") or {}).get("value"), dict)}


def _value(snak: dict, dtype: str, lang: str, counts: Counter):
    """(value text, value id, unit id) of a value snak, or None (counted) when it cannot be a fact."""
    dv = snak.get("datavalue") or {}
    vtype, v = dv.get("type"), dv.get("value")
    if vtype == "wikibase-entityid" and isinstance(v, dict) and v.get("id"):
        return None, v["id"], None
    if vtype == "time" and isinstance(v, dict):
        value, reason = format_time(v)
        if value is None:
            counts[reason] += 1
            return None
        return value, None, None
    if vtype == "quantity" and isinstance(v, dict) and "amount" in v:
        unit = v.get("unit", "1")
        return format_amount(v["amount"]), None, (unit.rsplit("/", 1)[-1] if unit != "1" else None)
    if vtype == "string" and isinstance(v, str):
        return v, None, None
    if vtype == "monolingualtext" and isinstance(v, dict):
        if v.get("language") != lang:
            counts["monolingual_other_language"] += 1
            return None
        return v.get("text"), None, None
    if vtype == "globecoordinate" and isinstance(v, dict) and (c := format_coordinate(v)):
        return c, None, None
    counts[f"value_type_unsupported:{vtype}:{dtype}"] += 1
    return None


def extract_entity(ent: dict, opts: DumpOptions, counts: Counter) -> tuple[str | None, list[tuple]]:
    """Facts of one entity as tuples (sid, slabel, pid, value, value_id, unit_id, datatype, sitelinks)."""
    lang = opts.language
    label = _label(ent, lang)
    if ent.get("type") != "item":
        counts["entities_non_item"] += 1
        return label, []
    counts["entities_items"] += 1
    if label is None:
        counts["entities_no_label"] += 1
        return None, []
    claims = ent.get("claims") or {}
    if not isinstance(claims, dict):
        counts["entities_bad_claims"] += 1
        return label, []
    for pid, qid in opts.subject_filter:
        if qid not in _item_values(claims, pid):
            counts["entities_filtered_subject"] += 1
            return label, []
    for pid, qid in opts.subject_exclude:
        if qid in _item_values(claims, pid):
            counts[f"entities_excluded_subject:{pid}={qid}"] += 1
            return label, []
    sitelinks = ent["_n_sitelinks"] if "_n_sitelinks" in ent else len(ent.get("sitelinks") or {})
    sid = ent["id"]
    keep, facts = opts.datatypes, []
    for pid, statements in claims.items():
        if opts.allow_properties is not None and pid not in opts.allow_properties or pid in opts.deny_properties:
            counts["statements_filtered_property"] += len(statements)
            continue
        live = [s for s in statements if isinstance(s, dict) and s.get("rank") != "deprecated"]
        counts["statements_deprecated"] += len(statements) - len(live)
        preferred = [s for s in live if s.get("rank") == "preferred"]
        if preferred:
            counts["statements_not_preferred"] += len(live) - len(preferred)
            live = preferred
        for st in live:
            snak = st.get("mainsnak") or {}
            dtype = snak_datatype(snak)
            if dtype not in keep:
                counts[f"dropped_datatype:{dtype}"] += 1
                continue
            stype = snak.get("snaktype")
            if stype != "value":
                counts[f"snak_{stype}"] += 1
                continue
            got = _value(snak, dtype, lang, counts)
            if got is None:
                continue
            value, value_id, unit_id = got
            if value is not None and not value.strip():
                counts["value_empty"] += 1
                continue
            if dtype == "string" and STRING_ID not in keep and string_value_is_identifier(value):
                counts[f"dropped_datatype:{STRING_ID}"] += 1
                continue
            facts.append((sid, label, pid, value, value_id, unit_id, dtype, sitelinks))
    return label, facts


def _process_chunk(args):
    """Worker: (start line number, lines, options) -> (facts, labels, counts, errors)."""
    start, lines, opts = args
    loads = make_loads(opts.json_backend, opts.language)
    counts: Counter = Counter()
    facts, labels, errors = [], [], []
    for i, line in enumerate(lines):
        try:
            ent = parse_line(line, loads)
        except ValueError as e:
            counts["lines_malformed"] += 1
            if len(errors) < MAX_ERRORS_KEPT:
                errors.append((start + i, str(e)))
            continue
        if ent is None:
            continue
        counts["entities_seen"] += 1
        label, fs = extract_entity(ent, opts, counts)
        if label is not None:
            labels.append((ent["id"], label))
        facts.extend(fs)
    return facts, labels, counts, errors


def _chunks(lines, size: int, opts, max_bytes: int = 4 << 20):
    """Chunks of at most ``size`` lines or ~``max_bytes`` (entity lines range from 1 KB to several MB)."""
    n, chunk, nbytes = 1, [], 0
    for line in lines:
        chunk.append(line)
        nbytes += len(line)
        if len(chunk) >= size or nbytes >= max_bytes:
            yield n, chunk, opts
            n, chunk, nbytes = n + len(chunk), [], 0
    if chunk:
        yield n, chunk, opts


class _Progress:
    """tqdm over compressed bytes (so the ETA is real), with entities/s beside it."""

    def __init__(self, path, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(desc=f"parsing {Path(path).name}", total=file_size(path), unit="B", unit_scale=True,
                        disable=not enabled, smoothing=0.05)
        self.t0, self.entities, self.last = time.time(), 0, 0

    def update(self, pos: int, entities: int):
        self.entities += entities
        if pos > self.last:
            self.bar.update(pos - self.last)
            self.last = pos
        self.bar.set_postfix_str(f"{self.entities:,} entities, "
                                 f"{self.entities / max(time.time() - self.t0, 1e-9):,.0f} entities/s", refresh=False)

    def close(self):
        self.bar.close()


def parse_chunks(lines, opts: DumpOptions, workers: int = 1, chunk_lines: int = 256):
    """The workers' unit of work, in order: (facts, labels, counts, errors) per chunk of ``lines``. A local
    build feeds a whole file through it; a sharded build (``shards``) feeds each shard's lines."""
    chunks = _chunks(lines, chunk_lines, opts)
    pool = Pool(workers) if workers > 1 else None
    try:
        yield from (pool.imap(_process_chunk, chunks) if pool else map(_process_chunk, chunks))
    finally:
        if pool:
            pool.terminate()


class Pass1:
    """The main process's side of pass 1 over one file: the kept facts (up to ``max_facts``), labels of
    referenced or property entities, counts and the first errors. Fed the chunks of ``parse_chunks`` in
    file order (``stream_dump``), or whole shards in file order (``shards``): the same code either way.

    Only labels of entities that some kept fact already refers to, and of properties, are kept, so
    memory grows with the kept facts, not with the dump.
    """

    def __init__(self, path, opts: DumpOptions):
        self.path, self.opts = path, opts
        self.counts: Counter = Counter()
        self.errors: list = []
        self.facts: list[tuple] = []
        self.needed: set[str] = set()
        self.labels: dict[str, str] = {}
        self.pending: dict[str, str] = {}  # labels of entities seen before anything referred to them (bounded)

    def add(self, fs, labs, c, errs, line_offset: int = 0):
        """One chunk's (or shard's) results; ``line_offset``: lines of the file before it."""
        counts, facts, needed, labels, max_facts = self.counts, self.facts, self.needed, self.labels, self.opts.max_facts
        counts.update(c)
        self.errors.extend((str(self.path), line_offset + n, msg)
                           for n, msg in errs[: max(0, MAX_ERRORS_KEPT - len(self.errors))])
        for f in fs:
            if max_facts is not None and len(facts) >= max_facts:
                counts["facts_over_max_facts"] += 1
                continue
            facts.append(f)
            needed.update(x for x in (f[4], f[5]) if x)
        for eid, lab in labs:
            if eid in needed or eid[0] == "P":
                labels[eid] = lab
            elif len(self.pending) < 1_000_000:
                self.pending[eid] = lab

    def finish(self, broken: list):
        """-> (facts, labels, needed ids, counts, errors); ``broken``: the reader's (line, message) breaks."""
        path, counts, errors = self.path, self.counts, self.errors
        if broken:
            line, msg = broken[0]
            if counts["entities_seen"] == 0:
                raise CorpusError(f"{path}: cannot decompress at line {line} ({msg}); expected {EXPECTED_DUMP}")
            counts["malformed_compressed_stream"] += 1
            errors.append((str(path), line, f"compressed stream broken: {msg}"))
        if counts["entities_seen"] == 0:
            first = errors[0] if errors else (str(path), 1, "no entity object in the file")
            raise CorpusError(f"{path}: line {first[1]}: {first[2]}: no entity could be read; expected {EXPECTED_DUMP}")
        for eid in self.needed - self.labels.keys():
            if eid in self.pending:
                self.labels[eid] = self.pending[eid]
        return self.facts, self.labels, self.needed, counts, errors


def stream_dump(path, opts: DumpOptions, workers: int = 1, chunk_lines: int = 256, progress: bool = False,
                threads: int | None = None):
    """Pass 1 over the dump. Returns (facts, labels of referenced or property entities, needed ids, counts, errors).

    ``threads`` decompression threads (default: ``workers``). A broken compressed stream keeps what was
    read and is reported in ``errors`` and ``counts["malformed_compressed_stream"]``; a file with no
    entity at all is a CorpusError.
    """
    acc = Pass1(path, opts)
    with open_dump(path, threads or workers) as reader:
        bar = _Progress(path, progress)
        for fs, labs, c, errs in parse_chunks(reader.lines(), opts, workers, chunk_lines):
            acc.add(fs, labs, c, errs)
            bar.update(reader.pos(), c["entities_seen"])
    bar.close()
    return acc.finish(reader.broken)


def scan_labels(path, wanted: set[str], language: str, threads: int = 1) -> dict[str, str]:
    """Second pass: labels of the wanted entities only (an id regex skips every other line unparsed)."""
    found: dict[str, str] = {}
    with open_dump(path, threads) as reader:
        for line in reader.lines():
            m = _ID_RE.search(line, 0, 400)
            if m and m.group(1).decode() in wanted:
                try:
                    ent = parse_line(line)
                except ValueError:
                    continue
                if ent and (lab := _label(ent, language)):
                    found[ent["id"]] = lab
    return found


def _missing_labels_error(kind: str, ids: set[str], lang: str, flag_hint: str) -> CorpusError:
    some = ", ".join(sorted(ids, key=lambda x: (len(x), x))[:5])
    return CorpusError(f"no '{lang}' labels for {len(ids)} {kind} ({some}{', ...' if len(ids) > 5 else ''}), "
                       f"so no fact can be written: {flag_hint}")


def dump_to_raw(paths, opts: DumpOptions, label_files=(), workers: int = 1, progress: bool = False,
                templates: dict | None = None):
    """All dump files -> (raw facts frame, counts, errors)."""
    passes = [stream_dump(path, opts, workers=workers, progress=progress) for path in paths]

    def scan(missing):
        return [scan_labels(path, missing, opts.language, threads=workers) for path in paths]

    return raw_from_passes(passes, opts, scan, label_files, templates)


def raw_from_passes(passes, opts: DumpOptions, scan, label_files=(), templates: dict | None = None):
    """Each file's pass 1 (``Pass1.finish``), in file order -> (raw facts frame, counts, errors).
    ``scan(missing ids)``: the second pass, label dicts in file order (the last occurrence wins)."""
    from factscale.corpus.build import raw_frame

    counts: Counter = Counter()
    errors, facts, labels, needed = [], [], {}, set()
    for f, lab, need, c, e in passes:
        facts += f
        labels.update(lab)
        needed |= need
        counts.update(c)
        errors += e
    table: dict[str, str] = {}
    for lf in label_files:
        table.update(load_label_table(lf))
    for k, v in table.items():
        labels.setdefault(k, v)
    missing = needed - labels.keys()
    for found in scan(missing) if missing else []:
        labels.update(found)
    pids = {f[2] for f in facts}
    counts["value_labels_unresolved"] = len(needed - labels.keys())
    counts["property_labels_unresolved"] = len(pids - labels.keys())

    rows = {k: [] for k in ("subject_id", "subject_label", "relation", "relation_label", "value", "value_id",
                            "value_type", "popularity", "template")}
    templates = templates or {}
    keep_string_ids = STRING_ID in opts.datatypes
    # a multi-valued attribute with a value we cannot name is dropped whole: keeping only its named values
    # would make it look single-valued (Belgium "shares border with" France only) and pass the multi-value rule
    n_values: Counter = Counter((f[0], f[2]) for f in facts)
    unnamed = {(f[0], f[2]) for f in facts if (f[4] and f[4] not in labels) or (f[5] and f[5] not in labels)}
    for sid, slabel, pid, value, value_id, unit_id, dtype, sitelinks in facts:
        plabel = labels.get(pid)
        if plabel is None:
            counts["dropped_property_no_label"] += 1
            continue
        if (sid, pid) in unnamed and n_values[sid, pid] > 1:
            counts["dropped_multi_valued_with_unnamed_value"] += 1
            continue
        if dtype == "string" and not keep_string_ids and string_label_is_identifier(plabel):
            counts[f"dropped_datatype:{STRING_ID}"] += 1  # "Commons category", "postal code", "... ID"
            continue
        if value_id is not None:
            value = labels.get(value_id)
            if value is None:
                counts["dropped_value_label_unresolved"] += 1
                continue
        if unit_id is not None:
            unit = labels.get(unit_id)
            if unit is None:
                counts["dropped_unit_label_unresolved"] += 1
                continue
            value = f"{value} {unit}"
        vtype = "item" if value_id is not None else "string" if dtype in PLAIN_STRING_TYPES else dtype
        for k, v in zip(rows, (sid, slabel, pid, plabel, value, value_id, vtype, float(sitelinks),
                               templates.get(pid, {}).get("template"))):
            rows[k].append(v)
    if facts and not rows["value"]:
        hint = ("the dump has no property entities with labels in this language; pass --labels FILE with "
                "property labels (TSV 'P17<TAB>country' or JSON like properties/pid2name.json)")
        if counts["dropped_property_no_label"] == len(facts):
            raise _missing_labels_error("properties", pids - labels.keys(), opts.language, hint)
        if (counts["dropped_value_label_unresolved"] + counts["dropped_unit_label_unresolved"]
                + counts["dropped_multi_valued_with_unnamed_value"]):
            raise _missing_labels_error("value entities", needed - labels.keys(), opts.language,
                                        "the dump does not contain those entities; pass --labels FILE "
                                        "(TSV 'Q142<TAB>France') or build from a dump that includes them")
    n = len(rows["value"])
    rows["source"] = ["wikidata-dump"] * n
    return _mark_to_many(raw_frame(rows), n_values), dict(counts), errors


def _mark_to_many(df, n_values: Counter):
    """Relations giving at least half their subjects several statements are to-many: cardinality N-M (values
    shared by subjects) or 1-M. Counted before the multi-value rule drops such pairs, so the sentences of
    the facts that stay say "a twinned administrative body of", not "the" (``verbalize``)."""
    import polars as pl

    subjects, multi = Counter(), Counter()
    for (_, pid), k in n_values.items():
        subjects[pid] += 1
        multi[pid] += k > 1
    to_many = [p for p, s in subjects.items() if multi[p] and 2 * multi[p] >= s]
    if not to_many or df.height == 0:
        return df
    rel = pl.col("relation")
    shared = (df.filter(rel.is_in(to_many))
              .group_by("relation", pl.coalesce("value_id", "value").alias("v"))
              .agg(pl.col("subject_id").n_unique().alias("n"))
              .filter(pl.col("n") > 1)["relation"].unique().to_list())
    card = pl.when(rel.is_in(shared)).then(pl.lit("N-M")).otherwise(pl.lit("1-M"))
    return df.with_columns(cardinality=pl.when(rel.is_in(to_many)).then(card).otherwise(pl.col("cardinality")))
