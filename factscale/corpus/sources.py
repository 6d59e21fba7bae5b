"""The corpus sources: every way facts enter factscale, one function each, registered in ``SOURCES``.

A source reads its input into the raw facts frame (``rules.RAW_SCHEMA``) and hands it to the build rules
(``build.build_corpus`` / ``build.build_into``), which write the corpus directory atomically. ``build_from_spec``
dispatches a recipe (``CorpusSpec``) to its source; the CLI and a sweep's ``corpus_build`` go through it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from factscale.corpus.build import build_corpus, build_into, building, check_target, read_manifest
from factscale.corpus.spec import CorpusSpec, dump_options
from factscale.corpus.synthetic.facts import SyntheticSpec, generate
from factscale.corpus.tables.triples import read_triples, templates_for
from factscale.corpus.tables.tsv import load_label_table
from factscale.corpus.wikidata.dump import DumpOptions, dump_to_raw
from factscale.fsio import file_sha256

SOURCES = {
    "synthetic": "generated facts with exactly known entropy (kinds: ``synthetic.KINDS``)",
    "dump": "Wikidata JSON dumps (.json, .json.gz, .json.bz2), streamed; sharded over a cluster with --shards",
    "triples": "T-REx/LAMA or BEAR jsonl, or ID-triple TSV with label tables",
    "hf": "a local Hugging Face datasets source (save_to_disk directory, parquet/json/csv)",
}


def rules(kw: dict, real: bool = False) -> dict:
    """The build rules (multi_value, ambiguous_keys, heldout_frac, vocab_size, seed, tokenizer_sample; for ``real``
    sources also copyable) with CorpusSpec's defaults: the one place they are declared."""
    names = ("multi_value", "ambiguous_keys", "heldout_frac", "vocab_size", "seed", "tokenizer_sample",
             *(("copyable",) if real else ()))
    defaults = {f.name: f.default for f in dataclasses.fields(CorpusSpec) if f.name in names}
    return {**defaults, **kw}


def build_synthetic(out_dir, spec: SyntheticSpec, **kw) -> dict:
    raw, bits = generate(spec)
    from factscale.corpus.synthetic import source_kind

    return build_corpus(raw, out_dir, source_info={"kind": source_kind("facts"), "spec": spec.__dict__},
                        options={"synthetic": spec.__dict__}, entropy_bits=bits, **rules({**kw, "seed": spec.seed}))


def _files_info(paths) -> list[dict]:
    out = []
    for p in paths:
        p = Path(p)
        out.append({"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)})
    return out


def build_from_dump(out_dir, dumps, opts: DumpOptions, label_files=(), templates_path=None, workers=1,
                    progress=False, recipe=None, reuse=False, **kw) -> dict:

    templates = templates_for([], templates_path)[0] if templates_path else {}
    sources = [*dumps, *label_files, templates_path]
    with building(out_dir, reuse_recipe=recipe if reuse else None, sources=sources) as tmp:
        if tmp is None:  # reused: the dump is not read at all
            return read_manifest(out_dir)
        # pass 1 spills facts and labels into the build's private directory (``wikidata.dump_to_raw``)
        kw = rules(kw, real=True)
        bucket_facts = kw.pop("bucket_facts", None)
        consume = None
        if bucket_facts is not None:
            def consume(kept, counts, errors, tallies):
                return bounded_dump(kept, counts, errors, tallies, out=tmp, bucket_facts=bucket_facts,
                                    source=(dumps, opts, label_files, templates_path), recipe=recipe, **kw)
        got = dump_to_raw(dumps, opts, label_files=label_files, workers=workers, progress=progress,
                          templates=templates, work_dir=tmp, consume=consume)
        if consume is not None:
            return got
        raw, counts, errors = got
        info, options = dump_source(dumps, opts, label_files, templates_path, errors)
        return build_into(raw, tmp, source_info=info, counts=counts, options=options, recipe=recipe, **kw)


def bounded_dump(kept, counts, errors, tallies, *, out, bucket_facts, source, **kw) -> dict:
    """A dump's kept facts (``dump.resolved_parts``) -> the corpus, bucket by bucket (``corpus.bounded``)."""
    from factscale.corpus.bounded import build_bounded
    from factscale.corpus.wikidata.raw import as_raw, to_many_relations

    info, options = dump_source(*source, errors)
    return build_bounded(kept, out, bucket_facts=bucket_facts, source_info=info, counts=counts, options=options,
                         prepare=as_raw, to_many=to_many_relations(tallies), **kw)


def dump_source(dumps, opts: DumpOptions, label_files, templates_path, errors) -> tuple[dict, dict]:
    """The manifest's source info and options of a dump build (local or sharded: ``corpus.shards``)."""
    info = {"kind": "wikidata-dump", "files": _files_info(dumps), "label_files": _files_info(label_files),
            "templates": templates_path, "parse_errors": [list(e) for e in errors]}
    options = {"language": opts.language, "allow_properties": sorted(opts.allow_properties or []) or None,
               "deny_properties": sorted(opts.deny_properties), "subject_filter": opts.subject_filter,
               "subject_exclude": opts.subject_exclude, "datatypes": sorted(opts.datatypes),
               "dump_max_facts": opts.max_facts}
    return info, options


def build_from_triples(out_dir, paths, label_files=(), templates_path=None, **kw) -> dict:
    templates, tpath = templates_for(paths, templates_path)
    labels: dict = {}
    for lf in label_files:
        labels.update(load_label_table(lf))
    raw, counts, errors, files = read_triples(paths, templates=templates, labels=labels)
    info = {"kind": "triples", "files": _files_info(files), "label_files": _files_info(label_files),
            "templates": tpath, "parse_errors": [list(e) for e in errors]}
    return build_corpus(raw, out_dir, source_info=info, counts=counts,
                        sources=[*paths, *files, *label_files, tpath], **rules(kw, real=True))


def build_from_datasets(out_dir, source, columns=None, split=None, label_files=(), templates_path=None, **kw) -> dict:
    """A local Hugging Face ``datasets`` source (saved directory, parquet/json/csv) -> corpus (``hf`` module)."""
    from factscale.corpus.tables.hf import read_datasets

    templates = templates_for([], templates_path)[0] if templates_path else {}
    labels: dict = {}
    for lf in label_files:
        labels.update(load_label_table(lf))
    raw, counts, errors, files = read_datasets(source, columns, split=split, labels=labels, templates=templates)
    info = {"kind": "datasets", "files": _files_info(files), "label_files": _files_info(label_files),
            "templates": templates_path, "columns": columns or {}, "split": split,
            "parse_errors": [list(e) for e in errors]}
    return build_corpus(raw, out_dir, source_info=info, counts=counts,
                        sources=[*([source] if isinstance(source, (str, Path)) else source), *files, *label_files,
                                 templates_path], **rules(kw, real=True))


def build_from_spec(spec: CorpusSpec, out: str | Path, *, reuse: bool = False, progress: bool = False) -> dict:
    """Build the corpus ``spec`` describes at ``out`` (atomically); with ``reuse``, a corpus there built from
    the same recipe is kept as it is. Returns the manifest."""
    check_target(out, spec.inputs())  # before reading anything: a refused target costs nothing
    common = dict(multi_value=spec.multi_value, ambiguous_keys=spec.ambiguous_keys, heldout_frac=spec.heldout_frac,
                  vocab_size=spec.vocab_size, tokenizer_sample=spec.tokenizer_sample, variants=spec.variants or None,
                  recipe=spec.recipe(), reuse=reuse)
    src = spec.source
    if spec.sharding.enabled:  # the same corpus, parsed as a job array (corpus/wikidata/shards.py)
        from factscale.corpus.wikidata.shards import build_sharded

        return build_sharded(spec, out, reuse=reuse)
    if src == "synthetic":
        from factscale.corpus.synthetic import build_kind

        return build_kind(out, spec.synthetic_spec(), max_facts=spec.max_facts, **common)
    if src == "dump":
        return build_from_dump(out, spec.dump, dump_options(spec), label_files=spec.labels,
                               templates_path=spec.templates, workers=spec.workers or os.cpu_count() or 1,
                               progress=progress, seed=spec.seed, copyable=spec.copyable,
                               bucket_facts=spec.bucket_facts, **common)
    if src == "hf":
        from factscale.corpus.tables.hf import parse_columns

        return build_from_datasets(out, spec.hf, parse_columns(spec.hf_columns), split=spec.hf_split,
                                   label_files=spec.labels, templates_path=spec.templates, seed=spec.seed,
                                   max_facts=spec.max_facts, copyable=spec.copyable, bucket_facts=spec.bucket_facts,
                                   **common)
    return build_from_triples(out, spec.triples, label_files=spec.labels, templates_path=spec.templates,
                              seed=spec.seed, max_facts=spec.max_facts, copyable=spec.copyable,
                              bucket_facts=spec.bucket_facts, **common)
