"""``factscale demo``: the whole loop, small enough for a 2-core laptop CPU in under 10 minutes.

synthetic corpus -> grid of model sizes (each probed every few epochs, so one run gives its whole
capacity-vs-epochs curve) on the local executor -> collect -> fit the size, epoch, joint and bits laws
-> figures -> summary. The sweep is ``factscale/demo.yaml`` (also ``sweeps/demo.yaml``).

Choices that make the toy scale show the phenomenon (all recorded in every result row): a constant LR
after warmup, so capacity at epoch E inside a run approximates a run trained for E epochs; loss on
value tokens only, so capacity goes to facts rather than to the random names; a corpus larger than the
largest model can hold, so capacity is limited by size, not by the corpus.
"""

from __future__ import annotations

import time
from pathlib import Path

from factscale import fit, plots
from factscale.config import ConfigError, read_yaml_mapping, set_dotted
from factscale.fsio import write_json_atomic
from factscale.results import collect, write_parquet_atomic
from factscale.sweep import _spec_from_dict, launch


DEMO_SPEC = Path(__file__).with_name("demo.yaml")  # also sweeps/demo.yaml (a link)
QUICK = {"corpus_build.synthetic.n_keys": 600, "base.train.batch_size": 16, "base.probe.every_epochs": 5,
         "grid.train.epochs": [60]}
"""--quick: a smaller corpus and fewer epochs (about a minute), for smoke tests."""


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


def demo(out: str | Path = "factscale-demo", quick: bool = False, log=print) -> dict:
    t0 = time.time()
    out = Path(out)
    spec = _spec_from_dict(demo_spec(out, quick), "demo")
    log(f"[1/4] corpus + training: {len(spec.grid['model.size'])} model sizes x "
        f"{spec.grid['train.epochs'][0]} epochs on the local executor (runs under {spec.runs_dir})")
    recs = launch(spec, cluster="local", log=log)
    failed = [r for r in recs if r["state"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} demo runs failed: {failed}")

    log("[2/4] collect")
    df, rep = collect(spec.runs_dir)
    results = out / "results.parquet"
    write_parquet_atomic(df, results)

    log("[3/4] fit laws")
    fits_dir = out / "fits"
    final_epoch = spec.grid["train.epochs"][0]
    summary: dict = {"results": str(results), "fits": {}, "figures": {}}
    # one epoch budget per size: the epoch laws can only use the intermediate probes of the constant-LR
    # runs, so they are fitted with include_unannealed and say so (see the module docstring)
    jobs = [("linear-size", {"epoch": final_epoch}, False)]
    jobs += [("exp-epochs", {"size": s}, True) for s in spec.grid["model.size"]]
    jobs += [("joint", {}, True), ("bits-epochs", {"size": spec.grid["model.size"][-1]}, True)]
    for law, where, unannealed in jobs:
        name = law + "".join(f"-{k}{v}" for k, v in where.items())
        try:
            r = fit.fit_law(df, law, where, n_boot=200, include_unannealed=unannealed)
        except fit.FitError as e:
            log(f"  {name}: not fitted: {e}")
            continue
        if law == "joint":
            r["solve"] = fit.params_needed(r, 10 * float(df["n_facts"].max()), final_epoch)
        fit.save_fit(r, fits_dir / f"{name}.json")
        summary["fits"][name] = r
        log(fit.format_table(r))

    log("[4/4] figures")
    summary["figures"] = plots.plot_all(df, out / "figures")

    final = df.filter((df["split"] == "train") & (df["group_by"] == "all") & (df["epoch"] == final_epoch))
    log("\n=== factscale demo summary ===")
    for row in final.sort("non_embedding_params").iter_rows(named=True):
        log(f"  {row['cfg.model.size']:>5} ({row['non_embedding_params']:>6,} non-emb params): "
            f"{row['capacity']:>5.0f} / {row['n_facts']} facts memorized (MR {row['mr']:.3f}), "
            f"{row['bits_per_param']:.3f} bits/non-emb param, {row['bits_per_total_param']:.3f} bits/total param")
    held = df.filter((df["split"] == "heldout") & (df["group_by"] == "all") & (df["epoch"] == final_epoch))
    for row in held.sort("non_embedding_params").iter_rows(named=True):
        log(f"  calibration {row['cfg.model.size']:>5}: held-out (unseen keys) bits = {row['capacity_bits']:.1f} "
            f"of {row['prior_bits']:.0f} prior bits ({row['capacity_bits'] / row['prior_bits']:.2%}; ~0 expected)")
    lin = summary["fits"].get(f"linear-size-epoch{final_epoch}")
    if lin:
        k = lin["params"]["k"]
        ci = (f"95% CI {k['ci_low']:.4f}-{k['ci_high']:.4f}" if k["ci_low"] is not None
              else f"no interval: {k['no_interval']}")
        log(f"  linear law at {final_epoch} epochs: {k['value']:.4f} facts per non-emb param ({ci}), "
            f"R^2 = {lin['r2']:.3f}")
    for name, r in summary["fits"].items():
        if name.startswith("exp-epochs"):
            c = r["params"]["cstar"]
            reached = r["points"]["capacity"][-1] / c["value"]
            log(f"  {name} (unannealed probes): C* = {c['value']:.0f} facts"
                + (" (at its bound: the facts trained on)" if c["at_bound"] else "")
                + f", R^2 = {r['r2']:.3f}; after {final_epoch} epochs the run holds {reached:.0%} of C*")
    if "joint" in summary["fits"] and summary["fits"]["joint"].get("solve"):
        s = summary["fits"]["joint"]["solve"]
        ci = f" (95% CI {s['ci_low']:.3g}-{s['ci_high']:.3g})" if s["ci_low"] else f" (no interval: {s['no_interval']})"
        log(f"  joint law: {s['facts']:.3g} facts at {s['epochs']} epochs need {s['non_embedding_params']:.3g} "
            f"non-emb params{ci}")
    log(f"  results: {results}\n  fits:    {fits_dir}/\n  figures: {out / 'figures'}/")
    log(f"  total time {time.time() - t0:.0f} s")
    summary["seconds"] = time.time() - t0
    write_json_atomic(out / "summary.json", {k: v for k, v in summary.items() if k != "fits"}, default=str)
    if not summary["fits"]:
        raise ConfigError("demo produced no fit")
    return summary
