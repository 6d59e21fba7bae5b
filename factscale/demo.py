"""``factscale demo``: both of Lu et al.'s laws, measured honestly, in about eight minutes on a 2-core CPU.

synthetic corpus -> 4 widths of one depth x 3 seeds, each size on its own nested slice of the corpus (data
proportional to size), each (size, seed) a warmup-stable-decay trunk with cooldown branches at 4 epoch
budgets (``factscale/demo.yaml``, also ``sweeps/demo.yaml``) on the local executor -> collect -> fits on
annealed end points only -> figures -> a summary that says what was observed, and ``summary.json``.

What the demo measures, at each size: capacity (facts memorized, exact match; and above the key-blind
baseline) after every epoch budget, each an end-of-schedule point (a branch decays its learning rate to 0,
like a standalone run of that length); saturation, measured (``analysis.saturation``): the gain between
the two largest budgets, paired by seed, its interval against 10%; per budget, the log-log slope of
capacity in non-embedding parameters with its interval (1 = Lu et al.'s linear law), sizes filling more
than 60% of their facts left out (``fit.capped_sizes``), and a plain verdict (``law_verdict``): linear,
sublinear or superlinear only when every fitted size is saturated; the linear law at the largest budget;
the saturating law C(E) = C* - a exp(-bE) per size (a secondary, extrapolated view); memorized bits per
non-embedding and per total parameter.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import polars as pl

from factscale import plots
from factscale.analysis import fit
from factscale.analysis.collect import collect
from factscale.analysis.fitstore import Fits, results_identity
from factscale.analysis.saturation import saturation, saturation_text
from factscale.analysis.vocab import SIZE, overall
from factscale.configio import read_yaml_mapping, set_dotted
from factscale.errors import ConfigError
from factscale.fsio import write_json_atomic, write_parquet_atomic
from factscale.launch.spec import expand, spec_from_dict
from factscale.launch.sweep import launch

DEMO_SPEC = Path(__file__).with_name("demo.yaml")  # also sweeps/demo.yaml (a link)
QUICK = {"corpus_build.synthetic.n_keys": 700,
         "grid.model.size, corpus.max_facts": [["500", 300], ["2k", 450], ["5k", 650]],
         "grid.train.epochs": [10, 20, 40, 80], "grid.seed": [0, 1], "base.probe.every_epochs": 40}
"""--quick: 3 sizes on a smaller corpus with shorter budgets (about a minute here), a smoke test of the loop."""
N_BOOT = 200
WIDEST_VERDICT = 0.5  # a slope interval wider than this cannot tell a linear law (1) from a sublinear one


def demo_spec(out: Path, quick: bool = False) -> dict:
    """The shipped demo sweep with its paths under ``out`` (and the --quick reductions)."""
    spec = read_yaml_mapping(DEMO_SPEC, "demo sweep")
    spec["runs_dir"] = str(out / "runs")
    spec["base"]["corpus"]["path"] = str(out / "corpus")
    for key, value in (QUICK.items() if quick else ()):
        section, rest = key.split(".", 1)
        if section == "grid":
            spec["grid"][rest] = value
        else:
            set_dotted(spec[section], rest, value)
    return spec


def _ci(entry: dict) -> list | None:
    return [entry["ci_low"], entry["ci_high"]] if entry["ci_low"] is not None else None


def summarize(df: pl.DataFrame, lin: dict | None, exps: dict, budget: int) -> dict:
    """The demo's observations, per size and for the linear law (the ``summary.json`` schema)."""
    final = overall(df).filter(pl.col("epoch") == budget)
    sat_rows = {r["size"]: r for r in saturation(df).iter_rows(named=True)}
    sizes = []
    for s, g in final.group_by(SIZE, maintain_order=True):
        row = {"size": s[0], "non_embedding_params": int(g["non_embedding_params"][0]),
               "total_params": int(g["total_params"][0]), "seeds": g["cfg.seed"].n_unique(),
               "n_facts": int(g["n_facts"][0]), "capacity_mean": float(g["capacity"].mean()),
               "above_chance_mean": (float(g["capacity_above_chance"].mean())
                                     if "capacity_above_chance" in g.columns and g["capacity_above_chance"].null_count() == 0
                                     else None),
               "capacity_sd": float(g["capacity"].std()) if g.height > 1 else None,
               "bits_per_param": float(g["bits_per_param"].mean()),
               "bits_per_total_param": float(g["bits_per_total_param"].mean()),
               "cstar": None, "cstar_ci": None, "cstar_at_bound": None, "fraction_of_cstar": None,
               "saturated": False, "saturation": None, "why_not": None}
        r = exps.get(row["size"])
        if isinstance(r, str):
            row["cstar_not_fitted"] = r
        elif r is not None:  # the fitted asymptote: a secondary view (often at its bound)
            c = r["params"]["cstar"]
            row.update(cstar=c["value"], cstar_ci=_ci(c), cstar_at_bound=c["at_bound"],
                       cstar_ci_clipped=c.get("ci_clipped"),
                       fraction_of_cstar=row["capacity_mean"] / c["value"] if c["value"] > 0 else None)
        sat = sat_rows.get(row["size"])
        if sat is not None:  # measured: the gain between the two largest budgets, paired by seed
            row.update(saturated=sat["saturated"], saturation=sat, why_not=None if sat["saturated"] else sat["why"])
        sizes.append(row)
    sizes.sort(key=lambda r: r["non_embedding_params"])
    linear = None
    if lin is not None:
        k, comp = lin["params"]["k"], lin.get("companion", {})
        s = comp.get("params", {}).get("s")
        linear = {"slope": k["value"], "ci": _ci(k), "no_interval": k["no_interval"], "r2": lin["r2"],
                  "intercept": lin["params"]["c"]["value"], "n_runs": lin["n_runs"],
                  "left_out_capped": [e["size"] for e in lin.get("excluded_capped", [])], "interval": lin["interval"],
                  "loglog_slope": s["value"] if s else None, "loglog_slope_ci": _ci(s) if s else None,
                  "loglog_r2": comp.get("r2")}
    return {"n_runs": df["run_id"].n_unique(), "epochs": budget, "sizes": sizes, "linear": linear}


def store_slope(store: Fits, epochs: int) -> dict:
    """The log-log slope of capacity in N at one budget (``power-size``, capped sizes left out), or why not."""
    try:
        r = store.get("power-size", {"epoch": epochs})
    except fit.FitError as e:
        return {"epochs": epochs, "slope": None, "ci": None, "why": str(e)}
    s = r["params"]["s"]
    return {"epochs": epochs, "slope": s["value"], "ci": _ci(s), "why": s["no_interval"], "n_runs": r["n_runs"],
            "left_out_capped": [e["size"] for e in r.get("excluded_capped", [])], "interval": r["interval"]}


def law_verdict(slopes: dict, sizes: list[dict]) -> str:
    """What the size law says, plainly, at the largest budget that has one. A law (linear as Lu et al.,
    sublinear or superlinear at this scale) is claimed only when every fitted size is saturated; otherwise the
    verdict is "not decided" whatever the slope, with how the slope moved across budgets (a fixed-budget slope
    that is still moving is a point it passes through, not a law)."""
    if not slopes:
        return "no size law: no budgets"
    slopes = {int(e): v for e, v in slopes.items()}  # summary.json keys are strings
    top = max(slopes)
    fitted = [e for e in sorted(slopes) if slopes[e]["slope"] is not None]
    if not fitted:
        return "no size law at any budget: " + (slopes[top]["why"] or "")
    last = slopes[fitted[-1]]
    before = "" if fitted[-1] == top else (f"no size law at {top} epochs ({slopes[top]['why']}); at "
                                          f"{last['epochs']} epochs: ")
    if last["ci"] is None:
        return before + (f"log-log slope {last['slope']:.2f} at {last['epochs']} epochs has no interval "
                         f"({last['why']}): not decided")
    lo, hi = last["ci"]
    saturated = all(r["saturated"] for r in sizes if r["size"] not in last["left_out_capped"])
    head = f"slope {last['slope']:.2f} [{lo:.2f}, {hi:.2f}] at {last['epochs']} epochs"
    if not saturated:
        path = " -> ".join(f"{slopes[e]['slope']:.2f}" for e in fitted)
        trend = ("" if len(fitted) < 2 else
                 f"; across budgets {fitted[0]}-{fitted[-1]} the slope went {path} "
                 f"({'falling' if slopes[fitted[-1]]['slope'] < slopes[fitted[0]]['slope'] else 'rising'}: still moving)")
        side = "contains 1" if lo <= 1 <= hi else "is below 1" if hi < 1 else "is above 1"
        return before + (f"{head} {side}, but not every fitted size is saturated: no law claimed, not decided"
                         f"{trend}; more epochs (or seeds) decide it")
    if lo <= 1 <= hi and hi - lo > WIDEST_VERDICT:
        return before + (f"{head}: the interval is too wide (> {WIDEST_VERDICT}) to tell linear from sublinear: "
                         "not decided (add seeds or sizes)")
    if lo <= 1 <= hi:
        return before + f"{head} contains 1, every fitted size saturated: consistent with Lu et al.'s linear law"
    if hi < 1:
        return before + f"{head} is below 1, every fitted size saturated: a sublinear law at this scale"
    return before + f"{head} is above 1, every fitted size saturated: superlinear at this scale"


def report(summary: dict, held: pl.DataFrame, log=print) -> None:
    """The printed summary: what was observed, in the order a reader checks it."""
    E = summary["epochs"]
    log(f"\n=== factscale demo summary ({summary['n_runs']} runs; capacity = facts memorized by exact match, "
        f"mean over seeds, after {E} epochs) ===")
    for r in summary["sizes"]:
        sd = f" ± {r['capacity_sd']:.0f}" if r["capacity_sd"] is not None else ""
        frac = r["fraction_of_cstar"]
        cs = "C* not fitted" if r["cstar"] is None else (
            f"C* at its bound (>= {r['cstar']:.0f}, the facts trained on: not determined by these budgets)"
            if r["cstar_at_bound"] and math.isclose(r["cstar"], r["n_facts"], rel_tol=1e-6) else
            f"C* = {r['cstar']:.0f}" + (f" [{r['cstar_ci'][0]:.0f}, {r['cstar_ci'][1]:.0f}]" if r["cstar_ci"] else "")
            + (" (the interval's top is the facts trained on: clipped there)" if "high" in (r.get("cstar_ci_clipped") or "")
               else "")
            + (f", reached {frac:.0%}" if frac is not None else ", reached -"))
        log(f"  {r['size']:>4} ({r['non_embedding_params']:>5,} non-emb / {r['total_params']:>6,} total params, "
            f"{r['seeds']} seeds): {r['capacity_mean']:>6.0f}{sd} of {r['n_facts']} facts"
            + (f" ({r['above_chance_mean']:.0f} above the key-blind baseline)" if r.get("above_chance_mean") is not None
               else "") + "; "
            f"memorized bits (code length) {r['bits_per_param']:.2f}/non-emb param, "
            f"{r['bits_per_total_param']:.2f}/total param")
        sat = saturation_text(r["saturation"]) if r["saturation"] else "saturation not measured"
        log(f"        {sat}\n        (secondary, extrapolated: {cs})")
    lin = summary["linear"]
    if lin is None:
        log("  linear law: not fitted")
    else:
        ci = (f"95% CI [{lin['ci'][0]:.4f}, {lin['ci'][1]:.4f}]" if lin["ci"]
              else f"no interval: {lin['no_interval']}")
        left = (f"; left out as capped by the corpus: {', '.join(lin['left_out_capped'])}" if lin["left_out_capped"]
                else "")
        log(f"  linear in non-emb params at {E} epochs (relative-error fit): {lin['slope']:.4f} facts/param ({ci}), "
            f"intercept {lin['intercept']:.0f}, R^2 = {lin['r2']:.3f}, {lin['n_runs']} runs{left}")
        if lin["loglog_slope"] is not None:
            lci = lin["loglog_slope_ci"]
            verdict = ("contains 1: consistent with linear" if lci and lci[0] <= 1 <= lci[1] else
                       "excludes 1: not proportional to N" if lci else "no interval")
            log(f"  log-log slope {lin['loglog_slope']:.3f}" + (f" [{lci[0]:.3f}, {lci[1]:.3f}]" if lci else "")
                + f" ({verdict})")
    for e, sl in sorted((summary.get("slopes") or {}).items(), key=lambda kv: int(kv[0])):
        if sl["slope"] is None:
            log(f"  size law at {e} epochs: not fitted ({sl['why']})")
            continue
        ci = f" [{sl['ci'][0]:.3f}, {sl['ci'][1]:.3f}]" if sl["ci"] else f" (no interval: {sl['why']})"
        left = f"; left out as capped: {', '.join(sl['left_out_capped'])}" if sl["left_out_capped"] else ""
        log(f"  log-log slope at {e:>4} epochs: {sl['slope']:.3f}{ci}, {sl['n_runs']} runs{left}")
    if summary.get("verdict"):
        log(f"  size law: {summary['verdict']}")
    for (size,), g in (held.sort("non_embedding_params").group_by(SIZE, maintain_order=True) if held.height else ()):
        log(f"  calibration {size:>4} ({g.height} seeds): " + calibration_text(g.to_dicts()))


def calibration_text(rows: list[dict]) -> str:
    """The held-out check of one size's seeds, both ways. Leak: memorized bits (clipped at the set) on unseen
    keys must be ~0 (the largest over seeds is printed). Over-confidence: the signed net (prior - code) per
    fact; below 0 the model codes unseen keys' values worse than the prior - it is confidently wrong, which
    the clipped number cannot show (the range over seeds)."""
    per_fact = [r["net_bits"] / max(1, r["n_facts"]) for r in rows]
    verdict = "calibrated" if min(per_fact) > -0.1 else "over-confident on unseen keys"
    leak = max(r["capacity_bits"] for r in rows)
    span = f"{min(per_fact):+.2f}" + ("" if len(rows) == 1 else f" to {max(per_fact):+.2f}")
    return (f"held-out (unseen keys) memorized bits {leak:.1f} at most, of {rows[0]['prior_bits']:.0f} prior bits "
            f"(~0 expected: a leak otherwise); net {span} bits per fact ({verdict})")


def demo(out: str | Path = "factscale-demo", quick: bool = False, log=print) -> dict:
    t0 = time.time()
    out = Path(out)
    spec = spec_from_dict(demo_spec(out, quick), "demo")
    cfgs = expand(spec)
    sizes = list(dict.fromkeys(c.model.size for c in cfgs))
    budgets = sorted({c.train.epochs for c in cfgs})
    budget = budgets[-1]
    log(f"[1/4] corpus + training: {len(sizes)} sizes x {len({c.seed for c in cfgs})} seeds, each a trunk with "
        f"cooldown branches at {budgets} epochs, on the local executor (runs under {spec.runs_dir})")
    recs = launch(spec, cluster="local", log=log)
    failed = [r for r in recs if r["state"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} demo runs failed: {failed}")

    log("[2/4] collect")
    df, _ = collect(spec.runs_dir)
    results = out / "results.parquet"
    write_parquet_atomic(df, results)

    log("[3/4] fit laws (annealed end points only)")
    fits_dir = out / "fits"
    fits: dict = {}
    store = Fits(df, n_boot=N_BOOT)  # every law fitted once: the figures draw these same fits
    source = results_identity(results)

    def try_fit(name, law, where):
        try:
            r = store.get(law, where)
            r["results"] = source
        except fit.FitError as e:
            log(f"  {name}: not fitted: {e}")
            return str(e)
        fit.save_fit(r, fits_dir / f"{name}.json")
        log(fit.format_table(r))
        fits[name] = r
        return r

    lin = try_fit(f"linear-size-epoch{budget}", "linear-size", {"epoch": budget})
    slopes = {e: store_slope(store, e) for e in budgets}
    exps = {s: try_fit(f"exp-epochs-size{s}", "exp-epochs", {"size": s}) for s in sizes}
    joint = try_fit("joint", "joint", {})
    if isinstance(joint, dict):
        joint["solve"] = fit.params_needed(joint, 10 * float(df["n_facts"].max()), budget)
        fit.save_fit(joint, fits_dir / "joint.json")

    log("[4/4] figures")
    figures = plots.plot_all(df, out / "figures", store)

    summary = summarize(df, lin if isinstance(lin, dict) else None, exps, budget)
    summary["slopes"] = slopes
    summary["verdict"] = law_verdict(slopes, summary["sizes"])
    summary["seconds"] = time.time() - t0
    summary.update(results=str(results), fits=str(fits_dir), figures=figures)
    write_json_atomic(out / "summary.json", summary, default=str)  # before printing: a report bug loses nothing
    if quick:  # its models barely leave chance: its numbers test the loop, they are not evidence
        log("\n(--quick: a smoke test of the whole loop; its models memorize little beyond the key-blind guess at "
            "these budgets, so its fits and verdicts are not evidence: run `factscale demo` for that)")
    report(summary, overall(df, "heldout").filter(pl.col("epoch") == budget), log)
    log(f"  results: {results}\n  fits:    {fits_dir}/\n  figures: {out / 'figures'}/\n"
        f"  summary: {out / 'summary.json'}\n  total time {summary['seconds']:.0f} s")
    if not fits:
        raise ConfigError("demo produced no fit")
    return summary
