"""Against a real SLURM cluster (CI starts one with ../shared/slurm/start-local-slurm.sh).

Skips with a reason where no cluster answers, unless FACTSCALE_REQUIRE_SLURM=1 (set by .ci/run), in
which case a missing cluster is a failure, not a skip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import polars as pl
import pytest
import torch
import yaml

from factscale.rundir import run_dir
from factscale.sweep import _spec_from_dict, expand, launch, sweep_status

pytestmark = [pytest.mark.slurm]


def _cluster_up() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch not found"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if r.returncode != 0 or not r.stdout.strip():
        return f"sinfo: {r.stderr.strip() or 'no nodes'}"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm():
    why = _cluster_up()
    if why:
        if os.environ.get("FACTSCALE_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM required but not reachable: {why}")
        pytest.skip(f"no SLURM cluster reachable ({why}); CI starts one with ../shared/slurm/start-local-slurm.sh")


def _spec(tmp_path, corpus, grid, **slurm):
    return {
        "name": "slurmtest", "runs_dir": str(tmp_path / "runs"),
        "base": {"corpus": {"path": str(corpus)},
                 "train": {"batch_size": 4, "seq_len": 64, "loss_on": "value", "num_threads": 1},
                 "optim": {"lr": 0.01, "schedule": "constant"}, "probe": {"every_epochs": 2}},
        "grid": grid,
        "resources": {"slurm": {"time_min": 10, "cpus_per_task": 1, "mem_gb": 2, "array_parallelism": 4,
                                "signal_delay_s": 30, **slurm}},
    }


def test_job_array_through_the_cli_and_collect(tmp_path, tiny_corpus):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(_spec(tmp_path, tiny_corpus, {"model.size": ["2k", "5k"], "train.epochs": [2, 4]})))
    r = subprocess.run([sys.executable, "-m", "factscale.cli", "sweep", "launch", str(p), "--cluster", "slurm"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "submitted array" in r.stdout and "(4 runs)" in r.stdout
    out = tmp_path / "res.parquet"
    c = subprocess.run([sys.executable, "-m", "factscale.cli", "collect", str(tmp_path / "runs"), "-o", str(out)],
                       capture_output=True, text=True)
    assert c.returncode == 0, c.stderr
    df = pl.read_parquet(out)
    assert df["run_id"].n_unique() == 4
    overall = df.filter((pl.col("group_by") == "all") & (pl.col("split") == "train"))
    for _, g in overall.group_by("run_id"):
        epochs = g["cfg.train.epochs"][0]
        assert sorted(g["epoch"].to_list()) == list(range(2, epochs + 1, 2))
        assert g["mr"].is_between(0, 1).all() and (g["capacity"] <= g["n_facts"]).all()
    assert (df["git_sha"] != "").all() and df["version.torch"].n_unique() == 1
    jobs = json.loads((run_dir(expand(_spec_from_dict(yaml.safe_load(p.read_text()), "x"))[0]) / "jobs.json")
                      .read_text())
    assert jobs[0]["cluster"] == "slurm" and "_" in jobs[0]["job_id"]  # an array task id


def _reference(cfg, tmp_path):
    from factscale.train import run

    ref = dataclasses.replace(cfg, runs_dir=str(tmp_path / "ref"))
    run(ref)
    return pl.read_parquet(run_dir(ref) / "results.parquet")


def _same_metrics(a: pl.DataFrame, b: pl.DataFrame):
    cols = ["epoch", "split", "group_by", "group", "capacity", "tokens_seen"]
    sa, sb = a.select(cols).sort(cols[:4]), b.select(cols).sort(cols[:4])
    assert sa.equals(sb)
    assert (a.sort(cols[:4])["code_bits_mean"] - b.sort(cols[:4])["code_bits_mean"]).abs().max() < 1e-4


def _wait_for_epoch(ckpt, epoch, job, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if ckpt.exists():
            try:
                if torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] + 1 >= epoch:
                    return
            except Exception:
                pass
        if job.done():
            raise AssertionError(f"job ended before epoch {epoch}: {job.state}")
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint at epoch {epoch} after {timeout}s")


def test_preempted_job_requeues_and_resumes_to_the_same_result(tmp_path, tiny_corpus):
    spec = _spec_from_dict(_spec(tmp_path, tiny_corpus, {"model.size": ["10k"], "train.epochs": [24]}), "x")
    cfg = expand(spec)[0]
    recs = {}
    t = threading.Thread(target=lambda: recs.update(ref=_reference(cfg, tmp_path)))
    t.start()  # the uninterrupted reference trains on the other core meanwhile
    [rec] = launch(spec, cluster="slurm", wait=False, log=lambda *_: None)
    import submitit

    job = submitit.SlurmJob(folder=json.loads((run_dir(cfg) / "jobs.json").read_text())[-1]["folder"],
                            job_id=rec["job_id"])
    _wait_for_epoch(run_dir(cfg) / "checkpoints" / "last.ckpt", 6, job)
    job._interrupt()  # preemption: SIGTERM then USR2; submitit checkpoints and requeues
    res = job.result()
    t.join()
    assert res["state"] == "done"
    att = json.loads((run_dir(cfg) / "attempts.json").read_text())
    assert att["attempts"] >= 2
    got = pl.read_parquet(run_dir(cfg) / "results.parquet")
    assert got["resumed_from_epoch"][0] >= 6
    _same_metrics(got, recs["ref"])
    st = sweep_status(spec)[0]
    assert st["state"] == "done" and st["requeues"] >= 1


@pytest.mark.slow
def test_real_time_limit_requeues_and_resumes(tmp_path, tiny_corpus):
    """A 1-minute SLURM limit on a run that needs longer: USR2 before the limit, requeue, resume, finish."""
    spec = _spec_from_dict(_spec(tmp_path, tiny_corpus, {"model.size": ["5k"], "train.epochs": [120]},
                                 time_min=1, signal_delay_s=30, max_requeues=6), "x")
    cfg = expand(spec)[0]
    recs = {}
    t = threading.Thread(target=lambda: recs.update(ref=_reference(cfg, tmp_path)))
    t.start()
    [rec] = launch(spec, cluster="slurm", wait=True, log=lambda *_: None)
    t.join()
    assert rec["state"] == "done", rec
    att = json.loads((run_dir(cfg) / "attempts.json").read_text())
    assert att["attempts"] >= 2, "the run finished inside one limit: make it longer"
    _same_metrics(pl.read_parquet(run_dir(cfg) / "results.parquet"), recs["ref"])


def test_raising_run_is_failed_with_its_error(tmp_path, tiny_corpus):
    spec = _spec_from_dict(_spec(tmp_path, tiny_corpus, {"train.seq_len": [4], "train.epochs": [1]}), "x")
    [rec] = launch(spec, cluster="slurm", wait=True, log=lambda *_: None)
    assert rec["state"] == "failed"
    [st] = sweep_status(spec)
    assert st["state"] == "failed" and "train.seq_len=4" in st["error"]
    assert st["traceback_tail"] and st["log"]
