"""Synthetic biographies with exactly known entropy, written from the description of Allen-Zhu & Li's bioS
("Physics of Language Models: Part 3.3, Knowledge Capacity Scaling Laws"); no code from elsewhere.

N individuals with unique full names (first, middle, last pseudo-words). Each has six attributes, each
drawn uniformly and independently from a fixed pool:

=============  ======================================================  ==================
attribute      pool (values are distinct strings)                      default pool size
=============  ======================================================  ==================
birth_date     "<Month> <day>, <year>": 12 months x days 1-28 x         12 x 28 x 200
               ``birth_years`` years from 1900                          = 67,200
birth_city     capitalized pseudo-words                                 200
university     "University of <pseudo-word>"                            300
major          lower-case pseudo-words                                  100
employer       "<Pseudo-word> Corporation"                              263
employer_city  capitalized pseudo-words                                 200
=============  ======================================================  ==================

So each fact carries exactly log2(pool size) bits (``prior_bits``) and the corpus N x sum(log2 pool size)
bits. The employer city is drawn independently of the employer (so it carries its own log2 200 bits);
our reading of the paper is that names are not counted as stored knowledge here either way: the name is
the key, given in the prompt. Differences from bioS that matter for comparisons: factscale trains and
probes each attribute as its own sentence (``<bos> prompt value <eos>``), not a whole six-sentence
biography per text, and each fact keeps one template (drawn once from ``templates`` per attribute)
instead of a fresh one at every exposure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from factscale.corpus.rules import raw_frame
from factscale.errors import CorpusError

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
FIRST_YEAR = 1900
DAYS = 28

# (attribute, readable label, up to three sentence templates: only the text before [Y] is the prompt)
ATTRIBUTES = [
    ("birth_date", "birth date", ["[X] was born on [Y].", "[X] came into this world on [Y].",
                                  "[X]'s birthday falls on [Y]."]),
    ("birth_city", "birth city", ["[X] was born in [Y].", "[X] spent the early years in [Y].",
                                  "[X]'s birthplace is [Y]."]),
    ("university", "university", ["[X] studied at [Y].", "[X] graduated from [Y].",
                                  "[X] received an education at [Y]."]),
    ("major", "major", ["[X] majored in [Y].", "[X] completed a degree in [Y].",
                        "[X]'s field of study was [Y]."]),
    ("employer", "employer", ["[X] worked for [Y].", "[X] was employed by [Y].", "[X] held a job at [Y]."]),
    ("employer_city", "employer city", ["[X] worked in the city of [Y].", "[X]'s workplace was in [Y].",
                                        "[X] commuted to an office in [Y]."]),
]
POOLS = ("birth_years", "birth_city", "university", "major", "employer", "employer_city")


@dataclass
class BiosSpec:
    kind: str = "bios"
    """The synthetic kind (``bios``)."""
    n_keys: int = 1000
    """Individuals (each gives six facts)."""
    birth_years: int = 200
    """Birth years 1900 .. 1900 + birth_years - 1; the birth-date pool is 12 x 28 x birth_years dates."""
    birth_city: int = 200
    """Equally likely birth cities."""
    university: int = 300
    """Equally likely universities."""
    major: int = 100
    """Equally likely majors."""
    employer: int = 263
    """Equally likely employers."""
    employer_city: int = 200
    """Equally likely employer cities."""
    templates: int = 1
    """Sentence templates per attribute (1-3); each fact draws one uniformly (seeded)."""
    seed: int = 0
    """Seeds the names and the values."""

    def __post_init__(self):
        if self.n_keys < 1:
            raise CorpusError(f"bios n_keys (--n-keys) must be >= 1, got {self.n_keys}")
        for name in POOLS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise CorpusError(f"bios pool size {name} (--pools {name}=N) must be an integer >= 2, got {v!r}; "
                                  f"pools: {', '.join(POOLS)}")
        if not 1 <= self.templates <= 3:
            raise CorpusError(f"bios templates must be 1, 2 or 3, got {self.templates}")

    def pool_sizes(self) -> dict[str, int]:
        """Attribute -> number of equally likely values."""
        return {"birth_date": len(MONTHS) * DAYS * self.birth_years, "birth_city": self.birth_city,
                "university": self.university, "major": self.major, "employer": self.employer,
                "employer_city": self.employer_city}

    def entropy_bits(self) -> float:
        return self.n_keys * sum(math.log2(v) for v in self.pool_sizes().values())


def _unique_names(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    from factscale.corpus.synthetic.facts import words

    # enough first x middle x last combinations that n distinct names are found quickly
    k = max(8, math.ceil((4 * n) ** (1 / 3)))
    firsts, middles, lasts = ([w.capitalize() for w in words(rng, k, sy, taken)] for sy in ((1, 2), (1, 2), (2, 3)))
    names: set[str] = set()
    out = []
    while len(out) < n:
        name = f"{firsts[rng.integers(k)]} {middles[rng.integers(k)]} {lasts[rng.integers(k)]}"
        if name not in names:
            names.add(name)
            out.append(name)
    return out


def pools(spec: BiosSpec, rng: np.random.Generator, taken: set[str]) -> dict[str, list[str]]:
    """Each attribute's pool of distinct value strings (of exactly ``spec.pool_sizes()`` entries)."""
    from factscale.corpus.synthetic.facts import words

    sizes = spec.pool_sizes()
    dates = [f"{m} {d}, {FIRST_YEAR + y}" for y in range(spec.birth_years) for m in MONTHS for d in range(1, DAYS + 1)]
    word = lambda n, sy=(2, 3): words(rng, n, sy, taken)  # noqa: E731
    return {
        "birth_date": dates,
        "birth_city": [w.capitalize() for w in word(sizes["birth_city"])],
        "university": [f"University of {w.capitalize()}" for w in word(sizes["university"])],
        "major": word(sizes["major"]),
        "employer": [f"{w.capitalize()} Corporation" for w in word(sizes["employer"])],
        "employer_city": [w.capitalize() for w in word(sizes["employer_city"])],
    }


def generate_bios(spec: BiosSpec):
    """Return (raw facts, exact entropy in bits of all facts)."""
    rng = np.random.default_rng(spec.seed)
    taken: set[str] = set()
    names = _unique_names(rng, spec.n_keys, taken)
    vals = pools(spec, rng, taken)
    cols: dict[str, list] = {c: [] for c in ("subject_id", "subject_label", "relation", "relation_label", "value",
                                             "prior_bits", "template")}
    for attr, label, templates in ATTRIBUTES:
        pool = vals[attr]
        idx = rng.integers(len(pool), size=spec.n_keys)  # uniform and independent of everything else
        tpl = rng.integers(spec.templates, size=spec.n_keys)
        cols["subject_id"] += [f"P{i}" for i in range(spec.n_keys)]
        cols["subject_label"] += names
        cols["relation"] += [attr] * spec.n_keys
        cols["relation_label"] += [label] * spec.n_keys
        cols["value"] += [pool[i] for i in idx]
        cols["prior_bits"] += [math.log2(len(pool))] * spec.n_keys
        cols["template"] += [templates[t] for t in tpl]
    n = len(cols["value"])
    cols.update(value_id=[None] * n, value_type=["synthetic"] * n, source=["synthetic-bios"] * n,
                popularity=[None] * n, cardinality=["N-1"] * n)
    return raw_frame(cols), spec.entropy_bits()
