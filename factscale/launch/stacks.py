"""A sweep's ``stack: seeds``: runs that differ only in seed (and optimizer settings) go to one job, which
trains them as one stacked model (``training.stack``); each still ends as its own run directory.

``StackGroup`` is the launcher's unit for such a job, with the run-directory surface the launcher uses
(``id``, ``status``, ``progress``, ``record_job``, ``payload``), like ``branches.BranchGroup``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from factscale.configio import from_dict, to_dict
from factscale.training.config import RunConfig
from factscale.training.rundir import RunDir
from factscale.training.stack import stack_key

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


def run_stack_payload(payload: dict) -> dict:
    from factscale.training.stack import run_stack

    return run_stack([from_dict(RunConfig, d) for d in payload["stack"]])
