"""Scaling-law fits with honest uncertainties (lmfit over scipy's least_squares).

Laws (N = non-embedding params, E = epochs, D = training facts, C = capacity in facts):

- ``linear-size``:  C(N) = k*N + c            (Lu et al.'s linear law at fixed epochs; c=0 optional)
- ``exp-epochs``:   C(E) = C* - a*exp(-b*E)   (their negative exponential at fixed size)
- ``joint``:        C(N, E) = N*(k* - a*exp(-b*E)) + c   (one fit over the whole grid)
- ``power-gen``:    L(D) = Dc * D^alpha (+ L_inf)        (held-out value loss vs training facts)
- ``bits-epochs``:  bits/param(E) = B* - a*exp(-b*E)     (beside Allen-Zhu & Li's ~1 and ~2 bits)

Each fit: several starting points (best kept), a sum-reduced loss (``least_squares``; ``robust`` =
soft-L1), standard errors from the Jacobian, and percentile intervals from a bootstrap that resamples
whole runs - points of one run (an MR-vs-epoch curve) are not independent, so resampling them would
make the intervals too narrow.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lmfit
import numpy as np
import polars as pl


class FitError(ValueError):
    """The data cannot support this fit; the message says why."""


@dataclass(frozen=True)
class Law:
    name: str
    formula: str
    params: tuple[str, ...]
    xs: tuple[str, ...]  # result columns feeding the independent variables
    y: str
    split: str
    fn: Callable
    guess: Callable  # (x arrays, y, rng) -> dict of starting values
    bounds: dict
    log_space: bool = False  # residuals in log y (laws spanning decades)


def _exp_guess(x, y, rng):
    (e,) = x
    top = float(np.max(y)) * rng.uniform(1.0, 2.0)
    return {"cstar": top, "a": top * rng.uniform(0.5, 1.5), "b": rng.uniform(0.1, 3.0) / max(np.median(e), 1e-9)}


LAWS: dict[str, Law] = {
    "linear-size": Law(
        "linear-size", "C(N) = k*N + c", ("k", "c"), ("non_embedding_params",), "capacity", "train",
        lambda x, k, c: k * x[0] + c,
        lambda x, y, rng: {"k": float(np.max(y) / np.max(x[0])) * rng.uniform(0.3, 3), "c": rng.normal(0, 1) * np.std(y)},
        {"k": (None, None), "c": (None, None)},
    ),
    "exp-epochs": Law(
        "exp-epochs", "C(E) = cstar - a*exp(-b*E)", ("cstar", "a", "b"), ("epoch",), "capacity", "train",
        lambda x, cstar, a, b: cstar - a * np.exp(-b * x[0]),
        _exp_guess, {"cstar": (0, None), "a": (None, None), "b": (0, None)},
    ),
    "joint": Law(
        "joint", "C(N, E) = N*(kstar - a*exp(-b*E)) + c", ("kstar", "a", "b", "c"),
        ("non_embedding_params", "epoch"), "capacity", "train",
        lambda x, kstar, a, b, c: x[0] * (kstar - a * np.exp(-b * x[1])) + c,
        lambda x, y, rng: {"kstar": float(np.max(y / x[0])) * rng.uniform(1, 2),
                           "a": float(np.max(y / x[0])) * rng.uniform(0.5, 2),
                           "b": rng.uniform(0.1, 3.0) / max(np.median(x[1]), 1e-9), "c": 0.0},
        {"kstar": (0, None), "a": (None, None), "b": (0, None), "c": (None, None)},
    ),
    "power-gen": Law(
        "power-gen", "L(D) = Dc * D^alpha + linf", ("dc", "alpha", "linf"), ("train_facts",), "value_loss",
        "heldout",
        lambda x, dc, alpha, linf: dc * np.power(x[0], alpha) + linf,
        lambda x, y, rng: {"dc": float(np.max(y)) * rng.uniform(0.5, 5), "alpha": -rng.uniform(0.02, 0.8), "linf": 0.0},
        {"dc": (0, None), "alpha": (-5, 5), "linf": (0, None)}, log_space=True,
    ),
    "bits-epochs": Law(
        "bits-epochs", "bits/param(E) = cstar - a*exp(-b*E)", ("cstar", "a", "b"), ("epoch",), "bits_per_param",
        "train", lambda x, cstar, a, b: cstar - a * np.exp(-b * x[0]),
        _exp_guess, {"cstar": (0, None), "a": (None, None), "b": (0, None)},
    ),
}
ALIASES = {"epochs": "epoch", "size": "cfg.model.size", "arch": "cfg.model.arch", "seed": "cfg.seed",
           "facts": "train_facts", "params": "non_embedding_params"}


def select_points(df: pl.DataFrame, law: Law, where: dict | None = None) -> pl.DataFrame:
    """The rows a law is fitted on: its split, the overall group, the ``where`` filters."""
    for col in ("split", "group_by", law.y, *law.xs):
        if col not in df.columns:
            raise FitError(f"results table has no column {col!r}; is it a factscale results table?")
    sel = df.filter((pl.col("split") == law.split) & (pl.col("group_by") == "all"))
    for k, v in (where or {}).items():
        col = ALIASES.get(k, k)
        if col not in sel.columns:
            raise FitError(f"--where {k}: no such column; try one of {sorted(ALIASES)} or a results column")
        sel = sel.filter(pl.col(col).cast(pl.String) == str(v))
    if law.name in ("linear-size", "power-gen") and "epoch" not in (where or {}) and "epochs" not in (where or {}):
        # default: each run's final probe (its full epoch budget)
        sel = sel.filter(pl.col("epoch") == pl.col("cfg.train.epochs"))
        if sel["epoch"].n_unique() > 1:
            raise FitError(f"{law.name} is a law at fixed epochs but the runs have epochs "
                           f"{sorted(sel['epoch'].unique().to_list())}; choose one with --where epochs=E")
    if law.name in ("exp-epochs", "bits-epochs") and sel["non_embedding_params"].n_unique() > 1:
        raise FitError(f"{law.name} is a law at fixed size but the rows span sizes "
                       f"{sorted(sel['cfg.model.size'].unique().to_list())}; choose one with --where size=NAME")
    return sel


def _arrays(sel: pl.DataFrame, law: Law):
    x = [sel[c].cast(pl.Float64).to_numpy() for c in law.xs]
    y = sel[law.y].cast(pl.Float64).to_numpy()
    return x, y


def _fit_once(law: Law, x, y, start: dict, fixed: dict, robust: bool):
    params = lmfit.Parameters()
    for p in law.params:
        lo, hi = law.bounds[p]
        params.add(p, value=fixed.get(p, start[p]), min=-np.inf if lo is None else lo,
                   max=np.inf if hi is None else hi, vary=p not in fixed)
        if p not in fixed and lo is not None and params[p].value <= lo:
            params[p].value = lo + 1e-9 + abs(start[p]) * 1e-3

    def residual(pars):
        v = pars.valuesdict()
        pred = law.fn(x, **v)
        if law.log_space:
            return np.log(np.clip(pred, 1e-12, None)) - np.log(y)
        return pred - y

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmfit.minimize(residual, params, method="least_squares",
                              loss="soft_l1" if robust else "linear", nan_policy="raise")


def _best_fit(law, x, y, n_starts, fixed, robust, rng):
    best = None
    for _ in range(n_starts):
        try:
            r = _fit_once(law, x, y, law.guess(x, y, rng), fixed, robust)
        except (ValueError, FloatingPointError):
            continue
        if np.isfinite(r.chisqr) and (best is None or r.chisqr < best.chisqr):
            best = r
    return best


def fit_law(df: pl.DataFrame, law_name: str, where: dict | None = None, *, fixed: dict | None = None,
            robust: bool = False, n_starts: int = 8, n_boot: int = 200, ci: float = 0.95, seed: int = 0) -> dict:
    if law_name not in LAWS:
        raise FitError(f"unknown law {law_name!r}; allowed values: {list(LAWS)}")
    law = LAWS[law_name]
    fixed = dict(fixed or {})
    sel = select_points(df, law, where)
    x, y = _arrays(sel, law)
    ok = np.isfinite(y) & np.all([np.isfinite(xi) for xi in x], axis=0)
    if law.log_space:
        ok &= y > 0
    n_dropped = int((~ok).sum())
    x, y, runs = [xi[ok] for xi in x], y[ok], sel["run_id"].to_numpy()[ok]
    n_free = len(law.params) - len(fixed)
    if len(y) <= n_free:
        raise FitError(f"{law_name}: {len(y)} usable points (after dropping {n_dropped} NaN/invalid) for "
                       f"{n_free} free parameters; need more points than parameters")
    if np.ptp(y) == 0:
        raise FitError(f"{law_name}: {law.y} is constant ({y[0]}) over all {len(y)} points; nothing to fit")
    for name, xi in zip(law.xs, x):
        if np.ptp(xi) == 0:
            raise FitError(f"{law_name}: {name} is constant ({xi[0]}); the law needs it to vary")
    rng = np.random.default_rng(seed)
    best = _best_fit(law, x, y, n_starts, fixed, robust, rng)
    if best is None or not best.success:
        raise FitError(f"{law_name}: the optimizer did not converge from {n_starts} starting points"
                       + (f" ({best.message})" if best is not None else ""))
    values = {p: float(best.params[p].value) for p in law.params}
    pred = law.fn(x, **values)
    fy = np.log(y) if law.log_space else y
    fp = np.log(np.clip(pred, 1e-12, None)) if law.log_space else pred
    r2 = 1 - float(np.sum((fy - fp) ** 2) / np.sum((fy - fy.mean()) ** 2))

    # bootstrap over whole runs
    uniq = np.unique(runs)
    boot = []
    for _ in range(n_boot if len(uniq) > 1 else 0):
        pick = rng.choice(uniq, size=len(uniq), replace=True)
        idx = np.concatenate([np.flatnonzero(runs == r) for r in pick])
        xb, yb = [xi[idx] for xi in x], y[idx]
        if len(np.unique(yb)) < 2 or any(np.ptp(xi) == 0 for xi in xb) or len(yb) <= n_free:
            continue
        try:
            rb = _fit_once(law, xb, yb, values, fixed, robust)
        except (ValueError, FloatingPointError):
            continue
        if rb.success:
            boot.append([rb.params[p].value for p in law.params])
    boot = np.array(boot) if boot else np.empty((0, len(law.params)))
    lo_q, hi_q = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    params = {}
    for j, p in enumerate(law.params):
        se = best.params[p].stderr
        params[p] = {
            "value": values[p],
            "stderr": float(se) if se is not None and np.isfinite(se) else None,
            "fixed": p in fixed,
            "ci_low": float(np.percentile(boot[:, j], lo_q)) if len(boot) else None,
            "ci_high": float(np.percentile(boot[:, j], hi_q)) if len(boot) else None,
        }
    return {
        "law": law_name, "formula": law.formula, "where": where or {}, "robust": robust,
        "params": params, "r2": r2, "n_points": int(len(y)), "n_runs": int(len(uniq)), "n_dropped_invalid": n_dropped,
        "status": {"success": bool(best.success), "message": str(best.message), "nfev": int(best.nfev),
                   "n_starts": n_starts},
        "bootstrap": {"n_requested": n_boot, "n_ok": int(len(boot)), "ci": ci, "resampled": "runs"},
        "points": {**{k: xi.tolist() for k, xi in zip(law.xs, x)}, law.y: y.tolist(), "run_id": runs.tolist()},
        "residuals": (fy - fp).tolist(),
        "_boot": boot.tolist(),
    }


def predict(result: dict, **xs) -> float:
    law = LAWS[result["law"]]
    v = {p: result["params"][p]["value"] for p in law.params}
    return float(law.fn([np.asarray(xs[c], dtype=float) for c in law.xs], **v))


def params_needed(result: dict, facts: float, epochs: float | None = None) -> dict:
    """Non-embedding params to store ``facts`` facts (at ``epochs`` for the joint law), with interval."""
    law = result["law"]
    names = LAWS[law].params

    def solve(v: dict) -> float:
        if law == "linear-size":
            return (facts - v["c"]) / v["k"]
        if law == "joint":
            if epochs is None:
                raise FitError("--solve for the joint law needs epochs=E")
            per_param = v["kstar"] - v["a"] * math.exp(-v["b"] * epochs)
            return (facts - v["c"]) / per_param if per_param > 0 else float("inf")
        raise FitError(f"--solve works with the linear-size and joint laws, not {law}")

    point = solve({p: result["params"][p]["value"] for p in names})
    draws = np.array([solve(dict(zip(names, b))) for b in result.get("_boot", [])])
    draws = draws[np.isfinite(draws) & (draws > 0)]
    ci = result["bootstrap"]["ci"]
    return {"facts": facts, "epochs": epochs, "non_embedding_params": point,
            "ci_low": float(np.percentile(draws, (1 - ci) / 2 * 100)) if len(draws) else None,
            "ci_high": float(np.percentile(draws, (1 + ci) / 2 * 100)) if len(draws) else None}


def holdout_largest(df: pl.DataFrame, law_name: str, where: dict | None = None, **kw) -> dict:
    """Fit without the largest model size, predict its capacity: the extrapolation's measured error."""
    law = LAWS[law_name]
    if "non_embedding_params" not in law.xs:
        raise FitError(f"holdout check needs a law in model size, not {law_name}")
    sel = select_points(df, law, where)
    largest = sel["non_embedding_params"].max()
    sizes = sel["non_embedding_params"].n_unique()
    if sizes < 3:
        raise FitError(f"holdout check needs >= 3 model sizes, have {sizes}")
    fit = fit_law(df.filter(pl.col("non_embedding_params") != largest), law_name, where, n_boot=0, **kw)
    held = sel.filter(pl.col("non_embedding_params") == largest)
    x = {c: held[c].cast(pl.Float64).to_numpy() for c in law.xs}
    pred = np.array([predict(fit, **{c: x[c][i] for c in law.xs}) for i in range(held.height)])
    obs = held[law.y].cast(pl.Float64).to_numpy()
    return {"held_out_params": int(largest), "predicted": pred.tolist(), "observed": obs.tolist(),
            "mean_rel_error": float(np.mean(np.abs(pred - obs) / np.maximum(np.abs(obs), 1e-12)))}


def save_fit(result: dict, path: str | Path) -> Path:
    from factscale.rundir import write_atomic

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, json.dumps(result, indent=1))
    return p


def format_table(result: dict) -> str:
    lines = [f"{result['law']}: {result['formula']}   ({result['n_points']} points, {result['n_runs']} runs, "
             f"R^2 = {result['r2']:.4f})",
             f"  {'param':<8} {'value':>12} {'stderr':>12} {int(result['bootstrap']['ci'] * 100)}% CI (run bootstrap)"]
    for p, v in result["params"].items():
        se = f"{v['stderr']:.4g}" if v["stderr"] is not None else "-"
        ci = f"[{v['ci_low']:.4g}, {v['ci_high']:.4g}]" if v["ci_low"] is not None else "-"
        lines.append(f"  {p:<8} {v['value']:>12.5g} {se:>12} {ci}{'  (fixed)' if v['fixed'] else ''}")
    st = result["status"]
    lines.append(f"  optimizer: {'ok' if st['success'] else 'FAILED'} ({st['message']}, {st['nfev']} evals, "
                 f"best of {st['n_starts']} starts); bootstrap {result['bootstrap']['n_ok']}/"
                 f"{result['bootstrap']['n_requested']} refits")
    return "\n".join(lines)
