"""Corpus layer: three sources -> one corpus directory (facts.parquet, tokenizer/, manifest.json)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from factscale.corpus.build import CorpusError, build_corpus, file_sha256, load_corpus
from factscale.corpus.spec import CorpusSpec
from factscale.corpus.spec import build as build_from_spec  # not `build`: the corpus.build module
from factscale.corpus.synthetic import SyntheticSpec, generate
from factscale.corpus.triples import read_triples, templates_for
from factscale.corpus.wikidata import DumpOptions, dump_to_raw, load_label_table

__all__ = ["CorpusError", "CorpusSpec", "build_from_spec", "SyntheticSpec", "DumpOptions", "build_synthetic",
           "build_from_dump", "build_from_triples", "build_from_datasets", "load_corpus"]


def _rules(kw: dict) -> dict:
    """The build rules (multi_value, ambiguous_keys, heldout_frac, vocab_size, seed) with CorpusSpec's defaults:
    the one place they are declared."""
    defaults = {f.name: f.default for f in dataclasses.fields(CorpusSpec)
                if f.name in ("multi_value", "ambiguous_keys", "heldout_frac", "vocab_size", "seed")}
    return {**defaults, **kw}


def build_synthetic(out_dir, spec: SyntheticSpec, **kw) -> dict:
    raw, bits = generate(spec)
    return build_corpus(raw, out_dir, source_info={"kind": "synthetic", "spec": spec.__dict__},
                        options={"synthetic": spec.__dict__}, entropy_bits=bits, **_rules({**kw, "seed": spec.seed}))


def _files_info(paths) -> list[dict]:
    out = []
    for p in paths:
        p = Path(p)
        out.append({"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)})
    return out


def build_from_dump(out_dir, dumps, opts: DumpOptions, label_files=(), templates_path=None, workers=1,
                    progress=False, recipe=None, reuse=False, **kw) -> dict:
    from factscale.corpus.build import _build_into, building, read_manifest

    templates = templates_for([], templates_path)[0] if templates_path else {}
    sources = [*dumps, *label_files, templates_path]
    with building(out_dir, reuse_recipe=recipe if reuse else None, sources=sources) as tmp:
        if tmp is None:  # reused: the dump is not read at all
            return read_manifest(out_dir)
        # pass 1 spills facts and labels into the build's private directory (``wikidata.dump_to_raw``)
        raw, counts, errors = dump_to_raw(dumps, opts, label_files=label_files, workers=workers,
                                          progress=progress, templates=templates, work_dir=tmp)
        info, options = dump_source(dumps, opts, label_files, templates_path, errors)
        return _build_into(raw, tmp, source_info=info, counts=counts, options=options, recipe=recipe, **_rules(kw))


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
                        sources=[*paths, *files, *label_files, tpath], **_rules(kw))


def build_from_datasets(out_dir, source, columns=None, split=None, label_files=(), templates_path=None, **kw) -> dict:
    """A local Hugging Face ``datasets`` source (saved directory, parquet/json/csv) -> corpus (``hf`` module)."""
    from factscale.corpus.hf import read_datasets

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
                                 templates_path], **_rules(kw))
