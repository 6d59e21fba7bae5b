"""Stream a Wikidata JSON dump into raw facts, in constant memory per entity.

Reads ``.json``, ``.json.gz`` and ``.json.bz2`` (decompressed on all cores, see ``dumpio``), in the
dump's array layout (``[``, one entity per line ending in ``,``, possibly truncated without ``]``) or
newline-delimited. Lines are parsed in a process pool (``workers``); the main process holds the reader and
one batch of kept facts and (id, label) rows, spilled to parquet parts in the build's private directory
(``labels.Spill``), whatever the dump's size. Labels are resolved on disk afterwards (``labels.resolve``):
value entities' labels come from the dump itself (also entities read before anything referred to them:
every label read is spilled, so no second pass over the dump is needed) or from a label table; property
labels from the dump's property entities (a full dump has them) or ``--labels``.

Statement rules: statements are selected by the mainsnak datatype (``datatypes`` module: by default
items, times, quantities, monolingual texts and non-identifier strings); deprecated statements are
skipped; if any statement of a property is preferred, only preferred ones are kept;
``somevalue``/``novalue`` snaks are skipped; times render at their precision (year / month / day, decade
as "1950s"), quantities as amount + unit label, monolingual text only in the chosen language.
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

from factscale.corpus.wikidata.datatypes import (
    DEFAULT_DATATYPES,
    STRING_ID,
    format_amount,
    format_coordinate,
    format_time,
    snak_datatype,
    string_value_is_identifier,
)
from factscale.corpus.wikidata.decode import default_backend, make_loads
from factscale.corpus.wikidata.dumpio import file_size, open_dump
from factscale.corpus.wikidata.labels import BATCH_ROWS, BUCKET_ROWS, Spill
from factscale.corpus.wikidata.raw import raw_from_passes, resolved_parts
from factscale.errors import CorpusError

try:  # orjson parses dump lines ~2x faster; the json module is the fallback
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    orjson = None
    _loads = json.loads

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
    if workers <= 1:
        yield from map(_process_chunk, chunks)
        return
    pool = _quiet_pool(workers)
    finished = False
    try:
        # tasks are submitted from this thread, at most 2 per worker ahead of the one awaited: no pool
        # thread iterates the file, and a Ctrl-C (raised here, while waiting) reaches ``finally`` at once
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_process_chunk, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        finished = True
    finally:
        if finished:
            pool.close()  # every task is done: the workers exit on their own
        else:
            pool.terminate()  # workers ignore SIGINT and take SIGTERM's default action: no hang
        pool.join()


def _quiet_pool(workers: int) -> Pool:
    """A process pool whose workers ignore SIGINT. A terminal's Ctrl-C goes to the whole process group; a
    worker killed by it mid-task leaves the pool's pipes half-read and ``terminate()`` waiting forever.
    The main process alone handles Ctrl-C and terminates the workers. SIGINT is ignored while forking, so
    no new worker runs a moment with Python's default handler, and again in each worker (any start method)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        return Pool(workers, initializer=_ignore_sigint)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return Pool(workers, initializer=_ignore_sigint)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a worker forked from a submitit job inherits its SIGTERM handler, which only logs ("Bypassing signal
    # SIGTERM"): Pool.terminate() would then leave the worker alive and join() wait forever (a sharded build
    # hung so); the default action lets terminate() end it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Pass1:
    """The main process's side of pass 1 over one file: counts, the first errors, and the kept facts (up to
    ``max_facts`` per file) and every (id, label) read, handed to ``spill`` (``labels.Spill``: parquet part
    files in bounded batches). Fed the chunks of ``parse_chunks`` in file order (``pass1``), or whole
    shards in file order (``shards``): the same code either way. Memory: one batch, whatever the dump's size.
    """

    def __init__(self, path, opts: DumpOptions, spill: Spill, file_index: int = 0):
        self.path, self.opts, self.spill, self.file_index = path, opts, spill, file_index
        self.counts: Counter = Counter()
        self.errors: list = []
        self.kept = 0

    def add(self, fs, labs, c=None, errs=(), line_offset: int = 0):
        """One chunk's (or shard's) results: tuples or polars frames; ``line_offset``: lines of the file before it."""
        self.counts.update(c or {})
        self.errors.extend((str(self.path), line_offset + n, msg)
                           for n, msg in errs[: max(0, MAX_ERRORS_KEPT - len(self.errors))])
        if self.opts.max_facts is not None and self.kept + len(fs) > self.opts.max_facts:
            room = max(0, self.opts.max_facts - self.kept)
            self.counts["facts_over_max_facts"] += len(fs) - room
            fs = fs[:room]
        self.kept += len(fs)
        self.spill.add("facts", fs, self.file_index)
        self.spill.add("labels", labs, self.file_index)

    def finish(self, broken: list):
        """-> (counts, errors); ``broken``: the reader's (line, message) breaks."""
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
        self.spill.flush()
        return counts, errors


def pass1(path, opts: DumpOptions, spill: Spill, file_index: int = 0, workers: int = 1, chunk_lines: int = 256,
          progress: bool = False, threads: int | None = None):
    """Pass 1 over one dump file into ``spill``. Returns (counts, errors).

    ``threads`` decompression threads (default: ``workers``). A broken compressed stream keeps what was
    read and is reported in ``errors`` and ``counts["malformed_compressed_stream"]``; a file with no
    entity at all is a CorpusError.
    """
    acc = Pass1(path, opts, spill, file_index)
    with open_dump(path, threads or workers) as reader:
        bar = _Progress(path, progress)
        # closing(): an exception here (Ctrl-C included) stops the workers now, not when the generator is collected
        with contextlib.closing(parse_chunks(reader.lines(), opts, workers, chunk_lines)) as chunks:
            for fs, labs, c, errs in chunks:
                acc.add(fs, labs, c, errs)
                bar.update(reader.pos(), c["entities_seen"])
    bar.close()
    return acc.finish(reader.broken)


def dump_to_raw(paths, opts: DumpOptions, label_files=(), workers: int = 1, progress: bool = False,
                templates: dict | None = None, work_dir=None, batch_rows: int = BATCH_ROWS,
                bucket_rows: int = BUCKET_ROWS, consume=None):
    """All dump files -> (raw facts frame, counts, errors). ``work_dir``: where pass 1 spills (the build's private
    directory; default a temporary one), in parts of ``batch_rows`` rows, resolved in buckets of ``bucket_rows``.
    ``consume``: called with ``resolved_parts``' result while the spill exists (a bucketed build reads the
    parts from disk); its result is returned instead."""
    with tempfile.TemporaryDirectory(prefix="factscale-spill-", dir=work_dir) as d:
        spill = Spill(d, batch_rows, bucket_rows)
        passes = [pass1(path, opts, spill, f, workers=workers, progress=progress) for f, path in enumerate(paths)]
        if consume is not None:
            return consume(*resolved_parts(passes, opts, spill, label_files, templates))
        return raw_from_passes(passes, opts, spill, label_files, templates)
