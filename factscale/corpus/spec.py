"""One corpus recipe for every entry point: ``factscale corpus build`` flags, a sweep's ``corpus_build`` and
the library all fill a ``CorpusSpec`` and call ``build``, so every default lives here, once.

The recipe is stored in the corpus manifest (``recipe``); a sweep whose recipe differs from the built
corpus' rebuilds it, and an identical recipe reuses it.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Literal, Optional, Union

from factscale.errors import CorpusError

SOURCES = ("synthetic", "dump", "triples", "hf")


@dataclass
class Sharding:
    """How a dump is parsed: in this process (no ``cluster``), or as the shards of a submitit job array, merged
    into the same corpus (same hash). Only changes how fast the corpus is built, so it is not in the recipe."""
    cluster: Optional[str] = field(default=None, metadata={"flag": "--cluster"})
    """dump: parse the input in shards as a job array, then merge: ``slurm`` | ``local`` (shard processes on this
    machine) | ``debug`` (in-process); null = one process (``local`` when only ``shards`` is given)."""
    shards: Optional[int] = field(default=None, metadata={"flag": "--shards"})
    """Shard jobs (null: one per file); uncompressed .json files are cut into byte ranges at line boundaries,
    a .json.bz2 through a block index, a .json.gz file is one shard."""
    time_min: int = field(default=120, metadata={"flag": "--shard-time-min"})
    """SLURM time limit per shard job, minutes; on expiry the shard is requeued (up to 3 times)."""
    cpus: int = field(default=4, metadata={"flag": "--shard-cpus"})
    """CPUs per shard job = its parser processes."""
    mem_gb: float = field(default=8.0, metadata={"flag": "--shard-mem-gb"})
    """Memory per shard job, GB."""
    partition: Optional[str] = field(default=None, metadata={"flag": "--shard-partition"})
    """SLURM partition of the shard jobs (null: the cluster's default)."""
    account: Optional[str] = field(default=None, metadata={"flag": "--shard-account"})
    """SLURM account of the shard jobs (null: the user's default)."""

    def __post_init__(self):
        from factscale.cluster import CLUSTERS

        if self.cluster is not None and self.cluster not in CLUSTERS:
            raise CorpusError(f"--cluster {self.cluster!r}; allowed values: {list(CLUSTERS)} (sharding.cluster)")
        if self.shards is not None and (not isinstance(self.shards, int) or isinstance(self.shards, bool)
                                        or self.shards < 1):
            raise CorpusError(f"--shards {self.shards!r} (sharding.shards): expected a positive integer (the number of "
                              "shard jobs)")
        for name in ("time_min", "cpus", "mem_gb"):
            if not getattr(self, name) > 0:
                raise CorpusError(f"{_flag(name)} {getattr(self, name)!r}: must be > 0 (sharding.{name})")
        if self.time_min < 2:  # SLURM may send the requeue signal 60 s early: at the start of a 1-minute job
            raise CorpusError(f"--shard-time-min {self.time_min!r}: must be >= 2 (sharding.time_min; SLURM may send "
                              "its requeue signal up to 60 s before it is due)")
        given = [f.name for f in fields(self) if getattr(self, f.name) != f.default]
        if not self.enabled and given:
            given = given[0]
            raise CorpusError(f"{_flag(given)} is an option of sharded builds (sharding.{given}): give --cluster or "
                              "--shards too (sharding.cluster, sharding.shards)")

    @property
    def enabled(self) -> bool:
        return self.cluster is not None or self.shards is not None

    def resources(self, max_requeues: int = 3):
        """What each shard job asks the cluster for (the cluster layer's ``SlurmResources``); ``cpus`` are also
        the job's parser processes; ``max_requeues``: resubmissions after a time limit or preemption (the shard
        then parses again from its start)."""
        from factscale.cluster import SlurmResources

        return SlurmResources(time_min=self.time_min, cpus_per_task=self.cpus, mem_gb=self.mem_gb,
                              partition=self.partition, account=self.account, max_requeues=max_requeues,
                              signal_delay_s=60 if self.time_min >= 3 else 30)


def _flag(name: str) -> str:
    """The ``corpus build`` flag of a ``sharding`` field (its metadata names it)."""
    return next(f.metadata["flag"] for f in fields(Sharding) if f.name == name)


# fields that only one kind of source reads: given with another source they would be stored in the recipe and
# silently do nothing
ONLY_FOR = {"properties": ("dump",), "deny_properties": ("dump",), "subject_filter": ("dump",),
            "exclude_subjects": ("dump",), "datatypes": ("dump",), "language": ("dump",), "workers": ("dump",),
            "hf_columns": ("hf",), "hf_split": ("hf",), "labels": ("dump", "triples", "hf"),
            "templates": ("dump", "triples", "hf")}
_PROPERTY = re.compile(r"P[1-9][0-9]*")


def _joined(value, what: str, sep: str = ",") -> Optional[str]:
    """A recipe field given as a list (``[P36, P569]``) or a mapping (``{P31: Q5}``) -> its canonical string
    form (``P36,P569``, ``P31=Q5``): the form stored in manifests, so both spellings are one recipe. A string
    spelled like YAML (a flag's ``"[P31, P17]"``) is refused: it would be read as one odd item."""
    if value is None:
        return value
    if isinstance(value, str):
        if value.strip()[:1] in ("[", "{"):
            raise CorpusError(f"{what} {value!r}: on the command line give a comma-separated list without spaces "
                              "(e.g. P31,P17 or P31=Q5); YAML lists and mappings belong in a recipe file")
        return value
    if isinstance(value, dict):
        value = [f"{k}={v}" for k, v in value.items()]
    if not all(isinstance(v, (str, int)) and str(v) for v in value):
        raise CorpusError(f"{what}: expected a comma-separated string, a list of strings or a mapping, got {value!r}")
    return sep.join(map(str, value))


@dataclass
class CorpusSpec:
    synthetic: Optional[dict] = None
    """Generate facts with exactly known entropy: ``kind`` (facts (default) | bios | random-sequences) and the
    fields of its spec (``SyntheticSpec``: n_keys, vocab_sizes, ...; ``BiosSpec``; ``SequenceSpec``)."""
    dump: list[str] = field(default_factory=list)
    """Wikidata JSON dump(s): .json, .json.gz, .json.bz2 (array or one entity per line)."""
    triples: list[str] = field(default_factory=list)
    """T-REx/LAMA or BEAR jsonl, or ID-triple TSV (``Q1<TAB>P17<TAB>Q2``, plain or .gz; labels from ``labels``),
    files or directories."""
    hf: list[str] = field(default_factory=list)
    """A local Hugging Face ``datasets`` source: a save_to_disk directory, or parquet/json/jsonl/csv files."""
    labels: list[str] = field(default_factory=list)
    """Label tables (TSV or JSON) for values and properties not labelled in the data."""
    templates: Optional[str] = None
    """LAMA relations.jsonl with [X]/[Y] templates."""
    hf_columns: Optional[Union[str, dict[str, str]]] = None
    """hf: column mapping, ``subject=sub_label,relation=predicate_id,value=obj_label[,subject_id=..,value_id=..,
    relation_label=..]`` (a recipe file may give a YAML mapping)."""
    hf_split: Optional[str] = None
    """hf: the split of a DatasetDict to read; null = the only one."""
    language: str = "en"
    """dump: the language of labels and monolingual text."""
    properties: Optional[Union[str, list[str]]] = None
    """dump: allow-list, e.g. ``P36,P569`` (a recipe file may give a YAML list)."""
    deny_properties: Optional[Union[str, list[str]]] = None
    """dump: properties to drop, e.g. ``P18,P373`` (a recipe file may give a YAML list)."""
    subject_filter: Optional[Union[str, list[str], dict[str, str]]] = None
    """dump: keep subjects with these claims, e.g. ``P31=Q5`` (instance of human); a recipe file may give a YAML
    list of them or a mapping ``{P31: Q5}``."""
    exclude_subjects: Union[list[str], str] = field(default_factory=list, metadata={"repeat": True})
    """dump: skip subjects with any of these claims: the preset ``scholarly-articles`` (P31=Q13442814) or
    ``P=Q`` items, e.g. ``P31=Q4167836``."""
    datatypes: Optional[Union[str, list[str]]] = None
    """dump: mainsnak datatypes to keep (null: wikibase-item, time, quantity, monolingualtext, string without
    identifiers), e.g. ``default,external-id`` | ``all`` | ``default,-quantity`` (a recipe file may give a list)."""
    workers: Optional[int] = None
    """dump: parser processes (None = all cores)."""
    sharding: Sharding = field(default_factory=Sharding)
    """dump: how the input is parsed (one process, or a job array); not part of the recipe."""
    max_facts: Optional[int] = None
    """Keep at most N facts (after the key rules); null = all. For a dump it also caps the statements parsed
    (``facts_over_max_facts``), so the rules may leave fewer than N."""
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
    tokenizer_sample: int = 2_000_000
    """The BPE is trained on at most about this many training facts' texts (a seeded sample past it)."""
    bucket_facts: Optional[int] = None
    """Real sources (dump, triples, hf): run the rules after parsing in hash buckets of about this many raw facts
    (>= 1000), so that memory follows the bucket, not the corpus (``corpus.bounded``; the same corpus, not part of
    the recipe); left out (null): in one piece in memory. Not with synthetic sources or study variants."""
    seed: int = 0
    """Seeds the held-out split, variants and synthetic draws."""
    variants: dict = field(default_factory=dict)
    """Study variants: compatibility / frequency / phases / junk (``corpus.variants``)."""

    def __post_init__(self):
        if isinstance(self.exclude_subjects, str):  # `exclude_subjects: scholarly-articles` in a recipe file
            self.exclude_subjects = [self.exclude_subjects]
        for name in ("properties", "deny_properties", "subject_filter", "datatypes", "hf_columns"):
            setattr(self, name, _joined(getattr(self, name), f"{name} (--{name.replace('_', '-')})"))
        if isinstance(self.sharding, dict):  # CorpusSpec(sharding={...}) from Python
            self.sharding = Sharding(**self.sharding)
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
            if not re.fullmatch(r"P[1-9][0-9]*=Q[1-9][0-9]*", item):  # claims are matched on item values
                raise CorpusError(f"subject_filter (--subject-filter) {self.subject_filter!r}: each item reads "
                                  f"PROPERTY=ITEM, e.g. P31=Q5 (humans); {item!r} does not")
        if self.copyable not in ("drop", "keep"):
            raise CorpusError(f"copyable (--copyable) {self.copyable!r}; allowed values: ['drop', 'keep']")
        for name, least in (("tokenizer_sample", 1), ("bucket_facts", 1000)):  # smaller buckets only add overhead
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < least):
                raise CorpusError(f"{name} (--{name.replace('_', '-')}) must be an integer >= {least}, got {v!r}")
        if self.bucket_facts is not None and (self.synthetic is not None or self.variants):
            why = "synthetic facts are generated in memory" if self.synthetic is not None else \
                "study variants need the whole corpus in memory"
            raise CorpusError(f"bucket_facts (--bucket-facts) builds a real source's facts bucket by bucket; {why}: "
                              "leave it out")
        if self.max_facts is not None and self.max_facts < 1:
            raise CorpusError(f"max_facts must be >= 1, got {self.max_facts}")
        if self.synthetic is not None:
            if self.synthetic.get("kind") == "facts":  # the default kind: the same recipe as leaving it out
                self.synthetic = {k: v for k, v in self.synthetic.items() if k != "kind"}
            self.synthetic_spec()  # validates now, naming the field
        for name in ("properties", "deny_properties"):
            bad = [p for p in (getattr(self, name) or "").split(",") if p and not _PROPERTY.fullmatch(p)]
            if bad:
                raise CorpusError(f"{name} (--{name.replace('_', '-')}) {bad[0]!r} is not a property id; expected "
                                  "e.g. P31,P17 (no spaces)")
        defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(self)
                    if f.name in ONLY_FOR}
        for name, sources in ONLY_FOR.items():
            if getattr(self, name) != defaults[name] and self.source not in sources:
                raise CorpusError(f"{name} (--{name.replace('_', '-')}) applies to a {' / '.join(sources)} source; "
                                  f"this recipe's source is {self.source}: leave it out")
        if self.sharding.enabled and self.source != "dump":
            raise CorpusError(f"sharding (--cluster/--shards) splits a dump build into jobs; a {self.source} source is "
                              "read in one process (leave sharding out)")

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
        """What the corpus depends on (``workers``, ``sharding`` and ``bucket_facts`` only change how it is built;
        ``copyable`` does not apply to synthetic facts)."""
        skip = {"workers", "sharding", "bucket_facts", *(("copyable",) if self.synthetic is not None else ())}
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
