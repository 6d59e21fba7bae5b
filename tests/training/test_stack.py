"""Stacked runs (``stack: seeds``): each member ends as the run directory its standalone run leaves, with the
same results; a killed stack resumes; a failing member fails alone."""

from __future__ import annotations

import signal

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import cli_with_fault, assert_same_results, tiny_run_config

from factscale.errors import ConfigError
from factscale.launch.spec import expand, spec_from_dict
from factscale.launch.stacks import StackGroup, stack_units
from factscale.training.rundir import RunDir
from factscale.training.stack import run_stack

# wsd with warmup in steps: the schedule counts epoch progress as Lightning does; lr 3e-3 keeps float noise
# (eager attention in the stack, SDPA standalone: ~1e-7 per step) from being amplified into flipped facts
OVER = {"model.size": "2k", "train.epochs": 4, "probe.every_epochs": 2, "optim.schedule": "wsd",
        "optim.warmup_steps": 5, "optim.decay_frac": 0.5, "optim.lr": 3e-3}


def members(corpus, runs, seeds=(0, 1), **over):
    return [tiny_run_config(corpus, runs, seed=s, **{**OVER, **over}) for s in seeds]


@pytest.mark.slow  # trains 2 stacked and 2 standalone runs
def test_stacked_members_equal_their_standalone_runs(tiny_corpus, tmp_path):
    from factscale.training.run import run

    stacked = members(tiny_corpus, tmp_path / "stack", seeds=(0, 1, 2))
    stacked[2] = tiny_run_config(tiny_corpus, tmp_path / "stack", seed=2, **{**OVER, "optim.lr": 2e-3})
    out = run_stack(stacked)
    assert out["state"] == "done" and len(out["runs"]) == 3
    for c in stacked:
        alone = tiny_run_config(tiny_corpus, tmp_path / "alone", seed=c.seed, **{**OVER, "optim.lr": c.optim.lr})
        run(alone)
        rs, ra = RunDir(c), RunDir(alone)
        assert rs.id == ra.id  # the same experiment: the same identity
        a, b = pl.read_parquet(ra.results), pl.read_parquet(rs.results)
        assert_same_results(a, b)
        assert b["stack_members"][0] == 3 and a["cfg.seed"].to_list() == b["cfg.seed"].to_list()
        fa, fb = pl.read_parquet(ra.fact_history), pl.read_parquet(rs.fact_history)
        assert fa.select("epoch", "fact_id", "split").equals(fb.select("epoch", "fact_id", "split"))
        la = pl.read_csv(ra.logs / "version_0" / "metrics.csv").filter(pl.col("train/epoch_loss").is_not_null())
        lb = pl.read_csv(rs.logs / "version_0" / "metrics.csv")
        assert np.allclose(la["train/epoch_loss"].to_numpy(), lb["train/epoch_loss"].to_numpy(), rtol=1e-5)
        assert (rs.model / "model.safetensors").exists() and not rs.lock.held_by_other()
    assert run_stack(stacked)["runs"][0]["skipped"]  # done members are not trained again


def test_a_diverging_member_fails_alone(tiny_corpus, tmp_path):
    cfgs = members(tiny_corpus, tmp_path, seeds=(0, 1), **{"train.epochs": 2, "probe.every_epochs": 1})
    cfgs[1] = tiny_run_config(tiny_corpus, tmp_path, seed=1, **{**OVER, "train.epochs": 2, "probe.every_epochs": 1,
                                                                 "optim.lr": 1e30, "optim.grad_clip": 0.0})
    out = run_stack(cfgs)
    by_id = {r["run_id"]: r for r in out["runs"]}
    ok, bad = RunDir(cfgs[0]), RunDir(cfgs[1])
    assert out["state"] == "failed" and by_id[ok.id]["state"] == "done" and ok.results.exists()
    assert by_id[bad.id]["state"] == "failed" and "diverged" in by_id[bad.id]["error"]
    assert bad.status()["state"] == "failed" and not bad.results.exists()


@pytest.mark.slow  # two short stacks
def test_a_member_whose_outputs_fail_to_write_is_written_on_relaunch(tiny_corpus, tmp_path, monkeypatch):
    """A write that fails (a full disk, say) fails that member alone; the relaunch resumes the stack at its end
    and writes it, without training again (the same attempt count of epochs, results equal)."""
    import factscale.training.stack as stack

    cfgs = members(tiny_corpus, tmp_path, seeds=(0, 1), **{"train.epochs": 2, "probe.every_epochs": 1})
    real, bad = stack.write_run, RunDir(cfgs[1]).id

    def flaky(cfg, rd, *a, **k):
        if rd.id == bad:
            raise OSError(28, "No space left on device")
        return real(cfg, rd, *a, **k)

    monkeypatch.setattr(stack, "write_run", flaky)
    out = run_stack(cfgs)
    assert out["state"] == "failed" and RunDir(cfgs[1]).status()["state"] == "failed"
    monkeypatch.setattr(stack, "write_run", real)
    again = run_stack(cfgs)
    assert again["state"] == "done" and RunDir(cfgs[1]).results.exists()
    df = pl.read_parquet(RunDir(cfgs[1]).results)
    assert df["resumed_from_epoch"][0] == 2 and df["attempts"][0] == 2  # resumed at its end, not retrained


def test_a_stack_is_one_job_of_runs_that_differ_only_in_seed_and_optimizer(tiny_corpus, tmp_path):
    d = {"name": "s", "runs_dir": str(tmp_path / "runs"), "stack": "seeds",
         "base": {"corpus": {"path": str(tiny_corpus)}, "train": {"batch_size": 4, "seq_len": 64, "epochs": 2}},
         "grid": {"model.size": ["1k", "2k"], "seed": [0, 1, 2], "optim.lr": [0.01, 0.003]}}
    spec = spec_from_dict(d, "s")
    cfgs = expand(spec)
    units = stack_units(cfgs, [RunDir(c) for c in cfgs])
    assert len(units) == 2 and all(isinstance(u, StackGroup) and len(u.members) == 6 for _, u in units)
    with pytest.raises(ConfigError, match="stack 'all'; allowed values"):
        spec_from_dict({**d, "stack": "all"}, "s")
    assert spec_from_dict({**d, **yaml.safe_load("stack: off")}, "s").stack == "off"  # YAML 1.1 reads it as false
    with pytest.raises(ConfigError, match="differ only in seed, train.epochs and optim"):
        run_stack([cfgs[0], cfgs[-1]])



@pytest.mark.slow  # three launches of a 2-member stack in subprocesses
def test_a_killed_stack_resumes_to_the_same_results(tiny_corpus, tmp_path):
    """SIGKILL after the stack's epoch-2 checkpoint (``kill@2``); the relaunch resumes from it (attempt 2,
    resumed from epoch 2) and every member ends with the results of a stack that was never killed."""
    def spec(runs):
        return {"name": "s", "runs_dir": str(runs), "stack": "seeds",
                "base": {"corpus": {"path": str(tiny_corpus)}, "model": {"size": "2k"},
                         "optim": {"lr": 3e-3, "schedule": "wsd", "warmup_steps": 5, "decay_frac": 0.5},
                         "train": {"batch_size": 4, "seq_len": 64, "loss_on": "value", "epochs": 4,
                                   "num_threads": 1},
                         "probe": {"every_epochs": 2}},
                "grid": {"seed": [0, 1]}}
    for name in ("killed", "clean"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec(tmp_path / name)))
    first = cli_with_fault("sweep", "launch", tmp_path / "killed.yaml", "--cluster", "debug", fault="kill@2")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    cfgs = expand(spec_from_dict(spec(tmp_path / "killed"), "s"))
    assert [RunDir(c).status()["state"] for c in cfgs] == ["interrupted", "interrupted"]
    second = cli_with_fault("sweep", "launch", tmp_path / "killed.yaml", "--cluster", "debug", fault="kill@2")
    assert second.returncode == 0, second.stderr[-2000:]
    clean = cli_with_fault("sweep", "launch", tmp_path / "clean.yaml", "--cluster", "debug")
    assert clean.returncode == 0, clean.stderr[-2000:]
    for c, c2 in zip(cfgs, expand(spec_from_dict(spec(tmp_path / "clean"), "s"))):
        a, b = pl.read_parquet(RunDir(c).results), pl.read_parquet(RunDir(c2).results)
        assert a["resumed_from_epoch"][0] == 2 and a["attempts"][0] == 2
        assert_same_results(a, b)
    assert not list((tmp_path / "killed" / "_stacks").glob("*/last.pt"))  # removed once every member is done


@pytest.mark.slow  # compiles a stacked step (~3 shapes, ~45 s on 2 cores)
def test_compiled_stack_members_equal_the_eager_stack(tiny_corpus, tmp_path, monkeypatch):
    """``train.compile`` in a stack compiles the stacked step; its members end as the eager stack's (which
    equal their standalone runs: above) to float noise. The compiled graphs are cached under the runs
    directory. (A compiled standalone run is Lightning compiling its decoder body: 4 more compiles of
    another program, so not retrained here.)"""
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from factscale.training.run import COMPILE_CACHE

    # as a fresh job finds it (importing Lightning set inductor's default); restored after the test
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", default_cache_dir()))
    compiled = members(tiny_corpus, tmp_path / "compiled", **{"train.compile": True})
    eager = members(tiny_corpus, tmp_path / "eager")
    assert run_stack(compiled)["state"] == "done" and run_stack(eager)["state"] == "done"
    cache = tmp_path / "compiled" / COMPILE_CACHE
    assert any(p.is_file() for p in cache.rglob("*")), "no compiled graph cached under the runs directory"
    for c, e in zip(compiled, eager):
        assert c.train.compile and not e.train.compile
        assert_same_results(pl.read_parquet(RunDir(e).results), pl.read_parquet(RunDir(c).results))
