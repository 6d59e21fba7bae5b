"""Junk mixing and domain tags (``--variant junk``, ``train.junk_ratio``, ``train.domain_tag``): the pool, the
per-epoch draw, the tag, and a junk ratio of 0 training exactly the useful facts."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from factscale.corpus import CorpusError, SyntheticSpec, build_synthetic
from factscale.corpus.render import DOMAIN_TAG, DOMAIN_TAG_ID
from factscale.errors import ConfigError
from factscale.training.data import FactDataModule, select_facts
from tests.conftest import tiny_run_config

SPEC = SyntheticSpec(n_keys=150, vocab_sizes=[16, 64], seed=0)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("junk")
    build_synthetic(d / "plain", SPEC, vocab_size=384)
    build_synthetic(d / "random", SPEC, vocab_size=384, variants={"junk": {"kind": "random", "n": 500}})
    build_synthetic(d / "facts", SPEC, vocab_size=384, variants={"junk": {"kind": "facts", "n": 60}})
    return d


def _facts(path):
    return pl.read_parquet(path / "facts.parquet")


def test_random_pool_is_noise_beside_the_same_facts(corpora):
    from transformers import AutoTokenizer

    facts, plain = _facts(corpora / "random"), _facts(corpora / "plain")
    junk = facts.filter(pl.col("split") == "junk")
    assert junk.height == 500 and (junk["value_start"] == 1).all()
    tok = AutoTokenizer.from_pretrained(str(corpora / "random" / "tokenizer"))
    assert tok.convert_tokens_to_ids(DOMAIN_TAG) == DOMAIN_TAG_ID
    ids = junk["input_ids"].to_list()
    assert all(x[0] == tok.bos_token_id and x[-1] == tok.eos_token_id for x in ids)
    inner = np.concatenate([x[1:-1] for x in ids])
    assert inner.min() > DOMAIN_TAG_ID and inner.max() < len(tok)  # no special token inside a piece
    train_lengths = set(facts.filter(pl.col("split") == "train")["input_ids"].list.len().to_list())
    assert set(junk["input_ids"].list.len().to_list()) <= train_lengths
    # the useful facts are the plain corpus' facts, and the manifest counts only them as facts
    useful = facts.filter(pl.col("split") != "junk")
    assert useful.select("text", "split").equals(plain.select("text", "split"))
    m = json.loads((corpora / "random" / "manifest.json").read_text())
    assert m["counts"]["kept_facts"] == plain.height and m["counts"]["kept_junk"] == 500
    assert m["entropy_bits"] == json.loads((corpora / "plain" / "manifest.json").read_text())["entropy_bits"]


def test_facts_pool_is_the_end_of_the_seeded_order(corpora):
    facts, plain = _facts(corpora / "facts"), _facts(corpora / "plain")
    junk = facts.filter(pl.col("split") == "junk")
    assert junk.height == 60 and junk["text"].null_count() == 0
    plain_train = plain.filter(pl.col("split") == "train").sort("order")["text"]
    train = facts.filter(pl.col("split") == "train").sort("order")["text"]
    # every corpus.max_facts prefix is unchanged; the pool is the plain corpus' last 60 training facts
    assert train.to_list() == plain_train.head(len(train)).to_list()
    assert sorted(junk["text"].to_list()) == sorted(plain_train.tail(60).to_list())


@pytest.mark.parametrize("variants, match", [
    ({"junk": {"kind": "noise", "n": 5}}, "kind='noise'; allowed values"),
    ({"junk": {"kind": "random"}}, "needs n"),
    ({"junk": {"kind": "random", "n": 5, "size": 3}}, "unknown option"),
    ({"junk": {"n": 5}, "phases": {"n": 2}}, "combines with no other variant"),
    ({"junk": {"kind": "facts", "n": 10_000}}, "n must leave some"),
])
def test_bad_junk_variant_is_one_line(tmp_path, variants, match):
    with pytest.raises(CorpusError, match=match):
        build_synthetic(tmp_path / "c", SPEC, vocab_size=384, variants=variants)
    assert not (tmp_path / "c").exists()


def test_ratio_needs_a_junk_corpus(corpora, tmp_path):
    for over in ({"train.junk_ratio": 1.0}, {"train.domain_tag": True}):
        cfg = tiny_run_config(corpora / "plain", tmp_path, **over)
        with pytest.raises(ConfigError, match="no junk pool"):
            FactDataModule(cfg, _facts(corpora / "plain"), 0)
    with pytest.raises(ConfigError, match="junk_ratio must be"):
        tiny_run_config(corpora / "random", tmp_path, **{"train.junk_ratio": -1})


def test_ratio_zero_trains_exactly_the_plain_corpus(corpora, tmp_path):
    """A junk corpus at ratio 0 trains the plain corpus' facts in the same order every epoch (compared as
    text: the junk corpus' tokenizer holds one more special token, so its ids and lengths differ)."""
    out = []
    for name in ("plain", "random"):
        cfg = tiny_run_config(corpora / name, tmp_path, **{"train.seq_len": 32})
        dm = FactDataModule(cfg, _facts(corpora / name), 0)
        assert dm.junk_per_epoch == 0 and dm.flat.size == dm.offsets[dm.n_useful]
        text = dm.train_facts["text"].to_numpy()
        out.append([text[dm.epoch_order(e)].tolist() for e in range(3)])
    assert out[0] == out[1]


def test_junk_draw_ratio_cycle_and_determinism(corpora, tmp_path):
    facts = _facts(corpora / "random")
    cfg = tiny_run_config(corpora / "random", tmp_path, **{"train.junk_ratio": 3.0, "train.epochs": 7})
    dm = FactDataModule(cfg, facts, 0)
    P, J = dm.junk_pool_size, dm.junk_per_epoch
    junk_len = facts.filter(pl.col("split") == "junk")["input_ids"].list.len().mean()
    assert J == round(3.0 * dm.tokens_per_epoch / junk_len) and P == 500
    draws = np.concatenate([dm.junk_pieces(e) for e in range(7)]) - dm.n_useful
    assert draws.min() >= 0 and draws.max() < P
    # one seeded permutation per pass: within a pass no piece repeats; over the run counts differ by <= 1
    for c in range(len(draws) // P):
        assert len(set(draws[c * P:(c + 1) * P].tolist())) == P
    counts = np.bincount(draws, minlength=P)
    assert counts.max() - counts.min() <= 1 and dm.junk_exposures() == pytest.approx(len(draws) / P)
    # an epoch's order is a function of (seed, epoch): a fresh module draws the same; useful facts all there
    again = FactDataModule(cfg, facts, 0)
    assert (again.epoch_order(5) == dm.epoch_order(5)).all()
    order = dm.epoch_order(2)
    assert sorted(order[order < dm.n_useful].tolist()) == list(range(dm.n_useful))
    assert (order >= dm.n_useful).sum() == J
    ids, labels = dm.epoch_tensors(2)
    real = int((labels != -100).sum())
    assert real > 3 * dm.tokens_per_epoch * 0.8  # the junk is trained on (targets after <bos>)


def test_domain_tag_prefixes_useful_facts_not_junk(corpora, tmp_path):
    facts = _facts(corpora / "random")
    base = tiny_run_config(corpora / "random", tmp_path, **{"train.junk_ratio": 1.0})
    tagged = tiny_run_config(corpora / "random", tmp_path, **{"train.junk_ratio": 1.0, "train.domain_tag": True})
    (t0, h0), (t1, h1) = select_facts(facts, base), select_facts(facts, tagged)
    for a, b in ((t0, t1), (h0, h1)):
        assert (b["value_start"] == a["value_start"] + 1).all()
        for x, y in zip(a["input_ids"].to_list(), b["input_ids"].to_list()):
            assert y == [x[0], DOMAIN_TAG_ID, *x[1:]]
    dm0, dm1 = FactDataModule(base, facts, 0), FactDataModule(tagged, facts, 0)
    assert dm1.junk_per_epoch == dm0.junk_per_epoch  # the same junk for tagged and untagged runs
    pool_flat = dm1.flat[dm1.offsets[dm1.n_useful]:]
    assert (pool_flat != DOMAIN_TAG_ID).all()
    assert (dm1.flat[dm1.offsets[:dm1.n_useful] + 1] == DOMAIN_TAG_ID).all()


@pytest.mark.slow  # a run, its external re-probe and a second corpus' probe: ~6 s
def test_run_with_junk_probes_useful_facts_only(corpora, tmp_path):
    from factscale.training.run import run

    cfg = tiny_run_config(corpora / "facts", tmp_path, **{
        "train.junk_ratio": 1.0, "train.domain_tag": True, "train.epochs": 4, "probe.every_epochs": 2,
        "train.seq_len": 32})
    summary = run(cfg)
    rows = pl.read_parquet(f"{summary['run_dir']}/results.parquet")
    train = rows.filter((pl.col("split") == "train") & (pl.col("group_by") == "all"))
    n_train = _facts(corpora / "facts").filter(pl.col("split") == "train").height
    assert (train["n_facts"] == n_train).all() and (train["cfg.train.junk_ratio"] == 1.0).all()
    assert (train["cfg.train.domain_tag"]).all() and (train["junk_exposures"] > 0).all()
    assert "-j1-tag-" in summary["run_id"]
    per_fact = pl.read_parquet(f"{summary['run_dir']}/fact_probe.parquet")
    assert set(per_fact["split"].unique()) <= {"train", "heldout"}
    # the embedding rows trained include the junk pool's tokens and the tag
    useful_ids = set(_facts(corpora / "facts").filter(pl.col("split") == "train")["input_ids"].explode().to_list())
    assert train["used_token_ids"][0] > len(useful_ids)
    # the saved model/ tokenizer prefixes <bos> <domain>, so probing the saved model from outside (as a released
    # model is probed) reproduces the run's own final probe
    from transformers import AutoTokenizer

    from factscale.analysis.external import probe_model

    tok = AutoTokenizer.from_pretrained(f"{summary['run_dir']}/model")
    assert tok("x")["input_ids"][:2] == [tok.bos_token_id, DOMAIN_TAG_ID]
    ext, _ = probe_model(f"{summary['run_dir']}/model", corpora / "facts")
    own = train.filter(pl.col("epoch") == 4)
    got = ext.filter((pl.col("split") == "train") & (pl.col("group_by") == "all"))
    assert got["mr"][0] == pytest.approx(own["mr"][0]) and got["code_bits_mean"][0] == pytest.approx(
        own["code_bits_mean"][0], rel=1e-5)
    # and a corpus with a random pool (null text) probes its facts only, without tripping on the pool
    ext_random, info = probe_model(f"{summary['run_dir']}/model", corpora / "random")
    assert info["facts"] == _facts(corpora / "random").filter(pl.col("split") != "junk").height


def test_later_fields_at_default_keep_run_ids(tiny_corpus, tmp_path):
    from factscale.training.rundir import identity

    plain = identity(tiny_run_config(tiny_corpus, tmp_path), "h")["config"]
    assert "train.junk_ratio" not in plain and "train.domain_tag" not in plain
    set_ = identity(tiny_run_config(tiny_corpus, tmp_path, **{"train.domain_tag": True}), "h")["config"]
    assert set_["train.domain_tag"] is True
