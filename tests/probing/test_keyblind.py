"""The key-blind baseline: known answers. A model that learned only the value distribution memorizes
nothing above chance however many facts exact match credits it with; a model that memorized facts does;
the donor pairs are fixed by the corpus and are the obvious tokenization of the donor's prompt + the value."""

from __future__ import annotations

import polars as pl
import pytest

from factscale.probing.keyblind import keyblind_inputs, keyblind_pairs
from factscale.testing import run_dir


def _facts(corpus):
    from factscale.corpus.build import load_corpus

    facts, _ = load_corpus(corpus)
    return facts.filter(pl.col("split") == "train"), facts.filter(pl.col("split") == "heldout")


def test_pairs_are_fixed_by_the_corpus_same_relation_never_the_fact_itself(tiny_corpus):
    train, held = _facts(tiny_corpus)
    a, b = keyblind_pairs(train, held), keyblind_pairs(train.reverse(), held.sample(fraction=1.0, shuffle=True, seed=3))
    assert a.equals(b) and a.height == train.height  # independent of row order: a property of the corpus
    rel = dict(zip(pl.concat([train, held])["fact_id"], pl.concat([train, held])["relation"]))
    assert all(rel[f] == rel[d] for f, d in a.iter_rows()) and set(a["donor_id"]) <= set(held["fact_id"])
    derange = keyblind_pairs(train, None)  # no held-out facts: another training key of the relation
    assert derange.height == train.height and all(f != d and rel[f] == rel[d] for f, d in derange.iter_rows())


def test_keyblind_tokens_are_the_donors_prompt_then_the_facts_value(tiny_corpus):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_corpus / "tokenizer"))
    train, held = _facts(tiny_corpus)
    ids_frame, ids, starts = keyblind_inputs(train, held)
    pairs = dict(keyblind_pairs(train, held).iter_rows())
    prompt = dict(zip(held["fact_id"], held["prompt"]))
    value = dict(zip(train["fact_id"], train["value"]))
    for fid, got, vs in list(zip(ids_frame["fact_id"], ids.to_list(), starts.to_list()))[:25]:
        want_prompt = [tok.bos_token_id] + tok(prompt[pairs[fid]], add_special_tokens=False)["input_ids"]
        want = want_prompt + tok(" " + value[fid], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert got == want and vs == len(want_prompt)


@pytest.mark.slow  # trains a model for 60 epochs: 12 s idle, 20+ s on the loaded 2-core CPU
def test_a_model_that_learned_only_the_value_distribution_scores_nothing_above_chance(tmp_path):
    """400 keys with one 2-valued attribute: a 30k model trained 60 epochs answers the commonest value for every
    key (exact match credits it with ~half the facts); above chance it memorized 0, and the key is worth ~0 bits."""
    from factscale.corpus import SyntheticSpec, build_synthetic
    from factscale.training.run import run
    from tests.conftest import tiny_run_config

    build_synthetic(tmp_path / "c", SyntheticSpec(n_keys=400, vocab_sizes=[2], seed=0), vocab_size=300)
    cfg = tiny_run_config(tmp_path / "c", tmp_path / "runs", **{"train.epochs": 60, "probe.every_epochs": 60,
                                                                "train.batch_size": 16})
    run(cfg)
    r = pl.read_parquet(run_dir(cfg) / "results.parquet").filter(
        (pl.col("split") == "train") & (pl.col("group_by") == "all")).row(0, named=True)
    assert r["capacity"] > 0.3 * r["n_facts"]  # what exact match alone would report
    assert abs(r["capacity_above_chance"]) <= max(3 * r["capacity_above_chance_se"], 1.0)
    assert abs(r["keyed_bits"]) <= max(3 * r["keyed_bits_se"], 0.01 * r["prior_bits"])
    assert r["n_keyblind"] == r["n_probed"]


def test_a_model_that_memorized_facts_scores_above_chance(trained_run):
    _, cfg = trained_run
    r = pl.read_parquet(run_dir(cfg) / "results.parquet").filter(
        (pl.col("split") == "train") & (pl.col("group_by") == "all")).tail(1).row(0, named=True)
    # every training fact is probed here, so the standard errors are 0 (no sampling); the test still holds with them
    assert r["capacity_above_chance"] > 0 and r["capacity_above_chance"] >= 3 * r["capacity_above_chance_se"]
    assert r["capacity_above_chance"] <= r["capacity"]
    assert r["keyed_bits"] > 0 and r["keyed_bits"] >= 3 * r["keyed_bits_se"]
    assert 0 <= r["mr_keyblind"] < r["mr"]


def test_the_summary_of_a_key_blind_table_is_zero_above_chance():
    import numpy as np

    from factscale.probing.measures import summarize

    rng = np.random.default_rng(0)
    correct = rng.random(200) < 0.3
    bits = rng.random(200) * 4
    t = pl.DataFrame({"fact_id": range(200), "correct": correct, "code_bits": bits, "prior_bits": [4.0] * 200,
                      "n_value_tokens": [2] * 200, "correct_keyblind": correct, "code_bits_keyblind": bits})
    r = summarize(t, None, 1000).row(0, named=True)
    assert r["capacity"] == pytest.approx(60, abs=15) and r["capacity_above_chance"] == 0.0
    assert r["keyed_bits"] == 0.0 and r["capacity_above_chance_se"] == 0.0
