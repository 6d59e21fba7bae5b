"""Which Wikidata statements are knowledge (selection by the mainsnak ``datatype``), and their values as text.

Every statement's mainsnak carries a ``datatype`` (``wikibase-item``, ``time``, ``external-id``, ...).
A real dump entity is mostly identifiers, file names and links, so the default preset keeps only
what a reader would call a fact about the subject:

- ``wikibase-item`` (France, London), ``time`` (22 February 1732), ``quantity`` (67 kilogram),
  ``monolingualtext`` in the chosen language ("Unity makes strength");
- ``string`` values that are not identifiers (see ``string_is_identifier``), e.g. a chemical formula or a
  street address; identifier-like strings ("LEM201014753", a Commons category, a postal code) are dropped
  unless the ``string-id`` token is given.

Dropped: ``external-id``, ``commonsMedia``, ``url``, ``globe-coordinate``, ``math``, ``geo-shape``,
``tabular-data``, ``musical-notation``, ``wikibase-property``, lexeme/form/sense/entity-schema values.
``--datatypes`` takes a comma list of datatype names and the words ``default`` and ``all``; ``-NAME``
removes one (``default,-quantity``, ``all,-string-id``). Every dropped statement is counted as
``dropped_datatype:<datatype>``.
"""

from __future__ import annotations

import re

from factscale.errors import CorpusError

DEFAULT_DATATYPES = frozenset({"wikibase-item", "time", "quantity", "monolingualtext", "string"})
STRING_ID = "string-id"  # pseudo-datatype: identifier-like values of datatype string
# datatypes whose value is a plain string and renders as it is
PLAIN_STRING_TYPES = frozenset({"string", "external-id", "commonsMedia", "url", "math", "musical-notation",
                                "geo-shape", "tabular-data"})
RENDERABLE = DEFAULT_DATATYPES | PLAIN_STRING_TYPES | {"globe-coordinate", "wikibase-property", STRING_ID}
# older dumps omit the mainsnak datatype: infer it from the datavalue type (strings cannot be told apart)
_FROM_VALUE_TYPE = {"wikibase-entityid": "wikibase-item", "time": "time", "quantity": "quantity",
                    "monolingualtext": "monolingualtext", "string": "string", "globecoordinate": "globe-coordinate"}

SUBJECT_PRESETS = {
    # ~40% of all Wikidata items are scientific papers: their facts are bibliographic metadata
    "scholarly-articles": [("P31", "Q13442814")],
}

# property labels that name an identifier, a classification code or a wiki page, not a property of the thing
_ID_LABEL = re.compile(
    r"\b(ID|Id|id|identifier|identifer|code|codes|number|classification|category|gallery|page|URI|URL|"
    r"pattern|hashtag|SMILES|TeX|tag|key|notation|username|headings?|InChI|InChIKey|EID|NFPA|IPA)\b"
)
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
_WS = re.compile(r"\s")
_DIGIT = re.compile(r"\d")


def parse_datatypes(text: str | None) -> frozenset[str]:
    """``"default,-quantity"`` -> the datatypes to keep; unknown names are a CorpusError listing the choices."""
    if not text:
        return DEFAULT_DATATYPES
    keep: set[str] = set()
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        drop = tok.startswith("-")
        name = tok.lstrip("-")
        names = DEFAULT_DATATYPES if name == "default" else RENDERABLE if name == "all" else {name}
        bad = names - RENDERABLE
        if bad:
            raise CorpusError(f"--datatypes: unknown or unrenderable datatype {sorted(bad)[0]!r}; choose from "
                              f"default, all, {', '.join(sorted(RENDERABLE))} (prefix '-' to remove one)")
        keep = keep - names if drop else keep | names
    if not keep:
        raise CorpusError(f"--datatypes {text!r} keeps no datatype")
    return frozenset(keep)


def snak_datatype(snak: dict) -> str:
    dt = snak.get("datatype")
    if dt:
        return dt
    return _FROM_VALUE_TYPE.get((snak.get("datavalue") or {}).get("type"), "unknown")


def string_value_is_identifier(value: str) -> bool:
    """A value with no space but a digit ("LEM201014753", "2--411", "H225") or a link is an identifier."""
    return (not _WS.search(value) and bool(_DIGIT.search(value))) or value.startswith(("http://", "https://"))


def string_label_is_identifier(label: str) -> bool:
    """Property labels like "Commons category", "postal code", "NPG ID" name identifiers."""
    return bool(_ID_LABEL.search(label))


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


def format_coordinate(v: dict) -> str | None:
    lat, lon = v.get("latitude"), v.get("longitude")
    if not isinstance(lat, (int, float)) or not isinstance(lon, (int, float)):
        return None
    return f"{abs(lat):.4f}°{'N' if lat >= 0 else 'S'}, {abs(lon):.4f}°{'E' if lon >= 0 else 'W'}"


def parse_subject_exclude(items: list[str] | None) -> list[tuple[str, str]]:
    """``scholarly-articles`` or ``P31=Q13442814`` -> [(property, item)] pairs; a subject with any is skipped."""
    out: list[tuple[str, str]] = []
    for item in items or []:
        for tok in filter(None, (t.strip() for t in item.split(","))):
            if tok in SUBJECT_PRESETS:
                out += SUBJECT_PRESETS[tok]
            elif re.fullmatch(r"P\d+=Q\d+", tok):
                p, q = tok.split("=")
                out.append((p, q))
            else:
                raise CorpusError(f"--exclude-subjects: {tok!r} is neither a preset ({', '.join(SUBJECT_PRESETS)}) "
                                  "nor PROPERTY=ITEM like P31=Q13442814")
    return out
