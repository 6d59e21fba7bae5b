"""Stage 1, source -> facts -> tokens: every source becomes one corpus directory (``facts.parquet``,
``tokenizer/``, ``manifest.json``), built in a private directory and renamed into place.

- ``sources``: the sources registry (synthetic, dump, triples, hf) and one build function each;
- ``spec``: the one corpus recipe (``CorpusSpec``) shared by the CLI, sweeps and the library;
- ``build``: the corpus-directory protocol (rules, split, render, tokenize, manifest, atomic swap, lock);
- ``render`` / ``verbalize`` / ``variants``: templates and value spans, relation names, study variants;
- ``wikidata/``: dump parsing, datatypes, label resolution on disk, sharded builds;
- ``tables/``: triple files, TSV label tables, Hugging Face datasets;
- ``synthetic/``: generators with exactly known entropy (``KINDS``: facts, bios, random-sequences).

Imports only the base (``errors``, ``configio``, ``fsio``, ``provenance``, ``cluster``).
"""

from __future__ import annotations

from factscale.corpus.build import build_corpus, load_corpus
from factscale.corpus.sources import (
                                      SOURCES,
                                      build_from_datasets,
                                      build_from_dump,
                                      build_from_spec,
                                      build_from_triples,
                                      build_synthetic,
)
from factscale.corpus.spec import CorpusSpec
from factscale.corpus.synthetic.facts import SyntheticSpec
from factscale.corpus.wikidata.dump import DumpOptions
from factscale.errors import CorpusError

__all__ = ["CorpusError", "CorpusSpec", "build_from_spec", "SyntheticSpec", "DumpOptions", "build_synthetic",
           "build_from_dump", "build_from_triples", "build_from_datasets", "build_corpus", "load_corpus", "SOURCES"]
