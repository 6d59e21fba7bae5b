"""A sweep's ``stack: seeds``: runs that differ only in seed (and optimizer settings) go to one job, which
trains them as one stacked model (``training.stack``); each still ends as its own run directory.

``StackGroup`` is the launcher's unit for such a job, with the run-directory surface the launcher uses
(``id``, ``status``, ``progress``, ``record_job``, ``payload``), like ``branches.BranchGroup``.

With ``cooldown_branches`` too, the unit is a ``BranchStack``: the cooldown-branch groups (``branches.groups``)
that differ only in seed. Its job trains their trunks as one stack, keeping each trunk's state at every fork
epoch, then all their branches as one stack, each member starting from its own trunk's state at its own fork
epoch and leaving when its decay ends: the trunk and branch runs end as the non-stacked branched sweep leaves
them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from factscale.configio import from_dict, to_dict
from factscale.training.config import RunConfig
from factscale.training.rundir import RunDir
from factscale.training.stack import fork_state, stack_key

STACK_MODES = ("off", "seeds")


@dataclass
class StackGroup:
    members: list[RunConfig]
    rds: list[RunDir] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.rds[0].id} (+{len(self.rds) - 1} stacked)"

    def payload(self, **train_over) -> dict:
        def d(c):
            x = to_dict(c)
            x["train"].update(train_over)
            return x
        return {"stack": [d(c) for c in self.members]}

    def record_job(self, job_id, cluster, folder) -> None:
        for rd in self.rds:
            rd.record_job(job_id, cluster, folder)

    def progress(self) -> dict | None:
        for rd in self.rds:
            p = rd.progress() if not rd.results.exists() else None
            if p is not None:
                return {**p, "piece": f"{rd.id} and {len(self.rds) - 1} stacked"}
        return None

    def status(self) -> dict:
        states = [rd.status() for rd in self.rds]
        info = {"run_id": self.id, "requeues": max(s.get("requeues", 0) for s in states)}
        if all(s["state"] == "done" for s in states):
            return {**info, "state": "done"}
        for want in ("running", "queued", "failed", "interrupted"):
            hit = next((s for s in states if s["state"] == want), None)
            if hit:
                return {**info, **{k: v for k, v in hit.items() if k not in ("run_id", "requeues")}}
        return {**info, "state": "pending"}


def stack_units(cfgs: list[RunConfig], rds: list[RunDir]) -> list[tuple[RunConfig, object]]:
    """The launcher's jobs under ``stack: seeds``: one per group of runs with equal ``stack_key`` (a group of one
    stays an ordinary run)."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(stack_key(c), []).append(i)
    units = []
    for idx in groups.values():
        if len(idx) == 1:
            units.append((cfgs[idx[0]], rds[idx[0]]))
        else:
            units.append((cfgs[idx[0]], StackGroup([cfgs[i] for i in idx], [rds[i] for i in idx])))
    return units


@dataclass
class BranchStack:
    """Cooldown-branch groups (one per seed) with the same trunk but for the seed: one job."""

    groups: list  # branches.BranchGroup, their run dirs and corpus hash set

    @property
    def members(self) -> list[RunConfig]:  # the stack's width, for ordering local jobs
        return [g.trunk for g in self.groups]

    @property
    def id(self) -> str:
        return f"{self.groups[0].id} x{len(self.groups)} stacked"

    def payload(self, **train_over) -> dict:
        return {"branch_stack": [g.payload(**train_over) for g in self.groups]}

    def record_job(self, job_id, cluster, folder) -> None:
        for g in self.groups:
            g.record_job(job_id, cluster, folder)

    def progress(self) -> dict | None:
        return next((p for g in self.groups if (p := g.progress()) is not None), None)

    def status(self) -> dict:
        states = [g.status() for g in self.groups]
        if all(s["state"] == "done" for s in states):
            return {"run_id": self.id, "requeues": 0, "state": "done"}
        for want in ("running", "queued", "failed"):
            hit = next((s for s in states if s["state"] == want), None)
            if hit:
                return {**hit, "run_id": self.id}
        return {"run_id": self.id, "requeues": 0, "state": "pending"}


def branch_stack_units(cfgs: list[RunConfig], rds: list[RunDir]) -> list[tuple[RunConfig, object]]:
    """The launcher's jobs under ``stack: seeds`` with ``cooldown_branches``: the branch groups (and lone runs)
    of ``branches.launch_units``, with groups that differ only in seed and fork at the same epochs made one
    ``BranchStack`` (lone runs are stacked as ``stack_units`` stacks them)."""
    from factscale.launch.branches import BranchGroup, launch_units

    units = launch_units(cfgs, rds)
    by_key: dict[tuple, list] = {}
    lone = []
    for cfg, u in units:
        if isinstance(u, BranchGroup):
            by_key.setdefault((stack_key(u.trunk), tuple(u.forks)), []).append(u)
        else:
            lone.append((cfg, u))
    out = [(gs[0].trunk, BranchStack(gs)) if len(gs) > 1 else (gs[0].trunk, gs[0]) for gs in by_key.values()]
    return out + stack_units([c for c, _ in lone], [rd for _, rd in lone])


def check_units(units: list[tuple[RunConfig, object]]) -> None:
    """Before anything is submitted: every stack the launcher would run can be stacked (``check_stackable``:
    one shape, no experts, one CPU process in fp32), so a refusal is one error line, not a failed job."""
    from factscale.training.stack import check_stackable

    for _, u in units:
        if isinstance(u, StackGroup):
            check_stackable(u.members)
        elif isinstance(u, BranchStack):
            check_stackable([g.trunk for g in u.groups])
            check_stackable([b for g in u.groups for b in g.branches])


def run_branch_stack(payload: dict) -> dict:
    """A ``BranchStack``'s job: the trunks as one stack (keeping their fork states) until every trunk is done,
    then every branch as one stack from those states. A branch whose trunk state is missing (its
    trunk failed, or the sweep gained an epoch count after the trunk passed it) trains from the start, stacked
    with the others like it: the same result, as for non-stacked branches. Every piece resumes from its own
    checkpoint; finished runs are skipped."""
    from factscale.launch.branches import readable_checkpoint
    from factscale.training.stack import run_stack

    parts = payload["branch_stack"]
    trunks = [from_dict(RunConfig, p["trunk"]) for p in parts]
    branches = [[from_dict(RunConfig, d) for d in p["branches"]] for p in parts]  # [seed][length]
    forks = list(parts[0]["forks"])
    trunk_rds = [RunDir(t) for t in trunks]
    out = {"trunks": [rd.id for rd in trunk_rds], "runs": []}

    if not all(trd.results.exists() for trd in trunk_rds):  # (a done trunk's fork states are all it will ever write)
        out["trunk_result"] = run_stack(trunks, forks=tuple(forks))
    for trd in trunk_rds:
        for f in forks:
            state = fork_state(trd, f)
            if state.exists() and not readable_checkpoint(state):  # torn or on a bad disk: its branch trains alone
                os.replace(state, state.with_name(state.name + ".corrupt"))
                trd.note(f"fork state {state} is unreadable; moved to {state.name}.corrupt")
    # every branch of every seed side by side, each from its own trunk's state at its fork epoch
    pieces = [(b, fork_state(trd, f), trd.id) for seed, trd in zip(branches, trunk_rds) for b, f in zip(seed, forks)]
    forked = [p for p in pieces if p[1].exists()]
    alone = [b for b, state, _ in pieces if not state.exists()]
    if forked:
        out["runs"] += run_stack([b for b, _, _ in forked], init=[(state, tid) for _, state, tid in forked])["runs"]
    if alone:
        out["runs"] += run_stack(alone)["runs"]
    out["state"] = "done" if all(r["state"] == "done" for r in out["runs"]) else "failed"
    return out


def run_stack_payload(payload: dict) -> dict:
    from factscale.training.stack import run_stack

    return run_stack([from_dict(RunConfig, d) for d in payload["stack"]])
