"""The corpus-directory protocol: content identity, atomic (re)builds, concurrent builds, stable splits."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys

import polars as pl
import pytest

import factscale.corpus.build  # noqa: F401  (the module, in sys.modules)
from factscale.corpus import SyntheticSpec, build_synthetic, load_corpus
from factscale.corpus.build import content_hash, corpus_hash_of
from factscale.corpus.rules import stable_unit
from factscale.errors import CorpusError

SPEC = dict(n_keys=60, vocab_sizes=[8], seed=0)


def test_corpus_hash_is_the_content_and_reproducible(tmp_path):
    a = build_synthetic(tmp_path / "a", SyntheticSpec(**SPEC), vocab_size=300)
    b = build_synthetic(tmp_path / "b", SyntheticSpec(**SPEC), vocab_size=300)
    c = build_synthetic(tmp_path / "c", SyntheticSpec(**{**SPEC, "n_keys": 50}), vocab_size=300)
    assert a["corpus_hash"] == b["corpus_hash"] != c["corpus_hash"]
    assert a["corpus_hash"] == content_hash(tmp_path / "a") == corpus_hash_of(tmp_path / "a")
    (tmp_path / "a" / "tokenizer" / "tokenizer.json").write_text("{}")  # edited in place
    assert content_hash(tmp_path / "a") != a["corpus_hash"]


def test_split_hash_is_stable_across_versions_and_machines():
    """blake2b of (seed, key): these constants must never change, or every corpus' split would."""
    u = stable_unit(pl.Series(["Q42", "Q1", "K7"]), seed=0).to_list()
    assert u == pytest.approx([0.2987315451483439, 0.5873866845508545, 0.9875010189053205], abs=1e-15)
    assert stable_unit(pl.Series(["Q42", "Q42"]), 1).n_unique() == 1


def test_a_killed_rebuild_leaves_the_old_corpus_intact(tmp_path, monkeypatch):
    out = tmp_path / "c"
    old = build_synthetic(out, SyntheticSpec(**SPEC), vocab_size=300)
    build_mod = sys.modules["factscale.corpus.build"]
    real = build_mod.build_into

    def dies_after_the_tokenizer(raw, tmp, **kw):
        real(raw, tmp, **kw)  # everything written into the private directory ...
        raise KeyboardInterrupt  # ... then the process is interrupted before the rename

    monkeypatch.setattr(build_mod, "build_into", dies_after_the_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        build_synthetic(out, SyntheticSpec(**{**SPEC, "n_keys": 40}), vocab_size=300)
    facts, manifest = load_corpus(out)
    assert manifest["corpus_hash"] == old["corpus_hash"] == content_hash(out)
    assert facts["subject_id"].n_unique() == 60
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".c.tmp")] == []


def _build(args):
    out, n_keys = args
    return build_synthetic(out, SyntheticSpec(**{**SPEC, "n_keys": n_keys}), vocab_size=300)["corpus_hash"]


@pytest.mark.slow  # two build processes, ~3 s
def test_concurrent_builds_of_one_target_serialize(tmp_path):
    out = tmp_path / "c"
    with mp.get_context("spawn").Pool(2) as pool:
        hashes = pool.map(_build, [(out, 60), (out, 50)])
    # each build completed whole; the corpus left is exactly one of them, never a mix
    assert corpus_hash_of(out) in hashes and content_hash(out) == corpus_hash_of(out)
    facts, m = load_corpus(out)
    assert facts["subject_id"].n_unique() == m["options"]["synthetic"]["n_keys"]


def test_refuses_to_replace_a_directory_that_is_not_a_corpus(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(CorpusError, match="exists and is not a corpus directory"):
        build_synthetic(tmp_path / "mine", SyntheticSpec(**SPEC), vocab_size=300)
    assert (tmp_path / "mine" / "thesis.tex").exists()


def test_outdated_or_foreign_corpus_directories_get_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="not a corpus directory"):
        load_corpus(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "factscale-corpus/1", "corpus_hash": "x"}))
    with pytest.raises(CorpusError, match="older factscale"):
        load_corpus(tmp_path)


def test_tokenizer_is_trained_on_the_training_split_only(tmp_path):
    from factscale.corpus.render import train_tokenizer

    build_synthetic(tmp_path / "c", SyntheticSpec(n_keys=300, vocab_sizes=[64], seed=1), vocab_size=400)
    facts, _ = load_corpus(tmp_path / "c")
    vocab = json.loads((tmp_path / "c" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    train_only = train_tokenizer(facts.filter(pl.col("split") == "train")["text"], 400, tmp_path / "t")
    everything = train_tokenizer(facts["text"], 400, tmp_path / "a")
    assert vocab == train_only.get_vocab()
    assert everything.get_vocab() != vocab  # the held-out texts would have changed the merges
