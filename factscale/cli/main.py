"""``factscale`` command line: thin wrappers that parse arguments and call library functions.

Expected bad input (a bad config field, a missing file, an unfit law) prints ``error: ...`` and exits 2,
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from factscale.analysis.laws import LAWS, MAX_FILL, MEASURES
from factscale.analysis.vocab import PREFERENCE_COLUMNS, STUDIES
from factscale.cluster import CLUSTERS
from factscale.configio import key_values
from factscale.errors import FactscaleError, Terminated
from factscale.training.models import ARCHS


def cmd_sizes(a):
    from factscale.training.models import size_table

    print(f"{'size':>13} {'arch':>6} {'layers':>6} {'hidden':>6} {'heads':>5} {'ffn':>6} {'experts':>10} "
          f"{'non-emb':>13} {'per token':>13} {'total':>13}   (vocab {a.vocab}; experts: Qwen2-MoE, qwen2 only)")
    for r in size_table(a.arch, a.vocab, tie=not a.untied):
        print(f"{r['size']:>13} {r['arch']:>6} {r['layers']:>6} {r['hidden']:>6} {r['heads']:>5} {r['ffn']:>6} "
              f"{r['experts']:>10} {r['non_embedding']:>13,} {r['per_token']:>13,} {r['total']:>13,}")


def cmd_train(a):
    from factscale.training.config import load_run_config
    from factscale.training.run import run

    overrides = list(a.overrides)
    if a.config and "=" in a.config and not Path(a.config).exists():  # no config file, only overrides
        a.config, overrides = None, [a.config, *overrides]
    cfg = load_run_config(a.config, overrides)
    print(json.dumps(run(cfg), indent=1, default=str))


def cmd_sweep(a):
    from factscale.launch import sweep
    from factscale.launch.spec import expand, load_spec

    spec = load_spec(a.spec)
    if a.action == "plan":
        from factscale.launch import cost

        mfu_assumed = a.mfu is None
        a.mfu = cost.DEFAULT_MFU if a.mfu is None else a.mfu
        a.peak_tflops = cost.PEAK_TFLOPS if a.peak_tflops is None else a.peak_tflops
        estimate = cost.estimate_for(spec, a.assume_facts, a.assume_tokens_per_fact)
        rows = sweep.plan(spec, estimate)
        print(f"{'run':<44} {'non-emb':>11} {'epochs':>6} {'tokens':>12} {'FLOPs':>10}  state")
        for r in rows:
            tok = f"{r['tokens']:,.0f}" if r["tokens"] else "?"
            fl = f"{r['flops']:.2e}" if r["flops"] else "?"
            axes = f"  [{r['axes']}]" if r.get("axes") else ""
            print(f"{r['run_id']:<44} {r['non_embedding_params']:>11,} {r['epochs']:>6} {tok:>12} {fl:>10}  {r['state']}"
                  f"{axes}")
        total = sum(r["flops"] or 0 for r in rows)
        print(f"{len(rows)} runs, {sum(r['state'] == 'done' for r in rows)} done; standalone total {total:.3g} FLOPs "
              "(6 N + 12 layers hidden ctx + 6 hidden vocab scored, per token); tokens from "
              + "; ".join(sorted({r["tokens_from"] for r in rows})))
        if spec.cooldown_branches:
            from factscale.launch.branches import plan_lines

            print("\n".join(plan_lines(expand(spec))))
        if total:
            jobs = cost.job_costs(spec, rows, a.mfu, a.peak_tflops)
            gpu_h = sum(j["gpu_hours"] or 0 for j in jobs)
            print(f"{len(jobs)} jobs, {sum(j['flops'] or 0 for j in jobs):.3g} FLOPs as launched: {gpu_h:,.1f} GPU-hours "
                  f"at MFU {a.mfu:g} of {a.peak_tflops:g} TFLOP/s per GPU"
                  + (" (MFU assumed: measure it with benchmarks/bench_gpu.py)" if mfu_assumed else ""))
            for j in jobs:
                if j["warning"]:
                    print(j["warning"])
    elif a.action == "launch":
        recs = sweep.launch(spec, cluster=a.cluster, wait=not a.no_wait)
        failed = [r for r in recs if r["state"] == "failed"]
        for r in failed:
            print(f"FAILED {r['run_id']}: {r.get('error')}")
        if failed:
            sys.exit(1)
    else:
        rows = sweep.sweep_status(spec)
        for r in rows:
            extra = f" requeues={r['requeues']}" if r.get("requeues") else ""
            extra += f" job={r['job_id']}" if r.get("job_id") else ""
            extra += f" ({r['job_state']})" if r.get("job_state") else ""
            extra += f"  [{r['axes']}]" if r.get("axes") else ""
            extra += f"  {sweep.progress_text(r['progress'])}" if r.get("progress") else ""
            print(f"{r['state']:>11}  {r['run_id']}{extra}")
            if r.get("note"):
                print(f"             note: {r['note']}")
            if r["state"] == "failed":
                print(f"             error: {r.get('error')}\n             log: {r.get('log')}")
                for line in (r.get("traceback_tail") or [])[-4:]:
                    print(f"             | {line}")
        counts = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


def cmd_collect(a):
    from factscale.analysis.collect import collect
    from factscale.fsio import write_parquet_atomic

    df, rep = collect(a.runs_dir, allow_mixed_corpora=a.allow_mixed_corpora)
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(df, Path(a.output))
    print(f"{a.output}: {df.height} rows from {len(rep['done'])} runs")
    for k in ("failed", "missing", "duplicates"):
        if rep[k]:
            print(f"  {k}: {json.dumps(rep[k])}")


def _read_results(path: str):
    """A results table from ``factscale collect``, or one clear error."""
    import polars as pl

    from factscale.errors import CollectError

    p = Path(path)
    if not p.is_file():
        raise CollectError(f"results table not found: {p} (make one with `factscale collect RUNS_DIR -o {p}`)")
    try:
        df = pl.read_parquet(p)
    except Exception as e:  # polars raises several types for a non-parquet file
        raise CollectError(f"{p}: not a parquet results table ({type(e).__name__}); "
                           "make one with `factscale collect`") from None
    if df.height == 0 or "run_id" not in df.columns:
        raise CollectError(f"{p}: no result rows (empty or not made by `factscale collect`)")
    missing = [c for c in ("epoch", "split", "group_by", "group") if c not in df.columns]
    if missing:
        raise CollectError(f"{p}: not a results table of `factscale collect` (no column {', '.join(missing)})")
    return df


def _solve_query(text: str) -> dict:
    from factscale.errors import FitError

    q = key_values(text)
    if "facts" not in q or set(q) - {"facts", "epochs"}:
        raise FitError(f"--solve {text!r}: expected facts=F[,epochs=E], e.g. facts=1.5e10,epochs=100")
    try:
        out = {k: float(v) for k, v in q.items()}
    except ValueError:
        raise FitError(f"--solve {text!r}: facts and epochs must be numbers, e.g. facts=1.5e10,epochs=100") from None
    if not all(math.isfinite(v) and v > 0 for v in out.values()):
        raise FitError(f"--solve {text!r}: facts and epochs must be finite numbers > 0, e.g. facts=1.5e10,epochs=100")
    return out


def fill_fraction(text: str) -> float:
    """--max-fill: a fraction of the facts trained on, in (0, 1]."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a fraction of the facts trained on, in (0, 1] (1 keeps every size)")
    return v


def cmd_fit(a):
    from factscale.analysis import fit

    if a.name and (Path(a.name).name != a.name or a.name in (".", "..")):
        raise fit.FitError(f"--name {a.name!r}: a plain file name, without directories (the file goes to --out-dir)")
    q = _solve_query(a.solve) if a.solve else None
    df = _read_results(a.results)
    fixed = fit.LAWS[a.law].zeroed(a.no_intercept, a.no_offset)
    r = fit.fit_law(df, a.law, key_values(a.where), fixed=fixed, robust=a.robust, n_boot=a.bootstrap,
                    include_unannealed=a.include_unannealed, measure=a.measure, max_fill=a.max_fill)
    print(fit.format_table(r))
    if a.holdout_largest:
        r["holdout_largest"] = fit.holdout_largest(df, a.law, key_values(a.where), fixed=fixed, max_fill=a.max_fill,
                                                   measure=a.measure)
        print(f"  held out the largest size: mean relative error of its prediction "
              f"{r['holdout_largest']['mean_rel_error']:.1%}")
    if q:
        s = fit.params_needed(r, q["facts"], q.get("epochs"))
        r["solve"] = s
        ci = f" (95% CI {s['ci_low']:.3g} - {s['ci_high']:.3g})" if s["ci_low"] is not None else \
            f" (no interval: {s['no_interval']})"
        print(f"  to memorize {s['facts']:.3g} facts at {s['epochs']} epochs: "
              f"{s['non_embedding_params']:.3g} non-embedding params{ci}")
    from factscale.analysis.fitstore import default_dir, results_identity

    r["results"] = results_identity(a.results)  # a figure drawing this fit checks it is the same table
    name = a.name or a.law + "".join(f"-{k}{v}" for k, v in key_values(a.where).items())
    out_dir = Path(a.out_dir) if a.out_dir else default_dir("fits", a.results)
    print(f"  wrote {fit.save_fit(r, out_dir / f'{name}.json')}")


def cmd_plot(a):
    from factscale import plots
    from factscale.analysis.fitstore import default_dir, saved_fits

    df = _read_results(a.results)
    fits = saved_fits(df, a.results, a.fits, a.measure or "capacity", a.max_fill)
    a.out_dir = a.out_dir or str(default_dir("figures", a.results))
    if a.name == "all":
        rep = plots.plot_all(df, a.out_dir, fits)
        for n, p in rep["drawn"].items():
            print(f"drew {n}: {p[0]}")
        for n, why in rep["skipped"].items():
            print(f"skipped {n}: {why}")
    else:
        print("\n".join(str(p) for p in plots.plot(a.name, df, a.out_dir, fits)))


def cmd_capacity_table(a):
    from factscale.analysis.capacity import capacity_table, format_table, read_tables, write_table

    df = capacity_table(read_tables(a.results))
    print(format_table(df))
    if a.output:
        print("wrote " + ", ".join(map(str, write_table(df, a.output))))


def cmd_study(a):

    from factscale.analysis import axes as ax
    from factscale.analysis import studies as st

    df = _read_results(a.results)
    if a.kind == "preference":
        from factscale.analysis import preference as pr

        column = a.column or pr.preference_column(df)
        t, title = pr.preference_summary(df, column), f"preference by {column}: MR alone, mixed, loss = alone - mixed"
    elif a.kind == "overwriting":
        t, title = st.overwriting_summary(df), "overwriting: phase MRs (annealed end), forgetting = control - blocked"
    elif a.kind == "generalization":
        t, title = (st.generalization_summary(df), "generalization: held-out excess over the known floor (bits per "
                    "fact) per attribute, the random control's, and the difference (what generalization adds)")
    elif a.kind == "junk":
        t, title = ax.junk_summary(df), ("junk: keyed bits and facts above chance on the useful facts, retained = "
                                         "keyed bits / the clean run's, critical ratio = retained crosses 1/2")
    elif a.kind == "forgetting":
        t, title = ax.forgetting_summary(df), ("forgetting: bits gained on injected facts over the never-trained "
                                               "control, power law vs exponential in steps, chosen by held-out RMSE")
    else:
        t, title = st.compatibility_summary(df), "compatibility: forward-statement MR per group and differences"
    if a.kind == "junk":
        print(f"{title}; mean over seeds [95% t interval]")
        ax.junk_table_print(t)
    else:
        st.print_summary(t, f"{title}; mean over seeds [95% t interval]")
    if a.output:
        from factscale.fsio import write_atomic

        write_atomic(a.output, t.write_csv())
        print(f"wrote {a.output}")


def cmd_demo(a):
    from factscale.demo import demo

    demo(a.out, quick=a.quick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factscale", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    from factscale.cli.config import add_parser as add_config_parser
    from factscale.cli.corpus import add_corpus_parser
    from factscale.cli.facts import add_parser as add_facts_parser
    from factscale.cli.probe import add_parsers as add_probe_parsers

    add_corpus_parser(sub)
    add_config_parser(sub)
    add_facts_parser(sub)

    s = sub.add_parser("sizes", help="print the model size registry")
    s.add_argument("--arch", default="qwen2", choices=list(ARCHS))
    s.add_argument("--vocab", type=int, default=2048)
    s.add_argument("--untied", action="store_true")
    s.set_defaults(fn=cmd_sizes)

    t = sub.add_parser("train", help="train one run from a YAML config",
                       description="Train one run: `factscale train configs/run.yaml [dotted.key=value ...]`. Top-level "
                       "keys: corpus (path, max_facts, heldout_max, where), model (arch, size or the shape), optim "
                       "(lr, schedule, warmup, decay), train (epochs, batch_size, seq_len, loss_on, attention, ...), "
                       "probe (every_epochs, splits, batch_size, ...), seed, runs_dir, name. Every field with its "
                       "default and meaning: `factscale config show run` (or docs/configuration.md).")
    t.add_argument("config", nargs="?", help="a run config YAML, e.g. configs/run.yaml")
    t.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.epochs=100 model.size=10k")
    t.set_defaults(fn=cmd_train)

    w = sub.add_parser("sweep", help="plan / launch / status of a sweep spec")
    w.add_argument("action", choices=["plan", "launch", "status"])
    w.add_argument("--assume-facts", type=float, help="plan: facts in the corpus, where it is not built yet")
    w.add_argument("--assume-tokens-per-fact", type=float, help="plan: tokens per rendered fact (with --assume-facts)")
    w.add_argument("--mfu", type=float, default=None, help="plan: model FLOPs utilization assumed for GPU-hours "
                   "(default 0.2, an assumption until benchmarks/bench_gpu.py has measured it)")
    w.add_argument("--peak-tflops", type=float, default=None, help="plan: peak TFLOP/s per GPU (default 989: H100 "
                   "dense bf16)")
    w.add_argument("spec")
    w.add_argument("--cluster", default="local", choices=list(CLUSTERS))
    w.add_argument("--no-wait", action="store_true", help="slurm: submit and return")
    w.set_defaults(fn=cmd_sweep)

    col = sub.add_parser("collect", help="concatenate a runs directory into one results table")
    col.add_argument("runs_dir")
    col.add_argument("-o", "--output", required=True)
    col.add_argument("--allow-mixed-corpora", action="store_true")
    col.set_defaults(fn=cmd_collect)

    f = sub.add_parser("fit", help="fit a scaling law to a results table")
    f.add_argument("results")
    f.add_argument("--measure", choices=list(MEASURES),
                   help="what a capacity law fits: facts memorized (default), facts memorized above the key-blind "
                   "baseline, or keyed bits (docs/definitions.md)")
    f.add_argument("--max-fill", type=fill_fraction, default=MAX_FILL,
                   help=f"laws in model size leave out sizes whose capacity fills more than this fraction of the "
                   f"facts they trained on (capped by the corpus; default {MAX_FILL}; 1 keeps every size)")
    f.add_argument("--law", required=True,
                   choices=list(LAWS))
    f.add_argument("--include-unannealed", action="store_true",
                   help="also fit intermediate (mid-schedule) probes, labelled unannealed; default: final probes")
    f.add_argument("--where", help="filters, e.g. epochs=100,size=1m")
    f.add_argument("--solve", help="e.g. facts=1.5e10,epochs=100")
    f.add_argument("--no-intercept", action="store_true")
    f.add_argument("--no-offset", action="store_true", help="power-gen without L_inf")
    f.add_argument("--robust", action="store_true", help="soft-L1 loss")
    f.add_argument("--bootstrap", type=int, default=200)
    f.add_argument("--holdout-largest", action="store_true")
    f.add_argument("--name")
    f.add_argument("--out-dir", help="where the fit JSON goes (default fits/out/<results table name>/: fits of "
                   "different tables never overwrite each other)")
    f.set_defaults(fn=cmd_fit)

    pp = sub.add_parser("plot", help="draw a figure (or all) from a results table")
    pp.add_argument("name")
    pp.add_argument("results")
    pp.add_argument("--out-dir", help="default figures/out/<results table name>/")
    pp.add_argument("--fits", help="draw the laws from fits saved by `factscale fit` from this results table "
                    "(default: fit them here, with the fit command's defaults)")
    pp.add_argument("--measure", choices=list(MEASURES), help="the capacity the figures draw and fit (default capacity)")
    pp.add_argument("--max-fill", type=fill_fraction, default=MAX_FILL, help="as for fit")
    pp.set_defaults(fn=cmd_plot)

    add_probe_parsers(sub)

    ct = sub.add_parser("capacity-table", help="bits per parameter of runs beside the published anchors")
    ct.add_argument("results", nargs="+", help="results tables (factscale collect / quantize-probe)")
    ct.add_argument("-o", "--output", help="write OUTPUT.parquet and OUTPUT.csv (atomically)")
    ct.set_defaults(fn=cmd_capacity_table)

    sd = sub.add_parser("study", help="a behaviour study's differences with intervals over seeds")
    sd.add_argument("kind", choices=list(STUDIES))
    sd.add_argument("results", help="the study's results table (factscale collect)")
    sd.add_argument("--column", choices=list(PREFERENCE_COLUMNS),
                    help="preference: the grouping column (default: the one the results break down by)")
    sd.add_argument("-o", "--output", help="also write the summary as CSV (atomically)")
    sd.set_defaults(fn=cmd_study)

    d = sub.add_parser("demo", help="the whole loop, small, on this machine's CPU")
    d.add_argument("--out", default="factscale-demo")
    d.add_argument("--quick", action="store_true", help="a smaller grid (about a minute), for smoke tests")
    d.set_defaults(fn=cmd_demo)
    return p


def _is_user_error(e: BaseException) -> bool:
    """User errors (one ``error:`` line, exit 2): the ``FactscaleError`` family and OS errors (a missing file,
    a full disk, no permission); anything else is a bug and keeps its traceback."""
    return isinstance(e, (OSError, FactscaleError))


def main(argv=None):
    import logging

    args = build_parser().parse_args(argv)
    # the library's stage lines (corpus build steps, fits with bootstrap) as plain lines on stdout, with the
    # command's other output; stderr keeps bars and the one `error:` line
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("factscale")
    if not log.handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        args.fn(args)
    except Exception as e:
        if not _is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
        print(f"{what}: training runs resume from their last checkpoint when launched again; "
              "an interrupted corpus build leaves no corpus and starts over", file=sys.stderr)
        sys.exit(143 if isinstance(e, Terminated) else 130)


if __name__ == "__main__":
    main()
