"""The intervals a fit prints, and which one it uses (``choose``).

Three kinds, each where it covers as it says (measured by simulation: tests/analysis/test_fit.py):

- **run bootstrap** - >= 3 independent runs at every design point: percentile intervals from refits on
  n-1 of each design point's n runs, drawn with replacement (stratified by the design point).
- **t-interval (weighted least squares)** - fewer than 3 runs at some design point: drawing n-1 of 2 seeds
  leaves one run per point and the percentile bootstrap covers ~70%; the fit's own covariance with
  Student-t quantiles on runs - free parameters residual degrees of freedom covers ~95%.
- **trunk jackknife** - cooldown branches of one trunk share its errors (its data order, its weights up
  to the fork): the trunk, not the run, is the independent unit. Delete-one-trunk refits give the
  jackknife covariance (G-1)/G sum (theta_-g - mean)(theta_-g - mean)^T, with t quantiles on G - 1
  degrees of freedom. With 2 seeds (G = 2 trunks at one size) that is t(1) = 12.7 standard errors: wide,
  and as wide as 2 independent units honestly allow.

For the two regression kinds, predictions and solves (bands, ``--solve``) are computed over draws from
the covariance, widened from normal to t quantiles, each clipped to the law's domain (C* <= the facts
trained on): the parameter intervals are clipped the same way (the truth lies in the domain, so clipping
loses no coverage).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats

BOOT_RUNS_PER_POINT = 3  # below this, the regression t-interval, not the run bootstrap
KINDS = {"bootstrap": "run bootstrap", "t": "t-interval (weighted least squares)",
         "jackknife": "trunk jackknife (t, trunks - 1 dof)"}


def choose(run_keys: dict, trunks: dict, robust: bool) -> str:
    """Which interval: ``jackknife`` when runs share trunks, ``t`` with < 3 runs at some design point (least
    squares only: a soft-L1 fit has no such covariance), else ``bootstrap``."""
    if len(set(trunks.values())) < len(run_keys):
        return "jackknife"
    per_point = [list(run_keys.values()).count(k) for k in set(run_keys.values())]
    return "t" if not robust and min(per_point) < BOOT_RUNS_PER_POINT else "bootstrap"


def bootstrap(refit: Callable, runs: np.ndarray, run_keys: dict, n_boot: int, rng, progress) -> tuple[np.ndarray, int]:
    """Refits on n-1 of each design point's n runs, with replacement (the bootstrap variance of a stratum
    mean is then s^2/n, not s^2 (n-1)/n^2: with 2 seeds a plain resample would halve it). ``refit(idx)``
    returns the parameter vector, None if the resample cannot be fitted, or "short" when it has too few
    design points. Returns (draws, resamples dropped as short)."""
    strata: dict = {}
    for r, k in sorted(run_keys.items()):
        strata.setdefault(k, []).append(r)
    by_run = {r: np.flatnonzero(runs == r) for r in run_keys}
    draws, n_short = [], 0
    for _ in progress(range(n_boot)):
        pick = [r for members in strata.values() for r in rng.choice(members, size=len(members) - 1, replace=True)]
        out = refit(np.concatenate([by_run[r] for r in pick]))
        if isinstance(out, str):
            n_short += 1
        elif out is not None:
            draws.append(out)
    return np.array(draws), n_short


def jackknife(refit: Callable, runs: np.ndarray, trunks: dict, free: list[int]) -> tuple[np.ndarray | None, int, str | None]:
    """Delete-one-trunk jackknife covariance of the free parameters (indices ``free`` of the parameter vector).
    Returns (covariance or None, number of trunks G, why there is none)."""
    groups = sorted(set(trunks.values()))
    if len(groups) < 2:
        return None, len(groups), "all runs come from one trunk: nothing to compare it with (add seeds)"
    trunk_of = np.array([trunks[r] for r in runs])
    est = []
    for g in groups:
        out = refit(np.flatnonzero(trunk_of != g))
        if out is None or isinstance(out, str):
            return None, len(groups), f"the fit without trunk {g} fails: the others cannot determine the law"
        est.append(np.asarray(out)[free])
    est = np.array(est)
    dev = est - est.mean(axis=0)
    G = len(groups)
    return (G - 1) / G * dev.T @ dev, G, None


def t_interval(value: float, se: float, dof: int, ci: float, limits: tuple) -> dict:
    """value +- t quantile x se, clipped to the parameter's limits; ``ci_clipped`` names a clipped end (that
    end is the bound, not the data's). A zero standard error gives no interval: refits that all agree
    exactly say nothing about the spread."""
    if not se > 0:
        return {"no_interval": "standard error 0: the refits agree exactly, nothing measures the spread"}
    half = float(stats.t.ppf((1 + ci) / 2, dof)) * se
    lo, hi = limits
    low = value - half if lo is None or value - half > lo else lo
    high = value + half if hi is None or value + half < hi else hi
    clipped = [name for name, cut in (("low", low != value - half), ("high", high != value + half)) if cut]
    return {"ci_low": low, "ci_high": high, "no_interval": None, "ci_clipped": ",".join(clipped) or None}


def covariance_draws(values: dict, params: tuple, var_names: list, cov, dof: int, ci: float, limits: dict,
                     n: int, rng) -> np.ndarray:
    """Parameter vectors drawn from N(values, cov) widened from normal to t(dof) quantiles, each clipped to its
    limits: what predictions and solves are computed over, consistent with the parameters' t-intervals."""
    z, t = stats.norm.ppf((1 + ci) / 2), stats.t.ppf((1 + ci) / 2, dof)
    mean = np.array([values[v] for v in var_names])
    free = rng.multivariate_normal(mean, np.asarray(cov) * (t / z) ** 2, size=n)
    out = np.array([[values[p] for p in params]] * n, dtype=float)
    for j, v in enumerate(var_names):
        lo, hi = limits[v]
        out[:, params.index(v)] = np.clip(free[:, j], -np.inf if lo is None else lo, np.inf if hi is None else hi)
    return out


def percentile(draws: np.ndarray, point: float, ci: float) -> dict:
    """Percentile interval of bootstrap draws; withheld (with the reason) if it misses the point estimate."""
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return {"no_interval": "no usable bootstrap draws"}
    lo, hi = (float(np.percentile(draws, q)) for q in ((1 - ci) / 2 * 100, (1 + ci) / 2 * 100))
    tol = 1e-9 * max(abs(lo), abs(hi), abs(point), 1e-300)
    if not lo - tol <= point <= hi + tol:
        return {"no_interval": f"the bootstrap interval [{lo:.4g}, {hi:.4g}] misses the point estimate "
                               f"{point:.4g}: resampled fits disagree with the full fit"}
    return {"ci_low": lo, "ci_high": hi, "no_interval": None}
