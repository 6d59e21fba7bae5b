"""The job a sweep submits (locally, on SLURM or in-process) and what its outcome says: one owner for every
executor (``launch.sweep`` submits to SLURM and in-process, ``launch.local`` runs on this machine).

A job's argument is a run's config dict or a group's payload (cooldown branches, a stack); ``RunJob`` runs or
resumes it, ``wait_job`` turns its result (or its exception) into the record the launcher prints, never a
failure as a success.
"""

from __future__ import annotations

import submitit

from factscale.configio import from_dict, to_dict
from factscale.training.config import RunConfig
from factscale.training.rundir import RunDir


class RunJob(submitit.helpers.Checkpointable):
    """The submitted callable. Takes a run's plain config dict or a group's payload (small to pickle) and runs
    or resumes it.

    ``checkpoint()`` is inherited: on USR2 (preemption / time limit) submitit resubmits this same
    callable with the same argument, and the new attempt resumes from the run's ``last.ckpt``.
    """

    def __call__(self, cfg_dict: dict) -> dict:
        from factscale.errors import RunBusy
        from factscale.training.run import run

        if "branches" in cfg_dict:  # a cooldown-branch group: its trunk, then each branch
            from factscale.launch.branches import run_group

            return run_group(cfg_dict)
        if "stack" in cfg_dict or "branch_stack" in cfg_dict:  # runs trained as one stacked model (stack: seeds)
            from factscale.launch.stacks import run_branch_stack, run_stack_payload

            try:
                return run_stack_payload(cfg_dict) if "stack" in cfg_dict else run_branch_stack(cfg_dict)
            except RunBusy as e:
                return {"state": "busy", "message": str(e)}
        cfg = from_dict(RunConfig, cfg_dict)
        try:
            return run(cfg)
        except RunBusy as e:
            return {"run_id": RunDir(cfg).id, "state": "busy", "message": str(e)}


def job_arg(cfg: RunConfig, rd, **train_over) -> dict:
    """The submitted argument: a run's config dict, or a cooldown-branch group's payload."""
    if hasattr(rd, "payload"):
        return rd.payload(**train_over)
    d = to_dict(cfg)
    d["train"].update(train_over)
    return d


def wait_job(job, rd: RunDir) -> dict:
    try:
        res = job.result()
        out = {"state": res.get("state", "done"), "result": res}
        bad = [r for r in res.get("runs", []) if r.get("state") == "failed"]
        if out["state"] == "failed" and bad:  # a stack: its failed members, each with its own error
            out["error"] = "; ".join(f"{r['run_id']}: {r.get('error')}" for r in bad)[:600]
        return out
    except Exception as e:  # submitit.core.utils.FailedJobError and friends: a failure, never a success
        st = rd.status()
        err = st.get("error") or (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        return {"state": "failed" if st["state"] != "done" else "done", "error": err}


def progress_text(p: dict) -> str:
    """``epoch 40/100, train MR 0.412, heldout MR 0.000, ETA 3m20s``"""
    eta = p.get("eta_s")
    eta_text = "" if eta is None else f", ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    mrs = "".join(f", {s} MR {v:.3f}" for s, v in (p.get("mr") or {}).items())
    piece = f" ({p['piece']})" if p.get("piece") else ""
    return f"epoch {p['epoch']}/{p['epochs']}{mrs}{eta_text}{piece}"
