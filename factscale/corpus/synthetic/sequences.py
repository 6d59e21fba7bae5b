"""Uniform random token sequences with exactly known entropy (in the spirit of Morris et al. 2025, "How much
do language models memorize?"); written from the paper's description, no code from elsewhere.

``n_keys`` sequences, each ``length`` symbols drawn uniformly and independently from a fixed alphabet of
``symbols`` symbols. A sequence is one fact: key = its zero-padded number, rendered
``<bos>0042: aB xQ ... Kd<eos>``; the value is the sequence. Each symbol is a space followed by one or
two ASCII letters, so the byte-level pre-tokenizer splits the value at every space (BPE merges never cross
symbols), and the BPE learns one token per symbol when ``vocab_size`` leaves room for it; the build
checks that every value is exactly ``length`` tokens (+ ``<eos>``) and refuses the corpus otherwise.

Entropy: ``length x log2(symbols)`` bits per sequence (``prior_bits``), ``n_keys`` times that in all.
Capacity in bits is then Morris et al.'s total memorization of the set: sum over the sequences of
(uniform code length - model code length), clipped only at the set level (``probes.summarize``). The model's
code length also pays for the ``<eos>`` after the last symbol (it carries no information: every sequence
has the same length), so the measure is the eos-free one minus the eos bits; ``factscale quantize-probe``
reports the eos bits of a run (docs/capacity.md).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np

from factscale.corpus.rules import raw_frame
from factscale.errors import CorpusError

LETTERS = string.ascii_lowercase + string.ascii_uppercase  # 52 one-byte letters
MAX_SYMBOLS = len(LETTERS) ** 2
SPECIAL_TOKENS = 3  # <pad> <bos> <eos>


@dataclass
class SequenceSpec:
    kind: str = "random-sequences"
    """The synthetic kind (``random-sequences``)."""
    n_keys: int = 1000
    """Number of sequences."""
    length: int = 32
    """Symbols per sequence (L); Morris et al. used 64 (our reading)."""
    symbols: int = 256
    """Alphabet size V (<= 2704); Morris et al. used 2048 (our reading): needs vocab_size >= ~2400."""
    seed: int = 0
    """Seeds the keys and the symbols."""

    def __post_init__(self):
        if self.n_keys < 1:
            raise CorpusError(f"random-sequences n_keys (--n-keys) must be >= 1, got {self.n_keys}")
        if self.length < 1:
            raise CorpusError(f"random-sequences length (--seq-len) must be >= 1, got {self.length}")
        if not 2 <= self.symbols <= MAX_SYMBOLS:
            raise CorpusError(f"random-sequences symbols (--symbols) must be in [2, {MAX_SYMBOLS}], got {self.symbols}")

    def entropy_bits(self) -> float:
        return self.n_keys * self.length * math.log2(self.symbols)

    def min_vocab_size(self) -> int:
        """256 byte tokens + specials + one merge per first letter + one per symbol (digits in the keys may take
        a few more: the build checks the result)."""
        firsts = len({s[0] for s in alphabet(self.symbols)})
        return 256 + SPECIAL_TOKENS + (firsts if self.symbols > len(LETTERS) else 0) + self.symbols + 64


def alphabet(v: int) -> list[str]:
    """The V symbols: single letters for V <= 52, else the first V two-letter strings in a fixed order."""
    if v <= len(LETTERS):
        return list(LETTERS[:v])
    return [a + b for a in LETTERS for b in LETTERS][:v]


def generate_sequences(spec: SequenceSpec):
    """Return (raw facts, exact entropy in bits of all facts)."""
    rng = np.random.default_rng(spec.seed)
    sym = np.array(alphabet(spec.symbols))
    draws = rng.integers(spec.symbols, size=(spec.n_keys, spec.length))
    width = len(str(spec.n_keys - 1))
    n = spec.n_keys
    bits = spec.length * math.log2(spec.symbols)
    cols = {
        "subject_id": [f"Q{i}" for i in range(n)],
        "subject_label": [f"{i:0{width}d}" for i in range(n)],
        "relation": ["sequence"] * n,
        "relation_label": ["sequence"] * n,
        "value": [" ".join(row) for row in sym[draws]],
        "prior_bits": [bits] * n,
        "template": ["[X]: [Y]"] * n,
        "value_id": [None] * n, "value_type": ["synthetic"] * n, "source": ["synthetic-random-sequences"] * n,
        "popularity": [None] * n, "cardinality": ["N-1"] * n,
    }
    return raw_frame(cols), spec.entropy_bits()


def check_tokens(facts, spec: SequenceSpec, vocab_size: int) -> None:
    """Every sequence must be exactly L value tokens plus <eos>: one token per symbol, none merged."""
    bad = facts.filter(facts["n_value_tokens"] != spec.length + 1).height
    if bad:
        raise CorpusError(
            f"random-sequences: {bad} of {facts.height} sequences are not {spec.length} tokens (one per symbol): "
            f"the BPE vocabulary ({vocab_size}) has no single token for some of the {spec.symbols} symbols; "
            f"raise vocab_size (--vocab-size / corpus_build.vocab_size) to at least {spec.min_vocab_size()}")
