"""Corpus variants for the behaviour studies on real data, and one tiny end-to-end run per study."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from conftest import tiny_run_config

from factscale.analysis.fit import fit_law
from factscale.analysis.studies import SIZE, compatibility_per_seed, floor_bits, generalization_table
from factscale.corpus import SyntheticSpec, build_from_triples, build_synthetic
from factscale.testing import run_dir
from factscale.training.run import run


@pytest.fixture(scope="module")
def compat(shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("compat") / "c"
    m = build_from_triples(out, [shared / "trex" / "mTRExf"], heldout_frac=0.0,
                           variants={"compatibility": {"n": 30}}, vocab_size=512)
    return out, m, pl.read_parquet(out / "facts.parquet")


def test_inverse_facts_really_invert_facts_in_the_corpus(compat):
    _, m, df = compat
    fwd = df.filter((pl.col("variant") == "inverse") & (pl.col("role") == "forward"))
    inv = df.filter((pl.col("variant") == "inverse") & (pl.col("role") == "inverse"))
    assert fwd.height == inv.height == m["counts"]["compatibility_group_size"] > 0
    pairs = {(r["key"], r["value"]) for r in fwd.iter_rows(named=True)}
    for r in inv.iter_rows(named=True):
        assert (r["value"], r["key"]) in pairs  # (o, r^-1, s) for a (s, r, o) in the corpus
    # known Wikidata inverse properties keep their ids: capital (P36) <-> capital of (P1376)
    capitals = fwd.filter(pl.col("relation") == "P36")
    if capitals.height:
        assert set(inv.filter(pl.col("value").is_in(capitals["key"].implode()))["relation"]) == {"P1376"}
    # the control inverses are inverses of facts that are NOT in the corpus
    ctrl = df.filter(pl.col("variant") == "control-inverse")
    all_pairs = {(r["key"], r["value"]) for r in df.iter_rows(named=True)}
    assert not any((r["value"], r["key"]) in all_pairs for r in ctrl.iter_rows(named=True))


def test_control_sets_match_in_size_and_relation_mix(compat):
    _, _, df = compat

    def rels(variant, role):
        g = df.filter((pl.col("variant") == variant) & (pl.col("role") == role))
        return sorted(g["relation"].str.replace(r"~para$", "").to_list())

    forward = rels("inverse", "forward")
    assert forward == rels("paraphrase", "forward") == rels("control-forward", "forward")
    assert forward == rels("control-paraphrase", "paraphrase")
    assert rels("inverse", "inverse") == rels("control-inverse", "inverse")  # same inverse relations too
    assert df.select("key", "relation").is_duplicated().sum() == 0  # still unambiguous


def test_frequency_from_signal_and_difficulty(shared, tmp_path):
    build_from_triples(tmp_path / "f", [shared / "trex" / "mTRExf" / "P36.jsonl"], heldout_frac=0.0,
                       variants={"frequency": {"mode": "signal", "levels": [1, 2, 4, 8]}}, vocab_size=512)
    df = pl.read_parquet(tmp_path / "f" / "facts.parquet")
    assert set(df["repeats"].unique()) == {1, 2, 4, 8}
    by = df.group_by("repeats").agg(pl.col("popularity").min().alias("lo"), pl.col("popularity").max().alias("hi")) \
        .sort("repeats")
    assert (by["lo"].to_numpy()[1:] >= by["hi"].to_numpy()[:-1]).all()  # more popular -> more exposures
    b = df.group_by("rarity_bucket").agg(pl.col("prior_bits").min().alias("lo"), pl.col("prior_bits").max().alias("hi")) \
        .sort("rarity_bucket")
    assert set(b["rarity_bucket"]) <= {"q1", "q2", "q3", "q4"} and b.height >= 2
    assert (b["lo"].to_numpy()[1:] >= b["hi"].to_numpy()[:-1]).all()  # higher bucket = rarer value
    assert df.filter(pl.col("value_len") == "1")["n_value_tokens"].max() == 2  # one token + <eos>


def test_zipf_exposures_follow_the_stated_distribution(tmp_path, capsys):
    """Skewed exposures: counts drawn from P(k) ~ k^-alpha on 1..max match it (chi-square), and a corpus
    built with the variant carries them as repeats / freq_level."""
    from scipy import stats

    from factscale.cli.main import main
    from factscale.corpus.variants import zipf_repeats

    draws = zipf_repeats(20_000, 1.2, 8, seed=3)
    k = np.arange(1, 9)
    p = k ** -1.2 / (k ** -1.2).sum()
    observed = np.bincount(draws, minlength=9)[1:]
    assert stats.chisquare(observed, p * draws.size).pvalue > 1e-3 and observed[0] > observed[-1] * 8
    assert (zipf_repeats(50, 0.0, 4, seed=0) <= 4).all()  # alpha 0: uniform over 1..max
    with pytest.raises(ValueError, match="alpha >= 0 and max >= 1"):
        zipf_repeats(10, -1.0, 4, seed=0)
    main(["corpus", "build", "--synthetic", "--n-keys", "300", "--variant", "frequency:mode=zipf,alpha=1.5,max=4",
          "-o", str(tmp_path / "z")])
    df = pl.read_parquet(tmp_path / "z" / "facts.parquet")
    assert set(df["repeats"].unique()) <= {1, 2, 3, 4}
    assert df.select((pl.col("freq_level") == pl.format("x{}", "repeats")).all()).item()
    assert (df["repeats"] == 1).sum() > (df["repeats"] == 4).sum()


def test_compatibility_study_end_to_end(compat, tmp_path):
    corpus, _, _ = compat
    cfg = tiny_run_config(corpus, tmp_path, **{"model.size": "5k", "train.epochs": 6, "probe.every_epochs": 3,
                                               "train.batch_size": 16, "train.seq_len": 128, "train.repeat_by": "repeats",
                                               "probe.group_columns": ["part"], "probe.splits": ["train"]})
    run(cfg)
    df = pl.read_parquet(run_dir(cfg) / "results.parquet")
    t = compatibility_per_seed(df).row(0, named=True)
    parts = {r["group"]: r for r in df.filter((pl.col("group_by") == "part") & (pl.col("epoch") == 6)).iter_rows(named=True)}
    assert len(parts) == 8 and t["budget"] == 6
    assert t["paraphrase_minus_twice"] == pytest.approx(parts["paraphrase/forward"]["mr"] - parts["twice/forward"]["mr"])
    cap = {k: r["capacity"] for k, r in parts.items()}
    assert t["extra_facts_inverse"] == pytest.approx(cap["inverse/forward"] + cap["inverse/inverse"]
                                                     - cap["control-forward/forward"] - cap["control-inverse/inverse"])


def test_twice_group_is_the_same_words_twice_per_epoch(compat):
    _, m, df = compat
    twice = df.filter(pl.col("variant") == "twice")
    n = m["counts"]["compatibility_group_size"]
    assert twice.height == n and set(twice["repeats"]) == {2} and set(twice["role"]) == {"forward"}
    assert set(df.filter(pl.col("variant") != "twice")["repeats"]) == {1}
    assert sorted(twice["relation"].to_list()) == sorted(df.filter(pl.col("variant") == "control-forward")["relation"])
    assert set(df["part"]) >= {"twice/forward", "paraphrase/paraphrase", "control-inverse/inverse"}
    with pytest.raises(ValueError, match="both set per-fact repeats"):
        from factscale.corpus.variants import apply_variants

        apply_variants(df.drop("variant", "role", "part"), {"frequency": {}}, 0, {})


@pytest.mark.slow  # > 20 s on the shared 2-core CPU
def test_preference_study_end_to_end(tmp_path):
    build_synthetic(tmp_path / "c", SyntheticSpec(n_keys=80, vocab_sizes=[16, 16]), heldout_frac=0.0, vocab_size=300,
                    variants={"frequency": {"mode": "assigned", "levels": [1, 8]}})
    cfg = tiny_run_config(tmp_path / "c", tmp_path, **{"train.epochs": 12, "train.repeat_by": "repeats",
                                                      "probe.every_epochs": 12, "probe.group_columns": ["freq_level"],
                                                      "probe.splits": ["train"]})
    run(cfg)
    df = pl.read_parquet(run_dir(cfg) / "results.parquet")
    g = {r["group"]: r["mr"] for r in df.filter(pl.col("group_by") == "freq_level").iter_rows(named=True)}
    assert g["x8"] > g["x1"]  # facts seen 8x per epoch are memorized first
    facts = pl.read_parquet(tmp_path / "c" / "facts.parquet")
    expected = int((facts["input_ids"].list.len() * facts["repeats"]).sum())
    assert df["tokens_per_epoch"][0] == expected


@pytest.mark.slow  # > 20 s on the shared 2-core CPU
def test_overwriting_study_end_to_end(tmp_path):
    """One relation in two random phases: blocked order vs the control that keeps training phase 1."""
    build_synthetic(tmp_path / "c", SyntheticSpec(n_keys=80, vocab_sizes=[16]), heldout_frac=0.0, vocab_size=300,
                    variants={"phases": {"n": 2, "by": "random"}})
    facts = pl.read_parquet(tmp_path / "c" / "facts.parquet")
    assert facts["relation"].n_unique() == 1 and set(facts["phase"]) == {"p1", "p2"}  # phases within one relation
    res, rows = {}, []
    for order in ("blocked", "first-phase-only"):
        cfg = tiny_run_config(tmp_path / "c", tmp_path, **{"train.epochs": 80, "train.phase_column": "phase",
                                                          "train.order": order, "probe.every_epochs": 10,
                                                          "probe.group_columns": ["phase"], "probe.splits": ["train"]})
        run(cfg)
        d = pl.read_parquet(run_dir(cfg) / "results.parquet")
        rows.append(d)
        d = d.filter(pl.col("group_by") == "phase")
        res[order] = {(r["epoch"], r["group"]): r for r in d.iter_rows(named=True)}
    b, c = res["blocked"], res["first-phase-only"]
    # the control is the blocked run until the phase boundary: same seed, same facts, same schedule
    for (epoch, ph), r in b.items():
        if epoch <= 40:
            assert c[epoch, ph]["mr"] == r["mr"] and c[epoch, ph]["value_loss"] == pytest.approx(r["value_loss"])
    assert b[40, "p1"]["mr"] > 0.5 and b[80, "p2"]["mr"] > 0.5  # each phase learnt in its turn
    assert c[80, "p2"]["mr"] < 0.3  # the control never trains phase 2
    assert b[80, "p1"]["mr"] < c[80, "p1"]["mr"] - 0.2  # learning phase 2 overwrote phase 1
    from factscale.analysis.studies import overwriting_per_seed

    p = overwriting_per_seed(pl.concat(rows, how="diagonal_relaxed")).row(0, named=True)
    assert p["forgetting"] == pytest.approx(c[80, "p1"]["mr"] - b[80, "p1"]["mr"])


def test_a_group_trained_alone_and_a_bad_where_names_the_field(tmp_path):
    from factscale.errors import ConfigError
    from factscale.training.data import select_facts

    build_synthetic(tmp_path / "c", SyntheticSpec(n_keys=80, vocab_sizes=[16]), heldout_frac=0.1, vocab_size=300,
                    variants={"frequency": {"mode": "assigned", "levels": [1, 4]}})
    facts = pl.read_parquet(tmp_path / "c" / "facts.parquet")
    train, held = select_facts(facts, tiny_run_config(tmp_path / "c", tmp_path, **{"corpus.where": "freq_level=x4"}))
    assert set(train["freq_level"]) == set(held["freq_level"]) == {"x4"}
    assert train.height == facts.filter((pl.col("split") == "train") & (pl.col("repeats") == 4)).height
    both = select_facts(facts, tiny_run_config(tmp_path / "c", tmp_path, **{"corpus.where": "freq_level=x1, x4"}))[0]
    assert both.height == facts.filter(pl.col("split") == "train").height
    for where, msg in (("nocol=x1", "not in facts.parquet"), ("freq_level=x9", r"values there: \['x1', 'x4'\]")):
        with pytest.raises(ConfigError, match="corpus.where: .*" + msg):
            select_facts(facts, tiny_run_config(tmp_path / "c", tmp_path, **{"corpus.where": where}))
    with pytest.raises(ConfigError, match="corpus.where must read"):
        tiny_run_config(tmp_path / "c", tmp_path, **{"corpus.where": "freq_level"})


def test_rarity_buckets_are_quartiles_within_each_relation(shared, tmp_path):
    build_from_triples(tmp_path / "f", [shared / "trex" / "mTRExf" / "P36.jsonl", shared / "trex" / "mTRExf" / "P17.jsonl"],
                       heldout_frac=0.0, vocab_size=512)
    df = pl.read_parquet(tmp_path / "f" / "facts.parquet")
    for rel, g in df.group_by("relation"):
        b = g.group_by("rarity_bucket").agg(pl.col("prior_bits").min().alias("lo"), pl.col("prior_bits").max().alias("hi"))
        b = b.sort("rarity_bucket")
        assert (b["lo"].to_numpy()[1:] >= b["hi"].to_numpy()[:-1]).all(), rel  # ranked within the relation
        share = g["rarity_bucket"].value_counts(normalize=True)["proportion"]
        # about a quarter each: ties are broken per fact at random (format /3), so a share is off by binomial noise
        assert b.height == 4 and (abs(share - 0.25) <= 4 * (0.25 * 0.75 / g.height) ** 0.5).all(), rel
    assert df.filter(pl.col("relation") == "P36")["prior_bits"].n_unique() < 10  # P36 has ties, so this tested them


@pytest.mark.slow  # > 20 s on the shared 2-core CPU
def test_generalization_study_end_to_end(tmp_path):
    """Unseen keys: a value predictable from the key's first name generalizes, a random one cannot."""
    build_synthetic(tmp_path / "c", SyntheticSpec(n_keys=240, vocab_sizes=[8, 64], predictable=[True, False],
                                                  first_names=6, seed=1), heldout_frac=0.2, vocab_size=300)
    cfg = tiny_run_config(tmp_path / "c", tmp_path, **{"train.epochs": 40, "probe.every_epochs": 40,
                                                      "probe.group_columns": ["predictable"]})
    run(cfg)
    df = pl.read_parquet(run_dir(cfg) / "results.parquet")
    held = {r["group"]: r for r in df.filter((pl.col("split") == "heldout") & (pl.col("group_by") == "predictable"))
            .iter_rows(named=True)}
    assert held["true"]["mr"] > 0.6 and held["false"]["mr"] < 0.2
    assert held["true"]["value_loss"] < held["false"]["value_loss"]
    # excess over the known floors (read from the corpus manifest): the learned rule is close to its floor
    # of 0 bits (no noise), the random attribute cannot go below its floor of log2 64 = 6 bits by much
    t = generalization_table(df).filter(pl.col("epoch") == 40)
    ex = dict(zip(t["relation"], t["excess_bits"]))
    assert t["floor_bits"].to_list() == [0.0, 6.0] and ex["S1"] < 1.0 and ex["S2"] > -0.5


def test_floor_bits_are_the_entropies_of_the_generating_rule():
    f = floor_bits({"vocab_sizes": [16, 64, 4], "predictable": [True, False, True], "noise": 0.1})
    hit, miss = 0.9 + 0.1 / 16, 0.1 / 16
    assert f["S1"] == pytest.approx(-(hit * math.log2(hit) + 15 * miss * math.log2(miss)))
    assert f["S2"] == 6.0 and floor_bits({"vocab_sizes": [8], "predictable": [True], "noise": 1.0})["S1"] == 3.0
    assert floor_bits({"vocab_sizes": [8], "predictable": [True], "noise": 0.0})["S1"] == 0.0


def test_power_excess_recovers_a_known_power_law_of_one_relation_alone():
    """Excess = 3 D^-0.4 on the predictable relation, a flat ~0 on the random one: fitted on S1 alone."""
    rng = np.random.default_rng(0)
    rows = []
    floors = {"S1": 0.5, "S2": 6.0}
    for D in (250, 500, 1000, 2000, 4000, 8000):
        for seed in range(3):
            for rel, excess in (("S1", 3 * D ** -0.4), ("S2", 0.01)):
                rows.append({"run_id": f"{D}-{seed}", "split": "heldout", "group_by": "relation", "group": rel,
                             "epoch": 40, "cfg.train.epochs": 40, "train_facts": D,
                             "code_bits_mean": floors[rel] + excess * (1 + rng.normal(0, 0.02))})
    t = generalization_table(pl.DataFrame(rows), floors, controls=["S2"])
    # what generalization adds: S1's excess minus the control's, in the same run and probe
    s1 = t.filter(pl.col("relation") == "S1")
    assert (s1["excess_over_control_bits"] - (s1["excess_bits"] - s1["control_excess_bits"])).abs().max() < 1e-12
    assert s1["control_excess_bits"].to_numpy() == pytest.approx(0.01, rel=0.1)
    assert t.filter(pl.col("relation") == "S2")["excess_over_control_bits"].abs().max() < 1e-12
    from factscale.analysis.studies import generalization_summary

    rows = [{**r, SIZE: "20k", "non_embedding_params": 20000, "cfg.seed": int(r["run_id"].split("-")[1])}
            for r in rows]
    summ = generalization_summary(pl.DataFrame(rows), floors, controls=["S2"])
    at = {(r["group"], r["quantity"]): r for r in summ.iter_rows(named=True)}
    assert set(q for _, q in at) == {"S1_excess", "S1_minus_control", "control_excess"}
    one = at[("D=250", "S1_minus_control")]
    assert one["n"] == 3 and one["mean"] == pytest.approx(3 * 250 ** -0.4 - 0.01, rel=0.05) and one["lo"] < one["hi"]
    assert summ["group"].unique(maintain_order=True).to_list()[:2] == ["D=250", "D=500"]  # in D order, not text
    from factscale.errors import PlotError

    with pytest.raises(PlotError, match="needs a random attribute"):
        generalization_summary(pl.DataFrame(rows), floors, controls=[])
    twice = [*rows, {**rows[0], "run_id": "again"}]  # a second run at one (size, seed, D): refused, not last-wins
    with pytest.raises(PlotError, match="two probe rows"):
        generalization_summary(pl.DataFrame(twice), floors, controls=["S2"])
    r = fit_law(t.filter(pl.col("relation") == "S1"), "power-excess", n_boot=100)
    assert r["params"]["alpha"]["value"] == pytest.approx(-0.4, abs=0.02)
    assert r["params"]["dc"]["value"] == pytest.approx(3.0, rel=0.1)
    lo, hi = r["params"]["alpha"]["ci_low"], r["params"]["alpha"]["ci_high"]
    assert lo < -0.4 < hi and r["n_runs"] == 18
