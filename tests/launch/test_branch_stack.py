"""``stack: seeds`` with ``cooldown_branches``: the seeds' trunks train as one stack and each branch length as
another, from the trunks' states at the fork epoch; every run ends as the non-stacked branched sweep leaves it,
and a stack killed in its trunk or in a branch resumes, never restarts."""

from __future__ import annotations

import signal

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import cli_with_fault, assert_same_results

from factscale.launch.branches import TRUNKS, BranchGroup
from factscale.launch.cost import job_costs
from factscale.launch.spec import expand, spec_from_dict
from factscale.launch.stacks import BranchStack, branch_stack_units
from factscale.launch.sweep import launch, plan, sweep_status
from factscale.training.rundir import RunDir

EPOCHS = [4, 8]  # decay_frac 0.5: forks at epochs 2 and 4, so the trunks train 4 epochs


def _spec(runs, corpus, stack="seeds", seeds=(0, 1)):
    return {"name": "bs", "runs_dir": str(runs), "stack": stack, "cooldown_branches": True,
            "base": {"corpus": {"path": str(corpus)}, "model": {"size": "2k"},
                     "optim": {"lr": 1e-2, "schedule": "wsd", "warmup_steps": 5, "decay_frac": 0.5},
                     "train": {"batch_size": 4, "seq_len": 64, "loss_on": "value", "num_threads": 1,
                               "progress_bar": False},
                     "probe": {"every_epochs": 2}},
            "grid": {"train.epochs": EPOCHS, "seed": list(seeds)},
            "resources": {"local": {"max_parallel": 1, "threads_per_run": 1}}}


def _results(spec) -> dict[str, pl.DataFrame]:
    return {RunDir(c).id: pl.read_parquet(RunDir(c).results) for c in expand(spec)}


def test_the_seeds_branch_groups_are_one_job_and_costed_as_one(tiny_corpus, tmp_path):
    spec = spec_from_dict({**_spec(tmp_path / "runs", tiny_corpus, seeds=(0, 1, 2)),
                           "grid": {"train.epochs": EPOCHS, "seed": [0, 1, 2], "model.size": ["1k", "2k"]}}, "s")
    cfgs = expand(spec)
    units = branch_stack_units(cfgs, [RunDir(c) for c in cfgs])
    assert len(units) == 2 and all(isinstance(u, BranchStack) and len(u.groups) == 3 for _, u in units)
    assert all(isinstance(g, BranchGroup) and g.forks == [2, 4] for _, u in units for g in u.groups)
    jobs = job_costs(spec, plan(spec), 0.2, 100.0)
    assert len(jobs) == 2 and {j["epochs"] for j in jobs} == {3 * (4 + 2 + 4)}
    assert all(j["job"].startswith("stack of 3 trunks") for j in jobs)
    # one seed: nothing to stack, so each group is the ordinary branch group
    one = spec_from_dict({**_spec(tmp_path / "runs", tiny_corpus, seeds=(0,))}, "s")
    [(_, u)] = branch_stack_units(expand(one), [RunDir(c) for c in expand(one)])
    assert isinstance(u, BranchGroup)
    [job] = job_costs(one, plan(one), 0.2, 100.0)  # a lone group is costed as one (it raised KeyError)
    assert job["job"].startswith("trunk ") and job["epochs"] == 4 + 2 + 4


@pytest.mark.slow  # a stacked and a non-stacked branched sweep of 2 seeds
def test_stacked_branches_equal_the_branched_sweep(tiny_corpus, tmp_path):
    stacked = spec_from_dict(_spec(tmp_path / "stacked", tiny_corpus), "s")
    plain = spec_from_dict(_spec(tmp_path / "plain", tiny_corpus, stack="off"), "s")
    recs = launch(stacked, cluster="debug", log=lambda *_: None)
    assert [r["state"] for r in recs] == ["done"]  # one job: both seeds' trunks, then both branch lengths
    assert [r["state"] for r in launch(plain, cluster="debug", log=lambda *_: None)] == ["done", "done"]
    a, b = _results(stacked), _results(plain)
    assert a.keys() == b.keys() and len(a) == 4  # the same run ids: the same experiments
    for rid in a:
        assert_same_results(a[rid], b[rid])
        for col in ("code_bits_mean", "value_loss"):  # continuous: within 1e-5 relative
            assert np.allclose(a[rid][col].to_numpy(), b[rid][col].to_numpy(), rtol=1e-5, atol=0), col
        assert a[rid]["branch_of"].to_list() == b[rid]["branch_of"].to_list()
        assert a[rid]["fork_epoch"].to_list() == b[rid]["fork_epoch"].to_list()
        assert a[rid]["stack_members"][0] == 4 and a[rid]["resumed_from_epoch"][0] is None  # all branches at once
    trunks = sorted((tmp_path / "stacked" / TRUNKS).iterdir())
    assert [p.name for p in trunks] == sorted(p.name for p in (tmp_path / "plain" / TRUNKS).iterdir())
    for t in trunks:
        assert sorted(p.name for p in (t / "checkpoints").glob("fork-*")) == ["fork-e2.stack.pt", "fork-e4.stack.pt"]
        assert pl.read_parquet(t / "results.parquet")["epoch"].max() == 4
    st = sweep_status(stacked)
    assert [r["state"] for r in st] == ["done"] * 6  # 4 branches, 2 trunks
    assert not list((tmp_path / "stacked").rglob("_stacks"))  # removed once every member is done
    assert launch(stacked, cluster="debug", log=lambda *_: None)[0]["skipped"]



@pytest.mark.slow  # four launches in subprocesses
def test_a_stack_killed_in_its_trunk_and_in_a_branch_resumes_to_the_same_results(tiny_corpus, tmp_path):
    """``kill@3``: SIGKILL after epoch 3 on a run's first attempt. The first launch dies in the trunks' stack
    (epoch 3 of 4); the second resumes the trunks from epoch 3, then dies in the branches' stack after its first
    epoch (the 4-epoch branches' epoch 3, from the trunks at epoch 2, beside the 8-epoch branches' epoch 5);
    the third resumes that stack there and finishes. Every run ends with the results of a stack that was never
    killed."""
    for name in ("killed", "clean"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_spec(tmp_path / name, tiny_corpus)))
    killed = spec_from_dict(_spec(tmp_path / "killed", tiny_corpus), "s")
    for _ in range(2):
        r = cli_with_fault("sweep", "launch", tmp_path / "killed.yaml", "--cluster", "debug", fault="kill@3")
        assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    trunk = next((tmp_path / "killed" / TRUNKS).iterdir())
    assert (trunk / "results.parquet").exists() and pl.read_parquet(trunk / "results.parquet")["attempts"][0] == 2
    r = cli_with_fault("sweep", "launch", tmp_path / "killed.yaml", "--cluster", "debug", fault="kill@3")
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli_with_fault("sweep", "launch", tmp_path / "clean.yaml", "--cluster", "debug")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _results(killed), _results(spec_from_dict(_spec(tmp_path / "clean", tiny_corpus), "s"))
    for rid in a:
        assert_same_results(a[rid], b[rid])
        assert a[rid]["attempts"][0] == 2
        assert a[rid]["resumed_from_epoch"][0] == (3 if a[rid]["cfg.train.epochs"][0] == 4 else 5)


@pytest.mark.slow  # a stack of two branch groups, one diverging
def test_a_diverging_trunk_fails_its_own_branches_only(tiny_corpus, tmp_path):
    """Groups that differ in optim.* stack too; a trunk that diverges fails alone, its branches (with no fork
    state to start from) train from the start and fail alone, and the other group ends done."""
    d = _spec(tmp_path / "runs", tiny_corpus, seeds=(0,))
    d["base"]["optim"]["grad_clip"] = 0.0
    d["grid"] = {"train.epochs": EPOCHS, "optim.lr": [1e-2, 1e30]}
    spec = spec_from_dict(d, "s")
    [rec] = launch(spec, cluster="debug", log=lambda *_: None)
    assert rec["state"] == "failed"
    by_lr = {}
    for c in expand(spec):
        by_lr.setdefault(c.optim.lr, []).append(RunDir(c).status())
    assert [s["state"] for s in by_lr[1e-2]] == ["done", "done"]
    assert [s["state"] for s in by_lr[1e30]] == ["failed", "failed"]
    assert all("diverged" in s["error"] for s in by_lr[1e30])
    trunks = {r["run_id"]: r["state"] for r in sweep_status(spec) if r["run_id"].startswith(TRUNKS)}
    assert sorted(trunks.values()) == ["done", "failed"]
    [again] = launch(spec, cluster="debug", log=lambda *_: None)  # a relaunch: still failed, with the same errors
    assert again["state"] == "failed" and "diverged" in again["error"]
    for c in expand(spec):
        st = RunDir(c).status()
        assert st["state"] == ("done" if c.optim.lr == 1e-2 else "failed"), st
        assert c.optim.lr == 1e-2 or "diverged" in st["error"]


@pytest.mark.slow  # a stacked branch sweep, then its branches again from a torn fork state
def test_an_unreadable_fork_state_makes_its_branch_train_from_the_start(tiny_corpus, tmp_path):
    from factscale.launch.stacks import run_branch_stack
    from factscale.training.stack import fork_state

    spec = spec_from_dict(_spec(tmp_path / "runs", tiny_corpus), "s")
    cfgs = expand(spec)
    [(_, unit)] = branch_stack_units(cfgs, [RunDir(c) for c in cfgs])
    payload = unit.payload()
    trunks = [g.trunk_dir() for g in unit.groups]
    from factscale.training.stack import run_stack

    assert run_stack([g.trunk for g in unit.groups], forks=(2, 4))["state"] == "done"
    torn = fork_state(trunks[1], 4)
    torn.write_bytes(torn.read_bytes()[:100])
    out = run_branch_stack(payload)
    assert out["state"] == "done" and torn.with_name(torn.name + ".corrupt").exists()
    by_id = {RunDir(c).id: pl.read_parquet(RunDir(c).results) for c in cfgs}
    alone = RunDir(next(c for c in cfgs if c.seed == 1 and c.train.epochs == 8)).id
    assert "branch_of" not in by_id[alone].columns and by_id[alone]["stack_members"][0] == 1  # a standalone run
    for c in cfgs:
        if RunDir(c).id != alone:
            assert by_id[RunDir(c).id]["branch_of"][0] == trunks[c.seed].id
