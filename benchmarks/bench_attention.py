"""Capacity and training time with ``train.attention`` packed vs isolated, same runs otherwise.

    python benchmarks/bench_attention.py [--keys 2000] [--epochs 100] [--sizes 2k,5k,10k] [--seed 0]

Builds a synthetic corpus in a temporary directory (the demo's kind: one uniformly drawn attribute of 64
values per key, 10% of keys held out), then trains every size in both modes with the demo's settings
(qwen2, constant LR 1e-2, batch 32 x 64 tokens, value-only loss, 1 thread), one run after another in this
process, alternating which mode goes first per size so a change in machine load hits both. Each run is
probed once, at its end, on all of its training facts (exact capacity, no sample). Prints, per size and
mode: memorized facts (capacity), MR, memorized bits and the training wall time (``train_wall_s``).
One seed: a difference of a few dozen facts between modes is within seed-to-seed noise; run more seeds
(``--seed``) before reading much into small gaps.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from factscale.corpus import SyntheticSpec, build_synthetic
from factscale.training.config import load_run_config
from factscale.training.run import run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--sizes", default="2k,5k,10k")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="factscale-bench-attention-"))
    build_synthetic(tmp / "c", SyntheticSpec(n_keys=a.keys, vocab_sizes=[64], seed=0), vocab_size=512)
    t_all = time.time()
    print(f"{a.keys} keys x 1 attribute (64 values), {a.epochs} epochs, seed {a.seed}; corpus and runs in {tmp}")
    print(f"{'size':>5} {'attention':>9} {'capacity':>9} {'of':>6} {'MR':>6} {'bits':>8} {'train_s':>8}")
    for i, size in enumerate(a.sizes.split(",")):
        modes = ("packed", "isolated") if i % 2 == 0 else ("isolated", "packed")
        out = {}
        for mode in modes:
            cfg = load_run_config(None, {
                "corpus.path": str(tmp / "c"), "runs_dir": str(tmp / "runs"), "name": mode, "seed": a.seed,
                "model.size": size, "train.epochs": a.epochs, "train.attention": mode, "train.batch_size": 32,
                "train.seq_len": 64, "train.loss_on": "value", "train.progress_bar": False, "train.num_threads": 1,
                "optim.lr": 1e-2, "optim.schedule": "constant", "probe.every_epochs": a.epochs,
                "probe.splits": ["train"]})
            s = run(cfg)
            rows = pl.read_parquet(Path(s["run_dir"]) / "results.parquet").filter(
                (pl.col("epoch") == a.epochs) & (pl.col("split") == "train") & (pl.col("group_by") == "all"))
            r = rows.row(0, named=True)
            out[mode] = (r["capacity"], r["train_facts"], r["mr"], r["capacity_bits"], r["train_wall_s"])
        for mode in ("packed", "isolated"):
            cap, n, mr, bits, wall = out[mode]
            print(f"{size:>5} {mode:>9} {cap:>9.0f} {n:>6} {mr:>6.3f} {bits:>8.1f} {wall:>8.1f}", flush=True)
    print(f"total {time.time() - t_all:.0f} s")


if __name__ == "__main__":
    main()
