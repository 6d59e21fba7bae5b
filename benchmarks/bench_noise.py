"""The float-noise floor of one training run: the same standalone run (``training.run.run``) twice, once with
transformers' SDPA attention (what factscale trains with) and once with its eager attention (what a stack
runs under vmap), on the demo's corpus slice and settings. The two compute the same function with different
float summation orders, so any difference between them is noise that training amplifies; a stacked member
that differs from its standalone run by about as much differs by noise, not by a bug.

    python benchmarks/bench_noise.py [--size 2k] [--facts 2100] [--epochs 8] [--seed 1] [--lr 5e-3]

Prints the training split's value loss and MR after every epoch for both, and their relative difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    import transformers
    from conftest import tiny_run_config

    from factscale.demo import demo_spec
    from factscale.launch.spec import spec_from_dict
    from factscale.launch.sweep import ensure_corpus
    from factscale.training.run import quiet_lightning, run
    from factscale.training.rundir import RunDir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2k")
    ap.add_argument("--facts", type=int, default=2100)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        spec = demo_spec(root / "demo")
        ensure_corpus(spec_from_dict(spec, "noise"), log=lambda *_: None)
        over = {"model.size": a.size, "corpus.max_facts": a.facts, "train.epochs": a.epochs, "probe.every_epochs": 1,
                "train.batch_size": 32, "train.seq_len": 32, "optim.lr": a.lr, "optim.schedule": "constant",
                "optim.warmup_steps": 20, "seed": a.seed}
        from_config = transformers.AutoModelForCausalLM.from_config
        curves = {}
        for attn in ("sdpa", "eager"):
            # build_model asks for SDPA; this swaps the implementation for the second run only
            transformers.AutoModelForCausalLM.from_config = (
                lambda hf, attn_implementation=None, attn=attn: from_config(hf, attn_implementation=attn))
            cfg = tiny_run_config(spec["base"]["corpus"]["path"], root / attn, **over)
            run(cfg)
            df = pl.read_parquet(RunDir(cfg).results)
            curves[attn] = df.filter((pl.col("group_by") == "all") & (pl.col("split") == "train")).sort("epoch")
        transformers.AutoModelForCausalLM.from_config = from_config
    s, e = curves["sdpa"], curves["eager"]
    print(f"{a.size} on {a.facts} facts, seed {a.seed}, lr {a.lr}, constant rate, 1 thread, torch {torch.__version__}")
    print("epoch  value loss (sdpa)  value loss (eager)  relative difference  MR (sdpa)  MR (eager)")
    for i in range(s.height):
        vs, ve = s["value_loss"][i], e["value_loss"][i]
        print(f"{s['epoch'][i]:5d}  {vs:17.9f}  {ve:18.9f}  {abs(vs - ve) / vs:19.2e}  {s['mr'][i]:9.4f}  "
              f"{e['mr'][i]:10.4f}")


if __name__ == "__main__":
    sys.exit(main())
