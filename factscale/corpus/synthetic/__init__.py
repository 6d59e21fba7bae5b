"""Synthetic corpora with exactly known entropy, one module per kind, registered in ``KINDS``.

- ``facts``: keys with independently drawn attributes (``SyntheticSpec``), optionally predictable ones;
- ``bios``: Allen-Zhu & Li-style biographies (``BiosSpec``);
- ``random-sequences``: Morris et al.-style random symbol strings (``SequenceSpec``).

To add a kind: a spec dataclass (fields documented, ``kind`` property, ``seed``) and a generator returning
(raw facts frame, exact entropy in bits), registered in ``KINDS``.
"""

from __future__ import annotations

import polars as pl

from factscale.configio import ConfigError, from_dict
from factscale.corpus.build import build_into, building, read_manifest
from factscale.corpus.synthetic.bios import BiosSpec, generate_bios
from factscale.corpus.synthetic.facts import SyntheticSpec, generate
from factscale.corpus.synthetic.sequences import SequenceSpec, check_tokens, generate_sequences
from factscale.errors import CorpusError

__all__ = ["KINDS", "SyntheticSpec", "BiosSpec", "SequenceSpec", "generate", "spec_class", "spec_from",
           "generate_kind", "build_kind", "source_kind", "kind_of"]


KINDS = {  # kind -> (spec class, generator returning (raw facts, exact entropy in bits))
    "facts": (SyntheticSpec, generate),
    "bios": (BiosSpec, generate_bios),
    "random-sequences": (SequenceSpec, generate_sequences),
}


def source_kind(kind: str) -> str:
    """The ``source.kind`` a corpus manifest (and every result row's ``corpus_kind``) records for a synthetic
    kind: ``synthetic`` for ``facts`` (the first kind, named before the others existed; results carry it),
    ``synthetic-<kind>`` for the rest. ``kind_of`` is its inverse: one naming scheme, in one place."""
    return "synthetic" if kind == "facts" else f"synthetic-{kind}"


def kind_of(corpus_kind: str) -> str | None:
    """The synthetic kind of a manifest's ``source.kind`` (``facts``, ``bios``, ...), None for a real source
    (dump, triples, hf)."""
    return next((k for k in KINDS if source_kind(k) == corpus_kind), None)


def spec_class(kind: str):
    if kind not in KINDS:
        raise CorpusError(f"synthetic kind (--kind) {kind!r} is unknown; allowed values: {list(KINDS)}")
    return KINDS[kind][0]


def spec_from(fields: dict, seed: int = 0):
    """A recipe's ``synthetic`` mapping -> the spec of its kind (``kind`` absent = ``facts``), fields checked
    by name (an unknown or mistyped field is one error naming it)."""
    fields = dict(fields)
    kind = fields.pop("kind", "facts")
    cls = spec_class(kind)
    try:
        spec = from_dict(cls, {"seed": seed, **fields}, "synthetic.")
    except ConfigError as e:
        raise CorpusError(str(e)) from None
    return spec


def generate_kind(spec):
    """(raw facts, exact entropy in bits) for a spec of any kind."""
    return next(gen for cls, gen in KINDS.values() if type(spec) is cls)(spec)


def build_kind(out_dir, spec, **kw) -> dict:
    """Build a synthetic corpus of any kind (atomically, like every corpus). ``facts`` goes through
    ``corpus.build_synthetic`` unchanged; a random-sequence corpus is checked to have one token per symbol
    before it is moved into place (a failed check leaves any previous corpus there untouched)."""
    from factscale.corpus import sources

    if isinstance(spec, SyntheticSpec):
        return sources.build_synthetic(out_dir, spec, **kw)
    kind = spec.kind
    rules = sources.rules({**kw, "seed": spec.seed})
    recipe, reuse = rules.pop("recipe", None), rules.pop("reuse", False)
    if isinstance(spec, SequenceSpec):
        need = spec.min_vocab_size() - 64  # a hard lower bound; the check after training is the real test
        if rules["vocab_size"] < need:
            raise CorpusError(f"random-sequences with {spec.symbols} symbols needs vocab_size (--vocab-size / "
                              f"corpus_build.vocab_size) >= {spec.min_vocab_size()}, got {rules['vocab_size']}")
    raw, bits = generate_kind(spec)
    info = {"kind": source_kind(kind), "spec": dict(spec.__dict__)}
    with building(out_dir, reuse_recipe=recipe if reuse else None) as tmp:
        if tmp is None:
            return read_manifest(out_dir)
        m = build_into(raw, tmp, source_info=info, options={"synthetic": dict(spec.__dict__)}, entropy_bits=bits,
                        recipe=recipe, **rules)
        if isinstance(spec, SequenceSpec):
            check_tokens(pl.read_parquet(tmp / "facts.parquet", columns=["n_value_tokens"]), spec,
                         rules["vocab_size"])
        return m
