"""The one cluster layer: which clusters exist, how a job is submitted to each (submitit executors with SLURM
parameters), and how a job's liveness is told (squeue, /proc). Sweeps and sharded corpus builds both use it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from factscale.errors import ConfigError

CLUSTERS = {
    "slurm": "a SLURM cluster: one job array per resource group, requeued on time limit or preemption",
    "local": "this machine, one process per job (submitit's LocalExecutor)",
    "debug": "this process, one job after another (submitit's DebugExecutor): for debugging",
}


def check_cluster(name: str, flag: str = "--cluster") -> None:
    if name not in CLUSTERS:
        raise ConfigError(f"{flag} {name!r}; allowed values: {list(CLUSTERS)}")


def require_available(cluster: str) -> None:
    """Fail with one line, before anything is created, when ``cluster`` cannot take jobs from this machine."""
    import shutil

    check_cluster(cluster)
    if cluster == "slurm":
        if not shutil.which("sbatch"):
            raise ConfigError("--cluster slurm: sbatch not found on this machine; run on a SLURM login node, or use "
                              "--cluster local")
        try:
            r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise ConfigError(f"--cluster slurm: the SLURM controller does not answer ({e})") from None
        if r.returncode != 0:
            said = (r.stderr.strip().splitlines() or ["no reason given"])[-1][:200]
            raise ConfigError(f"--cluster slurm: the SLURM controller does not answer: {said}")


def at_least(obj, section: str, minimum: int | float, *names):
    """Range check of dataclass fields, naming the field (``section.name``)."""
    for name in names:
        v = getattr(obj, name)
        if v is not None and not v >= minimum:
            raise ConfigError(f"{section}.{name} must be >= {minimum}, got {v!r}")


@dataclass
class SlurmResources:
    partition: Optional[str] = None
    """SLURM partition (#SBATCH --partition); null = the cluster's default."""
    time_min: int = 60
    """Wall-clock limit per run attempt; on expiry the run is requeued and resumes."""
    gpus_per_node: int = 0
    """GPUs per node; 0 = a CPU job."""
    cpus_per_task: int = 2
    """CPU cores per task (data loading, probes, CPU training)."""
    mem_gb: float = 8.0
    """Memory per node in GB (> 0)."""
    nodes: int = 1
    """>1 (or gpus_per_node > 1) trains with DDP: one task per GPU, Lightning reads ranks from SLURM."""
    array_parallelism: int = 64
    """At most this many jobs of one array run at once (%N of --array)."""
    account: Optional[str] = None
    """SLURM account to charge; null = the user's default."""
    qos: Optional[str] = None
    """SLURM quality of service; null = the default."""
    signal_delay_s: int = 60
    """Seconds before the limit that SLURM sends USR2 (must leave time to requeue). SLURM may send it up to
    60 s earlier than asked, and a job needs ~30 s to catch it, so ``time_min * 60 - signal_delay_s`` must be
    at least 90."""
    max_requeues: int = 5
    """Requeues after a time limit or preemption before a run counts as failed."""

    def __post_init__(self):
        at_least(self, "resources.slurm", 1, "time_min", "cpus_per_task", "nodes", "array_parallelism")
        at_least(self, "resources.slurm", 0, "gpus_per_node", "signal_delay_s", "max_requeues")
        if not self.mem_gb > 0:
            raise ConfigError(f"resources.slurm.mem_gb must be > 0, got {self.mem_gb!r}")
        # SLURM checks signal times at a 60 s resolution, so USR2 can come that much early: at a job's
        # start, before submitit has installed its handler (it does so after unpickling the job), USR2
        # kills the job outright instead of requeuing it.
        if self.time_min * 60 - self.signal_delay_s < SIGNAL_RESOLUTION_S + HANDLER_START_S:
            raise ConfigError(
                f"resources.slurm.signal_delay_s={self.signal_delay_s} with time_min={self.time_min}: SLURM may "
                f"send USR2 up to {SIGNAL_RESOLUTION_S} s early and a job needs ~{HANDLER_START_S} s to catch it, so "
                f"time_min * 60 - signal_delay_s must be >= {SIGNAL_RESOLUTION_S + HANDLER_START_S} (raise time_min "
                "or lower signal_delay_s)")


SIGNAL_RESOLUTION_S = 60
"""``sbatch --signal``: "the signal may be sent up to 60 seconds earlier than specified"."""
HANDLER_START_S = 30
"""Time a job's Python needs before submitit's USR2 handler is installed (it is, after unpickling the job:
torch, Lightning and transformers imported); a USR2 before that kills the job instead of requeuing it."""


def slurm_parameters(r: SlurmResources, job_name: str, num_nodes: int = 1, devices: int = 1) -> dict:
    """submitit AutoExecutor parameters for one resource group (tested against the #SBATCH lines)."""
    gpus = r.gpus_per_node
    tasks = max(1, gpus) if (gpus > 1 or r.nodes > 1 or num_nodes > 1) else 1
    params = dict(
        name=job_name, timeout_min=r.time_min, nodes=max(r.nodes, num_nodes), tasks_per_node=tasks,
        cpus_per_task=r.cpus_per_task, mem_gb=r.mem_gb, slurm_array_parallelism=r.array_parallelism,
        slurm_signal_delay_s=r.signal_delay_s,
    )
    if gpus:
        params["gpus_per_node"] = gpus
    for k in ("partition", "account", "qos"):
        if getattr(r, k):
            params[f"slurm_{k}"] = getattr(r, k)
    return params


def executor(cluster: str, folder, *, slurm: SlurmResources | None = None, timeout_min: int | None = None,
             job_name: str = "factscale", num_nodes: int = 1):
    """The submitit executor of ``cluster``: SLURM with ``slurm``'s parameters, local processes with a
    ``timeout_min`` per job, or the in-process debug executor."""
    import submitit

    check_cluster(cluster)
    if cluster == "slurm":
        slurm = slurm or SlurmResources()
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=slurm.max_requeues)
        ex.update_parameters(**slurm_parameters(slurm, job_name, num_nodes))
        return ex
    if cluster == "local":
        ex = submitit.LocalExecutor(folder=folder)
        if timeout_min is not None:
            ex.update_parameters(timeout_min=timeout_min)
        return ex
    return submitit.DebugExecutor(folder=folder)


def slurm_job_state(job_id: str) -> str | None:
    """The job's state while SLURM still holds it (PENDING, RUNNING, REQUEUED, ...), None once it has left
    the queue, and UNKNOWN when squeue cannot say (timeout, controller down): never resubmit on a guess."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                           timeout=60)
    except FileNotFoundError:
        return None  # no SLURM client here at all
    except (OSError, subprocess.SubprocessError):
        return "UNKNOWN"
    states = [s for s in r.stdout.split() if s]
    if r.returncode == 0:
        return states[0] if states else None
    return None if "invalid job id" in r.stderr.lower() else "UNKNOWN"


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), or None if there is no such process:
    with the host name it tells a live job from an unrelated process that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]
