"""Benchmark scripts that must keep running where there is no GPU (they are run, not timed, here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~10-20 s: a subprocess importing torch + transformers and a CPU matmul-peak probe
def test_bench_gpu_runs_on_cpu_and_says_so():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--sizes", "1m", "--batch", "2",
                          "--seq", "32", "--steps", "1", "--warmup", "1"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no CUDA device: running on the CPU" in out.stdout
    row = [line for line in out.stdout.splitlines() if line.split()[:1] == ["1m"]]
    assert len(row) == 1, out.stdout
    params, ms, tps, tflops, mfu = row[0].split()[1:6]
    assert params == "1,006,848"  # the registry's exact non-embedding count
    assert float(ms) > 0 and float(tps.replace(",", "")) > 0 and mfu.endswith("%")


@pytest.mark.slow  # ~10-20 s: a subprocess importing torch + transformers, a few steps of 1k models
def test_bench_ensemble_runs_and_prints_throughput():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ensemble.py"), "--sizes", "1k", "--ks",
                          "1,2", "--rounds", "1", "--steps", "1", "--no-compile", "--device", "auto"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CPU, 1 thread(s); fp32" in out.stdout  # auto: no GPU visible, so the CPU in a run's auto precision
    rows = [line.split() for line in out.stdout.splitlines() if line.split()[:1] == ["1k"]]
    assert [r[2] for r in rows] == ["1", "2"], out.stdout
    for r in rows:  # ... loss diff, tokens/s, MFU
        assert float(r[-3]) < 1e-5  # every path starts from the same weights on the same batches
        assert float(r[-2].replace(",", "")) > 0 and r[-1].endswith("%")


@pytest.mark.slow  # ~20-30 s: two training loops and a Lightning Trainer in a subprocess
def test_bench_train_runs_and_both_loops_agree_on_the_loss():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--size", "1k", "--batch", "8",
                          "--seq", "64", "--steps", "4", "--rounds", "1"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = {line.split(":")[0]: line for line in out.stdout.splitlines()}
    assert "attention=isolated" in out.stdout  # the demo's attention is the default
    diff = float(lines["loss, same 9 steps from the same init"].rsplit("largest difference ", 1)[1].rstrip(")"))
    assert diff < 1e-4  # the same model, data, schedule and AdamW settings: the two loops train alike
    assert "isolation mask per batch" in lines  # the mask timing ran (it checks the two masks equal first)
    assert lines["factscale / plain"].endswith("(median of 1 paired rounds)")


@pytest.mark.slow  # trains 2 stacked and 2 standalone runs in a subprocess
def test_bench_stack_runs_and_both_ways_agree():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_stack.py"), "--size", "1k", "--seeds", "2",
                          "--epochs", "2", "--probe-every", "2", "--keys", "100", "--rounds", "1"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("round 0"))
    assert float(line.rsplit("value loss ", 1)[1]) < 1e-4 and "median ratio" in out.stdout


@pytest.mark.slow  # a 2-seed branch sweep both ways in a subprocess
def test_bench_branch_stack_runs_and_both_ways_agree():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_branch_stack.py"), "--budgets", "5,10",
                          "--seeds", "2", "--facts", "300"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("round 0"))
    assert "4 runs" in line and float(line.rsplit("relative value loss ", 1)[1]) < 1e-5  # short: float noise only
    assert "median ratio" in out.stdout


@pytest.mark.slow  # two short standalone runs in a subprocess
def test_bench_noise_runs_and_its_first_epochs_agree():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_noise.py"), "--epochs", "2", "--facts",
                          "300"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [x.split() for x in out.stdout.splitlines() if x.split()[:1] in (["1"], ["2"])]
    assert len(rows) == 2 and all(float(r[3]) < 1e-6 for r in rows)  # the same function, summed in another order


@pytest.mark.slow  # ~15-25 s: 4 subprocesses importing torch + transformers, a few stacked steps each
def test_bench_local_times_processes_and_threads():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_local.py"), "--sizes", "500", "--steps",
                          "3", "--repeats", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.split()[:1] == ["500"]]
    assert len(rows) == 1, out.stdout
    one, threads, procs = map(float, rows[0][1:4])
    assert min(one, threads, procs) > 0 and rows[0][4].endswith("x") and rows[0][5].endswith("x")
