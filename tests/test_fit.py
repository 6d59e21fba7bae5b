"""Fits recover known parameters from simulated results tables, with honest intervals."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from factscale.fit import FitError, fit_law, holdout_largest, params_needed

SIZES = {"s1": 1e4, "s2": 3e4, "s3": 1e5, "s4": 3e5, "s5": 1e6, "s6": 3e6}


def simulate(kind, truth, rng, seeds=3, noise=0.03, epochs=(5, 10, 20, 40, 80, 160, 320)):
    """Rows shaped like factscale results: per run (size x seed) a curve over probe epochs."""
    rows = []
    for size, n in SIZES.items():
        for seed in range(seeds):
            run_eff = 1 + rng.normal(0, noise)  # a run-level effect: points of one run are correlated
            for e in epochs:
                d = n / 10  # training facts (for the power law)
                if kind == "joint":
                    c = n * (truth["kstar"] - truth["a"] * np.exp(-truth["b"] * e)) + truth["c"]
                elif kind == "linear":
                    c = truth["k"] * n + truth["c"]
                else:
                    c = 0.0
                loss = truth.get("dc", 1) * d ** truth.get("alpha", -0.1) + truth.get("linf", 0)
                rows.append({
                    "run_id": f"{size}-s{seed}", "split": "train", "group_by": "all", "group": "all", "epoch": e,
                    "cfg.train.epochs": epochs[-1], "cfg.model.size": size, "non_embedding_params": int(n),
                    "train_facts": int(d), "capacity": c * run_eff * (1 + rng.normal(0, noise / 3)),
                    "bits_per_param": 0.0, "n_facts": 1e9,
                })
                rows.append({**rows[-1], "split": "heldout", "value_loss": loss * run_eff})
    return pl.DataFrame(rows)


def within(r, truth, p):
    v = r["params"][p]
    return v["ci_low"] - 1e-3 * abs(v["ci_low"]) <= truth[p] <= v["ci_high"] + 1e-3 * abs(v["ci_high"])


def test_linear_size_recovers_k_and_c():
    truth = {"k": 0.05, "c": 300.0}
    df = simulate("linear", truth, np.random.default_rng(0))
    r = fit_law(df, "linear-size", {"epochs": 320})
    assert r["r2"] > 0.99 and r["n_runs"] == 18 and r["status"]["success"]
    assert r["params"]["k"]["value"] == pytest.approx(0.05, rel=0.03)
    assert within(r, truth, "k")
    fixed = fit_law(df, "linear-size", {"epochs": 320}, fixed={"c": 0.0})
    assert fixed["params"]["c"]["fixed"] and fixed["params"]["c"]["value"] == 0.0


def test_exp_epochs_and_joint_recover_parameters():
    truth = {"kstar": 0.08, "a": 0.1, "b": 0.02, "c": 0.0}
    df = simulate("joint", truth, np.random.default_rng(1), noise=0.02)
    r = fit_law(df, "joint")
    for p in ("kstar", "b"):
        assert r["params"][p]["value"] == pytest.approx(truth[p], rel=0.1)
        assert within(r, truth, p)
    e = fit_law(df, "exp-epochs", {"size": "s4"})
    n = SIZES["s4"]
    assert e["params"]["cstar"]["value"] == pytest.approx(truth["kstar"] * n, rel=0.1)
    assert e["params"]["b"]["value"] == pytest.approx(truth["b"], rel=0.15)
    # extrapolation: params to hold F facts at E epochs, back to the size that generated F
    target = SIZES["s6"] * (truth["kstar"] - truth["a"] * np.exp(-truth["b"] * 100))
    s = params_needed(r, target, 100)
    assert s["non_embedding_params"] == pytest.approx(SIZES["s6"], rel=0.1)
    assert s["ci_low"] <= SIZES["s6"] <= s["ci_high"]


def test_power_law_generalization_recovers_alpha():
    truth = {"dc": 4.0, "alpha": -0.3, "linf": 0.5}
    df = simulate("power", truth, np.random.default_rng(2), noise=0.01)
    r = fit_law(df, "power-gen", {"epochs": 320})
    assert r["params"]["alpha"]["value"] == pytest.approx(-0.3, abs=0.05)
    assert within(r, truth, "alpha")


def test_bits_epochs_law():
    rng = np.random.default_rng(4)
    rows = []
    for seed in range(5):
        eff = 1 + rng.normal(0, 0.02)
        for e in (10, 30, 100, 300, 1000):
            rows.append({"run_id": f"r{seed}", "split": "train", "group_by": "all", "epoch": e,
                         "cfg.train.epochs": 1000, "cfg.model.size": "x", "non_embedding_params": 1000,
                         "bits_per_param": (2.0 - 1.8 * np.exp(-0.005 * e)) * eff, "capacity": 1.0})
    r = fit_law(pl.DataFrame(rows), "bits-epochs")
    assert r["params"]["cstar"]["value"] == pytest.approx(2.0, rel=0.05)


def test_interval_coverage_is_roughly_right():
    """Over repeated simulations the 95% run-bootstrap interval for k contains the truth most of the time."""
    truth = {"k": 0.05, "c": 300.0}
    hits = 0
    n_sims = 40
    for i in range(n_sims):
        df = simulate("linear", truth, np.random.default_rng(100 + i), seeds=3, epochs=(320,))
        r = fit_law(df, "linear-size", n_boot=100, n_starts=2, seed=i)
        hits += within(r, truth, "k")
    # nominal 95%; a percentile bootstrap over 18 runs under-covers a little. Far from 95% would be a bug.
    assert 0.75 <= hits / n_sims <= 1.0


def test_holdout_largest_reports_extrapolation_error():
    good = simulate("linear", {"k": 0.05, "c": 0.0}, np.random.default_rng(5), noise=0.01)
    h = holdout_largest(good, "linear-size", {"epochs": 320})
    assert h["held_out_params"] == int(SIZES["s6"]) and h["mean_rel_error"] < 0.05
    # capacity that bends (sub-linear) is badly extrapolated by a linear law, and the check says so
    bent = good.with_columns(capacity=pl.col("capacity") ** 0.8)
    assert holdout_largest(bent, "linear-size", {"epochs": 320})["mean_rel_error"] > 0.2


def test_degenerate_inputs_give_clear_errors():
    df = simulate("linear", {"k": 0.05, "c": 0.0}, np.random.default_rng(6))
    mixed = df.with_columns(pl.when(pl.col("cfg.model.size") == "s1").then(160).otherwise(320).alias("cfg.train.epochs"))
    with pytest.raises(FitError, match=r"fixed epochs but the runs have epochs \[160, 320\]; choose one with --where"):
        fit_law(mixed, "linear-size")
    two = df.filter(pl.col("cfg.model.size") == "s1").filter(pl.col("run_id") == "s1-s0")
    with pytest.raises(FitError, match="non_embedding_params is constant|need more points"):
        fit_law(two, "linear-size", {"epochs": 320})
    with pytest.raises(FitError, match="is constant"):
        fit_law(df.with_columns(capacity=pl.lit(5.0)), "linear-size", {"epochs": 320})
    nan = df.with_columns(capacity=pl.when(pl.col("epoch") == 320).then(float("nan")).otherwise(pl.col("capacity")))
    with pytest.raises(FitError, match="usable points"):
        fit_law(nan, "linear-size", {"epochs": 320})
    with pytest.raises(FitError, match="fixed size"):
        fit_law(df, "exp-epochs")
    with pytest.raises(FitError, match="unknown law"):
        fit_law(df, "quadratic")
