"""Synthetic facts with exactly known information content (in the spirit of Allen-Zhu & Li's bioS).

N unique pseudo-name keys; each attribute draws its value uniformly and independently from a
vocabulary of V pseudo-words, so each fact carries exactly log2(V) bits and the corpus
N * sum(log2 V_a) bits. An attribute marked ``predictable`` instead takes its value from the key's
first name (with probability ``1 - noise``): there is a rule to generalize to unseen keys.
Needs no outside file.

This is the ``facts`` kind (the default) of a synthetic corpus; ``KINDS`` also has ``bios`` (six-attribute
biographies, ``corpus/bios.py``) and ``random-sequences`` (``corpus/sequences.py``). A corpus recipe picks
one with ``synthetic: {kind: ..., ...}``; ``spec_from`` and ``build_kind`` dispatch on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from factscale.corpus.build import CorpusError, raw_frame

_ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "dr", "gr", "kl", "pr", "sh", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "x", "nd"]

# Attribute names for readable templates; values are pseudo-words so nothing is guessable from English.
ATTRIBUTE_NAMES = ["birth city", "employer", "university", "favorite color", "hometown", "pet",
                   "instrument", "sport", "language", "car", "dish", "street", "team", "mentor"]


@dataclass
class SyntheticSpec:
    n_keys: int = 1000
    vocab_sizes: list[int] = field(default_factory=lambda: [16, 64, 256, 1024])
    """One attribute per entry; each value is uniform over this many pseudo-words."""
    predictable: list[bool] = field(default_factory=list)
    """Per attribute: value determined by the key's first name (generalizable); default all False."""
    noise: float = 0.0
    """For predictable attributes: probability that the value is drawn at random instead."""
    first_names: int = 64
    """Number of distinct first names (the rule's input for predictable attributes)."""
    template: str = "[X]'s [R]: [Y]"
    """Short on purpose: prompt tokens cost compute but carry no fact."""
    seed: int = 0

    def __post_init__(self):
        if self.n_keys < 1:
            raise CorpusError(f"synthetic n_keys (--n-keys) must be >= 1, got {self.n_keys}")
        if not self.vocab_sizes or min(self.vocab_sizes) < 2:
            raise CorpusError("synthetic vocab_sizes (--value-vocab) must be a non-empty list of integers >= 2, "
                              f"got {self.vocab_sizes}")
        if len(self.vocab_sizes) > len(ATTRIBUTE_NAMES):
            raise CorpusError(f"at most {len(ATTRIBUTE_NAMES)} synthetic attributes")
        if self.predictable and len(self.predictable) != len(self.vocab_sizes):
            raise CorpusError("synthetic predictable must have one entry per vocab_sizes entry")


def _words(rng: np.random.Generator, n: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        k = int(rng.integers(syllables[0], syllables[1] + 1))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                    + _CODAS[rng.integers(len(_CODAS))] for _ in range(k))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def generate(spec: SyntheticSpec) -> tuple[pl.DataFrame, float]:
    """Return (raw facts, exact entropy in bits of all facts)."""
    rng = np.random.default_rng(spec.seed)
    taken: set[str] = set()
    firsts = [w.capitalize() for w in _words(rng, spec.first_names, (1, 2), taken)]
    # surnames: enough distinct ones that first x last gives n_keys unique names
    n_last = max(8, math.ceil(spec.n_keys / spec.first_names) * 4)
    lasts = [w.capitalize() for w in _words(rng, n_last, (2, 3), taken)]
    names: set[str] = set()
    key_first = []
    keys = []
    while len(keys) < spec.n_keys:
        f, l_ = int(rng.integers(len(firsts))), int(rng.integers(len(lasts)))
        name = f"{firsts[f]} {lasts[l_]}"
        if name not in names:
            names.add(name)
            keys.append(name)
            key_first.append(f)
    key_first = np.array(key_first)
    predictable = spec.predictable or [False] * len(spec.vocab_sizes)

    cols: dict[str, list] = {c: [] for c in ("subject_id", "subject_label", "relation", "relation_label",
                                             "value", "prior_bits")}
    total_bits = 0.0
    for a, (v, pred) in enumerate(zip(spec.vocab_sizes, predictable)):
        vocab = _words(rng, v, (1, 3), taken)
        if pred:
            rule = rng.integers(v, size=spec.first_names)  # first name -> value
            idx = rule[key_first]
            noisy = rng.random(spec.n_keys) < spec.noise
            idx = np.where(noisy, rng.integers(v, size=spec.n_keys), idx)
        else:
            idx = rng.integers(v, size=spec.n_keys)
        # the prior is log2 V either way: what a model knowing only the relation needs (for a predictable
        # attribute the rule, once learned, makes the fact cheaper - that is the generalization measured)
        bits = math.log2(v)
        rel = f"S{a + 1}"
        cols["subject_id"] += [f"K{i}" for i in range(spec.n_keys)]
        cols["subject_label"] += keys
        cols["relation"] += [rel] * spec.n_keys
        cols["relation_label"] += [ATTRIBUTE_NAMES[a]] * spec.n_keys
        cols["value"] += [vocab[i] for i in idx]
        cols["prior_bits"] += [bits] * spec.n_keys
        total_bits += bits * spec.n_keys
    n = len(cols["value"])
    cols.update(
        value_id=[None] * n, value_type=["synthetic"] * n, source=["synthetic"] * n,
        popularity=[None] * n, template=[spec.template] * n,
        cardinality=["N-1"] * n,
    )
    df = raw_frame(cols)
    pred_by_rel = {f"S{a + 1}": bool(p) for a, p in enumerate(predictable)}
    df = df.with_columns(predictable=pl.col("relation").replace_strict(pred_by_rel, return_dtype=pl.Boolean))
    return df, total_bits


# ---------------------------------------------------------------- the synthetic kinds

KINDS = ("facts", "bios", "random-sequences")


def spec_class(kind: str):
    from factscale.corpus.bios import BiosSpec
    from factscale.corpus.sequences import SequenceSpec

    classes = {"facts": SyntheticSpec, "bios": BiosSpec, "random-sequences": SequenceSpec}
    if kind not in classes:
        raise CorpusError(f"synthetic kind (--kind) {kind!r} is unknown; allowed values: {list(KINDS)}")
    return classes[kind]


def spec_from(fields: dict, seed: int = 0):
    """A recipe's ``synthetic`` mapping -> the spec of its kind (``kind`` absent = ``facts``), fields checked
    by name (an unknown or mistyped field is one error naming it)."""
    from factscale.config import ConfigError, from_dict

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
    from factscale.corpus.bios import BiosSpec, generate_bios
    from factscale.corpus.sequences import SequenceSpec, generate_sequences

    if isinstance(spec, BiosSpec):
        return generate_bios(spec)
    if isinstance(spec, SequenceSpec):
        return generate_sequences(spec)
    return generate(spec)


def build_kind(out_dir, spec, **kw) -> dict:
    """Build a synthetic corpus of any kind (atomically, like every corpus). ``facts`` goes through
    ``corpus.build_synthetic`` unchanged; a random-sequence corpus is checked to have one token per symbol
    before it is moved into place (a failed check leaves any previous corpus there untouched)."""
    from factscale import corpus
    from factscale.corpus.build import _build_into, building, read_manifest
    from factscale.corpus.sequences import SequenceSpec, check_tokens

    if isinstance(spec, SyntheticSpec):
        return corpus.build_synthetic(out_dir, spec, **kw)
    kind = spec.kind
    rules = corpus._rules({**kw, "seed": spec.seed})
    recipe, reuse = rules.pop("recipe", None), rules.pop("reuse", False)
    if isinstance(spec, SequenceSpec):
        need = spec.min_vocab_size() - 64  # a hard lower bound; the check after training is the real test
        if rules["vocab_size"] < need:
            raise CorpusError(f"random-sequences with {spec.symbols} symbols needs vocab_size (--vocab-size / "
                              f"corpus_build.vocab_size) >= {spec.min_vocab_size()}, got {rules['vocab_size']}")
    raw, bits = generate_kind(spec)
    info = {"kind": f"synthetic-{kind}", "spec": dict(spec.__dict__)}
    with building(out_dir, reuse_recipe=recipe if reuse else None) as tmp:
        if tmp is None:
            return read_manifest(out_dir)
        m = _build_into(raw, tmp, source_info=info, options={"synthetic": dict(spec.__dict__)}, entropy_bits=bits,
                        recipe=recipe, **rules)
        if isinstance(spec, SequenceSpec):
            import polars as pl

            check_tokens(pl.read_parquet(tmp / "facts.parquet", columns=["n_value_tokens"]), spec,
                         rules["vocab_size"])
        return m
