"""The behaviour studies' numbers (factscale.analysis.studies) on results tables with a known answer."""

from __future__ import annotations

import math

import polars as pl
import pytest

from factscale.analysis.preference import preference_summary
from factscale.analysis.studies import (
    compatibility_per_seed,
    overwriting_per_seed,
    overwriting_summary,
    seed_interval,
)
from factscale.errors import PlotError

pytestmark = pytest.mark.unit  # pure functions: the seconds-long tier


def test_seed_interval_is_the_t_interval_and_refuses_below_three_seeds():
    d = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert d["mean"] == 2.0 and d["n"] == 3
    assert d["lo"] == pytest.approx(2 - half) and d["hi"] == pytest.approx(2 + half)
    two = seed_interval([1.0, 2.0, None])
    assert two["mean"] == 1.5 and two["lo"] is None and "needs >= 3" in two["why"]


def test_the_binomial_term_widens_a_contrast_between_different_facts():
    """Groups of fixed facts: the seeds' spread misses which facts were drawn into each group; the interval
    adds the binomial variance p(1-p)/n (per group, summed for a difference), averaged over seeds."""
    from factscale.analysis.studies import seed_interval_binomial

    d = seed_interval_binomial([0.1, 0.2, 0.3], [0.001, 0.001, 0.001])
    half = 4.302652729911275 * math.sqrt(0.01 / 3 + 0.001)
    assert d["mean"] == pytest.approx(0.2) and d["hi"] - d["mean"] == pytest.approx(half)
    plain = seed_interval([0.1, 0.2, 0.3])
    assert d["lo"] < plain["lo"] and d["hi"] > plain["hi"]
    assert seed_interval_binomial([0.1, 0.2], [0.001, 0.001])["lo"] is None  # still no interval below 3 seeds


def _phase_rows(seed, order, mrs):
    """mrs: {(epoch, phase): mr} for one run of 200 epochs."""
    return [{"split": "train", "group_by": "phase", "group": ph, "epoch": e, "mr": mr, "cfg.seed": seed,
             "cfg.train.order": order, "cfg.model.size": "2k", "non_embedding_params": 1656, "cfg.train.epochs": 200}
            for (e, ph), mr in mrs.items()]


def test_overwriting_forgetting_is_control_minus_blocked_within_each_seed():
    rows = []
    for seed, (ctrl, blk) in enumerate([(0.6, 0.1), (0.5, 0.2), (0.7, 0.1)]):
        rows += _phase_rows(seed, "blocked", {(100, "p1"): 0.4, (200, "p1"): blk, (200, "p2"): 0.5, (100, "p2"): 0.0})
        rows += _phase_rows(seed, "first-phase-only", {(100, "p1"): 0.4, (200, "p1"): ctrl, (200, "p2"): 0.0})
    p = overwriting_per_seed(pl.DataFrame(rows))
    assert p["forgetting"].to_list() == pytest.approx([0.5, 0.3, 0.6])
    assert p["p1_drop_blocked"].to_list() == pytest.approx([0.3, 0.2, 0.3])
    s = {r["quantity"]: r for r in overwriting_summary(pl.DataFrame(rows)).iter_rows(named=True)}
    assert s["forgetting"]["mean"] == pytest.approx(1.4 / 3) and s["forgetting"]["lo"] is not None
    assert math.isnan(s["p1_end_interleaved"]["mean"])  # no interleaved runs: nothing made up
    with pytest.raises(PlotError, match="first-phase-only"):
        overwriting_per_seed(pl.DataFrame([r for r in rows if r["cfg.train.order"] == "blocked"]))


def test_overwriting_in_bits_against_an_annealed_boundary_reference():
    """Net bits (unclipped) beside MR, and the annealed phase-1 reference at the boundary: a first-phase-only
    run of half the epochs. Forgetting against it = reference - blocked at the end, within each seed."""
    rows = []
    for seed, (ref_mr, ref_bits, blk_bits) in enumerate([(0.55, 900.0, 200.0), (0.5, 800.0, -50.0),
                                                         (0.6, 950.0, 100.0)]):
        runs = [("blocked", 200, {(100, "p1"): (0.4, 600.0), (200, "p1"): (0.1, blk_bits), (200, "p2"): (0.5, 700.0)}),
                ("first-phase-only", 200, {(100, "p1"): (0.4, 600.0), (200, "p1"): (0.7, 1100.0)}),
                ("first-phase-only", 100, {(100, "p1"): (ref_mr, ref_bits)})]  # annealed at the boundary
        for order, epochs, at in runs:
            rows += [{"split": "train", "group_by": "phase", "group": ph, "epoch": e, "mr": mr, "net_bits": bits,
                      "cfg.seed": seed, "cfg.train.order": order, "cfg.model.size": "2k",
                      "non_embedding_params": 1656, "cfg.train.epochs": epochs} for (e, ph), (mr, bits) in at.items()]
    p = overwriting_per_seed(pl.DataFrame(rows))
    assert p["p1_boundary_annealed"].to_list() == pytest.approx([0.55, 0.5, 0.6])
    assert p["p1_boundary_blocked"].to_list() == pytest.approx([0.4] * 3)  # mid-schedule: not the reference
    assert p["forgetting_annealed"].to_list() == pytest.approx([0.45, 0.4, 0.5])
    assert p["bits_forgetting_annealed"].to_list() == pytest.approx([700.0, 850.0, 850.0])
    assert p["bits_forgetting"].to_list() == pytest.approx([900.0, 1150.0, 1000.0])  # control - blocked, in bits
    s = {r["quantity"]: r for r in overwriting_summary(pl.DataFrame(rows)).iter_rows(named=True)}
    assert s["bits_forgetting_annealed"]["mean"] == pytest.approx(2400 / 3) and s["bits_forgetting_annealed"]["n"] == 3


def test_preference_is_the_difference_of_the_groups_losses_paired_by_seed():
    rows = []
    for seed, (a1, m1, a4, m4) in enumerate([(0.5, 0.2, 0.9, 0.8), (0.6, 0.2, 0.9, 0.9), (0.4, 0.2, 0.8, 0.7)]):
        base = {"split": "train", "group_by": "freq_level", "epoch": 100, "cfg.train.epochs": 100, "cfg.seed": seed,
                "cfg.model.size": "2k", "non_embedding_params": 1656}
        def chance(mr, kb):  # capacity above the key-blind baseline, 100 facts per group
            return {"capacity_above_chance": (mr - kb) * 100, "n_facts": 100}

        rows += [{**base, "cfg.corpus.where": "freq_level=x1", "group": "x1", "mr": a1, **chance(a1, 0.1)},
                 {**base, "cfg.corpus.where": "freq_level=x4", "group": "x4", "mr": a4, **chance(a4, 0.05)},
                 {**base, "cfg.corpus.where": None, "group": "x1", "mr": m1, **chance(m1, 0.1)},
                 {**base, "cfg.corpus.where": None, "group": "x4", "mr": m4, **chance(m4, 0.0)},
                 {**base, "cfg.corpus.where": None, "group": "x1", "mr": 0.99, "epoch": 50,
                  **chance(0.99, 0.1)}]  # not the end point
    s = preference_summary(pl.DataFrame(rows), "freq_level")
    above = {(r["group"], r["quantity"]): r["mean"] for r in s.iter_rows(named=True) if "above_chance" in r["quantity"]}
    assert above[("x1", "mr_alone_above_chance")] == pytest.approx(0.4)  # (0.5 - 0.1, 0.6 - 0.1, 0.4 - 0.1) / 3
    assert above[("x4", "mr_mixed_above_chance")] == pytest.approx((0.8 + 0.9 + 0.7) / 3)
    pref = s.filter(pl.col("quantity") == "pref_x1_over_x4").row(0, named=True)
    # loss(x4) - loss(x1) per seed: (0.1 - 0.3), (0.0 - 0.4), (0.1 - 0.2)
    assert pref["mean"] == pytest.approx((-0.2 - 0.4 - 0.1) / 3) and pref["n"] == 3
    loss = s.filter((pl.col("quantity") == "loss") & (pl.col("group") == "x1")).row(0, named=True)
    assert loss["mean"] == pytest.approx(0.3)
    # relative: retention (mixed / alone) of x1 - of x4, per seed: 0.4 - 8/9, 1/3 - 1, 0.5 - 7/8
    rel = s.filter(pl.col("quantity") == "pref_x1_over_x4_relative").row(0, named=True)
    assert rel["mean"] == pytest.approx((0.4 - 8 / 9 + 1 / 3 - 1 + 0.5 - 7 / 8) / 3)
    with pytest.raises(PlotError, match="alone"):
        preference_summary(pl.DataFrame([r for r in rows if r["cfg.corpus.where"] is None]), "freq_level")


def test_partnered_preference_reads_the_target_half_of_each_run():
    """The partnered design (freq_level*phase): alone runs hold a group's two halves, mixed runs the target
    half p1 of both groups; only the p1 rows count, and the numbers equal the plain design's on them."""
    rows, plain = [], []
    for seed, (a1, m1, a4, m4) in enumerate([(0.5, 0.2, 0.9, 0.8), (0.6, 0.2, 0.9, 0.9), (0.4, 0.2, 0.8, 0.7)]):
        base = {"split": "train", "group_by": "freq_level*phase", "epoch": 100, "cfg.train.epochs": 100,
                "cfg.seed": seed, "cfg.model.size": "2k", "non_embedding_params": 1656, "n_facts": 100,
                "capacity_above_chance": 0.0}
        rows += [{**base, "cfg.corpus.where": "freq_level=x1", "group": "x1*p1", "mr": a1},
                 {**base, "cfg.corpus.where": "freq_level=x1", "group": "x1*p2", "mr": 0.01},  # the partner half
                 {**base, "cfg.corpus.where": "freq_level=x4", "group": "x4*p1", "mr": a4},
                 {**base, "cfg.corpus.where": "freq_level=x4", "group": "x4*p2", "mr": 0.02},
                 {**base, "cfg.corpus.where": "phase=p1", "group": "x1*p1", "mr": m1},
                 {**base, "cfg.corpus.where": "phase=p1", "group": "x4*p1", "mr": m4}]
        plain += [{**r, "group_by": "freq_level", "group": r["group"][:2],
                   "cfg.corpus.where": None if r["cfg.corpus.where"] == "phase=p1" else r["cfg.corpus.where"]}
                  for r in rows[-6:] if r["group"].endswith("p1")]
    from factscale.analysis.preference import preference_column

    assert preference_column(pl.DataFrame(rows)) == "freq_level*phase"
    got = preference_summary(pl.DataFrame(rows), "freq_level*phase")
    want = preference_summary(pl.DataFrame(plain), "freq_level")
    assert got.select("group", "quantity", "mean").equals(want.select("group", "quantity", "mean"))
    # the crossed-column spelling of the mixed run reads the same
    crossed = [{**r, "cfg.corpus.where": "freq_level*phase=x1*p1,x4*p1"} if r["cfg.corpus.where"] == "phase=p1" else r
               for r in rows]
    assert preference_summary(pl.DataFrame(crossed), "freq_level*phase")["mean"].equals(got["mean"])
    from factscale.plots.studies import fig_preference

    ax = fig_preference(pl.DataFrame(rows)).axes[0]  # the figure reads the same design and says so
    assert "target half" in ax.get_title() and ax.get_xlabel() == "freq_level"
    with pytest.raises(PlotError, match="one target half"):
        preference_summary(pl.DataFrame([*rows, {**rows[-1], "cfg.corpus.where": "phase=p2", "cfg.seed": 9}]),
                           "freq_level*phase")


def test_compatibility_differences_and_the_plateau_change_between_budgets():
    rows = []
    for budget, fwd in ((100, {"control-forward/forward": 0.3, "twice/forward": 0.5, "paraphrase/forward": 0.55,
                               "inverse/forward": 0.3}),
                        (200, {"control-forward/forward": 0.5, "twice/forward": 0.6, "paraphrase/forward": 0.62,
                               "inverse/forward": 0.5})):
        for part, mr in {**fwd, "paraphrase/paraphrase": 0.4, "inverse/inverse": 0.2,
                         "control-paraphrase/paraphrase": 0.3, "control-inverse/inverse": 0.2}.items():
            rows.append({"split": "train", "group_by": "part", "group": part, "epoch": budget, "cfg.train.epochs": budget,
                         "mr": mr, "capacity": mr * 100, "cfg.seed": 0, "cfg.model.size": "30k",
                         "non_embedding_params": 30000})
    p = compatibility_per_seed(pl.DataFrame(rows)).sort("budget")
    assert p["paraphrase_minus_twice"].to_list() == pytest.approx([0.05, 0.02])
    assert p["twice_minus_control"].to_list() == pytest.approx([0.2, 0.1])
    # redundant (55 + 40 facts) - control (30 + 30) at 100 epochs; (62 + 40) - (50 + 30) at 200
    assert p["extra_facts_paraphrase"].to_list() == pytest.approx([35.0, 22.0])
    assert p["extra_facts_paraphrase_change"][1] == pytest.approx(-13.0)
    # with n_probed (every real table), each MR difference carries its binomial term: p(1-p)/n summed
    with_n = pl.DataFrame([{**r, "n_probed": 100, "cfg.seed": seed, "mr": r["mr"] + 0.01 * seed}
                           for seed in range(3) for r in rows])
    q = compatibility_per_seed(with_n).filter((pl.col("budget") == 100) & (pl.col("cfg.seed") == 0)).row(0, named=True)
    assert q["binom_twice_minus_control"] == pytest.approx(0.5 * 0.5 / 100 + 0.3 * 0.7 / 100)
    from factscale.analysis.studies import compatibility_summary

    summ = {(r["budget"], r["quantity"]): r for r in compatibility_summary(with_n).iter_rows(named=True)}
    tmc = summ[(100, "twice_minus_control")]  # every seed gives 0.2: only the binomial term is left
    assert tmc["mean"] == pytest.approx(0.2) and tmc["hi"] - tmc["mean"] == pytest.approx(
        4.302652729911275 * math.sqrt(0.5 * 0.5 / 100 + 0.3 * 0.7 / 100), rel=0.02)


def test_duplicate_rows_and_a_missing_boundary_probe_are_refused_not_resolved_silently():
    rows = []
    for seed in range(3):
        rows += _phase_rows(seed, "blocked", {(100, "p1"): 0.4, (200, "p1"): 0.1, (200, "p2"): 0.5})
        rows += _phase_rows(seed, "first-phase-only", {(100, "p1"): 0.4, (200, "p1"): 0.6, (200, "p2"): 0.0})
    with pytest.raises(PlotError, match="two probe rows"):  # e.g. a re-run collected beside the first
        overwriting_per_seed(pl.DataFrame(rows + [{**rows[0], "run_id": "again", "mr": 0.9}]))
    no_boundary = [r for r in rows if r["epoch"] != 100]
    with pytest.raises(PlotError, match="phase boundary"):
        overwriting_per_seed(pl.DataFrame(no_boundary))


def test_compatibility_change_is_taken_within_each_size_and_seed():
    rows = []
    for size, params in (("5k", 3588), ("10k", 9664)):
        for seed in range(2):
            for budget in (100, 200, 400):
                mr = {"control-forward/forward": 0.1 * seed, "twice/forward": budget / 1000 + params / 1e5,
                      "paraphrase/forward": 0.0, "inverse/forward": 0.0}
                rows += [{"split": "train", "group_by": "part", "group": part, "epoch": budget,
                          "cfg.train.epochs": budget, "mr": v, "capacity": v, "cfg.seed": seed,
                          "cfg.model.size": size, "non_embedding_params": params} for part, v in mr.items()]
    p = compatibility_per_seed(pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=1))
    for r in p.iter_rows(named=True):
        expected = None if r["budget"] == 100 else -(r["budget"] / 2) / 1000  # twice grows, so paraphrase-twice falls
        assert r["paraphrase_minus_twice_change"] == (None if expected is None else pytest.approx(expected)), r
