"""Stream a Wikidata JSON dump into raw facts, in constant memory per entity.

Reads ``.json``, ``.json.gz`` and ``.json.bz2``, in the dump's array layout (``[``, one entity per line
ending in ``,``, possibly truncated without ``]``) or newline-delimited. Lines are parsed in a process
pool (``workers``); the reader, the label table and the kept facts are the only state in the main
process. Value entities' labels come from the dump itself (a second, cheap pass picks up entities that
appeared before anything referred to them) or from a label table; what stays unresolved is counted.

Statement rules: deprecated statements are skipped; if any statement of a property is preferred, only
preferred ones are kept; ``somevalue``/``novalue`` snaks are skipped; value types item, time (by
precision: year / month / day, decade as "1950s"), quantity (amount + unit label), string and
monolingual text in the chosen language are supported; everything else is counted and skipped.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

try:  # orjson parses dump lines ~2x faster; the json module is the fallback
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    orjson = None
    _loads = json.loads

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
_ID_RE = re.compile(rb'"id"\s*:\s*"([PQL]\d+)"')
MAX_ERRORS_KEPT = 20


@dataclass
class DumpOptions:
    language: str = "en"
    allow_properties: set[str] | None = None
    deny_properties: set[str] = field(default_factory=set)
    subject_filter: list[tuple[str, str]] = field(default_factory=list)
    """Keep subjects having every (property, item) claim, e.g. [("P31", "Q5")] = humans."""
    max_facts: int | None = None
    json_backend: str = "orjson"


def open_dump(path: str | Path):
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dump file not found: {p}")
    if p.suffix == ".gz":
        return gzip.open(p, "rb")
    if p.suffix == ".bz2":
        return bz2.open(p, "rb")
    return open(p, "rb")


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


def format_time(v: dict) -> tuple[str | None, str]:
    """Wikidata time value -> text at its precision, or (None, reason)."""
    t, prec = v.get("time", ""), v.get("precision")
    m = re.match(r"^([+-])(\d+)-(\d\d)-(\d\d)T", t)
    if not m or prec is None:
        return None, "time_malformed"
    sign, year, month, day = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
    era = " BC" if sign == "-" else ""
    if prec >= 11:
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return None, "time_malformed"
        return f"{day} {MONTHS[month - 1]} {year}{era}", ""
    if prec == 10:
        if not 1 <= month <= 12:
            return None, "time_malformed"
        return f"{MONTHS[month - 1]} {year}{era}", ""
    if prec == 9:
        return f"{year}{era}", ""
    if prec == 8:
        return f"{year // 10 * 10}s{era}", ""
    return None, "time_precision_coarse"


def format_amount(amount: str) -> str:
    a = amount.lstrip("+")
    if "." in a:
        a = a.rstrip("0").rstrip(".")
    return a


def _label(ent: dict, lang: str) -> str | None:
    lab = ent.get("labels", {}).get(lang)
    return lab.get("value") if isinstance(lab, dict) else None


def extract_entity(ent: dict, opts: DumpOptions, counts: Counter) -> tuple[str | None, list[tuple]]:
    """Facts of one entity as tuples (sid, slabel, pid, value, value_id, unit_id, vtype, sitelinks)."""
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
        vals = {((s.get("mainsnak") or {}).get("datavalue") or {}).get("value", {}).get("id")
                for s in claims.get(pid, []) if isinstance(s, dict)}
        if qid not in vals:
            counts["entities_filtered_subject"] += 1
            return label, []
    sid, sitelinks = ent["id"], len(ent.get("sitelinks") or {})
    facts = []
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
            stype = snak.get("snaktype")
            if stype != "value":
                counts[f"snak_{stype}"] += 1
                continue
            dv = snak.get("datavalue") or {}
            vtype, v = dv.get("type"), dv.get("value")
            value = value_id = unit_id = None
            if vtype == "wikibase-entityid" and isinstance(v, dict) and v.get("id"):
                vtype, value_id = "item", v["id"]
            elif vtype == "time" and isinstance(v, dict):
                value, reason = format_time(v)
                if value is None:
                    counts[reason] += 1
                    continue
            elif vtype == "quantity" and isinstance(v, dict) and "amount" in v:
                value = format_amount(v["amount"])
                unit = v.get("unit", "1")
                if unit != "1":
                    unit_id = unit.rsplit("/", 1)[-1]
            elif vtype == "string" and isinstance(v, str):
                value = v
            elif vtype == "monolingualtext" and isinstance(v, dict):
                if v.get("language") != lang:
                    counts["monolingual_other_language"] += 1
                    continue
                value = v.get("text")
            else:
                counts[f"value_type_unsupported:{vtype}"] += 1
                continue
            if value is not None and not value.strip():
                counts["value_empty"] += 1
                continue
            facts.append((sid, label, pid, value, value_id, unit_id, vtype, sitelinks))
    return label, facts


def _process_chunk(args):
    """Worker: (start line number, lines, options) -> (facts, labels, counts, errors)."""
    start, lines, opts = args
    loads = _loads if opts.json_backend == "orjson" else json.loads
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


def _chunks(fh, size: int, opts):
    n = 1
    while True:
        lines = list(itertools.islice(fh, size))
        if not lines:
            return
        yield n, lines, opts
        n += len(lines)


def stream_dump(path, opts: DumpOptions, workers: int = 1, chunk_lines: int = 256, progress: bool = False):
    """Pass 1 over the dump. Returns (facts, labels of referenced or property entities, counts, errors).

    Only labels of entities that some kept fact already refers to, and of properties, are kept, so
    memory grows with the kept facts, not with the dump.
    """
    from tqdm import tqdm

    counts: Counter = Counter()
    errors: list = []
    facts: list[tuple] = []
    needed: set[str] = set()
    labels: dict[str, str] = {}
    pending: dict[str, str] = {}  # labels of entities seen before anything referred to them (bounded below)
    bar = tqdm(desc=f"parsing {Path(path).name}", unit=" lines", unit_scale=True, disable=not progress)
    with open_dump(path) as fh:
        chunks = _chunks(fh, chunk_lines, opts)
        pool = Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_process_chunk, chunks) if pool else map(_process_chunk, chunks)
            for fs, labs, c, errs in results:
                counts.update(c)
                errors.extend((str(path), n, msg) for n, msg in errs[: max(0, MAX_ERRORS_KEPT - len(errors))])
                for f in fs:
                    if opts.max_facts is not None and len(facts) >= opts.max_facts:
                        counts["facts_over_max_facts"] += 1
                        continue
                    facts.append(f)
                    needed.update(x for x in (f[4], f[5]) if x)
                for eid, lab in labs:
                    if eid in needed or eid[0] == "P":
                        labels[eid] = lab
                    elif len(pending) < 1_000_000:
                        pending[eid] = lab
                bar.update(c["entities_seen"] + c["lines_malformed"])
        finally:
            if pool:
                pool.terminate()
    bar.close()
    for eid in needed - labels.keys():
        if eid in pending:
            labels[eid] = pending[eid]
    return facts, labels, needed, counts, errors


def scan_labels(path, wanted: set[str], language: str) -> dict[str, str]:
    """Second pass: labels of the wanted entities only (an id regex skips every other line unparsed)."""
    found = {}
    with open_dump(path) as fh:
        for line in fh:
            m = _ID_RE.search(line, 0, 400)
            if m and m.group(1).decode() in wanted:
                try:
                    ent = parse_line(line)
                except ValueError:
                    continue
                if ent and (lab := _label(ent, language)):
                    found[ent["id"]] = lab
    return found


def load_label_table(path: str | Path) -> dict[str, str]:
    """Labels for ids: TSV ``ID<TAB>label[<TAB>...]``, or JSON ``{id: label}``, ``{id: [label, desc]}``,
    or a query result ``{"rows": [[id, label], ...]}`` (both files in ../shared/data/wikidata/properties)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"label file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict) and "rows" in data:
            return {r[0]: r[1] for r in data["rows"] if len(r) >= 2}
        return {k: (v[0] if isinstance(v, list) else v) for k, v in data.items()}
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1]:
            out[parts[0]] = parts[1]
    return out


def dump_to_raw(paths, opts: DumpOptions, label_files=(), workers: int = 1, progress: bool = False,
                templates: dict | None = None):
    """All dump files -> (raw facts frame, counts, errors)."""
    from factscale.corpus.build import raw_frame

    counts: Counter = Counter()
    errors, facts, labels, needed = [], [], {}, set()
    for path in paths:
        f, lab, need, c, e = stream_dump(path, opts, workers=workers, progress=progress)
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
    for path in paths if missing else []:
        labels.update(scan_labels(path, missing, opts.language))
    pids = {f[2] for f in facts}
    counts["value_labels_unresolved"] = len(needed - labels.keys())
    counts["property_labels_unresolved"] = len(pids - labels.keys())

    rows = {k: [] for k in ("subject_id", "subject_label", "relation", "relation_label", "value", "value_id",
                            "value_type", "popularity", "template")}
    templates = templates or {}
    for sid, slabel, pid, value, value_id, unit_id, vtype, sitelinks in facts:
        plabel = labels.get(pid)
        if plabel is None:
            counts["dropped_property_no_label"] += 1
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
        for k, v in zip(rows, (sid, slabel, pid, plabel, value, value_id, vtype, float(sitelinks),
                               templates.get(pid, {}).get("template"))):
            rows[k].append(v)
    n = len(rows["value"])
    rows["source"] = ["wikidata-dump"] * n
    return raw_frame(rows), dict(counts), errors
