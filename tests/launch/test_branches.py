"""Cooldown branches (factscale.launch.branches): a branch equals the standalone wsd run it stands for, resumes
like any run when killed, and bad branch configs fail before anything is created, naming the field."""

from __future__ import annotations

import json
import signal

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import cli_with_fault, tiny_run_config

from factscale.analysis.collect import collect
from factscale.analysis.laws import LAWS
from factscale.analysis.vocab import final_probes, overall
from factscale.errors import ConfigError
from factscale.launch.branches import TRUNKS, epochs_trained, fork_epoch, fork_path, groups
from factscale.launch.spec import expand, spec_from_dict
from factscale.launch.sweep import launch, sweep_status
from factscale.training.run import run
from factscale.training.rundir import RunDir

EPOCHS = [5, 10]  # decay_frac 0.4: forks at epochs 3 and 6, so the trunk trains 6 epochs
BASE = {"train.batch_size": 4, "train.seq_len": 32, "train.loss_on": "value", "train.progress_bar": False,
        "train.num_threads": 1, "optim.lr": 0.01, "optim.schedule": "wsd", "optim.decay_frac": 0.4,
        "optim.warmup_steps": 5, "model.size": "2k", "probe.every_epochs": 4}
COLS = ["epoch", "split", "group_by", "group"]


def _spec(tmp_path, corpus, **over):
    base: dict = {}
    for k, v in {**BASE, "corpus.path": str(corpus)}.items():
        section, name = k.split(".")
        base.setdefault(section, {})[name] = v
    d = {"name": "b", "runs_dir": str(tmp_path / "runs"), "base": base, "cooldown_branches": True,
         "grid": {"train.epochs": EPOCHS}, "resources": {"local": {"max_parallel": 1, "threads_per_run": 1}}}
    d.update(over)
    return d


def _standalone(corpus, runs_dir, epochs):
    cfg = tiny_run_config(corpus, runs_dir, **{**BASE, "train.epochs": epochs})
    run(cfg)
    return pl.read_parquet(RunDir(cfg).results)


def _same_metrics(a: pl.DataFrame, b: pl.DataFrame):
    a, b = a.sort(COLS), b.sort(COLS)
    assert a.select(COLS).equals(b.select(COLS))  # the same probes (the trunk's extra end probe dropped)
    assert a["capacity"].to_list() == b["capacity"].to_list()
    assert a["tokens_seen"].to_list() == b["tokens_seen"].to_list()
    assert np.allclose(a["code_bits_mean"].to_numpy(), b["code_bits_mean"].to_numpy(), rtol=0, atol=1e-4)


@pytest.mark.slow  # over 4 s: the fast tier stays under 2 minutes
def test_branches_equal_standalone_wsd_runs(tiny_corpus, tmp_path):
    spec = spec_from_dict(_spec(tmp_path, tiny_corpus), "spec")
    recs = launch(spec, cluster="debug", log=lambda *_: None)
    assert [r["state"] for r in recs] == ["done"]  # one job: the trunk, then both branches
    df, rep = collect(tmp_path / "runs")
    assert len(rep["done"]) == 2  # the branches; the constant-rate trunk is not collected as a run
    trunk = next((tmp_path / "runs" / TRUNKS).iterdir())
    assert pl.read_parquet(trunk / "results.parquet")["epoch"].max() == 6
    assert sorted(p.name for p in (trunk / "checkpoints").glob("fork-*")) == ["fork-e3.ckpt", "fork-e6.ckpt"]
    for epochs in EPOCHS:
        b = df.filter(pl.col("cfg.train.epochs") == epochs)
        assert set(b["branch_of"]) == {trunk.name} and set(b["fork_epoch"]) == {round(epochs * 0.6)}
        rd = RunDir.open(tmp_path / "runs" / b["run_id"][0])
        assert any(f"(epoch {round(epochs * 0.6)}) of trunk" in e for e in rd.status()["events"])
        _same_metrics(b, _standalone(tiny_corpus, tmp_path / "alone", epochs))
    # the fits' default selection: one annealed end point per branch
    assert sorted(final_probes(overall(df))["epoch"].to_list()) == EPOCHS
    sel = LAWS["exp-epochs"].select(df, None, False)
    assert sorted(sel["epoch"].to_list()) == EPOCHS and sel["annealed"].all()
    assert epochs_trained(expand(spec)) == (6 + 2 + 4, 15)
    st = sweep_status(spec)  # the two branches, then the trunk
    assert [r["state"] for r in st] == ["done"] * 3 and st[-1]["run_id"] == f"{TRUNKS}/{trunk.name}"


class _LRs(__import__("lightning").Callback):
    def __init__(self):
        self.seen = []  # (epoch, lr) of every optimizer step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))


def _uneven_seed(corpus, F: int) -> int:
    """A seed whose first F epochs pack into more steps than F x the first epoch's (packing varies the
    count): a step-counted schedule would start this run's decay before its fork epoch ends."""
    from factscale.corpus.build import load_corpus
    from factscale.training.data import FactDataModule

    facts, _ = load_corpus(corpus)
    for seed in range(50):
        dm = FactDataModule(tiny_run_config(corpus, "/unused", **{**BASE, "seed": seed}), facts, pad_id=0)
        steps = [-(-len(dm.epoch_tensors(e)[0]) // BASE["train.batch_size"]) for e in range(F)]
        if sum(steps) > F * steps[0]:
            return seed
    raise AssertionError("no seed packs unevenly: the test's premise is gone; pick another batch/seq_len")


def test_wsd_decay_starts_exactly_at_the_fork_epoch(tiny_corpus, tmp_path):
    """The decay starts on the fork epoch's boundary even when the epochs before it pack into more steps
    than a step count predicts: every step before the fork epoch, and its first, at the stable rate (as the
    trunk trains them: a branch then equals the standalone run), every later one below the one before."""
    lrs = _LRs()
    over = {**BASE, "train.epochs": 5}
    cfg = tiny_run_config(tiny_corpus, tmp_path, **over, seed=_uneven_seed(tiny_corpus, 3))
    run(cfg, callbacks=(lrs,))
    lr, F = cfg.optim.lr, fork_epoch(cfg)
    first = next(i for i, (e, _) in enumerate(lrs.seen) if e == F)
    stable = [x for _, x in lrs.seen[cfg.optim.warmup_steps:first + 1]]
    assert stable == [lr] * len(stable)
    decay = [x for _, x in lrs.seen[first + 1:]]
    assert all(b < a for a, b in zip([lr] + decay, decay))
    assert decay[-1] >= cfg.optim.min_lr_ratio * lr



@pytest.mark.slow  # > 20 s on the shared 2-core CPU
def test_a_killed_trunk_and_a_branch_killed_mid_decay_resume_never_restart(tiny_corpus, tmp_path):
    """``kill@4`` SIGKILLs the first attempt of whatever reaches epoch 4: first the trunk (after its epoch-3
    fork is saved), then, relaunched, the 5-epoch branch in the middle of its decay (epochs 4-5). Each
    relaunch resumes the killed piece from its own last checkpoint, skips what is done, and both branches
    end exactly like standalone runs."""
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path, tiny_corpus)))
    spec = spec_from_dict(_spec(tmp_path, tiny_corpus), "spec")
    (g,) = groups(expand(spec))
    trunk, b5, b10 = RunDir(g.trunk), *(RunDir(c) for c in g.branches)

    first = cli_with_fault("sweep", "launch", path, "--cluster", "debug", fault="kill@4")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert trunk.status()["state"] == "interrupted" and fork_path(trunk, 3).exists()
    assert [b5.status()["state"], b10.status()["state"]] == ["pending", "pending"]

    second = cli_with_fault("sweep", "launch", path, "--cluster", "debug", fault="kill@4")  # trunk attempt 2: not armed
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    t = pl.read_parquet(trunk.results)
    assert t["resumed_from_epoch"][0] == 4 and t["attempts"][0] == 2 and fork_path(trunk, 6).exists()
    assert b5.status()["state"] == "interrupted"

    third = cli_with_fault("sweep", "launch", path, "--cluster", "debug", fault="kill@4")
    assert third.returncode == 0, third.stderr[-2000:]
    r5, r10 = pl.read_parquet(b5.results), pl.read_parquet(b10.results)
    assert r5["resumed_from_epoch"][0] == 4 and r5["attempts"][0] == 2  # from its own epoch-4 checkpoint
    assert sum("of trunk" in e for e in b5.status()["events"]) == 1  # started from the fork once only
    assert r10["attempts"][0] == 1 and json.loads(trunk.attempts_file.read_text())["attempts"] == 2
    _same_metrics(r5, _standalone(tiny_corpus, tmp_path / "alone", 5))  # r10's equality: the test above


@pytest.mark.parametrize("base_over, field", [
    ({"optim": {"schedule": "cosine"}}, "optim.schedule"),
    ({"optim": {"decay_frac": 0.25}}, "optim.decay_frac"),  # 5 x 0.75 = 3.75: not a whole epoch
    ({"optim": {"warmup_steps": None}}, "optim.warmup_steps"),  # warmup_frac scales with the run's length
    ({"train": {"phase_column": "phase", "order": "blocked"}}, "train.order"),
])
def test_bad_branch_configs_fail_before_anything_is_created(tiny_corpus, tmp_path, base_over, field, capsys):
    d = _spec(tmp_path, tiny_corpus)
    for section, vals in base_over.items():
        d["base"][section].update(vals)
    with pytest.raises(ConfigError, match=field):
        launch(spec_from_dict(d, "spec"), cluster="debug", log=lambda *_: None)
    if field == "optim.schedule":  # through the CLI's main(): one error line, exit 2
        from factscale.cli.main import main

        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(d))
        with pytest.raises(SystemExit) as e:
            main(["sweep", "launch", str(path), "--cluster", "debug"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error:") and field in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_plan_shows_the_trunk_the_branches_and_the_epochs_saved(tiny_corpus, tmp_path):
    from factscale.launch.branches import plan_lines

    spec = spec_from_dict(_spec(tmp_path, tiny_corpus, grid={"train.epochs": [5, 10], "seed": [0, 1]}), "s")
    out = "\n".join(plan_lines(expand(spec)))  # what `sweep plan` prints below its run table
    assert out.count("trunk _trunks/") == 2 and out.count("  branch ") == 4
    assert "decay epochs 7-10 (4 trained)" in out
    assert "24 epochs trained instead of 30" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # a trunk and a branch trained, ~3 s
def test_an_unreadable_fork_checkpoint_makes_its_branch_run_standalone(tiny_corpus, tmp_path):
    from factscale.launch.branches import BranchGroup, fork_path, groups, run_group

    (g,) = groups(expand(spec_from_dict(_spec(tmp_path, tiny_corpus), "spec")))
    assert isinstance(g, BranchGroup) and g.forks == [3, 6]
    payload = g.payload()
    payload["forks"], payload["branches"] = [6], payload["branches"][1:]  # the 10-epoch branch only
    trunk = RunDir(g.trunk)
    fork = fork_path(trunk, 6)
    fork.parent.mkdir(parents=True)
    fork.write_bytes(b"torn")  # the trunk is not run: a fork is there, so no branch needs it
    assert run_group(payload)["state"] == "done"
    res = pl.read_parquet(RunDir(g.branches[1]).results)
    assert "branch_of" not in res.columns and res["epoch"].max() == 10  # trained all 10 epochs itself
    assert fork.with_name("fork-e6.ckpt.corrupt").exists() and not fork.exists()
    assert not trunk.results.exists()
