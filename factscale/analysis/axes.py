"""The new axes' numbers: junk mixing (capacity retained against the junk ratio, the critical ratio) and
forgetting after a mid-run injection (power law against exponential in steps, chosen by held-out error).

- junk (``train.junk_ratio`` x ``train.domain_tag`` runs, one corpus): each run's final, annealed probe of
  its useful training facts, chance-corrected (``keyed_bits``: bits net of what the key-blind prompt gives;
  ``capacity_above_chance``: facts). ``retained`` = a run's keyed bits / the keyed bits of the clean run
  (ratio 0, untagged) of the same size and seed: paired within a seed. The **critical ratio** of a
  (size, tag) is where the mean retained fraction first falls below one half, interpolated linearly in
  log(1 + ratio) between the two ratios that bracket it; "not reached" if it never does.
- forgetting (``train.inject_where``): facts trained only in a few epochs mid-run, probed at every probe.
  Their **gain** at a probe = the control facts' mean code length - the injected facts' (bits per fact):
  the control is the other half of the selected facts, never trained (same relations, keys as familiar,
  probed at the same steps), so the gain is what the injection taught beyond what training on everything
  else says about such facts. Before the injection it is ~0 (a known answer the tests check); forgetting
  is its decay in optimizer steps ``t`` after the injection's last epoch. Two forms are fitted to each
  run's curve,

      exponential  g(t) = c + a exp(-t / tau)
      power law    g(t) = c + a (1 + t / tau)^-b

  on the first ``FIT_FRACTION`` of the post-injection probes, and scored by their RMSE on the rest (a
  forecast, never seen by the fit); the form with the lower held-out RMSE is ``preferred``: chosen by
  held-out error, not asserted.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy.optimize import curve_fit

from factscale.analysis.studies import PARAMS, SEED, SIZE, summarise, unique_rows
from factscale.analysis.vocab import final_probes, overall
from factscale.errors import PlotError

RATIO, TAG = "cfg.train.junk_ratio", "cfg.train.domain_tag"
JUNK_QUANTITIES = ["keyed_bits", "capacity_above_chance", "retained"]
CRITICAL = 0.5  # the retained fraction that defines the critical ratio


def junk_per_seed(df: pl.DataFrame) -> pl.DataFrame:
    """One row per (size, tag, ratio, seed): keyed bits, facts above chance and the retained fraction."""
    if RATIO not in df.columns or TAG not in df.columns:
        raise PlotError("no cfg.train.junk_ratio / domain_tag columns: this is not a junk sweep's results "
                        "(sweeps/junk.yaml)")
    d = final_probes(overall(df))
    rows = unique_rows(d.iter_rows(named=True), lambda r: (r[SIZE], r[TAG], r[RATIO], r[SEED]), "junk study")
    out = []
    for (size, tag, ratio, seed), r in rows.items():
        clean = rows.get((size, False, 0.0, seed))
        if clean is None:
            raise PlotError(f"junk study: size {size} seed {seed} has no clean run (junk_ratio 0, domain_tag false) "
                            "to measure the retained capacity against")
        base = clean["keyed_bits"]
        out.append({SIZE: size, PARAMS: r[PARAMS], "tag": bool(tag), "ratio": float(ratio), SEED: seed,
                    "keyed_bits": r["keyed_bits"], "capacity_above_chance": r["capacity_above_chance"],
                    "retained": r["keyed_bits"] / base if base and base > 0 else None,
                    "junk_exposures": r.get("junk_exposures")})
    return pl.DataFrame(out, schema_overrides={"retained": pl.Float64}).sort(PARAMS, "tag", "ratio", SEED)


def critical_ratio(ratios, retained, level: float = CRITICAL) -> float | None:
    """Where ``retained`` (means, by increasing ratio) first falls below ``level``, linear in log(1 + ratio)
    between the bracketing ratios; None if it never does (or starts below it: no ratio keeps half)."""
    pts = sorted((float(r), float(v)) for r, v in zip(ratios, retained) if v is not None and math.isfinite(v))
    for (r0, v0), (r1, v1) in zip(pts, pts[1:]):
        if v0 >= level > v1:
            x0, x1 = math.log1p(r0), math.log1p(r1)
            return math.expm1(x0 + (v0 - level) / (v0 - v1) * (x1 - x0))
    return None


def junk_summary(df: pl.DataFrame) -> pl.DataFrame:
    """Per (size, tag, ratio): the quantities' means over seeds with t intervals, then per (size, tag) the
    critical ratio of the mean retained fraction (``quantity`` = critical_ratio, in ``mean``; NaN = not
    reached within the ratios run; no interval), and per (size, ratio) the tag's effect on the retained
    fraction, paired within seeds (``tag_effect``, ``tag`` null)."""
    per_seed = junk_per_seed(df)
    t = summarise(per_seed, [SIZE, PARAMS, "tag", "ratio"], JUNK_QUANTITIES)
    crit = []
    for (size, params, tag), g in t.filter(pl.col("quantity") == "retained").group_by(
            [SIZE, PARAMS, "tag"], maintain_order=True):
        c = critical_ratio(g["ratio"].to_list(), g["mean"].to_list())
        crit.append({SIZE: size, PARAMS: params, "tag": tag, "ratio": None, "quantity": "critical_ratio",
                     "mean": c if c is not None else math.nan, "lo": None, "hi": None, "n": int(g["n"].min()),
                     "why": None if c is not None else f"retained never falls from >= {CRITICAL} to below it over "
                                                      "the ratios run"})
    # the domain tag's effect, paired within a seed: retained tagged - retained untagged at each ratio
    wide = per_seed.pivot(on="tag", index=[SIZE, PARAMS, "ratio", SEED], values="retained")
    if {"true", "false"} <= set(wide.columns):
        te = summarise(wide.with_columns((pl.col("true") - pl.col("false")).alias("tag_effect")),
                       [SIZE, PARAMS, "ratio"], ["tag_effect"]).with_columns(tag=pl.lit(None, dtype=pl.Boolean))
        crit.extend(te.select(t.columns).to_dicts())
    return pl.concat([t, pl.DataFrame(crit, schema=t.schema)]).sort(PARAMS, "tag", maintain_order=True)


def junk_table_print(t: pl.DataFrame, print=print) -> None:
    from factscale.analysis.studies import fmt

    for r in t.iter_rows(named=True):
        tag = "tag-plain" if r["tag"] is None else "tagged" if r["tag"] else "plain"
        where = f"{r[SIZE]:>5} {tag:<9} " + (
            f"junk {r['ratio']:g}:1" if r["ratio"] is not None else "")
        val = (f"{r['mean']:.2f}" if r["quantity"] == "critical_ratio" and not np.isnan(r["mean"])
               else r["why"] if r["quantity"] == "critical_ratio" else fmt(r))
        print(f"  {where:<24} {r['quantity']:<24} {val}")


# ---------------------------------------------------------------- forgetting after a mid-run injection

INJECT, INJECT_EPOCHS = "cfg.train.inject_epoch", "cfg.train.inject_epochs"
FIT_FRACTION = 2 / 3  # of the post-injection probes, fitted; the rest score the forecast
MIN_POINTS = 8  # post-injection probes needed: 5 to fit four parameters, 3 to score


def _exponential(t, a, tau, c):
    return c + a * np.exp(-np.asarray(t, dtype=float) / tau)


def _power(t, a, tau, b, c):
    return c + a * (1 + np.asarray(t, dtype=float) / tau) ** (-b)


# form -> (function, parameter names)
FORMS = {"exponential": (_exponential, ("a", "tau", "c")), "power": (_power, ("a", "tau", "b", "c"))}


def forgetting_curves(df: pl.DataFrame) -> pl.DataFrame:
    """One row per (run, probe): size, seed, epoch, step, t (steps since the injection's last epoch; negative
    before), the injected facts' MR and the gain (control minus injected mean code length, bits per fact)."""
    if INJECT not in df.columns or df.filter(pl.col("group_by") == "injected").height == 0:
        raise PlotError("no probe rows broken down by 'injected': train with train.inject_where (sweeps/forgetting.yaml)")
    g = df.filter((pl.col("split") == "train") & (pl.col("group_by") == "injected"))
    inj = g.filter(pl.col("group") == "yes")
    ctl = g.filter(pl.col("group") == "control").select("run_id", "epoch", pl.col("code_bits_mean").alias("control_bits"))
    d = inj.join(ctl, on=["run_id", "epoch"], how="inner")
    end = pl.col(INJECT) + pl.col(INJECT_EPOCHS) - 1  # the injection's last epoch
    step_end = pl.col("step").filter(pl.col("epoch") == end).first().over("run_id")
    d = d.with_columns(t=pl.col("step") - step_end, gain=pl.col("control_bits") - pl.col("code_bits_mean"))
    if d["t"].null_count():
        bad = d.filter(pl.col("t").is_null())["run_id"].unique().to_list()
        raise PlotError(f"forgetting: runs {bad[:3]} have no probe at the injection's last epoch; set "
                        "probe.every_epochs: 1")
    return d.select("run_id", SIZE, PARAMS, pl.col(SEED).alias("seed"), pl.col(INJECT).alias("inject_epoch"),
                    pl.col(INJECT_EPOCHS).alias("inject_epochs"), "epoch", "step", "t", "mr", "gain",
                    "control_bits", pl.col("code_bits_mean").alias("injected_bits")).sort("run_id", "step")


def fit_forgetting(t, g, fit_fraction: float = FIT_FRACTION) -> dict:
    """Fit both forms to the post-injection curve (t >= 0) on its first ``fit_fraction`` of points; score each
    by RMSE on the rest. Returns parameters per form, in-sample and held-out RMSE, and ``preferred``."""
    t, g = np.asarray(t, dtype=float), np.asarray(g, dtype=float)
    order = np.argsort(t)
    t, g = t[order], g[order]
    if len(t) < MIN_POINTS:
        raise PlotError(f"forgetting: {len(t)} probes after the injection; a fit and its held-out score need "
                        f">= {MIN_POINTS} (probe.every_epochs: 1, and epochs after the injection)")
    k = max(5, int(round(len(t) * fit_fraction)))
    k = min(k, len(t) - 3)
    tf, gf, th, gh = t[:k], g[:k], t[k:], g[k:]
    span = max(float(tf[-1] - tf[0]), 1.0)
    a0, c0 = max(float(gf[0] - gf[-1]), 1e-3), float(gf[-1])
    starts = {"exponential": [(a0, span / 3, c0)], "power": [(a0, span / 10, 1.0, c0), (a0, 1.0, 0.5, c0)]}
    bounds = {"exponential": ([0, 1e-6, -np.inf], [np.inf, 1e9, np.inf]),
              "power": ([0, 1e-6, 1e-4, -np.inf], [np.inf, 1e9, 20, np.inf])}
    out = {"n_fit": k, "n_heldout": len(th), "split_t": float(tf[-1])}
    for form, (fn, names) in FORMS.items():
        best = None
        for p0 in starts[form]:
            try:
                p, _ = curve_fit(fn, tf, gf, p0=p0, bounds=bounds[form], maxfev=20000)
            except (RuntimeError, ValueError):
                continue
            rmse = float(np.sqrt(np.mean((fn(tf, *p) - gf) ** 2)))
            if best is None or rmse < best[1]:
                best = (p, rmse)
        if best is None:
            out.update({f"{form}_{n}": None for n in names})
            out.update({f"{form}_rmse": None, f"{form}_heldout_rmse": None})
            continue
        p, rmse = best
        out.update({f"{form}_{n}": float(v) for n, v in zip(names, p)})
        out[f"{form}_rmse"] = rmse
        out[f"{form}_heldout_rmse"] = float(np.sqrt(np.mean((fn(th, *p) - gh) ** 2)))
    scored = {f: out[f"{f}_heldout_rmse"] for f in FORMS if out[f"{f}_heldout_rmse"] is not None}
    out["preferred"] = min(scored, key=scored.get) if scored else None
    return out


def forgetting_fits(df: pl.DataFrame) -> pl.DataFrame:
    """``fit_forgetting`` on every run's post-injection curve: one row per run, with the gain at the end of
    the injection and at the end of the run, and the injected facts' MR at both."""
    curves = forgetting_curves(df)
    firsts = curves.group_by("run_id", maintain_order=True).first()
    unique_rows(firsts.iter_rows(named=True), lambda r: (r[SIZE], r["inject_epoch"], r["inject_epochs"], r["seed"]),
                "forgetting study")  # two runs of one design point and seed would pose as two seeds
    rows = []
    for (run_id,), g in curves.group_by(["run_id"], maintain_order=True):
        post = g.filter(pl.col("t") >= 0).sort("t")
        fit = fit_forgetting(post["t"].to_list(), post["gain"].to_list())
        rows.append({"run_id": run_id, SIZE: g[SIZE][0], PARAMS: g[PARAMS][0], "seed": g["seed"][0],
                     "inject_epoch": g["inject_epoch"][0], "inject_epochs": g["inject_epochs"][0],
                     "gain_end_injection": post["gain"][0], "gain_end_run": post["gain"][-1],
                     "mr_end_injection": post["mr"][0], "mr_end_run": post["mr"][-1],
                     "injected_bits_end_injection": post["injected_bits"][0],
                     "injected_bits_end_run": post["injected_bits"][-1],
                     "gain_before": _last(g.filter(pl.col("epoch") < pl.col("inject_epoch"))["gain"]), **fit})
    return pl.DataFrame(rows, infer_schema_length=None).sort(PARAMS, "seed")


def _last(x: pl.Series) -> float:
    """The last value (the last probe before the injection began), NaN for none (injected at epoch 1)."""
    return float(x[-1]) if len(x) else math.nan


FORGETTING_QUANTITIES = ["gain_before", "gain_end_injection", "gain_end_run", "mr_end_injection", "mr_end_run",
                         "injected_bits_end_injection", "injected_bits_end_run",
                         "exponential_heldout_rmse", "power_heldout_rmse"]
# the fitted tau and b are per-run shape parameters (b bounded at 20, where the power law bends into an
# exponential): in ``forgetting_fits``, never averaged into an interval


def forgetting_summary(df: pl.DataFrame) -> pl.DataFrame:
    """Per size and injection design (``inject_epoch``, ``inject_epochs``): each quantity's mean over seeds (t
    interval from 3 seeds), and how many seeds' held-out error preferred each form (``preferred_power`` /
    ``preferred_exponential``, in ``mean``)."""
    fits = forgetting_fits(df).rename({"seed": SEED})
    keys = [SIZE, PARAMS, "inject_epoch", "inject_epochs"]
    t = summarise(fits, keys, FORGETTING_QUANTITIES)
    counts = []
    for (size, params, e0, ne), g in fits.group_by(keys, maintain_order=True):
        for form in FORMS:
            counts.append({SIZE: size, PARAMS: params, "inject_epoch": e0, "inject_epochs": ne,
                           "quantity": f"preferred_{form}",
                           "mean": float((g["preferred"] == form).sum()), "lo": None, "hi": None, "n": g.height,
                           "why": "seeds whose held-out error preferred this form"})
    out = pl.concat([t, pl.DataFrame(counts, schema=t.schema)]).sort(PARAMS, maintain_order=True)
    last = pl.col("inject_epoch") + pl.col("inject_epochs") - 1
    return out.with_columns(group=pl.format("injected in epochs {}-{}", "inject_epoch", last))
