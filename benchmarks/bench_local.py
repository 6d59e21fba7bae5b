"""Processes or threads on this machine: what ``resources.local.max_parallel: auto`` rests on.

    python benchmarks/bench_local.py [--sizes 500,5k] [--k 3] [--steps 300] [--procs 2] [--repeats 2]

The same fixed work, N eager stacked steps (``Ensemble.train_step``, K members of the demo's batch: 32 windows x
32 tokens, value-only loss, isolated attention, a 1,024-token vocabulary) per process, timed by wall clock
three ways: one process with one torch thread (N steps); one process with ``--procs`` threads (procs x N
steps: the same total work); ``--procs`` processes with one thread each at once (N steps each). Each process
builds its stack and takes 3 warm-up steps before its clock starts, so imports and setup are not timed; the
concurrent processes start together and their work overlaps but for setup jitter. Prints the seconds of each
and two ratios: a thread's gain (N / t1 against procs N / t_threads, in steps per second) and the processes'
(t_threads / the slowest concurrent process: the same work done). Repeats are printed one by one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def worker(size: str, k: int, threads: int, steps: int) -> None:
    """Build a K-member stack of ``size``, warm it up, print the wall seconds of ``steps`` steps."""
    import torch

    from bench_ensemble import configs, synthetic_facts
    from factscale.training.data import FactDataModule
    from factscale.training.ensemble import Ensemble

    torch.set_num_threads(threads)
    a = argparse.Namespace(arch="qwen2", batch=32, seq=32, loss_on="value", attention="isolated")
    n = 20  # distinct batches, cycled
    facts = synthetic_facts(4 * 32 * 32 // 9 * n, 1024)
    cfgs = configs(a, size, k)
    per = [FactDataModule(c, facts, pad_id=0).epoch_tensors(0) for c in cfgs]
    batches = [tuple(torch.stack([p[j][i * 32:(i + 1) * 32] for p in per]) for j in (0, 1)) for i in range(n)]
    ens = Ensemble.from_configs(cfgs, 1024, 1, 2, 0, [10**6] * k)
    for i in range(3):
        ens.train_step(*batches[i])
    t = time.perf_counter()
    for i in range(steps):
        ens.train_step(*batches[i % n])
    print(f"{time.perf_counter() - t:.3f}", flush=True)


def run(size: str, k: int, threads: int, steps: int, procs: int = 1) -> list[float]:
    cmd = [sys.executable, __file__, "--worker", size, str(k), str(threads), str(steps)]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    outs = [p.communicate()[0] for p in ps]
    if any(p.returncode for p in ps):
        raise SystemExit(f"a worker failed: {cmd}")
    return [float(o.split()[-1]) for o in outs]


def main():
    if sys.argv[1:2] == ["--worker"]:
        size, k, threads, steps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        return worker(size, k, threads, steps)
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="500,5k")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    p, n = a.procs, a.steps
    print(f"K = {a.k} stacked eager steps of the demo's batch; N = {n} steps per process; {p} processes or threads")
    print(f"{'size':>5} {'1 thread, N':>12} {f'{p} threads, {p}N':>15} {f'{p} procs x N':>15} "
          f"{'thread gain':>12} {'procs/threads':>14}   (wall seconds of the timed steps)")
    for size in a.sizes.split(","):
        for _ in range(a.repeats):
            one = run(size, a.k, 1, n)[0]
            threads = run(size, a.k, p, p * n)[0]
            procs = max(run(size, a.k, 1, n, procs=p))
            print(f"{size:>5} {one:>12.2f} {threads:>15.2f} {procs:>15.2f} {p * one / threads:>11.2f}x "
                  f"{threads / procs:>13.2f}x", flush=True)


if __name__ == "__main__":
    main()
