"""Decoding one dump line into the few fields a fact needs.

A dump entity is mostly what a fact never uses: references, qualifiers, descriptions, aliases, labels in
hundreds of languages, sitelink titles. With ``msgspec`` the line is decoded into typed structs that
name only the needed fields (id, type, the chosen language's label, and per statement its rank and
mainsnak); everything else is skipped by the parser without building Python objects, about 2-3x faster
than ``orjson.loads`` of the whole entity. The sitelink count (the popularity signal) is the number of
``"site":`` keys in the line: JSON escapes quotes inside strings, so the pattern can only be a key,
and only sitelinks have a ``site`` key. The result is the same plain dict shape ``json.loads`` gives
(restricted to those fields), so the extraction code is one and the backends are tested equal.

Backends: ``msgspec`` (default when installed), ``orjson``, ``json`` (the standard library).
"""

import json  # no "from __future__ import annotations": msgspec resolves the local structs' types at runtime
from functools import lru_cache
from typing import Any

try:
    import msgspec
except ImportError:  # pragma: no cover
    msgspec = None
try:
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

BACKENDS = ("msgspec", "orjson", "json")


def default_backend() -> str:
    return "msgspec" if msgspec else "orjson" if orjson else "json"


@lru_cache(maxsize=8)
def _struct_decoder(language: str):
    class Label(msgspec.Struct):
        value: str = ""

    labels_t = msgspec.defstruct("Labels", [("lang", Label | None, None)], rename={"lang": language})

    class DataValue(msgspec.Struct):
        type: str = ""
        value: Any = None

    class Snak(msgspec.Struct):
        snaktype: str = ""
        property: str = ""
        datatype: str = ""
        datavalue: DataValue | None = None

    class Statement(msgspec.Struct):
        mainsnak: Snak | None = None
        rank: str = "normal"

    class Entity(msgspec.Struct):
        id: str
        type: str = ""
        # Wikibase writes an empty map as [] in some dumps: accept both
        labels: labels_t | list[Any] = msgspec.field(default_factory=list)
        claims: dict[str, list[Statement]] | list[Any] = msgspec.field(default_factory=dict)

    return msgspec.json.Decoder(Entity)


def make_loads(backend: str, language: str):
    """bytes -> entity dict (id, type, labels, claims, _n_sitelinks); raises ValueError on a bad line."""
    if backend == "msgspec" and msgspec is not None:
        dec = _struct_decoder(language)

        def loads(s: bytes) -> dict:
            try:
                ent = msgspec.to_builtins(dec.decode(s))
            except msgspec.DecodeError as e:
                raise ValueError(str(e)) from None
            ent["_n_sitelinks"] = s.count(b'"site":') + s.count(b'"site" :')
            return ent

        return loads
    if backend == "orjson" and orjson is not None:
        return orjson.loads
    if backend in BACKENDS:
        return json.loads
    raise ValueError(f"json backend {backend!r}; choose from {BACKENDS}")
