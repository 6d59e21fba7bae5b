"""The demo's cooldown-branch design, stacked against run by run: one size's seeds, each a constant-rate trunk
with its cooldown branches, as one ``stack: seeds`` job (``launch.stacks.run_branch_stack``: the trunks as one
stack, then every branch as one stack) beside the same sweep with ``stack: off`` (each seed's trunk, then its
branches, one run at a time), in one process on one core, on the demo's corpus.

    python benchmarks/bench_branch_stack.py [--size 2k] [--facts 2100] [--budgets 20,40,70,100] [--seeds 3]
                                            [--rounds 1] [--whole-demo]

Each round launches both ways into fresh run directories (the order alternating) on the in-process executor,
timing everything the jobs do (setup, training, probes, results). Prints each way's wall time, the ratio
(> 1: stacked is faster) and the largest differences between the two ways' final training MR and value loss
over every run (they must agree to float noise). ``--whole-demo``: instead, ``factscale demo``'s own sweep
both ways on its local executor (2 processes), every size and budget (about 8 + 8 minutes here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch


def _final(runs: Path) -> pl.DataFrame:
    from factscale.analysis.collect import collect

    df, _ = collect(runs)
    last = df.filter((pl.col("group_by") == "all") & (pl.col("split") == "train"))
    return last.filter(pl.col("epoch") == pl.col("cfg.train.epochs")).select("run_id", "mr", "value_loss").sort("run_id")


def main() -> None:
    from factscale.demo import demo_spec
    from factscale.launch.spec import spec_from_dict
    from factscale.launch.sweep import ensure_corpus, launch
    from factscale.training.run import quiet_lightning

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2k")
    ap.add_argument("--facts", type=int, default=2100, help="corpus.max_facts (the demo's slice for 2k)")
    ap.add_argument("--budgets", default="20,40,70,100", help="train.epochs of the branches (decay 20%%)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--whole-demo", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        base = demo_spec(root / "demo")
        base["base"]["train"]["progress_bar"] = False
        if not a.whole_demo:
            del base["grid"]["model.size, corpus.max_facts"]
            base["base"]["model"]["size"] = a.size
            base["base"]["corpus"]["max_facts"] = a.facts
            base["grid"]["train.epochs"] = [int(x) for x in a.budgets.split(",")]
            base["grid"]["seed"] = list(range(a.seeds))
        ensure_corpus(spec_from_dict(base, "bench"), log=lambda *_: None)
        cluster = "local" if a.whole_demo else "debug"
        ratios, times, finals = [], {"stacked": [], "separate": []}, {}
        for r in range(a.rounds):
            took = {}
            for way in (("stacked", "separate") if r % 2 == 0 else ("separate", "stacked")):
                spec = spec_from_dict({**base, "runs_dir": str(root / f"{way}-{r}"),
                                       "stack": "seeds" if way == "stacked" else "off"}, "bench")
                t0 = time.perf_counter()
                recs = launch(spec, cluster=cluster, log=lambda *_: None)
                took[way] = time.perf_counter() - t0
                assert all(x["state"] == "done" for x in recs), recs
                finals[way] = _final(Path(spec.runs_dir))
            a_, b_ = finals["stacked"], finals["separate"]
            assert a_["run_id"].to_list() == b_["run_id"].to_list()
            dmr = (a_["mr"] - b_["mr"]).abs().max()
            dloss = ((a_["value_loss"] - b_["value_loss"]).abs() / b_["value_loss"]).max()
            for w in times:
                times[w].append(took[w])
            ratios.append(took["separate"] / took["stacked"])
            print(f"round {r}: stacked {took['stacked']:.1f} s, separate {took['separate']:.1f} s, ratio "
                  f"{ratios[-1]:.2f}x; {a_.height} runs; largest |difference| of final train MR {dmr:.2e}, "
                  f"relative value loss {dloss:.2e}", flush=True)
        what = ("factscale demo's sweep, local executor" if a.whole_demo else
                f"{a.seeds} seeds of {a.size} on {a.facts} facts, budgets {a.budgets}, in-process executor")
        print(f"{what}, 1 thread per job, torch {torch.__version__}: stacked best {min(times['stacked']):.1f} s, "
              f"separate best {min(times['separate']):.1f} s, median ratio {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
