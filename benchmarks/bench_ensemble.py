"""Stacked ensemble training (training.ensemble) against K separate standalone steps, per K and model size.

    python benchmarks/bench_ensemble.py [--sizes 1k,5k,10k] [--ks 1,2,4,8,16] [--arch qwen2] [--batch 32]
                                        [--seq 32] [--vocab 1024] [--loss-on value] [--attention isolated]
                                        [--steps 5] [--rounds 3] [--threads 1] [--no-compile]
                                        [--compile-ks 16|all|4,16] [--device auto|cpu|cuda]
                                        [--precision auto|fp32|bf16]

One "step" is one optimizer step of all K members, each on its own packed batch (each member packs the
same synthetic facts in its own seed's order, as a sweep's seeds do). The baseline is what K runs do today,
one after another: ``FactLM.batch_loss`` (head at scored positions only, SDPA with the isolation mask),
backward, ``clip_grad_norm_`` (foreach), ``FactLM.optimizer()`` (fused AdamW) and LambdaLR. The stacked
step is ``Ensemble.train_step`` on ``[K, B, T]`` batches, eager and (unless ``--no-compile``) with the
stacked forward + loss under ``torch.compile``: one compile per size and K (dynamo specializes vmap's
batch size), its warm-up printed and never timed; by default only the largest K is compiled. Defaults
are the demo's shape (batch 32 x 32 tokens, value-only loss, isolated attention, a 1,024-token
vocabulary). Rounds of the paths back to back, the order rotating (this machine's speed drifts between
seconds, so a ratio within a round is steadier than two bests taken minutes apart); ratios are medians of
the per-round ratios, steps/s the best round's. Prints steps/s (all K members together) of each path,
stacked / separate, and the largest loss difference between the paths on the first step. Where the stacked
step is compiled, so is a baseline (sep-comp): K steps of one standalone member under ``train.compile``
(FactLM compiles its decoder body in place), the existing path's own compiled speed; cmp/sep-comp is the
gain of stacking itself, with compilation on both sides.

``--device cuda`` (``auto``: the first GPU when one is visible) runs every path there, by default in bf16
autocast as a run's ``precision: auto`` would (``--precision``), with a device sync closing each timed round,
and the last two columns say what the hardware does: tokens/s of the fastest stacked path (all K members) and
its MFU against this device's measured dense matmul peak in the step's precision (bench_gpu.py's
``matmul_peak``; model FLOPs per token as bench_gpu.py counts them, with the batches' real scored fraction).
On a CPU the same columns are CPU numbers.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import lightning as L
import numpy as np
import polars as pl
import torch

from factscale.training.config import load_run_config
from factscale.training.data import FactDataModule
from factscale.training.ensemble import Ensemble
from factscale.training.models import non_embedding_params, resolve_shape
from factscale.training.module import FactLM, lr_lambda

try:  # run as a script (python benchmarks/bench_ensemble.py) or imported by the tests
    from bench_gpu import matmul_peak, spec_peak, sync
except ImportError:
    from benchmarks.bench_gpu import matmul_peak, spec_peak, sync

BOS, EOS, PAD = 1, 2, 0
CPU = torch.device("cpu")


def synthetic_facts(n: int, vocab: int, seed: int = 0) -> pl.DataFrame:
    """n facts of 6-14 tokens (<bos> key attribute value <eos>), the value over the last 1-3 tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 15, size=n)
    return pl.DataFrame({
        "input_ids": pl.Series([[BOS, *rng.integers(3, vocab, size=k - 2).tolist(), EOS] for k in lengths],
                               dtype=pl.List(pl.Int32)),
        "value_start": pl.Series(lengths - rng.integers(2, 5, size=n), dtype=pl.Int32),
        "split": ["train"] * n,
        "order": np.arange(n),
    })


def configs(a, size: str, k: int) -> list:
    """K members of one size differing in seed and learning rate (as a sweep's grid would)."""
    return [load_run_config(None, {
        "corpus.path": "/unused", "runs_dir": "/unused", "model.arch": a.arch, "model.size": size,
        "train.batch_size": a.batch, "train.seq_len": a.seq, "train.loss_on": a.loss_on,
        "train.attention": a.attention, "train.epochs": 1, "train.progress_bar": False, "seed": m,
        "optim.lr": 3e-3 * (1 + 0.25 * m), "optim.schedule": "cosine", "optim.warmup_steps": 2,
        "optim.weight_decay": 0.01}) for m in range(k)]


class Separate:
    """K standalone FactLM steps, one member after another (the baseline)."""

    def __init__(self, cfgs, vocab: int, total: int, device: str | torch.device = "cpu", bf16: bool = False):
        self.members, self.device, self.bf16 = [], torch.device(device), bf16
        for c in cfgs:
            L.seed_everything(c.seed, workers=True, verbose=False)
            module = FactLM(c, vocab, BOS, EOS, PAD).to(device)
            opt = module.optimizer()
            self.members.append((module, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(c, total))))

    def step(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses = []
        ids, labels = ids.to(self.device), labels.to(self.device)
        for k, (module, opt, sched) in enumerate(self.members):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):  # as bf16-mixed
                loss = module.batch_loss(ids[k], labels[k])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            module.configure_gradient_clipping(opt, module.cfg.optim.grad_clip, "norm")
            opt.step()
            sched.step()
            losses.append(loss.detach())
        return torch.stack(losses)


def timed(step, batches, first: int, steps: int, device: torch.device = CPU) -> float:
    """Seconds per step over ``steps`` batches from index ``first`` (the device's queue drained at both ends)."""
    sync(device)
    t = time.perf_counter()
    for i in range(first, first + steps):
        step(*batches[i])
    sync(device)
    return (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1k,5k,10k")
    ap.add_argument("--ks", default="1,2,4,8,16")
    ap.add_argument("--arch", default="qwen2", choices=["qwen2", "llama", "gpt2"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--loss-on", default="value", choices=["all", "value"])
    ap.add_argument("--attention", default="isolated", choices=["isolated", "packed"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per path per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd stacked path")
    ap.add_argument("--compile-ks", default="16",
                    help="the K values also timed compiled ('all' = every K); each K compiles on its own, "
                         "~20-50 s here, so the default compiles only the largest")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 autocast on a GPU, fp32 on a CPU (a run's precision: auto)")
    a = ap.parse_args()
    device = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    bf16 = a.precision == "bf16" or (a.precision == "auto" and device.type == "cuda")
    torch.set_num_threads(a.threads)
    # every (size, K) compiles the same Python function anew (StackedProgram.losses); dynamo's default limit
    # of 8 recompiles per function would silently run the rest eager
    torch._dynamo.config.recompile_limit = 64
    sizes, ks = a.sizes.split(","), [int(k) for k in a.ks.split(",")]
    n_batches = 1 + a.rounds * a.steps  # one warm-up batch, then fresh batches for every timed step
    # every member's own batches (its seed's order), packed once; member m's are the same for every size and K
    facts = synthetic_facts(4 * a.batch * a.seq // 9 * n_batches, a.vocab)
    packed = []
    for c in configs(a, sizes[0], max(ks)):
        ids, labels = FactDataModule(c, facts, pad_id=PAD).epoch_tensors(0)
        if len(ids) < n_batches * a.batch:
            raise SystemExit(f"only {len(ids) // a.batch} batches packed; need {n_batches}")
        packed.append((ids[: n_batches * a.batch].view(n_batches, a.batch, a.seq),
                       labels[: n_batches * a.batch].view(n_batches, a.batch, a.seq)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    peak = matmul_peak(device, torch.bfloat16 if bf16 else torch.float32)
    spec = spec_peak(name) if device.type == "cuda" and bf16 else None
    print(f"arch {a.arch}; batch {a.batch} x {a.seq} per member; vocab {a.vocab}; loss_on={a.loss_on}; "
          f"attention={a.attention}; {a.rounds} rounds x {a.steps} steps; {name}; "
          f"{'bf16 autocast' if bf16 else 'fp32'}; torch {torch.__version__}")
    print(f"measured dense matmul peak: {peak / 1e12:.3f} TFLOP/s" + (f" (spec sheet: {spec / 1e12:.0f})" if spec else ""))
    print(f"{'size':>5} {'non-emb':>7} {'K':>3} {'separate':>9} {'sep-comp':>9} {'stacked':>9} {'compiled':>9} "
          f"{'stk/sep':>8} {'cmp/sep':>8} {'cmp/sep-comp':>12} {'loss diff':>9} {'tokens/s':>10} {'MFU':>6}   "
          "(steps/s of all K members; ratios: medians of rounds; tokens/s and MFU: the fastest stacked path)")
    compile_ks = set(ks) if a.compile_ks == "all" else {int(x) for x in a.compile_ks.split(",")}
    for size in sizes:
        n = non_embedding_params(a.arch, resolve_shape(configs(a, size, 1)[0].model))
        one, one_warm = None, None
        if not a.no_compile and compile_ks & set(ks):
            # the existing compiled path (train.compile: the decoder body compiled in place), one member; K of
            # them run one after another, so K separate compiled steps cost K of its steps (one model, one
            # compile; K models in one process would compile K times)
            c = configs(a, size, 1)[0]
            c.train.compile = True
            one = Separate([c], a.vocab, 10**6, device, bf16)
            one.members[0][0].configure_model()
            t = time.perf_counter()
            one.step(packed[0][0][:1], packed[0][1][:1])
            one_warm = time.perf_counter() - t
        for k in ks:
            cfgs = configs(a, size, k)
            total = n_batches + 1
            batches = [(torch.stack([packed[m][0][i] for m in range(k)]), torch.stack([packed[m][1][i] for m in range(k)]))
                       for i in range(n_batches)]
            sep = Separate(cfgs, a.vocab, total, device, bf16)
            # every path from the same initial weights (copied before any step)
            ens, comp = (Ensemble([copy.deepcopy(m.model).cpu() for m, _, _ in sep.members], cfgs, [total] * k,
                                  device, bf16) for _ in range(2))
            paths = {"separate": sep.step, "stacked": ens.train_step}
            first = {"separate": sep.step(*batches[0]), "stacked": ens.train_step(*batches[0])}
            warm = None
            if one is not None and k in compile_ks:
                def sep_comp(ids, labels, one=one, k=k):
                    for m in range(k):
                        one.step(ids[m:m + 1], labels[m:m + 1])

                paths["sep-comp"] = sep_comp
                comp.compile()
                t = time.perf_counter()
                first["compiled"] = comp.train_step(*batches[0])
                warm = time.perf_counter() - t
                comp.train_step(*batches[0])  # a second call: a recompile for the backward's shapes would show here
                paths["compiled"] = comp.train_step
            diff = max((first[p] - first["separate"]).abs().max().item() for p in first)
            times = {p: [] for p in paths}
            names = list(paths)
            for r in range(a.rounds):
                for p in names[r % len(names):] + names[: r % len(names)]:
                    times[p].append(timed(paths[p], batches, 1 + r * a.steps, a.steps, device))
            sps = {p: 1 / min(t) for p, t in times.items()}
            ratio = {p: statistics.median(s / t for s, t in zip(times["separate"], times[p])) for p in paths}
            vs_comp = (statistics.median(s / t for s, t in zip(times["sep-comp"], times["compiled"]))
                       if "compiled" in times else float("nan"))
            nan = float("nan")
            # model FLOPs per token as bench_gpu counts them (PaLM's convention), the scored fraction the batches'
            shape = resolve_shape(cfgs[0].model)
            scored = float(torch.stack([b[1] for b in batches])[..., 1:].ne(-100).float().mean())
            per_token = (6 * n + 12 * shape.n_layers * shape.hidden * a.seq
                         + 6 * shape.hidden * a.vocab * scored)
            tps = max(sps.get("compiled", 0.0), sps["stacked"]) * k * a.batch * a.seq
            print(f"{size:>5} {n:>7,} {k:>3} {sps['separate']:>9.1f} {sps.get('sep-comp', nan):>9.1f} "
                  f"{sps['stacked']:>9.1f} {sps.get('compiled', nan):>9.1f} {ratio['stacked']:>7.2f}x "
                  f"{ratio.get('compiled', nan):>7.2f}x {vs_comp:>11.2f}x {diff:>9.1e} {tps:>10,.0f} "
                  f"{tps * per_token / peak:>6.1%}"
                  + (f"   (compile warm-up: stacked {warm:.0f} s, one member {one_warm:.0f} s)" if warm else ""),
                  flush=True)


if __name__ == "__main__":
    main()
