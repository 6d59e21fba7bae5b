"""Whole runs, stacked against standalone: K seeds of one size as one stack (``training.stack.run_stack``, what
a sweep with ``stack: seeds`` runs) beside the same K runs one after another (``training.run.run``), in one
process, on one synthetic corpus, 1 thread.

    python benchmarks/bench_stack.py [--size 5k] [--seeds 4] [--epochs 20] [--keys 600] [--rounds 2] [--compile]

Each round trains both ways into fresh run directories (the order alternating), timing everything a run
does: setup, training, probes every ``--probe-every`` epochs and writing results. Prints the wall time of
each, the ratio (median over rounds; > 1: the stack is faster) and the largest difference between the two
ways' final training MR and value loss (they must agree to float noise).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from conftest import tiny_run_config

    from factscale.corpus import CorpusSpec, build_from_spec
    from factscale.training.rundir import RunDir
    from factscale.training.run import quiet_lightning, run
    from factscale.training.stack import run_stack

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="5k")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--probe-every", type=int, default=10)
    ap.add_argument("--keys", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="train.compile: true both ways (a standalone run compiles "
                    "its decoder, the stack its stacked step); the compile time is part of each way's time")
    a = ap.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    over = {"model.size": a.size, "train.epochs": a.epochs, "probe.every_epochs": a.probe_every,
            "train.batch_size": 32, "train.seq_len": 64, "optim.lr": 3e-3, "optim.schedule": "wsd",
            "optim.warmup_steps": 20, "optim.decay_frac": 0.2, "train.compile": a.compile}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        corpus = root / "corpus"
        build_from_spec(CorpusSpec(synthetic={"n_keys": a.keys, "vocab_sizes": [64, 64], "seed": 0},
                                   vocab_size=512), corpus)
        ratios, times = [], {"stacked": [], "separate": []}
        for r in range(a.rounds):
            cfgs = {w: [tiny_run_config(corpus, root / f"{w}-{r}", seed=s, **over) for s in range(a.seeds)]
                    for w in times}
            took = {}
            for way in (["stacked", "separate"] if r % 2 == 0 else ["separate", "stacked"]):
                t = time.perf_counter()
                if way == "stacked":
                    assert run_stack(cfgs[way])["state"] == "done"
                else:
                    for c in cfgs[way]:
                        run(c)
                took[way] = time.perf_counter() - t
                times[way].append(took[way])
            ratios.append(took["separate"] / took["stacked"])
            diff = {}
            for cs, ca in zip(cfgs["stacked"], cfgs["separate"]):
                s, p = (pl.read_parquet(RunDir(c).results).filter((pl.col("split") == "train")
                        & (pl.col("group_by") == "all") & (pl.col("epoch") == a.epochs)) for c in (cs, ca))
                for col in ("mr", "value_loss"):
                    diff[col] = max(diff.get(col, 0.0), abs(s[col][0] - p[col][0]))
            print(f"round {r}: stacked {took['stacked']:.1f} s, separate {took['separate']:.1f} s, "
                  f"ratio {ratios[-1]:.2f}x; largest |difference| of final train MR {diff['mr']:.2e}, "
                  f"value loss {diff['value_loss']:.2e}", flush=True)
        print(f"{a.seeds} seeds of {a.size}, {a.epochs} epochs, {a.keys} keys x 2 attributes, 1 thread, "
              f"{'compiled' if a.compile else 'eager'}, torch "
              f"{torch.__version__}: stacked best {min(times['stacked']):.1f} s, separate best "
              f"{min(times['separate']):.1f} s, median ratio {statistics.median(ratios):.2f}x (> 1: stacking is faster)")


if __name__ == "__main__":
    main()
