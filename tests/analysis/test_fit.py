"""Fits recover known parameters from simulated results tables, with honest intervals (or none, said why)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from factscale.analysis.fit import LAWS, fit_law, format_table, holdout_largest, params_needed, predict
from factscale.errors import FitError

pytestmark = pytest.mark.unit  # pure functions: the seconds-long tier

SIZES = {"s1": 1e4, "s2": 3e4, "s3": 1e5, "s4": 3e5, "s5": 1e6, "s6": 3e6}


def truth_capacity(kind, truth, n, e):
    if kind == "joint":
        return n * (truth["kstar"] - truth["a"] * np.exp(-truth["b"] * e)) + truth["c"]
    if kind == "linear":
        return truth["k"] * n + truth["c"]
    return 0.0


def simulate(kind, truth, rng, seeds=3, noise=0.03, budgets=(320,), sizes=SIZES, n_facts=1e9, unannealed=0.8):
    """Rows shaped like factscale results: per run (size x epoch budget x seed) probes at 1/8, 1/4, 1/2
    and all of its budget.

    The final probe of a run is the law's value; intermediate probes (mid-schedule, unannealed) are
    ``unannealed`` times it, as a constant-LR probe understates what a finished schedule reaches.
    """
    rows = []
    for size, n in sizes.items():
        for budget in budgets:
            for seed in range(seeds):
                run_eff = 1 + rng.normal(0, noise)  # a run-level effect: points of one run are correlated
                for e in (budget // 8, budget // 4, budget // 2, budget):
                    d = n / 10  # training facts (for the power law)
                    c = truth_capacity(kind, truth, n, e) * (1.0 if e == budget else unannealed)
                    loss = truth.get("dc", 1) * d ** truth.get("alpha", -0.1) + truth.get("linf", 0)
                    rows.append({
                        "run_id": f"{size}-e{budget}-s{seed}", "split": "train", "group_by": "all", "group": "all",
                        "epoch": e, "cfg.train.epochs": budget, "cfg.model.size": size,
                        "non_embedding_params": int(n), "train_facts": int(d), "n_facts": n_facts,
                        "capacity": c * run_eff * (1 + rng.normal(0, noise / 3)), "bits_per_param": 0.0,
                    })
                    rows.append({**rows[-1], "split": "heldout", "value_loss": loss * run_eff})
    return pl.DataFrame(rows)


def within(r, truth, p):
    v = r["params"][p]
    return v["ci_low"] - 1e-3 * abs(v["ci_low"]) <= truth[p] <= v["ci_high"] + 1e-3 * abs(v["ci_high"])


def near(r, truth, p, widths=2.0):
    """The truth within ``widths`` interval widths of the estimate: one simulation's 95% interval misses
    the truth 1 time in 20, so single-draw checks allow that; coverage is tested on its own below."""
    v = r["params"][p]
    return abs(v["value"] - truth[p]) <= widths * (v["ci_high"] - v["ci_low"])


def test_linear_size_recovers_k_and_c_and_a_log_log_slope_of_one():
    truth = {"k": 0.05, "c": 300.0}
    df = simulate("linear", truth, np.random.default_rng(0))
    r = fit_law(df, "linear-size", {"epochs": 320}, n_boot=100)
    assert r["r2"] > 0.99 and r["n_runs"] == 18 and r["status"]["success"] and r["n_unannealed"] == 0
    assert r["params"]["k"]["value"] == pytest.approx(0.05, rel=0.03)
    assert within(r, truth, "k")
    # "linear in N" as a log-log slope with its interval (an intercept bends it: tested without one)
    s = fit_law(simulate("linear", {"k": 0.05, "c": 0.0}, np.random.default_rng(3)), "linear-size")["companion"]
    assert near(s, {"s": 1.0}, "s")
    fixed = fit_law(df, "linear-size", {"epochs": 320}, fixed=LAWS["linear-size"].zeroed(no_intercept=True))
    assert fixed["params"]["c"]["fixed"] and fixed["params"]["c"]["value"] == 0.0
    assert LAWS["power-gen"].zeroed(True, True) == {"linf": 0.0} and LAWS["exp-epochs"].zeroed(True, True) == {}
    bent = df.with_columns(capacity=0.5 * pl.col("non_embedding_params").cast(pl.Float64) ** 0.8)
    s = fit_law(bent, "power-size", n_boot=50)["params"]["s"]
    assert s["value"] == pytest.approx(0.8, abs=0.01) and s["ci_high"] < 1.0  # sub-linear: the slope says so


def test_epoch_laws_fit_end_of_schedule_points_by_default():
    truth = {"kstar": 0.08, "a": 0.1, "b": 0.02, "c": 0.0}
    budgets = (10, 30, 60, 100, 200, 400)
    df = simulate("joint", truth, np.random.default_rng(1), noise=0.02, seeds=2, budgets=budgets,
                  sizes={k: SIZES[k] for k in ("s2", "s4", "s6")})
    r = fit_law(df, "joint")
    assert r["n_unannealed"] == 0 and all(r["points"]["annealed"]) and r["n_runs"] == 36
    for p in ("kstar", "b"):
        assert r["params"][p]["value"] == pytest.approx(truth[p], rel=0.1)
        assert near(r, truth, p)
    e = fit_law(df, "exp-epochs", {"size": "s4"})
    n = SIZES["s4"]
    assert e["params"]["cstar"]["value"] == pytest.approx(truth["kstar"] * n, rel=0.1)
    assert e["params"]["b"]["value"] == pytest.approx(truth["b"], rel=0.15)
    # intermediate probes (80% of the annealed value here) only on request, labelled and biased
    u = fit_law(df, "exp-epochs", {"size": "s4"}, include_unannealed=True, n_boot=0)
    assert u["n_unannealed"] > 0 and "UNANNEALED" in format_table(u)
    assert u["params"]["cstar"]["value"] < 0.97 * e["params"]["cstar"]["value"]
    # extrapolation: params to hold F facts at E epochs, back to the size that generated F
    target = SIZES["s6"] * (truth["kstar"] - truth["a"] * np.exp(-truth["b"] * 100))
    s = params_needed(r, target, 100)
    assert s["non_embedding_params"] == pytest.approx(SIZES["s6"], rel=0.1)
    assert s["ci_low"] <= SIZES["s6"] <= s["ci_high"] and s["n_draws"] > 0 and s["n_dropped"] == 0


def test_one_budget_per_size_cannot_fit_an_epoch_law_without_asking_for_unannealed_points():
    df = simulate("joint", {"kstar": 0.08, "a": 0.1, "b": 0.02, "c": 0.0}, np.random.default_rng(2))
    with pytest.raises(FitError, match="epoch takes 1 distinct values.*--include-unannealed"):
        fit_law(df, "exp-epochs", {"size": "s4"})
    r = fit_law(df, "exp-epochs", {"size": "s4"}, include_unannealed=True)
    assert r["n_unannealed"] == 9  # 3 intermediate probes x 3 seeds


def test_cstar_never_exceeds_the_facts_trained_on():
    """A curve still rising at its last epoch extrapolates past the corpus unless C* is bounded."""
    F = 1000.0
    rows = []
    for budget in (5, 10, 20, 40, 80):
        for seed in range(2):
            c = 1.4 * F * (1 - np.exp(-0.005 * budget)) * (1 + 0.01 * seed)  # unbounded C* = 1.4 F
            rows.append({"run_id": f"e{budget}-s{seed}", "split": "train", "group_by": "all", "epoch": budget,
                         "cfg.train.epochs": budget, "cfg.model.size": "x", "non_embedding_params": 1000,
                         "capacity": c, "n_facts": F})
    r = fit_law(pl.DataFrame(rows), "exp-epochs")
    c = r["params"]["cstar"]
    assert c["value"] <= F and c["at_bound"] and c["bounds"][1] == F
    assert all(b[0] <= F for b in r["_boot"])  # every bootstrap draw too
    # the joint law: N*k* of every fitted size stays within the facts
    grid = [{**row, "run_id": f"{n}-{row['run_id']}", "non_embedding_params": n, "cfg.model.size": str(n),
             "capacity": row["capacity"] * n / 1000} for n in (500, 1000) for row in rows]
    j = fit_law(pl.DataFrame(grid), "joint")
    assert j["params"]["kstar"]["value"] * 1000 <= F * (1 + 1e-9) and j["params"]["kstar"]["at_bound"]
    # no confident answer from a bound: no interval for it, none for what is computed from it, said so
    assert c["ci_low"] is None and c["no_interval"].startswith("cstar at its bound (<= 1000")
    k = j["params"]["kstar"]
    assert k["ci_low"] is None and "kstar at its bound" in k["no_interval"]
    solve = params_needed(j, 10 * F, 100)
    assert solve["ci_low"] is None and "kstar at its bound" in solve["no_interval"]
    assert "kstar at its bound (<= " in format_table(j)


def test_bits_epochs_law():
    rng = np.random.default_rng(4)
    rows = []
    for seed in range(2):
        for e in (10, 30, 100, 300, 1000):
            eff = 1 + rng.normal(0, 0.02)
            rows.append({"run_id": f"r{e}-{seed}", "split": "train", "group_by": "all", "epoch": e,
                         "cfg.train.epochs": e, "cfg.model.size": "x", "non_embedding_params": 1000,
                         "bits_per_param": (2.0 - 1.8 * np.exp(-0.005 * e)) * eff, "capacity": 1.0,
                         "prior_bits": 3000.0})
    r = fit_law(pl.DataFrame(rows), "bits-epochs")
    assert r["params"]["cstar"]["value"] == pytest.approx(2.0, rel=0.05)
    assert r["params"]["cstar"]["bounds"][1] == 3.0  # bits/param cannot exceed all the bits over N


def test_no_interval_from_too_few_runs_and_the_reason_is_given():
    truth = {"k": 0.05, "c": 300.0}
    three = simulate("linear", truth, np.random.default_rng(5), seeds=1, sizes={k: SIZES[k] for k in ("s1", "s3", "s5")})
    r = fit_law(three, "linear-size")
    assert r["n_runs"] == 3 and r["bootstrap"]["n_ok"] == 0
    assert all(v["ci_low"] is None for v in r["params"].values())
    assert "3 runs" in r["bootstrap"]["no_interval"] and "no interval: 3 runs" in format_table(r)
    assert params_needed(r, 1e4)["ci_low"] is None and params_needed(r, 1e4)["no_interval"]
    # 12 runs but one per size: no seeds to tell run-to-run spread from the law
    single = simulate("linear", truth, np.random.default_rng(6), seeds=1,
                      sizes={f"z{i}": 1e4 * 1.5 ** i for i in range(12)})
    assert "fewer than 2 runs" in fit_law(single, "linear-size")["bootstrap"]["no_interval"]
    ok = simulate("linear", truth, np.random.default_rng(7), seeds=2, sizes={k: SIZES[k] for k in ("s1", "s2", "s3", "s4")})
    r = fit_law(ok, "linear-size")
    assert r["n_runs"] == 8 and r["bootstrap"]["no_interval"] is None and r["params"]["k"]["ci_low"] is not None


def test_a_point_estimate_is_never_outside_its_interval():
    """Small, noisy designs (the edge of what gets an interval) over many seeds, for every law and parameter."""
    checked = 0
    for i in range(8):
        rng = np.random.default_rng(200 + i)
        lin = simulate("linear", {"k": 0.05, "c": 300.0}, rng, seeds=2, noise=0.2,
                       sizes={k: SIZES[k] for k in ("s1", "s2", "s3", "s4")})
        ep = simulate("joint", {"kstar": 0.08, "a": 0.1, "b": 0.02, "c": 0.0}, rng, seeds=2, noise=0.2,
                      budgets=(10, 30, 100, 300), sizes={"s4": SIZES["s4"]})
        fits = [fit_law(lin, "linear-size", n_boot=40, n_starts=2, seed=i),
                fit_law(ep, "exp-epochs", n_boot=40, n_starts=3, seed=i)]
        for r in fits + [fits[0]["companion"]]:
            for p, v in r["params"].items():
                if v["ci_low"] is not None:
                    assert v["ci_low"] <= v["value"] <= v["ci_high"], (r["law"], p, v)
                    checked += 1
                else:
                    assert v["fixed"] or v["no_interval"]
        s = params_needed(fits[0], 1e4)
        assert s["ci_low"] is None or s["ci_low"] <= s["non_embedding_params"] <= s["ci_high"]
    assert checked > 25  # most fits do give intervals


@pytest.mark.slow
def test_interval_coverage_is_roughly_right():
    """Over repeated simulations the 95% run-bootstrap interval for k contains the truth most of the time."""
    truth = {"k": 0.05, "c": 300.0}
    hits = 0
    n_sims = 40
    for i in range(n_sims):
        df = simulate("linear", truth, np.random.default_rng(100 + i), seeds=3)
        r = fit_law(df, "linear-size", n_boot=100, n_starts=2, seed=i)
        hits += within(r, truth, "k")
    # nominal 95%; a percentile bootstrap over 18 runs under-covers a little. Far from 95% would be a bug.
    assert 0.75 <= hits / n_sims <= 1.0


@pytest.mark.slow
def test_joint_law_interval_coverage_is_roughly_right():
    """The joint law C(N, E) over 4 sizes x 4 annealed budgets x 2 seeds: each parameter's 95% interval
    contains the truth in most of 40 simulations (with 2 seeds per point this is the regression t-interval
    since 2026-12-07; the run bootstrap measured k* 38/40, a 35/40, b 38/40 here before)."""
    truth = {"kstar": 0.08, "a": 0.06, "b": 0.02, "c": 0.0}
    hits = {p: 0 for p in ("kstar", "a", "b")}
    n_sims = 40
    for i in range(n_sims):
        df = simulate("joint", truth, np.random.default_rng(300 + i), seeds=2, budgets=(10, 30, 100, 300),
                      sizes={k: SIZES[k] for k in ("s1", "s2", "s3", "s4")})
        r = fit_law(df, "joint", n_boot=100, n_starts=2, seed=i)
        for p in hits:
            assert r["params"][p]["ci_low"] is not None, r["params"][p]["no_interval"]
            hits[p] += within(r, truth, p)
    assert all(0.75 <= h / n_sims <= 1.0 for h in hits.values()), hits


def test_predict_takes_arrays_and_holdout_reports_extrapolation_error():
    good = simulate("linear", {"k": 0.05, "c": 0.0}, np.random.default_rng(5), noise=0.01)
    r = fit_law(good, "linear-size", n_boot=0)
    xs = np.array([1e4, 1e6])
    k, c = r["params"]["k"]["value"], r["params"]["c"]["value"]
    assert np.allclose(predict(r, non_embedding_params=xs), k * xs + c)
    assert predict(r, non_embedding_params=1e4) == k * 1e4 + c
    h = holdout_largest(good, "linear-size", {"epochs": 320})
    assert h["held_out_params"] == int(SIZES["s6"]) and h["mean_rel_error"] < 0.05
    # capacity that bends (sub-linear) is badly extrapolated by a linear law, and the check says so
    bent = good.with_columns(capacity=pl.col("capacity") ** 0.8)
    assert holdout_largest(bent, "linear-size", {"epochs": 320})["mean_rel_error"] > 0.2


def test_power_law_generalization_recovers_alpha():
    truth = {"dc": 4.0, "alpha": -0.3, "linf": 0.5}
    df = simulate("power", truth, np.random.default_rng(2), noise=0.01)
    r = fit_law(df, "power-gen", {"epochs": 320})
    assert r["params"]["alpha"]["value"] == pytest.approx(-0.3, abs=0.05)
    assert near(r, truth, "alpha")


def test_degenerate_inputs_give_clear_errors():
    df = simulate("linear", {"k": 0.05, "c": 0.0}, np.random.default_rng(6))
    mixed = df.with_columns(pl.when(pl.col("cfg.model.size") == "s1").then(160).otherwise(320).alias("cfg.train.epochs"))
    with pytest.raises(FitError, match=r"fixed epochs but the runs have epochs \[160, 320\]; choose one with --where"):
        fit_law(mixed, "linear-size")
    one = df.filter(pl.col("run_id") == "s1-e320-s0")
    with pytest.raises(FitError, match="need more points|distinct"):
        fit_law(one, "linear-size", {"epochs": 320})
    with pytest.raises(FitError, match="is constant"):
        fit_law(df.with_columns(capacity=pl.lit(5.0)), "linear-size", {"epochs": 320})
    nan = df.with_columns(capacity=pl.when(pl.col("epoch") == 320).then(float("nan")).otherwise(pl.col("capacity")))
    with pytest.raises(FitError, match="usable points"):
        fit_law(nan, "linear-size", {"epochs": 320})
    with pytest.raises(FitError, match="final probe of a completed schedule.*--include-unannealed"):
        fit_law(df, "linear-size", {"epochs": 80})
    with pytest.raises(FitError, match="fixed size"):
        fit_law(df, "exp-epochs")
    with pytest.raises(FitError, match="unknown law"):
        fit_law(df, "quadratic")
    with pytest.raises(FitError, match="--solve works with"):
        params_needed(fit_law(df, "power-gen", n_boot=0), 1e6)


@pytest.mark.slow
def test_intervals_cover_with_two_seeds_on_the_demos_design():
    """The demo's design (5 sizes x 2 seeds x 4 annealed budgets, independent runs): with fewer than 3 runs per
    design point the fit gives the regression t-interval, and every law's 95% intervals cover >= 90% of 200
    simulations (exp-epochs C*: >= 85%, below). Measured here (2026-12-07): linear-size k 188/200, joint k* 194,
    a 192, b 193; the run bootstrap it replaces covered k 164/200 (82%) and joint a 179/200 (89.5%)."""
    sizes = {k: SIZES[k] for k in ("s1", "s2", "s3", "s4", "s5")}
    truth_l, truth_j = {"k": 0.05, "c": 300.0}, {"kstar": 0.08, "a": 0.06, "b": 0.02, "c": 0.0}
    n3 = sizes["s3"]
    truth_e = {"cstar": n3 * truth_j["kstar"], "a": n3 * truth_j["a"], "b": truth_j["b"]}
    hits, shown = {}, {}

    def count(name, r, truth):
        assert r["interval"] == "t-interval (weighted least squares)"
        for p, t in truth.items():
            v = r["params"][p]
            if v["ci_low"] is not None:
                shown[name + p] = shown.get(name + p, 0) + 1
                hits[name + p] = hits.get(name + p, 0) + (v["ci_low"] <= t <= v["ci_high"])

    n_sims = 200
    for i in range(n_sims):
        df = simulate("linear", truth_l, np.random.default_rng(1000 + i), seeds=2, sizes=sizes, budgets=(200,))
        count("linear.", fit_law(df, "linear-size", n_starts=2, seed=i), {"k": truth_l["k"]})
        df = simulate("joint", truth_j, np.random.default_rng(2000 + i), seeds=2, budgets=(25, 50, 100, 200), sizes=sizes)
        count("joint.", fit_law(df, "joint", n_starts=2, seed=i), {p: truth_j[p] for p in ("kstar", "a", "b")})
        count("exp.", fit_law(df, "exp-epochs", {"size": "s3"}, n_starts=2, seed=i), truth_e)
    # exp-epochs at one size has 8 runs for 3 parameters (5 residual dof) and a nonlinear asymptote: its
    # linearized t-interval for C* covers less (173/200 here); the target of 90% is not met for it yet
    floor = {"exp.cstar": 0.85}
    for key, n in shown.items():
        assert n >= 0.9 * n_sims, (key, n)  # an interval is given almost always
        assert hits[key] / n >= floor.get(key, 0.90), (key, hits[key], n)


def simulate_branched(truth, rng, sizes, seeds=2, budgets=(25, 50, 100, 200), trunk_noise=0.04, branch_noise=0.01,
                      n_facts=1e9):
    """The demo's design with cooldown branches: per (size, seed) one trunk whose effect every branch shares
    (its data order and weights up to the fork), plus a small effect per branch (its own cooldown)."""
    rows = []
    for size, n in sizes.items():
        for seed in range(seeds):
            u = 1 + rng.normal(0, trunk_noise)
            for budget in budgets:
                rows.append({"run_id": f"{size}-e{budget}-s{seed}", "branch_of": f"{size}-trunk-s{seed}",
                             "split": "train", "group_by": "all", "group": "all", "epoch": budget,
                             "cfg.train.epochs": budget, "cfg.model.size": size, "cfg.seed": seed,
                             "non_embedding_params": int(n), "n_facts": n_facts, "bits_per_param": 0.0,
                             "capacity": min(n_facts, truth_capacity("joint", truth, n, budget) * u
                                             * (1 + rng.normal(0, branch_noise)))})
    return pl.DataFrame(rows)


def test_branches_of_one_trunk_get_the_trunk_jackknife():
    """Cooldown branches share their trunk's errors: the interval treats the trunk as the unit (delete-one-trunk
    jackknife, trunks - 1 dof), never the branches as independent runs."""
    sizes = {k: SIZES[k] for k in ("s1", "s2", "s3", "s4", "s5")}
    truth = {"kstar": 0.08, "a": 0.06, "b": 0.02, "c": 0.0}
    df = simulate_branched(truth, np.random.default_rng(0), sizes)
    r = fit_law(df, "joint", n_starts=2)
    assert r["interval"].startswith("trunk jackknife") and r["interval_dof"] == 9  # 5 sizes x 2 seeds = 10 trunks
    assert r["bootstrap"]["resampled"].startswith("trunks")
    assert all(v["ci_low"] is not None for p, v in r["params"].items() if p != "c" or not v["fixed"])
    e = fit_law(df, "exp-epochs", {"size": "s3"}, n_starts=2)
    assert e["interval_dof"] == 1  # 2 trunks: t(1), honestly wide
    c = e["params"]["cstar"]
    assert (c["ci_high"] - c["ci_low"]) / 2 == pytest.approx(12.706 * c["stderr"], rel=1e-3)  # t(1) quantile
    assert "trunk jackknife" in format_table(e) and "1 dof" in format_table(e)
    # one trunk alone: nothing to compare it with
    one = fit_law(df.filter(pl.col("cfg.seed") == 0), "joint", n_starts=2)
    assert one["interval"] is None and one["bootstrap"]["no_interval"]


@pytest.mark.slow
def test_trunk_jackknife_covers_on_the_demos_branched_design():
    """The demo's design as it is trained (5 sizes x 2 seeds, each seed a trunk with cooldown branches at 4
    budgets sharing a 4% trunk effect): the trunk jackknife's 95% intervals cover >= 90% of 200 simulations
    for the joint law and for exp-epochs at one size (G = 2 trunks, t(1)). Measured here (2026-12-07, 400
    simulations): joint k* 94.8%, a 95.3%, b 96.3%; exp-epochs C* 94.3%, a 95.3%, b 93.8%. The t-interval
    that treats the branches as independent runs covers C* 81%."""
    sizes = {k: SIZES[k] for k in ("s1", "s2", "s3", "s4", "s5")}
    truth = {"kstar": 0.08, "a": 0.06, "b": 0.02, "c": 0.0}
    n3 = sizes["s3"]
    truth_e = {"cstar": n3 * truth["kstar"], "a": n3 * truth["a"], "b": truth["b"]}
    hits, shown, n_sims = {}, {}, 200
    for i in range(n_sims):
        df = simulate_branched(truth, np.random.default_rng(5000 + i), sizes)
        for name, r, tr in (("joint.", fit_law(df, "joint", n_starts=2, seed=i), {p: truth[p] for p in ("kstar", "a", "b")}),
                            ("exp.", fit_law(df, "exp-epochs", {"size": "s3"}, n_starts=2, seed=i), truth_e)):
            assert r["interval"].startswith("trunk jackknife")
            for p, t in tr.items():
                v = r["params"][p]
                if v["ci_low"] is not None:
                    shown[name + p] = shown.get(name + p, 0) + 1
                    hits[name + p] = hits.get(name + p, 0) + (v["ci_low"] <= t <= v["ci_high"])
    for key, n in shown.items():
        assert n >= 0.9 * n_sims, (key, n)
        assert hits[key] / n >= 0.90, (key, hits[key], n)


def test_keyed_bits_are_a_measure_with_no_cap_at_the_facts():
    """--measure keyed_bits fits a capacity law in bits: the asymptote is not bounded by the fact count."""
    truth = {"kstar": 0.08, "a": 0.06, "b": 0.02, "c": 0.0}
    df = simulate("joint", truth, np.random.default_rng(4), seeds=3, budgets=(10, 30, 100, 300), n_facts=100.0,
                  sizes={k: SIZES[k] for k in ("s1", "s2", "s3")})
    df = df.with_columns(keyed_bits=pl.col("capacity") * 6.0)  # 6 bits per fact, far above 100 facts
    r = fit_law(df, "exp-epochs", {"size": "s2"}, measure="keyed_bits", n_boot=50, max_fill=None)
    assert r["measure"] == "keyed_bits" and r["params"]["cstar"]["bounds"][1] is None
    assert r["params"]["cstar"]["value"] == pytest.approx(6 * truth["kstar"] * SIZES["s2"], rel=0.1)
    assert fit_law(df, "exp-epochs", {"size": "s2"}, n_boot=0)["params"]["cstar"]["bounds"][1] == 100.0


def test_a_clipped_interval_end_says_so_and_a_zero_se_gives_none():
    from factscale.analysis.intervals import t_interval

    r = t_interval(823.4, 10.0, 1, 0.95, (0, 830))  # t(1) x 10 = 127: the top would be 950 facts of 830
    assert r["ci_high"] == 830 and r["ci_clipped"] == "high" and r["ci_low"] == pytest.approx(823.4 - 127.06, abs=0.1)
    assert t_interval(5.0, 1.0, 10, 0.95, (None, None))["ci_clipped"] is None
    assert "standard error 0" in t_interval(5.0, 0.0, 10, 0.95, (None, None))["no_interval"]


def test_sizes_capped_by_the_corpus_are_left_out_of_size_laws():
    """A size whose capacity fills more than --max-fill (60%) of its facts is bounded by the corpus: laws in
    model size leave it out by default and say so; --max-fill 1 keeps it."""
    truth = {"k": 0.05, "c": 0.0}
    df = simulate("linear", truth, np.random.default_rng(7), seeds=2, noise=0.01)  # s1..s6: 500 .. 150,000 facts
    df = df.with_columns(n_facts=pl.lit(100_000.0),
                         capacity=pl.min_horizontal(pl.col("capacity"), pl.lit(92_000.0)))  # s6 capped at 92%
    r = fit_law(df, "linear-size", {"epochs": 320}, n_starts=2)
    assert [e["size"] for e in r["excluded_capped"]] == ["s6"] and r["excluded_capped"][0]["fill"] > 0.9
    assert int(SIZES["s6"]) not in r["points"]["non_embedding_params"]
    assert r["params"]["k"]["value"] == pytest.approx(0.05, rel=0.03)  # the uncapped sizes give the truth
    assert "left out, capped by the corpus" in format_table(r) and "s6 (92%)" in format_table(r)
    assert r["companion"]["excluded_capped"] == r["excluded_capped"]
    kept = fit_law(df, "linear-size", {"epochs": 320}, n_starts=2, max_fill=1)
    assert kept["excluded_capped"] == [] and kept["params"]["k"]["value"] < 0.9 * 0.05  # bent by the cap
    assert [n for n, law in LAWS.items() if law.capped_sizes] == ["linear-size", "power-size", "joint"]
    few = df.filter(pl.col("cfg.model.size").is_in(["s5", "s6"]))
    with pytest.raises(FitError, match="left out as capped.*--max-fill"):
        fit_law(few, "linear-size", {"epochs": 320})
    with pytest.raises(FitError, match="max-fill"):
        fit_law(df, "linear-size", {"epochs": 320}, max_fill=0)


def test_sigmoid_recall_recovers_a_known_law_in_size_and_exposures():
    """MR of each frequency group (x1, x2, x4 repeats per epoch) at 3 sizes x 3 seeds, drawn from
    sigmoid(a ln N + b ln k + c) with k = repeats x epochs, plus seed noise: the fit recovers a, b, c and
    its run-bootstrap interval covers them; rows come from the freq_level breakdown, not the overall rows."""
    import math

    rng = np.random.default_rng(0)
    a, b, c = 1.2, 0.9, -1.2 * math.log(4000) - 0.9 * math.log(200)
    rows = []
    for n in (1000, 4000, 16000):
        for seed in range(3):
            run = {"run_id": f"{n}-{seed}", "split": "train", "epoch": 100, "cfg.train.epochs": 100,
                   "cfg.model.size": str(n), "non_embedding_params": n, "cfg.seed": seed}
            rows.append({**run, "group_by": "all", "group": "all", "mr": 0.5})  # not fitted: the overall row
            for rep in (1, 2, 4):
                mr = 1 / (1 + math.exp(-(a * math.log(n) + b * math.log(rep * 100) + c))) + rng.normal(0, 0.01)
                rows.append({**run, "group_by": "freq_level", "group": f"x{rep}", "mr": mr})
    r = fit_law(pl.DataFrame(rows), "sigmoid-recall", n_boot=100)
    assert r["n_runs"] == 9 and r["interval"].startswith("run bootstrap")
    for p, true in (("a", a), ("b", b)):
        v = r["params"][p]
        assert v["value"] == pytest.approx(true, rel=0.1) and v["ci_low"] <= true <= v["ci_high"], (p, v)
    from factscale import plots

    fig = plots.FIGURES["recall-vs-exposures"](pl.DataFrame(rows))
    import re

    assert re.search(r"sigmoid\(1\.\d\d ln N \+ 0\.\d\d ln k", fig.axes[0].get_title())
    assert len(fig.axes[0].lines) >= 3  # the law drawn per size
    bad = pl.DataFrame([{**rows[1], "group": "often"}])
    with pytest.raises(FitError, match="not x<repeats>"):
        fit_law(bad, "sigmoid-recall", n_boot=0)
