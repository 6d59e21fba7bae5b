"""Scaling-law fits with honest uncertainties (lmfit over scipy's least_squares).

The laws themselves (formula, bounds, point selection, solver) live in ``factscale.analysis.laws``. Every law
fits the final probe of each completed run by default; probes in the middle of a schedule
(unannealed) only with ``include_unannealed``, and the result says so. Laws in model size leave out the
sizes the corpus caps (``capped_sizes``: capacity above ``max_fill`` of the facts trained on), and say so.

Each fit: several starting points (best kept), a sum-reduced loss (``robust`` = soft-L1), and an interval
of the kind that covers for its design (``factscale.analysis.intervals``: run bootstrap, regression
t-interval or trunk jackknife). No interval is given - and the result says why - with fewer than 8 runs or
fewer than 2 runs at some design point; a parameter at its bound gets none, nor does anything computed
from it; a bootstrap interval that misses its own point estimate is withheld, never printed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import warnings
from pathlib import Path

import lmfit
import numpy as np
import polars as pl
from tqdm import tqdm

from factscale.analysis import intervals
from factscale.analysis.laws import LAWS, MAX_FILL, MEASURE_CAP, MEASURES, Law
from factscale.analysis.vocab import BUDGET, SIZE
from factscale.errors import FitError

__all__ = ["LAWS", "FitError", "Law", "fit_law", "format_table", "holdout_largest", "params_needed", "predict",
           "predict_band", "save_fit"]
MIN_RUNS = 8  # below this many runs a bootstrap interval is not worth printing
MIN_RUNS_PER_POINT = 2  # runs (seeds) at each design point


LOG = logging.getLogger("factscale.fit")

def _fit_once(law: Law, x, y, start: dict, fixed: dict, robust: bool, limits: dict):
    params = lmfit.Parameters()
    for p in law.params:
        lo, hi = limits[p]
        lo, hi = -np.inf if lo is None else lo, np.inf if hi is None else hi
        v = fixed.get(p, start[p])
        if p not in fixed:  # a start strictly inside the bounds
            span = (hi - lo) if np.isfinite(hi - lo) else abs(v) + 1.0
            v = min(max(v, lo + 1e-9 * span), hi - 1e-9 * span)
        params.add(p, value=v, min=lo, max=hi, vary=p not in fixed)

    scale = np.maximum(np.abs(y), 1e-2 * np.max(np.abs(y)))  # relative residuals; near-zero points capped

    def residual(pars):
        pred = law.fn(x, **pars.valuesdict())
        if law.log_space:
            return np.log(np.clip(pred, 1e-12, None)) - np.log(y)
        return (pred - y) / scale if law.relative else pred - y

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmfit.minimize(residual, params, method="least_squares",
                              loss="soft_l1" if robust else "linear", nan_policy="raise")


def _best_fit(law, x, y, n_starts, fixed, robust, rng, limits):
    best = None
    for _ in range(n_starts):
        try:
            r = _fit_once(law, x, y, law.guess(x, y, rng), fixed, robust, limits)
        except (ValueError, FloatingPointError):
            continue
        if np.isfinite(r.chisqr) and (best is None or r.chisqr < best.chisqr):
            best = r
    return best


def capped_sizes(sel: pl.DataFrame, max_fill: float | None) -> tuple[pl.DataFrame, list[dict]]:
    """Leave out the model sizes whose mean capacity at some selected budget fills more than ``max_fill`` of
    the facts they trained on: there the corpus, not the model, bounds what is memorized, and a law in model
    size fitted through them bends (the demo's log-log slope 0.77 came from two such sizes). Fill is measured
    on raw capacity, whatever the law's measure."""
    if max_fill is None or max_fill >= 1 or not {"capacity", "n_facts"} <= set(sel.columns) or sel.height == 0:
        return sel, []
    name = [pl.col(SIZE).first()] if SIZE in sel.columns else []
    fill = (sel.group_by("non_embedding_params", "epoch")
            .agg((pl.col("capacity").cast(pl.Float64) / pl.col("n_facts")).mean().alias("fill"), *name)
            .group_by("non_embedding_params").agg(pl.col("fill").max(), *name).sort("non_embedding_params"))
    capped = fill.filter(pl.col("fill") > max_fill)
    excluded = [{"size": r.get(SIZE), "non_embedding_params": int(r["non_embedding_params"]), "fill": float(r["fill"])}
                for r in capped.iter_rows(named=True)]
    return sel.filter(~pl.col("non_embedding_params").is_in(capped["non_embedding_params"].implode())), excluded


def _shortfall(law: Law, x, n_free: int) -> str | None:
    """Why these points cannot determine the law (None if they can)."""
    for name, xi in zip(law.xs, x):
        need = law.min_distinct.get(name, 2)
        if len(np.unique(xi)) < need:
            return f"{name} takes {len(np.unique(xi))} distinct values; the law needs >= {need}"
    if len({tuple(v) for v in np.column_stack(x)}) <= n_free:
        return f"{len({tuple(v) for v in np.column_stack(x)})} distinct design points for {n_free} free parameters"
    return None


def _interval_refusal(run_keys: dict, n_boot: int) -> str | None:
    """Why no bootstrap interval is given (None if one is)."""
    if n_boot <= 0:
        return "no bootstrap requested"
    per_point: dict = {}
    for key in run_keys.values():
        per_point[key] = per_point.get(key, 0) + 1
    if len(run_keys) < MIN_RUNS:
        return f"{len(run_keys)} runs; an interval needs >= {MIN_RUNS} runs (add seeds)"
    thin = sum(n < MIN_RUNS_PER_POINT for n in per_point.values())
    if thin:
        return (f"{thin} of {len(per_point)} design points have fewer than {MIN_RUNS_PER_POINT} runs; "
                "repeat them with more seeds")
    return None


def fit_law(df: pl.DataFrame, law_name: str, where: dict | None = None, *, fixed: dict | None = None,
            robust: bool = False, n_starts: int = 8, n_boot: int = 200, ci: float = 0.95, seed: int = 0,
            include_unannealed: bool = False, measure: str | None = None, max_fill: float | None = MAX_FILL) -> dict:
    """Fit ``law_name`` on the rows ``where`` selects (see ``laws``). ``measure``: what a capacity law fits,
    ``capacity`` (facts memorized by exact match, the default) or ``capacity_above_chance`` (minus what the
    key-blind baseline also gets right: ``probing.keyblind``). ``max_fill``: laws in model size leave out
    sizes whose capacity fills more than this fraction of the facts they trained on (``capped_sizes``);
    None or 1 keeps every size."""
    if law_name not in LAWS:
        raise FitError(f"unknown law {law_name!r}; allowed values: {list(LAWS)}")
    law = LAWS[law_name]
    if measure not in (None, law.y):
        if law.y != "capacity" or measure not in MEASURES:
            raise FitError(f"--measure {measure!r}: {law_name} fits {law.y}; capacity laws take one of {MEASURES}")
        law = dataclasses.replace(law, y=measure)
    fixed = dict(fixed or {})
    sel = law.select(df, where, include_unannealed)
    if max_fill is not None and not 0 < max_fill <= 1:
        raise FitError(f"--max-fill {max_fill}: a fraction of the facts trained on, in (0, 1] (1 keeps every size)")
    sel, excluded = capped_sizes(sel, max_fill) if law.capped_sizes else (sel, [])
    x = [sel[c].cast(pl.Float64).to_numpy() for c in law.xs]
    y = sel[law.y].cast(pl.Float64).to_numpy()
    ok = np.isfinite(y) & np.all([np.isfinite(xi) for xi in x], axis=0)
    if law.log_space:
        ok &= y > 0
    n_dropped = int((~ok).sum())
    sel = sel.filter(pl.Series(ok))
    x, y = [xi[ok] for xi in x], y[ok]
    runs = sel["run_id"].to_numpy()
    n_free = len(law.params) - len(fixed)
    why = _shortfall(law, x, n_free) if len(y) else f"0 usable points (after dropping {n_dropped} NaN/invalid)"
    if why:
        hint = "" if include_unannealed or BUDGET not in law.design else \
            " (one end-of-schedule point per run: add epoch budgets, or fit intermediate probes with --include-unannealed)"
        if excluded:
            hint += (f" ({len(excluded)} sizes left out as capped by the corpus, filling > {max_fill:.0%} of their "
                     "facts: see --max-fill)")
        raise FitError(f"{law_name}: {why}{hint}")
    if len(y) <= n_free:
        raise FitError(f"{law_name}: {len(y)} usable points (after dropping {n_dropped} NaN/invalid) for "
                       f"{n_free} free parameters; need more points than parameters")
    if np.ptp(y) == 0:
        raise FitError(f"{law_name}: {law.y} is constant ({y[0]}) over all {len(y)} points; nothing to fit")
    limits = law.limits(sel, MEASURE_CAP.get(law.y, "n_facts"))
    rng = np.random.default_rng(seed)
    best = _best_fit(law, x, y, n_starts, fixed, robust, rng, limits)
    if best is None or not best.success:
        raise FitError(f"{law_name}: the optimizer did not converge from {n_starts} starting points"
                       + (f" ({best.message})" if best is not None else ""))
    values = {p: float(best.params[p].value) for p in law.params}
    pred = law.fn(x, **values)
    fy = np.log(y) if law.log_space else y
    fp = np.log(np.clip(pred, 1e-12, None)) if law.log_space else pred
    r2 = 1 - float(np.sum((fy - fp) ** 2) / np.sum((fy - fy.mean()) ** 2))

    # the interval: run bootstrap, regression t-interval or trunk jackknife (factscale.analysis.intervals)
    design = [c for c in law.design if c in sel.columns]
    run_keys = {r: tuple(k) for r, *k in sel.group_by("run_id").agg([pl.col(c).first() for c in design])
                .iter_rows()}
    trunks = {r: r for r in run_keys}  # the independent unit: a cooldown branch's trunk, else the run
    if "branch_of" in sel.columns:
        trunk = dict(sel.group_by("run_id").agg(pl.col("branch_of").first()).iter_rows())
        trunks = {r: trunk.get(r) or r for r in run_keys}
    refusal = _interval_refusal(run_keys, n_boot)
    kind = None if refusal else intervals.choose(run_keys, trunks, robust)

    def refit(idx):
        xb, yb = [xi[idx] for xi in x], y[idx]
        if _shortfall(law, xb, n_free) or np.ptp(yb) == 0:
            return "short"
        try:
            rb = _fit_once(law, xb, yb, values, fixed, robust, limits)
        except (ValueError, FloatingPointError):
            return None
        return [rb.params[p].value for p in law.params] if rb.success else None

    boot, n_short, cov, dof = np.empty((0, len(law.params))), 0, None, None
    if kind == "bootstrap":
        LOG.info(f"fitting {law_name}{' ' + str(where) if where else ''}: {n_boot} bootstrap refits of "
                 f"{len(run_keys)} runs")
        progress = lambda it: tqdm(it, desc=f"bootstrap {law_name}", leave=False,  # noqa: E731
                                   disable=not sys.stderr.isatty() or n_boot < 50)
        boot, n_short = intervals.bootstrap(refit, runs, run_keys, n_boot, rng, progress)
        if len(boot) < n_boot / 2:
            refusal = f"only {len(boot)} of {n_boot} resamples could be fitted"
        boot = boot if len(boot) else np.empty((0, len(law.params)))
    elif kind == "t":
        cov, dof = getattr(best, "covar", None), len(run_keys) - n_free
        if cov is None or dof < 1:
            refusal = "the fit gives no covariance" if dof >= 1 else f"{dof} residual degrees of freedom"
    elif kind == "jackknife":
        cov, G, why = intervals.jackknife(refit, runs, trunks, [law.params.index(v) for v in best.var_names])
        dof, refusal = G - 1, why
    if kind in ("t", "jackknife") and not refusal:
        boot = intervals.covariance_draws(values, law.params, list(best.var_names), cov, dof, ci, limits, n_boot, rng)
    params = {}
    for j, p in enumerate(law.params):
        se = best.params[p].stderr
        if cov is not None and p in best.var_names:  # the standard error the interval uses
            se = math.sqrt(max(0.0, float(np.asarray(cov)[best.var_names.index(p)][best.var_names.index(p)])))
        lo, hi = limits[p]
        entry = {"value": values[p], "stderr": float(se) if se is not None and np.isfinite(se) else None,
                 "fixed": p in fixed, "bounds": [lo, hi],
                 "at_bound": p not in fixed and any(b is not None and math.isclose(values[p], b, rel_tol=1e-6,
                                                                                    abs_tol=1e-12) for b in (lo, hi)),
                 "ci_low": None, "ci_high": None, "no_interval": refusal, "ci_clipped": None}
        if entry["at_bound"]:  # the fit pinned it: its draws pile up at the bound, an interval would be false
            side = "<=" if hi is not None and math.isclose(values[p], hi, rel_tol=1e-6, abs_tol=1e-12) else ">="
            entry["no_interval"] = f"{p} at its bound ({side} {values[p]:.4g}): the data do not determine it"
        elif not refusal and p not in fixed and kind in ("t", "jackknife"):
            if entry["stderr"] is None:
                entry["no_interval"] = "the fit gives no standard error"
            else:
                entry.update(intervals.t_interval(values[p], entry["stderr"], dof, ci, (lo, hi)))
        elif not refusal and p not in fixed:
            entry.update(intervals.percentile(boot[:, j], values[p], ci))
        params[p] = entry
    result = {
        "law": law_name, "formula": law.formula, "measure": law.y, "where": where or {}, "robust": robust,
        "include_unannealed": include_unannealed, "params": params, "r2": r2, "n_points": int(len(y)),
        "n_runs": len(run_keys), "n_unannealed": int((~sel["annealed"]).sum()), "n_dropped_invalid": n_dropped,
        "status": {"success": bool(best.success), "message": str(best.message), "nfev": int(best.nfev),
                   "n_starts": n_starts},
        "interval": intervals.KINDS[kind] if kind and not refusal else None,
        "interval_dof": dof if kind in ("t", "jackknife") and not refusal else None,
        "excluded_capped": excluded, "max_fill": max_fill if law.capped_sizes else None,
        "bootstrap": {"n_requested": n_boot if kind == "bootstrap" else 0, "n_ok": int(len(boot)),
                      "n_too_few_design_points": n_short,
                      "ci": ci, "resampled": ("trunks, deleted one at a time" if kind == "jackknife" else
                                              "runs, stratified by " + (", ".join(design) or "nothing")),
                      "no_interval": refusal},
        "points": {**{k: xi.tolist() for k, xi in zip(law.xs, x)}, law.y: y.tolist(), "run_id": runs.tolist(),
                   "annealed": sel["annealed"].to_list()},
        "residuals": (fy - fp).tolist(),
        "_boot": boot.tolist(),
    }
    if law.companion:
        try:
            result["companion"] = fit_law(df, law.companion, where, robust=robust, n_starts=n_starts, n_boot=n_boot,
                                          ci=ci, seed=seed, include_unannealed=include_unannealed,
                                          measure=measure, max_fill=max_fill)
        except FitError as e:
            result["companion"] = {"law": law.companion, "error": str(e)}
    return result


def _values(result: dict) -> dict:
    return {p: v["value"] for p, v in result["params"].items()}


def predict(result: dict, **xs):
    """The fitted law at the given x values (scalars -> float, arrays -> array)."""
    law = LAWS[result["law"]]
    out = law.fn([np.asarray(xs[c], dtype=float) for c in law.xs], **_values(result))
    return float(out) if np.ndim(out) == 0 else out


def predict_band(result: dict, **xs):
    """Pointwise bootstrap band (low, high) of the law's prediction; None when there is no interval or a
    fitted parameter sits at its bound."""
    law = LAWS[result["law"]]
    if result["bootstrap"]["no_interval"] or not result.get("_boot"):
        return None
    if any(v["at_bound"] for v in result["params"].values()):
        return None  # the draws pile up at the bound: a band would show the bound, not the uncertainty
    x = [np.asarray(xs[c], dtype=float) for c in law.xs]
    preds = np.array([law.fn(x, **dict(zip(law.params, b))) for b in result["_boot"]])
    ci = result["bootstrap"]["ci"]
    return np.percentile(preds, (1 - ci) / 2 * 100, axis=0), np.percentile(preds, (1 + ci) / 2 * 100, axis=0)


def params_needed(result: dict, facts: float, epochs: float | None = None) -> dict:
    """Non-embedding params to store ``facts`` facts (at ``epochs`` for the joint law), with interval."""
    law = LAWS[result["law"]]
    if law.solve is None:
        raise FitError(f"--solve works with the {[n for n, w in LAWS.items() if w.solve]} laws, not {law.name}")
    point = law.solve(_values(result), facts, epochs)
    draws = np.array([law.solve(dict(zip(law.params, b)), facts, epochs) for b in result.get("_boot", [])])
    usable = draws[np.isfinite(draws) & (draws > 0)]
    bound = [v["no_interval"] for v in result["params"].values() if v["at_bound"]]
    out = {"facts": facts, "epochs": epochs, "non_embedding_params": point, "ci_low": None, "ci_high": None,
           "n_draws": int(len(draws)), "n_dropped": int(len(draws) - len(usable)),
           "no_interval": bound[0] if bound else result["bootstrap"]["no_interval"]}
    if not out["no_interval"]:
        if not (np.isfinite(point) and point > 0):
            out["no_interval"] = "the fitted law never reaches that many facts"
        elif len(usable) < len(draws) / 2:
            out["no_interval"] = f"{out['n_dropped']} of {len(draws)} draws never reach that many facts"
        else:
            out.update(intervals.percentile(usable, point, result["bootstrap"]["ci"]))
    return out


def holdout_largest(df: pl.DataFrame, law_name: str, where: dict | None = None, include_unannealed: bool = False,
                    max_fill: float | None = MAX_FILL, **kw) -> dict:
    """Fit without the largest model size the corpus does not cap, predict its capacity: the extrapolation's
    measured error."""
    law = LAWS[law_name]
    if "non_embedding_params" not in law.xs:
        raise FitError(f"holdout check needs a law in model size, not {law_name}")
    sel, _ = capped_sizes(law.select(df, where, include_unannealed), max_fill)
    df = df.filter(pl.col("non_embedding_params").is_in(sel["non_embedding_params"].unique().implode()))
    largest = sel["non_embedding_params"].max()
    sizes = sel["non_embedding_params"].n_unique()
    if sizes < 3:
        raise FitError(f"holdout check needs >= 3 model sizes, have {sizes}")
    fit = fit_law(df.filter(pl.col("non_embedding_params") != largest), law_name, where, n_boot=0,
                  include_unannealed=include_unannealed, max_fill=max_fill, **kw)
    held = sel.filter(pl.col("non_embedding_params") == largest)
    pred = np.atleast_1d(predict(fit, **{c: held[c].cast(pl.Float64).to_numpy() for c in law.xs}))
    obs = held[fit["measure"]].cast(pl.Float64).to_numpy()
    return {"held_out_params": int(largest), "predicted": pred.tolist(), "observed": obs.tolist(),
            "mean_rel_error": float(np.mean(np.abs(pred - obs) / np.maximum(np.abs(obs), 1e-12)))}


def save_fit(result: dict, path: str | Path) -> Path:
    from factscale.fsio import write_atomic

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, json.dumps(result, indent=1))
    return p


def format_table(result: dict) -> str:
    ci_pct = int(round(result["bootstrap"]["ci"] * 100))
    sel = "end-of-schedule probes" if not result["n_unannealed"] else \
        f"incl. {result['n_unannealed']} UNANNEALED intermediate probes"
    measure = "" if result.get("measure", "capacity") == "capacity" else f" on {result['measure']}"
    lines = [f"{result['law']}{measure}: {result['formula']}   ({result['n_points']} points from {result['n_runs']} runs, "
             f"{sel}; R^2 = {result['r2']:.4f})",
             f"  {'param':<8} {'value':>12} {'stderr':>12} {ci_pct}% CI ({result.get('interval') or 'none'})"]
    for p, v in result["params"].items():
        se = f"{v['stderr']:.4g}" if v["stderr"] is not None else "-"
        ci = f"[{v['ci_low']:.4g}, {v['ci_high']:.4g}]" if v["ci_low"] is not None else "-"
        note = "  (fixed)" if v["fixed"] else (f"  ({v['no_interval']})" if v["at_bound"] else "")
        if v.get("ci_clipped"):
            note += f"  ({v['ci_clipped']} end clipped at the parameter's bound: that end is the bound, not the data)"
        lines.append(f"  {p:<8} {v['value']:>12.5g} {se:>12} {ci}{note}")
    b = result["bootstrap"]
    st = result["status"]
    how = (f"bootstrap {b['n_ok']}/{b['n_requested']} refits, {b['n_too_few_design_points']} resamples dropped "
           "for too few design points") if b["n_requested"] else \
        (f"{result['interval']} on {result['interval_dof']} dof" if result.get("interval") else "no interval")
    lines.append(f"  optimizer: {'ok' if st['success'] else 'FAILED'} ({st['message']}, {st['nfev']} evals, "
                 f"best of {st['n_starts']} starts); {how}")
    if result.get("excluded_capped"):
        left = ", ".join(f"{e['size'] or e['non_embedding_params']} ({e['fill']:.0%})" for e in result["excluded_capped"])
        lines.append(f"  left out, capped by the corpus (capacity > {result['max_fill']:.0%} of the facts trained on): "
                     f"{left}; --max-fill 1 keeps them")
    if b["no_interval"]:
        lines.append(f"  no interval: {b['no_interval']}")
    for p, v in result["params"].items():
        if v["no_interval"] and v["no_interval"] != b["no_interval"] and not v["fixed"] and not v["at_bound"]:
            lines.append(f"  no interval for {p}: {v['no_interval']}")
    comp = result.get("companion")
    if comp and "error" in comp:
        lines.append(f"  {comp['law']} (log-log check) not fitted: {comp['error']}")
    elif comp:
        s = comp["params"]["s"]
        ci = f"[{s['ci_low']:.3g}, {s['ci_high']:.3g}]" if s["ci_low"] is not None else f"no interval: {s['no_interval']}"
        lines.append(f"  log-log slope s = {s['value']:.3f} ({ci}; s = 1 is linear in N), R^2 = {comp['r2']:.4f}")
    return "\n".join(lines)
