"""One corpus recipe for every entry point: ``factscale corpus build`` flags, a sweep's ``corpus_build`` and
the library all fill a ``CorpusSpec`` and call ``build``, so every default lives here, once.

The recipe is stored in the corpus manifest (``recipe``); a sweep whose recipe differs from the built
corpus' rebuilds it, and an identical recipe reuses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from factscale.errors import CorpusError

SOURCES = ("synthetic", "dump", "triples", "hf")


@dataclass
class CorpusSpec:
    synthetic: Optional[dict] = None
    """Generate facts with exactly known entropy: ``kind`` (facts (default) | bios | random-sequences) and the
    fields of its spec (``SyntheticSpec``: n_keys, vocab_sizes, ...; ``BiosSpec``; ``SequenceSpec``)."""
    dump: list[str] = field(default_factory=list)
    """Wikidata JSON dump(s): .json, .json.gz, .json.bz2 (array or one entity per line)."""
    triples: list[str] = field(default_factory=list)
    """T-REx/LAMA or BEAR jsonl, or ID-triple TSV, files or directories."""
    hf: list[str] = field(default_factory=list)
    """A local Hugging Face ``datasets`` source (save_to_disk directory, parquet/json/csv files)."""
    labels: list[str] = field(default_factory=list)
    """Label tables (TSV or JSON) for values and properties not labelled in the data."""
    templates: Optional[str] = None
    """LAMA relations.jsonl with [X]/[Y] templates."""
    hf_columns: Optional[str] = None
    """hf: column mapping, e.g. ``subject=sub_label,relation=predicate_id,value=obj_label``."""
    hf_split: Optional[str] = None
    """hf: the split of a DatasetDict to read; null = the only one."""
    language: str = "en"
    """dump: the language of labels and monolingual text."""
    properties: Optional[str] = None
    """dump: allow-list, e.g. ``P36,P569``."""
    deny_properties: Optional[str] = None
    """dump: properties to drop, e.g. ``P31,P279``."""
    subject_filter: Optional[str] = None
    """dump: keep subjects with these claims, e.g. ``P31=Q5`` (humans)."""
    exclude_subjects: list[str] = field(default_factory=list)
    """dump: skip subjects with any of these claims: ``scholarly-articles`` or ``P31=Q...``."""
    datatypes: Optional[str] = None
    """dump: mainsnak datatypes to keep (None = the knowledge preset; see ``corpus.datatypes``)."""
    workers: Optional[int] = None
    """dump: parser processes (None = all cores)."""
    max_facts: Optional[int] = None
    """Keep at most N facts (after the key rules); null = all."""
    multi_value: Literal["drop", "first"] = "drop"
    """A (subject, relation) with several values: drop them all (it cannot be one fact) or keep the first."""
    ambiguous_keys: Literal["disambiguate", "drop"] = "disambiguate"
    """One label for several subjects: disambiguate as ``label (Q123)`` or drop."""
    copyable: Literal["drop", "keep"] = "drop"
    """Facts a model can copy from its prompt (value == the subject's label, or the value's words inside the
    prompt): drop (they measure no memory) or keep, marked in a ``copyable`` column. Real sources only."""
    heldout_frac: float = 0.1
    """Fraction of subjects held out (unseen keys, same relations), in [0, 1)."""
    vocab_size: int = 2048
    """Byte-level BPE vocabulary trained on the training split (>= 64)."""
    seed: int = 0
    """Seeds the held-out split, variants and synthetic draws."""
    variants: dict = field(default_factory=dict)
    """Study variants: compatibility / frequency / phases / junk (``corpus.variants``)."""

    def __post_init__(self):
        given = [s for s in SOURCES if self._given(s)]
        if len(given) != 1:
            raise CorpusError("give exactly one source: synthetic, dump, triples or hf (CLI: --synthetic, --dump "
                              f"PATH..., --triples PATH..., --hf PATH...); got {given or 'none'}")
        if not 0 <= self.heldout_frac < 1:
            raise CorpusError(f"heldout_frac must be in [0, 1), got {self.heldout_frac}")
        if self.vocab_size < 64:
            raise CorpusError(f"vocab_size must be >= 64, got {self.vocab_size}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise CorpusError(f"seed (--seed) must be an integer >= 0, got {self.seed!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise CorpusError(f"workers (--workers) must be a positive integer (parser processes), got {self.workers!r}")
        for item in filter(None, (self.subject_filter or "").split(",")):
            if not item.partition("=")[2].strip():
                raise CorpusError(f"subject_filter (--subject-filter) {self.subject_filter!r}: each item reads "
                                  "PROPERTY=VALUE, e.g. P31=Q5 (humans)")
        if self.copyable not in ("drop", "keep"):
            raise CorpusError(f"copyable (--copyable) {self.copyable!r}; allowed values: ['drop', 'keep']")
        if self.max_facts is not None and self.max_facts < 1:
            raise CorpusError(f"max_facts must be >= 1, got {self.max_facts}")
        if self.synthetic is not None:
            if self.synthetic.get("kind") == "facts":  # the default kind: the same recipe as leaving it out
                self.synthetic = {k: v for k, v in self.synthetic.items() if k != "kind"}
            self.synthetic_spec()  # validates now, naming the field

    def _given(self, source: str) -> bool:
        # synthetic: {} (all defaults, e.g. a bare --synthetic) is a source too; an empty path list is not
        return self.synthetic is not None if source == "synthetic" else bool(getattr(self, source))

    @property
    def source(self) -> str:
        return next(s for s in SOURCES if self._given(s))

    def synthetic_spec(self):
        from factscale.corpus.synthetic import spec_from

        return spec_from(self.synthetic, self.seed)

    def inputs(self) -> list[str]:
        """Every file or directory the build reads (a build never writes over one of them)."""
        return [*self.dump, *self.triples, *self.hf, *self.labels, *([self.templates] if self.templates else [])]

    def recipe(self) -> dict:
        """What the corpus depends on (``workers`` only changes how fast it is built; ``copyable`` does not apply
        to synthetic facts)."""
        skip = {"workers", *(("copyable",) if self.synthetic is not None else ())}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def dump_options(spec: CorpusSpec):
    """The dump parser's options of a recipe (one place: local and sharded builds parse alike)."""
    from factscale.corpus.wikidata.datatypes import parse_datatypes, parse_subject_exclude
    from factscale.corpus.wikidata.dump import DumpOptions

    return DumpOptions(
        language=spec.language,
        allow_properties=set(spec.properties.split(",")) if spec.properties else None,
        deny_properties=set(spec.deny_properties.split(",")) if spec.deny_properties else set(),
        subject_filter=[tuple(kv.split("=", 1)) for kv in (spec.subject_filter or "").split(",") if "=" in kv],
        subject_exclude=parse_subject_exclude(spec.exclude_subjects),
        datatypes=parse_datatypes(spec.datatypes),
        max_facts=spec.max_facts,
    )
