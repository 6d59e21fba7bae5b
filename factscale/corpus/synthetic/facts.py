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

from factscale.corpus.rules import raw_frame
from factscale.errors import CorpusError

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
    """Keys (subjects); each gets one value per attribute."""
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
    """Seeds the names and the values."""

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


def words(rng: np.random.Generator, n: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
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
    firsts = [w.capitalize() for w in words(rng, spec.first_names, (1, 2), taken)]
    # surnames: enough distinct ones that first x last gives n_keys unique names
    n_last = max(8, math.ceil(spec.n_keys / spec.first_names) * 4)
    lasts = [w.capitalize() for w in words(rng, n_last, (2, 3), taken)]
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
        vocab = words(rng, v, (1, 3), taken)
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
