"""The scaling laws factscale fits, each carrying its own behaviour.

Laws (N = non-embedding params, E = epochs, D = training facts, C = capacity in facts):

- ``linear-size``:  C(N) = k*N + c            (Lu et al.'s linear law at fixed epochs; c=0 optional)
- ``power-size``:   C(N) = k*N^s              (the same points in log-log: s = 1 means linear in N)
- ``exp-epochs``:   C(E) = C* - a*exp(-b*E)   (their negative exponential at fixed size; C* <= facts)
- ``joint``:        C(N, E) = N*(k* - a*exp(-b*E)) + c   (one fit over the whole grid)
- ``power-gen``:    L(D) = Dc * D^alpha (+ L_inf)        (held-out value loss vs training facts)
- ``power-excess``: E(D) = Dc * D^alpha   (held-out code length of a predictable attribute above its known
                    floor, bits per fact: ``analysis.studies.generalization_table`` makes the rows)
- ``sigmoid-recall``: MR(N, k) = sigmoid(a ln N + b ln k + c)   (recall of a frequency group vs size and
                    its exposures k = repeats x epochs: probe rows broken down by ``freq_level``)
- ``bits-epochs``:  bits/param(E) = B* - a*exp(-b*E)     (beside Allen-Zhu & Li's ~1 and ~2 bits)

A ``Law`` holds its formula, bounds (some from the data: C* cannot exceed the facts trained on), the
rows it fits (``select``: the final probe of each completed run unless intermediate probes are asked
for), its design columns (bootstrap strata), starting points and how to solve it for N, so the fitter,
the CLI and the figures never branch on a law's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import polars as pl

from factscale.analysis.vocab import BUDGET, SIZE, apply_where, label_annealed, overall, where_alias
from factscale.errors import FitError


MEASURES = ("capacity", "capacity_above_chance", "keyed_bits")  # what a capacity law can be fitted on
# the column that bounds a capacity law's asymptote, per measure: facts for facts; none for keyed bits (a
# miscalibrated key-blind code can exceed the prior, so the prior is no bound)
MEASURE_CAP = {"capacity": "n_facts", "capacity_above_chance": "n_facts", "keyed_bits": None}
MAX_FILL = 0.6  # laws in model size leave out sizes that fill more of their facts than this (fit.capped_sizes)


def _col_max(sel: pl.DataFrame, expr: pl.Expr, needs: tuple[str, ...]) -> float | None:
    if any(c not in sel.columns for c in needs):
        return None
    v = sel.select(expr.max()).item()
    return float(v) if v is not None and np.isfinite(v) else None


def _col_min(sel: pl.DataFrame, expr: pl.Expr, needs: tuple[str, ...]) -> float | None:
    if any(c not in sel.columns for c in needs):
        return None
    v = sel.select(expr.min()).item()
    return float(v) if v is not None and np.isfinite(v) else None


@dataclass(frozen=True)
class Law:
    name: str
    formula: str
    params: tuple[str, ...]
    xs: tuple[str, ...]  # result columns feeding the independent variables
    y: str
    fn: Callable
    guess: Callable  # (x arrays, y, rng) -> starting values
    bounds: dict  # param -> (lo, hi); None = unbounded
    split: str = "train"
    log_space: bool = False  # residuals in log y (laws spanning decades)
    relative: bool = False  # residuals relative to y: sizes spanning decades each count, not just the largest
    upper: Callable | None = None  # (selected rows, cap column) -> {param: upper bound from the data}
    fixed_over: tuple[tuple[str, str], ...] = ()  # (column, what) that must be constant over the points
    design: tuple[str, ...] = ()  # run-level columns naming a run's design point (bootstrap strata)
    min_distinct: dict = field(default_factory=dict)  # x column -> distinct values the law needs
    solve: Callable | None = None  # (param values, facts, epochs) -> non-embedding params
    companion: str | None = None  # a law fitted beside this one on the same points (its log-log test)
    intercept: str | None = None  # the parameter --no-intercept fixes at 0
    offset: str | None = None  # the parameter --no-offset fixes at 0
    capped_sizes: bool = False  # leave out sizes the corpus caps (fit.capped_sizes, --max-fill)
    by: str | None = None  # fitted on the rows broken down by this group column, not the split's overall rows
    derive: Callable | None = None  # (selected rows) -> rows with the derived x columns (e.g. exposures)

    def zeroed(self, no_intercept: bool = False, no_offset: bool = False) -> dict:
        """The ``fixed`` dict for --no-intercept / --no-offset (options a law without them ignores)."""
        names = [self.intercept if no_intercept else None, self.offset if no_offset else None]
        return {p: 0.0 for p in names if p}

    def select(self, df: pl.DataFrame, where: dict | None = None, include_unannealed: bool = False) -> pl.DataFrame:
        """The rows this law is fitted on: its split's overall rows, ``where``, end-of-schedule probes."""
        for col in ("split", "group_by", "epoch", BUDGET, self.y, *(() if self.derive else self.xs)):
            if col not in df.columns:
                raise FitError(f"results table has no column {col!r}; is it a factscale results table?")
        if self.by is None:
            rows = overall(df, self.split)
        else:
            rows = df.filter((pl.col("split") == self.split) & (pl.col("group_by") == self.by))
            if rows.height == 0:
                raise FitError(f"{self.name} is fitted on probe rows broken down by {self.by!r}; the results have "
                               f"none (probe.group_columns: [{self.by}])")
        sel = label_annealed(apply_where(rows, where, FitError))
        sel = self.derive(sel) if self.derive else sel
        if not include_unannealed:
            ends = sel.filter(pl.col("annealed"))
            if ends.height == 0 and sel.height:
                raise FitError(f"{self.name}: none of the {sel.height} selected probes is the final probe of a "
                               f"completed schedule (epochs {sorted(sel['epoch'].unique().to_list())}); "
                               "fit intermediate probes with --include-unannealed")
            sel = ends
        for col, what in self.fixed_over:
            key = SIZE if col == "non_embedding_params" and SIZE in sel.columns else col
            if key not in sel.columns:  # a hand-made table without the column: nothing to mix
                continue
            vals = sel[key].unique().sort()
            if len(vals) > 1:
                alias = where_alias(SIZE if col == "non_embedding_params" else col)
                raise FitError(f"{self.name} is a law at fixed {what} but the runs have {what} "
                               f"{vals.to_list()}; choose one with --where {alias}=...")
        return sel

    def limits(self, sel: pl.DataFrame, cap: str | None = "n_facts") -> dict:
        """Each parameter's (low, high); ``cap``: the column bounding a capacity law's asymptote (None: none)."""
        lim = dict(self.bounds)
        for p, hi in (self.upper(sel, cap) if self.upper else {}).items():
            if hi is not None:
                lim[p] = (lim[p][0], hi)
        return lim


def _exp_guess(x, y, rng):
    (e,) = x
    top = float(np.max(y)) * rng.uniform(1.0, 2.0)
    return {"cstar": top, "a": top * rng.uniform(0.5, 1.5), "b": rng.uniform(0.1, 3.0) / max(np.median(e), 1e-9)}


def _solve_linear(v, facts, epochs):
    return (facts - v["c"]) / v["k"] if v["k"] > 0 else float("inf")


def _solve_power(v, facts, epochs):
    return (facts / v["k"]) ** (1 / v["s"]) if v["k"] > 0 and v["s"] > 0 else float("inf")


def _solve_joint(v, facts, epochs):
    if epochs is None:
        raise FitError("--solve for the joint law needs epochs=E")
    per_param = v["kstar"] - v["a"] * math.exp(-v["b"] * epochs)
    return (facts - v["c"]) / per_param if per_param > 0 else float("inf")


def _exposures(sel: pl.DataFrame) -> pl.DataFrame:
    """Exposures of a frequency group's facts: its repeats per epoch (the group ``x<k>``) x the epochs."""
    k = pl.col("group").str.strip_prefix("x").cast(pl.Int64, strict=False)
    bad = sel.filter(k.is_null())["group"].unique().to_list()
    if bad:
        raise FitError(f"frequency groups {bad[:5]} are not x<repeats> (the frequency variant's freq_level)")
    return sel.with_columns(exposures=(k * pl.col("epoch")).cast(pl.Float64))


def _logit_guess(x, y, rng):
    (n, k) = (np.log(x[0]), np.log(x[1]))
    a, b = rng.uniform(0.2, 2.0), rng.uniform(0.2, 2.0)
    m = float(np.clip(np.mean(y), 0.02, 0.98))
    return {"a": a, "b": b, "c": math.log(m / (1 - m)) - a * float(n.mean()) - b * float(k.mean())}


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


_N = pl.col("non_embedding_params").cast(pl.Float64)
_AT_FIXED_EPOCHS = (("epoch", "epochs"),)
_AT_FIXED_SIZE = (("non_embedding_params", "size"),)
# laws in D fix neither the epochs nor the size: a sweep may fix the epochs or the optimizer steps per D
# (sweeps/generalization.yaml links corpus.max_facts and train.epochs); which one is the design's choice

LAWS: dict[str, Law] = {law.name: law for law in [
    Law("linear-size", "C(N) = k*N + c", ("k", "c"), ("non_embedding_params",), "capacity",
        lambda x, k, c: k * x[0] + c,
        lambda x, y, rng: {"k": float(np.max(y) / np.max(x[0])) * rng.uniform(0.3, 3), "c": rng.normal(0, 1) * np.std(y)},
        {"k": (None, None), "c": (None, None)}, relative=True, fixed_over=_AT_FIXED_EPOCHS,
        design=("non_embedding_params",),
        min_distinct={"non_embedding_params": 2}, solve=_solve_linear, companion="power-size", intercept="c",
        capped_sizes=True),
    Law("power-size", "C(N) = k*N^s", ("k", "s"), ("non_embedding_params",), "capacity",
        lambda x, k, s: k * np.power(x[0], s),
        lambda x, y, rng: {"s": rng.uniform(0.5, 1.5), "k": float(np.median(y / x[0])) * rng.uniform(0.5, 2)},
        {"k": (0, None), "s": (None, None)}, log_space=True, fixed_over=_AT_FIXED_EPOCHS,
        design=("non_embedding_params",), min_distinct={"non_embedding_params": 2}, solve=_solve_power,
        capped_sizes=True),
    Law("exp-epochs", "C(E) = cstar - a*exp(-b*E)", ("cstar", "a", "b"), ("epoch",), "capacity",
        lambda x, cstar, a, b: cstar - a * np.exp(-b * x[0]), _exp_guess,
        {"cstar": (0, None), "a": (None, None), "b": (0, None)},
        upper=lambda sel, cap: {"cstar": cap and _col_max(sel, pl.col(cap).cast(pl.Float64), (cap,))},  # C* <= facts
        fixed_over=_AT_FIXED_SIZE, design=(BUDGET,), min_distinct={"epoch": 4}),
    Law("joint", "C(N, E) = N*(kstar - a*exp(-b*E)) + c", ("kstar", "a", "b", "c"),
        ("non_embedding_params", "epoch"), "capacity",
        lambda x, kstar, a, b, c: x[0] * (kstar - a * np.exp(-b * x[1])) + c,
        lambda x, y, rng: {"kstar": float(np.max(y / x[0])) * rng.uniform(1, 2),
                           "a": float(np.max(y / x[0])) * rng.uniform(0.5, 2),
                           "b": rng.uniform(0.1, 3.0) / max(np.median(x[1]), 1e-9), "c": 0.0},
        {"kstar": (0, None), "a": (None, None), "b": (0, None), "c": (None, None)}, relative=True,
        # N*kstar (C* without the intercept) of every fitted size <= the facts it trained on
        upper=lambda sel, cap: {"kstar": cap and _col_min(sel, pl.col(cap).cast(pl.Float64) / _N, (cap,))},
        design=("non_embedding_params", BUDGET), min_distinct={"non_embedding_params": 2, "epoch": 3},
        solve=_solve_joint, intercept="c", capped_sizes=True),
    Law("power-gen", "L(D) = Dc * D^alpha + linf", ("dc", "alpha", "linf"), ("train_facts",), "value_loss",
        lambda x, dc, alpha, linf: dc * np.power(x[0], alpha) + linf,
        lambda x, y, rng: {"dc": float(np.max(y)) * rng.uniform(0.5, 5), "alpha": -rng.uniform(0.02, 0.8), "linf": 0.0},
        {"dc": (0, None), "alpha": (-5, 5), "linf": (0, None)}, split="heldout", log_space=True,
        design=("train_facts",), min_distinct={"train_facts": 3}, offset="linf"),
    Law("power-excess", "E(D) = Dc * D^alpha", ("dc", "alpha"), ("train_facts",), "excess_bits",
        lambda x, dc, alpha: dc * np.power(x[0], alpha),
        lambda x, y, rng: {"dc": float(np.max(y)) * rng.uniform(0.5, 5), "alpha": -rng.uniform(0.02, 0.8)},
        {"dc": (0, None), "alpha": (-5, 5)}, split="heldout", log_space=True,
        design=("train_facts",), min_distinct={"train_facts": 3}),
    Law("sigmoid-recall", "MR(N, k) = 1 / (1 + exp(-(a*ln N + b*ln k + c)))", ("a", "b", "c"),
        ("non_embedding_params", "exposures"), "mr",
        lambda x, a, b, c: _sigmoid(a * np.log(x[0]) + b * np.log(x[1]) + c), _logit_guess,
        {"a": (None, None), "b": (None, None), "c": (None, None)}, by="freq_level", derive=_exposures,
        design=("non_embedding_params", BUDGET), min_distinct={"non_embedding_params": 2, "exposures": 2}),
    Law("bits-epochs", "bits/param(E) = cstar - a*exp(-b*E)", ("cstar", "a", "b"), ("epoch",), "bits_per_param",
        lambda x, cstar, a, b: cstar - a * np.exp(-b * x[0]), _exp_guess,
        {"cstar": (0, None), "a": (None, None), "b": (0, None)},
        upper=lambda sel, cap: {"cstar": _col_max(sel, pl.col("prior_bits") / _N, ("prior_bits",))},  # <= all the bits
        fixed_over=_AT_FIXED_SIZE, design=(BUDGET,), min_distinct={"epoch": 4}),
]}
