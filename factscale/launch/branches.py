"""Cooldown branches: annealed measurements at many epoch counts for about the cost of one run.

Warmup-stable-decay (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations"): a ``wsd`` run of E epochs with decay fraction d trains at the stable rate through its fork
epoch F = E(1 - d) and decays over the last E - F epochs. Up to F it is identical to any other run of the same
config with more epochs: same fixed warmup (``optim.warmup_steps``), constant rate, and data order that
depends only on (seed, epoch). So a sweep with ``cooldown_branches: true`` groups its runs that differ only
in ``train.epochs`` and runs each group as

- one **trunk**: the config with ``optim.schedule: constant`` and ``train.epochs`` = the last fork epoch,
  which keeps a checkpoint at every fork epoch (``checkpoints/fork-e<F>.ckpt``); it lives under
  ``<runs_dir>/_trunks/`` so ``collect`` never takes its constant-rate end for an annealed point;
- one **branch** per epoch count: an ordinary run (its own run directory and the identity of the standalone
  run it equals) that, while it has no checkpoint of its own, starts from the trunk's checkpoint at its fork
  epoch and trains only the decay. Its LR lambda is built from its own config, so it follows the standalone
  schedule exactly; its probe rows before F come from the trunk (the same rows a standalone run has).

A killed trunk or branch resumes from its own checkpoints like any run. A branch whose fork checkpoint is
not there (the sweep gained an epoch count after the trunk passed it) runs standalone: same result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

from factscale.configio import flatten, from_dict, to_dict
from factscale.errors import ConfigError
from factscale.training.config import RunConfig
from factscale.training.rundir import RunDir, run_name

TRUNKS = "_trunks"


def fork_epoch(cfg: RunConfig, where: str = "") -> int:
    """The epoch a branch of this config forks from its trunk; ConfigError (naming the field) if the config
    cannot be a branch."""
    o, E = cfg.optim, cfg.train.epochs
    pre = f"{where}: " if where else ""
    if o.schedule != "wsd":
        raise ConfigError(f"{pre}optim.schedule: cooldown branches need schedule wsd (warmup-stable-decay), "
                          f"got {o.schedule!r}")
    if not 0 < o.decay_frac < 1:
        raise ConfigError(f"{pre}optim.decay_frac must be in (0, 1) for cooldown branches, got {o.decay_frac}")
    if o.warmup_steps is None and o.warmup_frac > 0:
        raise ConfigError(f"{pre}optim.warmup_steps: cooldown branches need a warmup that does not depend on "
                          "the run's length; set optim.warmup_steps (or optim.warmup_frac: 0)")
    if cfg.train.phase_column is not None and cfg.train.order == "blocked":
        raise ConfigError(f"{pre}train.order: blocked phases depend on train.epochs, so runs of different "
                          "lengths differ before the fork; use interleaved or no cooldown branches")
    F = E * (1 - o.decay_frac)
    if abs(F - round(F)) > 1e-9 or round(F) < 1:
        raise ConfigError(f"{pre}optim.decay_frac: the fork epoch train.epochs x (1 - decay_frac) = {E} x "
                          f"{1 - o.decay_frac:g} = {F:g} is not a whole epoch >= 1; pick decay_frac so it is "
                          "for every train.epochs")
    return round(F)


def _group_key(cfg: RunConfig) -> str:
    flat = flatten(to_dict(cfg))
    flat.pop("train.epochs")
    flat.pop("name")  # a sweep's name prefix may spell the epochs axis' neighbours, never what is computed
    return repr(sorted(flat.items()))


@dataclass
class BranchGroup:
    """Runs of one config that differ only in epochs: a trunk and its branches (longest last)."""

    branches: list[RunConfig]
    forks: list[int]
    trunk: RunConfig | None = None
    corpus_hash: str | None = None
    rds: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{RunDir(self.trunk, self.corpus_hash).id} (+{len(self.branches)} branches)"

    @property
    def epochs(self) -> int:
        """Epochs the group trains: its trunk to the last fork, then each branch's decay."""
        return max(self.forks) + sum(b.train.epochs - f for b, f in zip(self.branches, self.forks))

    def trunk_dir(self) -> RunDir:
        return RunDir(self.trunk, self.corpus_hash)

    def payload(self, **train_over) -> dict:
        """What a job gets: plain dicts (small to pickle), with per-launch train overrides applied."""
        def d(c):
            x = to_dict(c)
            x["train"].update(train_over)
            return x
        return {"trunk": d(self.trunk), "branches": [d(b) for b in self.branches], "forks": self.forks}

    # the RunDir-like surface the sweep launcher uses
    def record_job(self, job_id, cluster, folder) -> None:
        for rd in [self.trunk_dir(), *self.rds]:
            rd.record_job(job_id, cluster, folder)

    def progress(self) -> dict | None:
        """The progress of the group's piece being trained now (its trunk, then each branch), named."""
        for rd in [self.trunk_dir(), *self.rds]:
            p = rd.progress() if not rd.results.exists() else None
            if p is not None:
                return {**p, "piece": rd.id}
        return None

    def status(self) -> dict:
        states = [rd.status() for rd in self.rds]
        info = {"run_id": self.id, "requeues": 0}
        if all(s["state"] == "done" for s in states):
            return {**info, "state": "done"}
        for want in ("running", "queued", "failed"):
            hit = next((s for s in [self.trunk_dir().status(), *states] if s["state"] == want), None)
            if hit:
                return {**info, **{k: v for k, v in hit.items() if k != "run_id"}}
        return {**info, "state": "pending"}


def trunk_config(branches: list[RunConfig], forks: list[int]) -> RunConfig:
    t = branches[0].train
    if t.inject_where is not None and t.inject_epoch + t.inject_epochs - 1 > max(forks):
        raise ConfigError(f"train.inject_epoch={t.inject_epoch} + inject_epochs={t.inject_epochs} - 1 ends after "
                          f"epoch {max(forks)}, the last fork of the cooldown-branch trunk (its constant-rate part): "
                          "the injection must end by then; inject earlier or drop cooldown_branches")
    d = to_dict(branches[0])
    d["optim"]["schedule"] = "constant"
    d["train"]["epochs"] = max(forks)
    d["runs_dir"] = str(Path(branches[0].runs_dir) / TRUNKS)
    return from_dict(RunConfig, d)


def groups(cfgs: list[RunConfig], where: str = "") -> list[BranchGroup | RunConfig]:
    """Validate every config as a branch and group those differing only in epochs (in first-seen order).
    A group of one is returned as its plain config: a branch of one costs what the run costs."""
    by_key: dict[str, list[RunConfig]] = {}
    for c in cfgs:
        fork_epoch(c, f"{where}run {run_name(c)}" if where else f"run {run_name(c)}")
        by_key.setdefault(_group_key(c), []).append(c)
    out: list[BranchGroup | RunConfig] = []
    for members in by_key.values():
        if len(members) == 1:
            out.append(members[0])
            continue
        members = sorted(members, key=lambda c: c.train.epochs)
        forks = [fork_epoch(c) for c in members]
        out.append(BranchGroup(members, forks, trunk_config(members, forks)))
    return out


def launch_units(cfgs: list[RunConfig], rds: list[RunDir]) -> list[tuple[RunConfig, object]]:
    """The sweep launcher's jobs: (config, run dir) for a run on its own, (trunk config, group) for a group."""
    rd_of = {id(c): rd for c, rd in zip(cfgs, rds)}
    units = []
    for g in groups(cfgs):
        if isinstance(g, BranchGroup):
            g.rds = [rd_of[id(b)] for b in g.branches]
            g.corpus_hash = g.rds[0].corpus_hash if g.rds[0] is not None else None
            units.append((g.trunk, g))
        else:
            units.append((g, rd_of[id(g)]))
    return units


def epochs_trained(cfgs: list[RunConfig]) -> tuple[int, int]:
    """(epochs trained with cooldown branches, epochs trained by the same runs standalone)."""
    standalone = sum(c.train.epochs for c in cfgs)
    branched = 0
    for g in groups(cfgs):
        if isinstance(g, BranchGroup):
            branched += g.epochs
        else:
            branched += g.train.epochs
    return branched, standalone


def plan_lines(cfgs: list[RunConfig]) -> list[str]:
    """What ``sweep plan`` prints for a branched sweep: each trunk, its branches, and the epochs saved."""
    from factscale.corpus.build import read_manifest

    lines = []
    for g in groups(cfgs):
        if not isinstance(g, BranchGroup):
            lines.append(f"run {run_name(g)}: a group of one, trained standalone ({g.train.epochs} epochs)")
            continue
        m = read_manifest(g.trunk.corpus.path)
        tid = RunDir(g.trunk, m["corpus_hash"]).id if m else f"{run_name(g.trunk)}-?"
        lines.append(f"trunk {TRUNKS}/{tid}: constant rate for {max(g.forks)} epochs, forks at {g.forks}")
        for b, f in zip(g.branches, g.forks):
            lines.append(f"  branch {run_name(b)}: decay epochs {f + 1}-{b.train.epochs} "
                         f"({b.train.epochs - f} trained)")
    branched, standalone = epochs_trained(cfgs)
    lines.append(f"cooldown branches: {branched} epochs trained instead of {standalone} for standalone runs "
                 f"({standalone / branched:.2f}x fewer; the FLOPs total above counts standalone runs)")
    return lines


def trunk_status(cfgs: list[RunConfig]) -> list[dict]:
    """``sweep status`` rows of the trunks (run id ``_trunks/<id>``)."""
    from factscale.corpus.build import read_manifest

    rows = []
    for g in groups(cfgs):
        if isinstance(g, BranchGroup):
            m = read_manifest(g.trunk.corpus.path)
            st = RunDir(g.trunk, m["corpus_hash"]).status() if m else {"run_id": f"{run_name(g.trunk)}-?",
                                                                       "state": "pending", "requeues": 0}
            rows.append({**st, "run_id": f"{TRUNKS}/{st['run_id']}"})
    return rows


def fork_path(trunk_rd: RunDir, epoch: int) -> Path:
    return trunk_rd.last_ckpt.with_name(f"fork-e{epoch}.ckpt")


class KeepForks(L.Callback):
    """The trunk's checkpoint at each fork epoch, written (atomically) before the epoch's ``last.ckpt``: if
    the trunk is killed in between it redoes that epoch and writes the same fork again."""

    def __init__(self, trunk_rd: RunDir, epochs: list[int]):
        self.rd, self.epochs = trunk_rd, set(epochs)

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1
        if epoch not in self.epochs:
            return
        dest = fork_path(self.rd, epoch)
        tmp = dest.with_name(f".{dest.name}.tmp")
        trainer.save_checkpoint(tmp)  # collective under DDP; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, dest)


def readable_checkpoint(path: Path) -> bool:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except Exception:  # truncated zip, unpickling error: unusable either way
        return False


def run_group(payload: dict) -> dict:
    """Run (or resume) a trunk and then each of its branches, shortest first. Every piece resumes from its
    own checkpoints; finished pieces are skipped."""
    from factscale.errors import RunBusy
    from factscale.training.run import run

    trunk = from_dict(RunConfig, payload["trunk"])
    branches = [from_dict(RunConfig, d) for d in payload["branches"]]
    forks = list(payload["forks"])
    trunk_rd = RunDir(trunk)
    out = {"trunk": trunk_rd.id, "runs": []}

    def needs_fork(b, f):
        rd = RunDir(b, trunk_rd.corpus_hash)
        started = rd.results.exists() or rd.last_ckpt.exists() or rd.prev_ckpt.exists()
        return not started and not fork_path(trunk_rd, f).exists()

    if any(needs_fork(b, f) for b, f in zip(branches, forks)):
        try:
            out["trunk_result"] = run(trunk, callbacks=(KeepForks(trunk_rd, forks),))
        except RunBusy as e:
            return {**out, "state": "busy", "message": str(e)}
    for b, f in zip(branches, forks):
        fork = fork_path(trunk_rd, f)
        if fork.exists() and not readable_checkpoint(fork):  # a torn write or a bad disk: the branch runs standalone
            os.replace(fork, fork.with_name(fork.name + ".corrupt"))
            trunk_rd.note(f"fork checkpoint {fork} is unreadable; moved to {fork.name}.corrupt")
        try:
            res = run(b, init_from=fork, branch_of=trunk_rd.id) if fork.exists() else run(b)
        except RunBusy as e:
            res = {"run_id": RunDir(b, trunk_rd.corpus_hash).id, "state": "busy", "message": str(e)}
        out["runs"].append(res)
    states = {r["state"] for r in out["runs"]}
    out["state"] = "done" if states == {"done"} else "busy"
    return out
