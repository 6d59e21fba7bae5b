"""Jobs on this machine (``--cluster local``): submitit's LocalExecutor, as many processes at once as fit the
machine (``local_slots``: under ``resources.local.max_parallel: auto``, one job per CPU core on the CPU, the
cores shared among the jobs at once as torch threads), the longest first, a line per probe of each running
job, and Ctrl-C that stops them all and says so (launching again resumes them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from factscale.cluster import executor
from factscale.launch.jobs import RunJob, job_arg, progress_text, wait_job
from factscale.launch.spec import LocalResources, SweepSpec
from factscale.training.config import RunConfig
from factscale.training.models import non_embedding_params, resolve_shape


@contextlib.contextmanager
def output_to(path: Path):
    """Point this process's stdout/stderr at a file while submitit forks a local job's controller, so the
    controller inherits the file: on Ctrl-C it prints a KeyboardInterrupt traceback there, not on the
    user's terminal (the run's own output already goes to submitit's per-job log files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@contextlib.contextmanager
def ctrl_c_flag():
    """Ctrl-C sets a flag instead of raising where it lands. A KeyboardInterrupt raised inside a finalizer
    (``__del__`` of a submitit job or a file, run by the garbage collector at any allocation) is swallowed
    by Python, and the launcher then kept polling forever - rarely, depending on timing; the polling loop
    checks the flag at a known point instead. Outside the main thread signals cannot be set: no flag."""
    hits: list[int] = []
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # e.g. a background job: Ctrl-C stays ignored
            previous = None
        else:
            previous = signal.signal(signal.SIGINT, lambda signum, frame: hits.append(signum))
    except ValueError:  # not the main thread
        previous = None
    try:
        yield hits
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def local_slots(r: LocalResources, cfgs: list[RunConfig]):
    """(jobs at once, ``threads(cfg)``: torch threads for a job) for ``resources.local`` ``r`` and the jobs'
    configs on this machine.

    ``max_parallel: auto``: on the CPU, as many jobs as the usable cores hold, each job counted as its
    processes (DDP ranks) x its threads (``threads_per_run``, else its ``train.num_threads``, else 1), and at
    most one per GiB of available memory and one per job; on a GPU, one at a time. A job's threads:
    ``threads_per_run``, else its own ``train.num_threads``, else the cores shared among the jobs at once
    (one each when there are at least as many jobs as cores)."""
    import torch

    cores = usable_cores()
    per_job = max(c.train.devices * c.train.num_nodes for c in cfgs)
    parallel = r.max_parallel
    if parallel == "auto":
        on_gpu = torch.cuda.is_available() and any(c.train.accelerator != "cpu" for c in cfgs)
        want = r.threads_per_run or max(c.train.num_threads or 1 for c in cfgs)
        parallel = 1 if on_gpu else max(1, min(len(cfgs), cores // (per_job * want), available_gib()))
    shared = max(1, cores // (min(parallel, len(cfgs)) * per_job))  # the jobs that can run at once
    return parallel, lambda cfg: r.threads_per_run or cfg.train.num_threads or shared


# where the kernel shows this process's control groups and which one it is in (constants: tests move them)
CGROUP, PROC_CGROUP = Path("/sys/fs/cgroup"), Path("/proc/self/cgroup")


def _cgroup_dirs() -> list[Path]:
    """This process's cgroup v2 directory and its parents (``/proc/self/cgroup``'s ``0::/path``; a container
    with its own namespace sees ``/``), then the v1 controllers' roots: where CPU and memory limits live."""
    dirs = []
    try:
        path = next(line.split("::", 1)[1].strip() for line in PROC_CGROUP.read_text().splitlines()
                    if line.startswith("0::"))
        d = CGROUP / path.lstrip("/")
        while True:
            dirs.append(d)
            if d == CGROUP or CGROUP not in d.parents:
                break
            d = d.parent
    except (OSError, StopIteration):
        dirs.append(CGROUP)
    return dirs + [CGROUP / "cpu", CGROUP / "cpu,cpuacct", CGROUP / "memory"]


def _read_ints(path: Path) -> list[int] | None:
    try:
        return [int(x) for x in path.read_text().split()[:2]]
    except (OSError, ValueError):  # absent, or "max" (no limit)
        return None


def usable_cores() -> int:
    """The logical CPUs this process may use: its affinity, and the tightest cgroup CPU quota over its cgroup
    and their parents (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``: a container's ``--cpus``, a systemd slice)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for d in _cgroup_dirs():
        quota = _read_ints(d / "cpu.max")
        v1 = (_read_ints(d / "cpu.cfs_quota_us"), _read_ints(d / "cpu.cfs_period_us"))
        if quota is None and v1[0] and v1[1] and v1[0][0] > 0:
            quota = [v1[0][0], v1[1][0]]
        if quota and len(quota) == 2 and quota[1] > 0:
            cores = min(cores, max(1, quota[0] // quota[1]))
    return cores


def available_gib() -> int:
    """Whole GiB of memory available now: Linux's MemAvailable, and the tightest cgroup limit less its usage
    (v2 ``memory.max`` - ``memory.current``, v1 ``memory.limit_in_bytes`` - ``memory.usage_in_bytes``).
    ``max_parallel: auto`` starts at most one job per GiB: a cap on the job count, not an estimate of what a
    model needs. A large number where nothing can be read."""
    avail = []
    try:
        with open("/proc/meminfo") as f:
            avail.append(next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) * 1024)
    except (OSError, StopIteration, ValueError):
        pass
    for d in _cgroup_dirs():
        for limit, used in (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            lim, cur = _read_ints(d / limit), _read_ints(d / used)
            if lim and cur and lim[0] < 1 << 60:  # v1 writes a huge number for "no limit"
                avail.append(lim[0] - cur[0])
    return max(1, min(avail) // 2**30) if avail else 1 << 30


def launch_local(spec: SweepSpec, todo: list, folder: Path, log) -> list[dict]:
    """Run on this machine through submitit's LocalExecutor, ``local_slots`` jobs at a time."""
    r = spec.resources.local
    parallel, threads = local_slots(r, [c for c, _ in todo])
    counts = sorted({threads(c) for c, _ in todo})
    ranks = max(c.train.devices * c.train.num_nodes for c, _ in todo)
    log(f"  {min(parallel, len(todo))} at a time (resources.local.max_parallel: {r.max_parallel}), "
        f"{'-'.join(map(str, counts[::max(1, len(counts) - 1)]))} torch thread(s) each"
        + (f" of up to {ranks} processes per job" if ranks > 1 else ""))
    ex = executor("local", folder, timeout_min=r.timeout_min)
    # longest first: with max_parallel workers the last job to start is a short one, not a long one left
    # running alone (the demo's largest size last kept one core idle for ~2 of its 14 minutes)
    pending, running, out = sorted(todo, key=lambda u: -work_estimate(u[0]) * job_epochs(*u)), [], []
    try:
        with ctrl_c_flag() as ctrl_c:
            _poll_local(ex, parallel, threads, pending, running, out, folder, log, ctrl_c)
            if ctrl_c:  # pressed after the last run finished: still an interruption
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        for _, job in running:
            job.cancel(check=False)
        log(f"interrupted: stopped {len(running)} running job(s), {len(pending)} not started; "
            "launch again to resume them from their last checkpoint")
        raise
    return out


def work_estimate(cfg: RunConfig) -> float:
    """A job's relative cost per member-epoch, for ordering local jobs: facts x non-embedding parameters (runs
    on the whole corpus count as larger than any slice; junk mixed in multiplies the tokens)."""
    facts = cfg.corpus.max_facts or 1e12
    return facts * (1 + cfg.train.junk_ratio) * non_embedding_params(cfg.model.arch, resolve_shape(cfg.model))


def job_epochs(cfg: RunConfig, unit) -> int:
    """The member-epochs a job trains: a run its epochs, a stack its members' epochs, a cooldown-branch group
    its trunk to the last fork and each branch's decay, a stack of such groups all of theirs."""
    groups = getattr(unit, "groups", None) or ([unit] if hasattr(unit, "forks") else None)
    if groups:
        return sum(g.epochs for g in groups)
    members = getattr(unit, "members", None)
    return sum(c.train.epochs for c in members) if members else cfg.train.epochs


def _poll_local(ex, parallel: int, threads, pending: list, running: list, out: list, folder: Path, log,
                ctrl_c: list) -> None:
    """Start jobs up to ``parallel`` at once, each with ``threads(cfg)`` torch threads; collect finished ones; a
    Ctrl-C (``ctrl_c`` non-empty) raises here."""
    seen: dict[str, int] = {}
    while pending or running:
        if ctrl_c:
            raise KeyboardInterrupt
        while pending and len(running) < parallel:
            cfg, rd = pending.pop(0)
            over = {"progress_bar": False, "num_threads": threads(cfg)}
            d = job_arg(cfg, rd, **over)
            with output_to(folder / "controllers.log"):
                job = ex.submit(RunJob(), d)
            rd.record_job(job.job_id, "local", folder)
            running.append((rd, job))
            log(f"  started {rd.id} (pid {job.job_id})")
        time.sleep(0.5)  # polling cadence only; no result depends on it
        for rd, _ in running:  # a line per probe of each running run
            p = rd.progress()
            if p and seen.get(rd.id) != p["epoch"]:
                seen[rd.id] = p["epoch"]
                log(f"  {rd.id}: {progress_text(p)}")
        for rd, job in [x for x in running if x[1].done()]:
            running.remove((rd, job))
            rec = {"run_id": rd.id, "job_id": job.job_id, **wait_job(job, rd)}
            res = rec.get("result", {})
            log(f"  {rec['state']:>6} {rd.id}" + (f"  train MR {res['train_mr']:.3f}" if "train_mr" in res
                                                  else f"  {rec['error']}" if rec.get("error")
                                                  else f"  {len(res['runs'])} runs" if "runs" in res else ""))
            out.append(rec)
