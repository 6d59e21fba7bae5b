"""The batched teacher-forced memorization probe beside a ``generate()``-based probe.

    python benchmarks/bench_probe.py [--facts 1200] [--epochs 40]

Trains a small model on a synthetic corpus (so some facts are memorized and some are not), probes every
fact both ways on the same model, checks the answers are identical fact by fact and prints the ratio.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from factscale.corpus import SyntheticSpec, build_synthetic
from factscale.corpus.build import load_corpus
from factscale.probing.engine import probe_batched
from factscale.testing import probe_generate
from factscale.training.config import load_run_config
from factscale.training.run import run
from factscale.training.rundir import run_dir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=1200)
    ap.add_argument("--epochs", type=int, default=40)
    a = ap.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="factscale-bench-probe-"))
    build_synthetic(tmp / "corpus", SyntheticSpec(n_keys=a.facts // 2, vocab_sizes=[16, 64]), vocab_size=512,
                    heldout_frac=0.0)
    cfg = load_run_config(None, {"corpus.path": str(tmp / "corpus"), "runs_dir": str(tmp / "runs"),
                                 "model.size": "30k", "train.epochs": a.epochs, "train.batch_size": 8,
                                 "train.seq_len": 64, "train.loss_on": "value", "optim.lr": 3e-3,
                                 "optim.schedule": "constant", "probe.every_epochs": a.epochs,
                                 "train.progress_bar": False})
    run(cfg)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir(cfg) / "model")
    facts, _ = load_corpus(cfg.corpus.path)
    ids, vs = facts["input_ids"].to_list(), facts["value_start"].to_numpy()
    pad = 0
    print(f"{len(ids)} facts, model {cfg.model.size}, {torch.get_num_threads()} threads")

    t = time.perf_counter()
    fast, _ = probe_batched(model, ids, vs, pad, batch_size=512)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = probe_generate(model, ids, vs, pad)
    t_slow = time.perf_counter() - t
    assert (fast == slow).all(), f"{(fast != slow).sum()} facts disagree"
    print(f"memorized: {int(fast.sum())} / {len(ids)} (identical answers from both probes)")
    print(f"generate() probe: {t_slow:8.2f} s  ({len(ids) / t_slow:8.0f} facts/s)")
    print(f"batched probe:    {t_fast:8.2f} s  ({len(ids) / t_fast:8.0f} facts/s)")
    print(f"speed-up: {t_slow / t_fast:.0f}x")


if __name__ == "__main__":
    main()
