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
import time

import polars as pl
import pytest
import yaml

from factscale.launch.spec import expand, spec_from_dict
from factscale.launch.sweep import launch, sweep_status
from factscale.testing import run_dir
from factscale.training.rundir import RunDir

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
    jobs = json.loads((run_dir(expand(spec_from_dict(yaml.safe_load(p.read_text()), "x"))[0]) / "jobs.json")
                      .read_text())
    assert jobs[0]["cluster"] == "slurm" and "_" in jobs[0]["job_id"]  # an array task id


def _reference(cfg, tmp_path):
    from factscale.training.run import run

    ref = dataclasses.replace(cfg, runs_dir=str(tmp_path / "ref"))
    run(ref)
    return pl.read_parquet(run_dir(ref) / "results.parquet")


def _same_metrics(a: pl.DataFrame, b: pl.DataFrame):
    cols = ["epoch", "split", "group_by", "group", "capacity", "tokens_seen"]
    sa, sb = a.select(cols).sort(cols[:4]), b.select(cols).sort(cols[:4])
    assert sa.equals(sb)
    assert (a.sort(cols[:4])["code_bits_mean"] - b.sort(cols[:4])["code_bits_mean"]).abs().max() < 1e-4


def _submit(spec, monkeypatch, fault=None, wait=False):
    """Launch on SLURM with FACTSCALE_FAULT in the submitted jobs' environment only (sbatch exports the
    submitter's environment); the test process itself never runs with a fault armed."""
    if fault:
        monkeypatch.setenv("FACTSCALE_FAULT", fault)
    try:
        return launch(spec, cluster="slurm", wait=wait, log=lambda *_: None)
    finally:
        monkeypatch.delenv("FACTSCALE_FAULT", raising=False)


def _job(cfg, rec):
    import submitit

    return submitit.SlurmJob(folder=RunDir(cfg).jobs()[-1]["folder"], job_id=rec["job_id"])


def test_preempted_job_requeues_and_resumes_to_the_same_result(tmp_path, tiny_corpus, monkeypatch):
    """SLURM's preemption signal (USR2) arrives right after epoch 6 - injected at that training event, so the
    outcome does not depend on the machine's speed: submitit requeues, the new attempt resumes from epoch 6
    and ends exactly like an uninterrupted run."""
    # time_min > 10: submitit then classifies an early USR2 as a preemption, not a time-out
    spec = spec_from_dict(_spec(tmp_path, tiny_corpus, {"model.size": ["10k"], "train.epochs": [12]},
                                 time_min=30), "x")
    cfg = expand(spec)[0]
    [rec] = _submit(spec, monkeypatch, fault="usr2@6")
    ref = _reference(cfg, tmp_path)  # trains here while the job runs
    res = _job(cfg, rec).result()
    assert res["state"] == "done"
    assert json.loads((run_dir(cfg) / "attempts.json").read_text())["attempts"] == 2
    got = pl.read_parquet(run_dir(cfg) / "results.parquet")
    assert got["resumed_from_epoch"][0] == 6
    _same_metrics(got, ref)
    st = sweep_status(spec)[0]
    assert st["state"] == "done" and st["requeues"] == 1


@pytest.mark.slow
def test_real_time_limit_requeues_and_resumes(tmp_path, tiny_corpus, monkeypatch):
    """A real 2-minute SLURM limit. The first attempt stalls after epoch 3 (an injected fault), so it cannot
    finish inside the limit on any machine: SLURM sends USR2 before the limit, submitit requeues, the next
    attempt resumes and finishes with the metrics of an uninterrupted run. SLURM may send USR2 up to 60 s
    early, so the signal comes 30-90 s into an attempt: after the job has installed its handler (a 1-minute
    limit let it come at the start, which killed the job in one CI run)."""
    spec = spec_from_dict(_spec(tmp_path, tiny_corpus, {"model.size": ["5k"], "train.epochs": [8]},
                                 time_min=2, signal_delay_s=30, max_requeues=6), "x")
    cfg = expand(spec)[0]
    [rec] = _submit(spec, monkeypatch, fault="stall@3")
    ref = _reference(cfg, tmp_path)
    res = _job(cfg, rec).result()
    assert res["state"] == "done", res
    assert json.loads((run_dir(cfg) / "attempts.json").read_text())["attempts"] >= 2
    _same_metrics(pl.read_parquet(run_dir(cfg) / "results.parquet"), ref)


def test_raising_run_is_failed_with_its_error(tmp_path, tiny_corpus, monkeypatch):
    spec = spec_from_dict(_spec(tmp_path, tiny_corpus, {"train.epochs": [2]}), "x")
    [rec] = _submit(spec, monkeypatch, fault="raise@1", wait=True)
    assert rec["state"] == "failed" and "injected fault" in rec["error"]
    [st] = sweep_status(spec)
    assert st["state"] == "failed" and "injected fault" in st["error"]
    assert st["traceback_tail"] and st["log"]


def test_relaunch_never_submits_a_queued_or_running_run_twice(tmp_path, tiny_corpus):
    """Whatever state the first job is in when the second launch looks (pending, running or done), the run
    is submitted once and trained once."""
    spec = spec_from_dict(_spec(tmp_path, tiny_corpus, {"train.epochs": [4]}), "x")
    cfg = expand(spec)[0]
    [first] = launch(spec, cluster="slurm", wait=False, log=lambda *_: None)
    [second] = launch(spec, cluster="slurm", wait=False, log=lambda *_: None)
    assert second.get("skipped") and second["state"] in ("queued", "running", "done"), second
    assert _job(cfg, first).result()["state"] == "done"
    assert len(RunDir(cfg).jobs()) == 1
    assert RunDir(cfg).attempts()["attempts"] == 1


def test_cancelled_job_shows_as_interrupted_with_its_job(tmp_path, tiny_corpus, monkeypatch):
    """scancel of a running job: status says the run was interrupted, by which job, and that a relaunch
    resumes it (no submitit warning, no 'pending')."""
    spec = spec_from_dict(_spec(tmp_path, tiny_corpus, {"train.epochs": [4]}), "x")
    cfg = expand(spec)[0]
    [rec] = _submit(spec, monkeypatch, fault="stall@1")
    rd = RunDir(cfg)
    deadline = time.time() + 600  # a bound on waiting for an event, not a timing assumption
    while not rd.last_ckpt.exists():
        assert time.time() < deadline and not _job(cfg, rec).done(), "the job never finished epoch 1"
        time.sleep(0.5)
    subprocess.run(["scancel", rec["job_id"]], check=True)
    while rd.queued_job() is not None or rd.lock.held_by_other():
        assert time.time() < deadline, "scancel did not end the job"
        time.sleep(0.5)
    st = rd.status()
    assert st["state"] == "interrupted" and rec["job_id"] in st["error"], st
    [again] = launch(spec, cluster="slurm", wait=True, log=lambda *_: None)
    assert again["state"] == "done"
    assert pl.read_parquet(rd.results)["resumed_from_epoch"][0] == 1
