"""Training throughput and MFU of factscale's step for 1M-100M models: the numbers to fill in on a GPU.

    python benchmarks/bench_gpu.py [--sizes 1m,3m,10m,30m,100m] [--batch 32] [--seq 256] [--steps 20]
                                   [--vocab 2048] [--scored 0.25] [--precision auto]
                                   [--attention isolated] [--fact-len 16]

Per registry size: the step factscale trains with (``train.scored_loss``: output head at the scored
positions only, here a random ``--scored`` fraction like ``loss_on: value``; bf16 autocast on a GPU; fused
AdamW; gradient clipping; batches from pinned memory; ``isolated`` attention, the default, with a fact
starting every ``--fact-len`` tokens and the block-diagonal mask of ``train.fact_isolation``, which keeps
SDPA off its mask-free flash kernel; ``--attention packed`` shows that kernel's rate), timed after warm-up
with device syncs. Prints
tokens/s and MFU = model FLOP/s / peak FLOP/s, with model FLOPs per token (PaLM's convention, attention
over the full context, also where isolated attention masks most of it):

    6 * N_non-embedding + 12 * layers * hidden * seq + 6 * hidden * vocab * scored_fraction

The peak is the measured dense matmul rate of this device in the step's precision (bf16 on a GPU,
fp32 on a CPU) and, for known GPUs, also the spec sheet's dense bf16 number. Without a GPU it runs
on the CPU (default size 1m only) and says so: those are CPU numbers, not GPU MFU.
"""

from __future__ import annotations

import argparse
import time

import torch

from factscale.training.config import ModelConfig
from factscale.training.models import build_model, non_embedding_params, resolve_shape
from factscale.training.module import fact_isolation, scored_loss

# dense bf16 tensor-core peaks from the vendors' spec sheets (no sparsity)
SPEC_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def spec_peak(name: str) -> float | None:
    for k, v in SPEC_BF16.items():
        if k in name:
            return v
    return None


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    n, reps = (8192, 30) if device.type == "cuda" else (1024, 20)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(size: str, device: torch.device, bf16: bool, a) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(size=size, max_position=max(512, a.seq)), a.vocab).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type in ("cuda", "cpu"))
    gen = torch.Generator().manual_seed(0)
    pin = device.type == "cuda"
    ids = torch.randint(3, a.vocab, (a.batch, a.seq), generator=gen)
    ids[:, ::a.fact_len] = 1  # <bos>: facts of --fact-len tokens (isolated attention restarts there)
    labels = torch.where(torch.rand(a.batch, a.seq, generator=gen) < a.scored, ids, torch.full_like(ids, -100))
    if pin:
        ids, labels = ids.pin_memory(), labels.pin_memory()

    def step():
        x, y = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            iso = fact_isolation(x, 1) if a.attention == "isolated" else (None, None)
            loss = scored_loss(model, x, y, *iso)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync(device)
    dt = (time.perf_counter() - t) / a.steps
    s = resolve_shape(ModelConfig(size=size))
    n = non_embedding_params("qwen2", s)
    flops_tok = 6 * n + 12 * s.n_layers * s.hidden * a.seq + 6 * s.hidden * a.vocab * a.scored
    tps = a.batch * a.seq / dt
    return {"size": size, "params": n, "ms": dt * 1000, "tps": tps, "flops": tps * flops_tok, "loss": float(loss.detach())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=None, help="registry sizes, comma-separated (default: 1m..100m on a GPU, "
                                                  "1m on a CPU)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--scored", type=float, default=0.25, help="fraction of positions with a label")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--attention", choices=["isolated", "packed"], default="isolated", help="train.attention")
    ap.add_argument("--fact-len", type=int, default=16, help="tokens per fact under isolated attention")
    a = ap.parse_args()
    if a.fact_len < 2:
        ap.error("--fact-len must be at least 2 (<bos> and one more token)")
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    bf16 = a.precision == "bf16" or (a.precision == "auto" and gpu)
    sizes = (a.sizes or ("1m,3m,10m,30m,100m" if gpu else "1m")).split(",")
    name = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    if not gpu:
        print("NOTE: no CUDA device: running on the CPU. These are CPU numbers, not GPU MFU; run this script "
              "on a GPU machine to fill in the GPU table.")
    peak = matmul_peak(device, torch.bfloat16 if bf16 else torch.float32)
    spec = spec_peak(name) if gpu and bf16 else None
    print(f"device: {name}; precision {'bf16 autocast' if bf16 else 'fp32'}; batch {a.batch} x {a.seq}; "
          f"vocab {a.vocab}; scored fraction {a.scored}; attention {a.attention}"
          + (f" (facts of {a.fact_len} tokens)" if a.attention == "isolated" else ""))
    print(f"measured dense matmul peak: {peak / 1e12:.2f} TFLOP/s"
          + (f"; spec sheet: {spec / 1e12:.0f} TFLOP/s" if spec else ""))
    print(f"{'size':>6} {'non-emb params':>15} {'ms/step':>9} {'tokens/s':>12} {'TFLOP/s':>8} {'MFU (measured peak)':>20}"
          + (f" {'MFU (spec)':>11}" if spec else ""))
    for size in sizes:
        r = measure(size.strip(), device, bf16, a)
        if gpu:
            torch.cuda.empty_cache()  # the last size's model and optimizer state are gone
        line = (f"{r['size']:>6} {r['params']:>15,} {r['ms']:>9.1f} {r['tps']:>12,.0f} {r['flops'] / 1e12:>8.3f} "
                f"{r['flops'] / peak:>20.1%}")
        print(line + (f" {r['flops'] / spec:>11.1%}" if spec else ""), flush=True)


if __name__ == "__main__":
    main()
