"""Measures with known answers: aggregate bits, capacity from a sample, and the leave-one-out prior."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from transformers import AutoModelForCausalLM

from factscale.corpus.build import load_corpus
from factscale.probing.engine import Prober
from factscale.probing.measures import empirical_prior, fact_table, summarize, with_prior
from factscale.testing import run_dir
from factscale.training.data import select_facts
from factscale.training.models import build_model


def _overall(rows, split):
    return next(r for r in rows if r["split"] == split and r["group_by"] == "all")


def test_noise_around_the_prior_is_not_knowledge():
    """A model that knows nothing codes each value at its prior plus noise: the aggregate says ~0 bits,
    where clipping each fact at zero (the old estimator) reports ~6.6% of the prior."""
    rng = np.random.default_rng(0)
    n = 4000
    facts = pl.DataFrame({"relation": ["S1"] * n, "prior_bits": [6.0] * n, "n_value_tokens": [3] * n})
    code = 6.0 + rng.normal(0, 1.0, n)
    t = fact_table(facts, np.zeros(n, dtype=bool), code)
    s = summarize(t, None, 1000).row(0, named=True)
    assert s["capacity_bits"] <= 0.01 * s["prior_bits"]
    per_fact_clipped = float(np.maximum(0, 6.0 - code).sum())
    assert per_fact_clipped > 0.05 * s["prior_bits"]  # the test can tell the two estimators apart


@pytest.fixture(scope="module")
def probed(trained_run):
    """The trained tiny run's model, its facts with leak-free priors, and a full probe of them."""
    summary, cfg = trained_run
    facts, _ = load_corpus(cfg.corpus.path)
    train, heldout = select_facts(facts, cfg)
    model = AutoModelForCausalLM.from_pretrained(str(run_dir(cfg) / "model"))
    return summary, cfg, model, train, heldout


def test_unseen_keys_and_an_untrained_model_score_about_zero_bits(probed):
    summary, cfg, model, train, heldout = probed
    # held-out facts: unseen keys with uniformly random values - nothing to know; the run summary says so
    assert summary["heldout_bits_frac_of_prior"] <= 0.01 and summary["train_bits_frac_of_prior"] > 0.2
    rows = pl.read_parquet(run_dir(cfg) / "results.parquet")
    held = _overall(rows.filter(pl.col("epoch") == cfg.train.epochs).to_dicts(), "heldout")
    assert held["capacity_bits"] <= 0.01 * held["prior_bits"]
    fact_rows = pl.read_parquet(run_dir(cfg) / "fact_probe.parquet").filter(pl.col("split") == "heldout")
    clipped_per_fact = float(fact_rows["memorized_bits"].clip(lower_bound=0).sum())
    assert clipped_per_fact > 0.02 * held["prior_bits"]  # what per-fact clipping would have reported
    # an untrained model of the same shape, on the training facts
    blank = build_model(cfg.model, model.config.vocab_size, model.config.bos_token_id, model.config.eos_token_id,
                        model.config.pad_token_id)
    cb = Prober({"train": train}, 64, model.config.pad_token_id, 1000, [])
    r = _overall(cb.probe(blank, 0, 0, 0), "train")
    assert r["capacity_bits"] <= 0.01 * r["prior_bits"] and r["mr"] < 0.05


def test_capacity_from_a_10pct_sample_matches_the_full_probe(probed):
    _, _, model, train, _ = probed
    pad = model.config.pad_token_id
    full = _overall(Prober({"train": train}, 64, pad, 1000, []).probe(model, 1, 0, 0), "train")
    assert full["capacity_se"] == 0 and full["n_probed"] == full["n_facts"] == train.height
    assert 0.2 < full["mr"] < 0.98  # a case where sampling error is real
    sample = train.sample(fraction=0.1, seed=1)
    cb = Prober({"train": sample}, 64, pad, 1000, [], train_facts=train)
    part = _overall(cb.probe(model, 1, 0, 0), "train")
    assert part["n_probed"] == sample.height and part["n_facts"] == part["train_facts"] == train.height
    assert part["capacity_se"] > 0 and abs(part["capacity"] - full["capacity"]) <= 1.96 * part["capacity_se"]
    assert part["prior_bits"] == pytest.approx(full["prior_bits"])  # the population's prior, not the sample's
    # coverage of the 95% interval over many 10% samples of a population with a known capacity
    rng = np.random.default_rng(0)
    correct = rng.random(2000) < 0.6
    pop = pl.DataFrame({"relation": ["S1"] * 2000, "prior_bits": [5.0] * 2000, "n_value_tokens": [2] * 2000})
    t = fact_table(pop, correct, np.where(correct, 0.5, 7.0))
    truth = float(correct.sum())
    hits = 0
    for i in range(200):
        sub = t.sample(200, seed=i)
        s = summarize(sub, None, 1000, population=pop).row(0, named=True)
        hits += abs(s["capacity"] - truth) <= 1.96 * s["capacity_se"]
    assert 0.9 <= hits / 200 <= 0.99


def test_leave_one_out_prior_of_a_value_seen_once_is_its_backoff_cost():
    V = 50
    ids = {"a": [10, 11], "b": [12], "c": [13, 14, 15], "z": [16]}  # value tokens; <eos> = 2 after each
    rows = [("R", "a"), ("R", "a"), ("R", "a"), ("R", "b"), ("R", "c"), ("Q", "b")]
    train = pl.DataFrame({
        "fact_id": list(range(len(rows))), "relation": [r for r, _ in rows], "value": [v for _, v in rows],
        "input_ids": [[1, 5, 6, *ids[v], 2] for _, v in rows], "value_start": [3] * len(rows),
    })
    pr = empirical_prior(train, train, V)
    # the fact (R, c) is the only one with value c: leave it out and c is unseen in R
    others = train.filter(pl.col("fact_id") != 4)
    tokens = [t for row in others["input_ids"].to_list() for t in row[3:]]
    unigram = -sum(math.log2((tokens.count(t) + 1) / (len(tokens) + V)) for t in [*ids["c"], 2])
    n, u = 4, 2  # other R facts: a, a, a, b
    expected = math.log2((n + u) / u) + unigram
    assert pr["prior_bits"][4] == pytest.approx(expected) == pytest.approx(pr["backoff_bits"][4])
    # a value seen elsewhere: (c + u*q) / (n + u); for (R, a) the others are a, a, b, c: n=4, c=2, u=3
    q_a = 2 ** -(pr["backoff_bits"][0] - math.log2((4 + 3) / 3))
    assert pr["prior_bits"][0] == pytest.approx(-math.log2((2 + 3 * q_a) / (4 + 3)))
    # a held-out fact (not in train) is coded with every training fact: nothing left out
    held = pl.DataFrame({"fact_id": [99], "relation": ["R"], "value": ["a"], "input_ids": [[1, 5, 6, 10, 11, 2]],
                         "value_start": [3]})
    assert empirical_prior(train, held, V)["prior_bits"][0] < pr["prior_bits"][0]
    # no leak: the held-out facts never change a training fact's prior
    mixed = pl.concat([train, held])
    assert np.allclose(empirical_prior(train, mixed, V)["prior_bits"].to_numpy()[:6], pr["prior_bits"].to_numpy())
    # synthetic facts keep their exact entropy
    syn = train.with_columns(value_type=pl.lit("synthetic"), prior_bits=pl.lit(4.0))
    assert (with_prior(train, syn, V)["prior_bits"] == 4.0).all()
    assert not np.allclose(with_prior(train, train.with_columns(value_type=pl.lit("item")), V)["prior_bits"], 4.0)


def test_breakdown_rows_scale_each_group_to_its_population():
    pop = pl.DataFrame({"fact_id": range(1000), "bucket": (["q1", "q2", None, "q2"] * 250),
                        "prior_bits": [4.0] * 1000, "n_value_tokens": [2] * 1000})
    correct = np.arange(1000) % 2 == 0
    full = fact_table(pop, correct, np.where(correct, 1.0, 6.0))
    sample = full.sample(300, seed=3)
    rows = {r["group"]: r for r in summarize(sample, "bucket", 100, 200, population=pop).iter_rows(named=True)}
    assert rows["q2"]["n_facts"] == 500 and rows["q1"]["n_facts"] == 250 and rows[None]["n_facts"] == 250
    assert sum(r["n_probed"] for r in rows.values()) == 300
    for r in rows.values():
        assert r["capacity"] == pytest.approx(r["mr"] * r["n_facts"]) and r["prior_bits"] == 4.0 * r["n_facts"]
        assert r["bits_per_total_param"] == pytest.approx(r["capacity_bits"] / 200)
        assert r["bits_per_param"] == pytest.approx(r["capacity_bits"] / 100)


def test_a_run_probing_a_sample_reports_capacity_for_all_its_training_facts(tiny_corpus, tmp_path):
    from conftest import tiny_run_config

    from factscale.training.run import run

    cfg = tiny_run_config(tiny_corpus, tmp_path, **{"train.epochs": 2, "probe.every_epochs": 2,
                                                   "probe.max_train_facts": 50})
    summary = run(cfg)
    rows = pl.read_parquet(run_dir(cfg) / "results.parquet")
    train = rows.filter((pl.col("split") == "train") & (pl.col("group_by") == "all")).row(0, named=True)
    assert train["n_probed"] == 50 and train["n_facts"] == train["train_facts"] > 50
    assert train["capacity"] == pytest.approx(train["mr"] * train["train_facts"])
    assert train["capacity_se"] > 0 or train["mr"] in (0.0, 1.0)
    assert summary["train_capacity_se"] == train["capacity_se"] and "heldout_bits_frac_of_prior" in summary


def test_probe_sample_is_fixed_exact_size_and_stratified_by_relation():
    from factscale.probing.measures import probe_sample

    rng = np.random.default_rng(0)
    sizes = {"P1": 7000, "P2": 2500, "P3": 480, "P4": 20}  # relations of very different sizes
    train = pl.DataFrame({"fact_id": np.arange(sum(sizes.values())),
                          "relation": [r for r, k in sizes.items() for _ in range(k)]})
    N, n = train.height, 1000
    s = probe_sample(train, n)
    assert s.height == n and s["fact_id"].n_unique() == n
    counts = dict(s.group_by("relation").len().iter_rows())
    for r, k in sizes.items():  # each relation gets its share of the sample to within one fact
        assert abs(counts.get(r, 0) - n * k / N) <= 1
    shuffled = train.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 30)))
    assert sorted(probe_sample(shuffled, n)["fact_id"].to_list()) == sorted(s["fact_id"].to_list())
    assert probe_sample(train, N) is train and probe_sample(train, None) is train
    # a known answer: the model knows every P1 fact and nothing else -> capacity = MR x N = 7000 (to 1 fact)
    mr = (s["relation"] == "P1").mean()
    assert abs(mr * N - sizes["P1"]) <= N / n
