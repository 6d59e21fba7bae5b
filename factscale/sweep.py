"""Sweeps: a base run config x grid axes, launched through submitit (local, SLURM or in-process).

A run's directory comes from its resolved config (``rundir.run_id``), so launching a spec again skips
finished runs and resumes unfinished ones from ``last.ckpt``. On SLURM the grid is one job array per
resource group; each task is a ``submitit.helpers.Checkpointable`` whose ``checkpoint()`` (called on
preemption or time limit) resubmits a fresh instance that resumes from disk. Lightning's own SLURM
requeue is off (``train.make_trainer``), so only submitit handles the signal.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import submitit

from factscale.config import ConfigError, RunConfig, from_dict, read_yaml_mapping, set_dotted, to_dict
from factscale.models import non_embedding_params, resolve_shape
from factscale.rundir import run_dir, run_id, status


@dataclass
class SlurmResources:
    partition: Optional[str] = None
    time_min: int = 60
    """Wall-clock limit per run attempt; on expiry the run is requeued and resumes."""
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: float = 8.0
    nodes: int = 1
    """>1 (or gpus_per_node > 1) trains with DDP: one task per GPU, Lightning reads ranks from SLURM."""
    array_parallelism: int = 64
    account: Optional[str] = None
    qos: Optional[str] = None
    signal_delay_s: int = 60
    """Seconds before the limit that SLURM sends USR2 (must leave time to requeue)."""
    max_requeues: int = 5


@dataclass
class LocalResources:
    max_parallel: int = 1
    """Runs at once on this machine."""
    threads_per_run: Optional[int] = None
    timeout_min: int = 24 * 60


@dataclass
class Resources:
    local: LocalResources = field(default_factory=LocalResources)
    slurm: SlurmResources = field(default_factory=SlurmResources)
    slurm_by_size: dict = field(default_factory=dict)
    """Per model.size overrides of slurm resources, e.g. {30m: {gpus_per_node: 1, time_min: 240}}."""


@dataclass
class CorpusBuild:
    """Build the corpus at base.corpus.path if it does not exist yet: synthetic, or from triple files."""
    synthetic: Optional[dict] = None
    triples: list[str] = field(default_factory=list)
    """T-REx/LAMA or BEAR jsonl files/directories (relative paths are relative to the working directory)."""
    labels: list[str] = field(default_factory=list)
    variants: dict = field(default_factory=dict)
    """Corpus variants for the behaviour studies (compatibility / frequency / phases), see corpus.variants."""
    max_facts: Optional[int] = None
    heldout_frac: float = 0.1
    vocab_size: int = 1024
    seed: int = 0


@dataclass
class SweepSpec:
    name: str
    runs_dir: str
    base: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    """Dotted config field -> list of values; the sweep is their cartesian product."""
    resources: Resources = field(default_factory=Resources)
    corpus_build: Optional[CorpusBuild] = None
    description: str = ""


def _spec_from_dict(data: dict, where: str) -> SweepSpec:
    data = dict(data)
    for required in ("name", "runs_dir"):
        if required not in data:
            raise ConfigError(f"{where}: missing required key {required!r}")
    res = data.pop("resources", None) or {}
    cb = data.pop("corpus_build", None)
    spec = from_dict(SweepSpec, {k: v for k, v in data.items()}, prefix="")
    spec.resources = from_dict(Resources, {k: v for k, v in res.items() if k != "slurm_by_size"}, "resources.")
    for size, over in (res.get("slurm_by_size") or {}).items():
        from_dict(SlurmResources, over, f"resources.slurm_by_size.{size}.")  # validate keys now
    spec.resources.slurm_by_size = res.get("slurm_by_size") or {}
    spec.corpus_build = from_dict(CorpusBuild, cb, "corpus_build.") if cb else None
    for k, v in spec.grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}: grid.{k} must be a non-empty list, got {v!r}")
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    spec = _spec_from_dict(read_yaml_mapping(path, "sweep spec"), str(path))
    expand(spec)  # every grid point must make a valid run config: fail now, naming the key
    return spec


def expand(spec: SweepSpec) -> list[RunConfig]:
    keys = list(spec.grid)
    cfgs = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        d = json.loads(json.dumps(spec.base))
        d["runs_dir"] = spec.runs_dir
        for k, v in zip(keys, values):
            set_dotted(d, k, v)
        try:
            cfg = from_dict(RunConfig, d)
            resolve_shape(cfg.model)
        except ConfigError as e:
            raise ConfigError(f"sweep {spec.name}, grid point {dict(zip(keys, values))}: {e}") from None
        cfgs.append(cfg)
    ids = [run_id(c) for c in cfgs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep {spec.name}: grid produces duplicate runs")
    return cfgs


def ensure_corpus(spec: SweepSpec) -> None:
    path = Path(spec.base.get("corpus", {}).get("path", ""))
    if (path / "manifest.json").exists() or spec.corpus_build is None:
        return
    from factscale.corpus import SyntheticSpec, build_from_triples, build_synthetic

    cb = spec.corpus_build
    common = dict(heldout_frac=cb.heldout_frac, vocab_size=cb.vocab_size, variants=cb.variants or None,
                  max_facts=cb.max_facts)
    if cb.synthetic is not None:
        build_synthetic(path, from_dict(SyntheticSpec, cb.synthetic, "corpus_build.synthetic."), **common)
    elif cb.triples:
        build_from_triples(path, cb.triples, label_files=cb.labels, seed=cb.seed, **common)
    else:
        raise ConfigError(f"corpus {path} does not exist and corpus_build has no recipe (synthetic or triples); "
                          "build it with `factscale corpus build`")


def plan(spec: SweepSpec) -> list[dict]:
    """What a launch would do, without launching: params, tokens, FLOPs (6 N D) and current state."""
    from factscale.corpus.build import load_corpus

    rows = []
    tokens_by_corpus: dict = {}
    for cfg in expand(spec):
        n = non_embedding_params(cfg.model.arch, resolve_shape(cfg.model))
        tokens = None
        if Path(cfg.corpus.path, "facts.parquet").exists():
            key = (cfg.corpus.path, cfg.corpus.max_facts, cfg.train.repeat_by)
            if key not in tokens_by_corpus:
                from factscale.data import repeats_of, select_facts

                train, _ = select_facts(load_corpus(cfg.corpus.path)[0], cfg)
                reps = repeats_of(train, cfg.train.repeat_by)
                tokens_by_corpus[key] = int((train["input_ids"].list.len().to_numpy() * reps).sum())
            tokens = tokens_by_corpus[key] * cfg.train.epochs
        rows.append({"run_id": run_id(cfg), "non_embedding_params": n, "epochs": cfg.train.epochs,
                     "tokens": tokens, "flops": 6 * n * tokens if tokens else None,
                     "state": status(run_dir(cfg))["state"] if run_dir(cfg).exists() else "pending"})
    return rows


class RunJob(submitit.helpers.Checkpointable):
    """The submitted callable. Takes a plain config dict (small to pickle) and runs or resumes it.

    ``checkpoint()`` is inherited: on USR2 (preemption / time limit) submitit resubmits this same
    callable with the same argument, and the new attempt resumes from the run's ``last.ckpt``.
    """

    def __call__(self, cfg_dict: dict) -> dict:
        from factscale.train import RunBusy, run

        cfg = from_dict(RunConfig, cfg_dict)
        try:
            return run(cfg)
        except RunBusy as e:
            return {"run_id": run_id(cfg), "state": "busy", "message": str(e)}


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


def _slurm_groups(spec: SweepSpec, cfgs: list[RunConfig]) -> dict[str, tuple[SlurmResources, list]]:
    groups: dict[str, tuple[SlurmResources, list]] = {}
    base = to_dict(spec.resources.slurm)
    for cfg in cfgs:
        over = spec.resources.slurm_by_size.get(cfg.model.size, {})
        r = from_dict(SlurmResources, {**base, **over})
        key = json.dumps(to_dict(r), sort_keys=True)
        groups.setdefault(key, (r, []))[1].append(cfg)
    return groups


def _record_job(cfg: RunConfig, job, folder: Path, cluster: str) -> None:
    d = run_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    p = d / "jobs.json"
    jobs = json.loads(p.read_text()) if p.exists() else []
    jobs.append({"job_id": job.job_id, "cluster": cluster, "folder": str(folder), "time": time.time()})
    p.write_text(json.dumps(jobs))


def launch(spec: SweepSpec, cluster: Literal["local", "slurm", "debug"] = "local", wait: bool = True,
           log=print) -> list[dict]:
    """Submit every run that is not done; returns one record per run (state, job id, result)."""
    ensure_corpus(spec)
    cfgs = expand(spec)
    todo, out = [], []
    for cfg in cfgs:
        st = status(run_dir(cfg))["state"] if run_dir(cfg).exists() else "pending"
        if st == "done":
            out.append({"run_id": run_id(cfg), "state": "done", "skipped": True})
        elif st == "running":
            out.append({"run_id": run_id(cfg), "state": "running", "skipped": True})
        else:
            todo.append(cfg)
    log(f"sweep {spec.name}: {len(cfgs)} runs, {len(cfgs) - len(todo)} done or running, launching {len(todo)} "
        f"on {cluster}")
    if not todo:
        return out
    folder = Path(spec.runs_dir) / "_submitit" / time.strftime("%Y%m%d-%H%M%S")
    if cluster == "slurm":
        jobs = []
        for r, group in _slurm_groups(spec, todo).values():
            ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=r.max_requeues)
            ex.update_parameters(**slurm_parameters(r, f"factscale-{spec.name}", group[0].train.num_nodes))
            with ex.batch():
                group_jobs = [ex.submit(RunJob(), to_dict(c)) for c in group]
            for c, j in zip(group, group_jobs):
                _record_job(c, j, folder, "slurm")
            jobs += list(zip(group, group_jobs))
            log(f"  submitted array {group_jobs[0].job_id.split('_')[0]} ({len(group)} runs)")
    elif cluster == "debug":
        ex = submitit.DebugExecutor(folder=folder)
        jobs = [(c, ex.submit(RunJob(), to_dict(c))) for c in todo]
    elif cluster == "local":
        return out + _launch_local(spec, todo, folder, log)
    else:
        raise ConfigError(f"--cluster {cluster!r}; allowed values: ['debug', 'local', 'slurm']")
    for c, j in jobs:
        rec = {"run_id": run_id(c), "job_id": j.job_id, "state": "submitted"}
        if wait:
            rec.update(_wait(j))
        out.append(rec)
    return out


def _wait(job) -> dict:
    try:
        res = job.result()
        return {"state": res.get("state", "done"), "result": res}
    except Exception as e:  # submitit.core.utils.FailedJobError and friends: a failure, never a success
        return {"state": "failed", "error": str(e).strip().splitlines()[-1][:300]}


def _launch_local(spec: SweepSpec, todo: list[RunConfig], folder: Path, log) -> list[dict]:
    """Run on this machine through submitit's LocalExecutor, at most ``max_parallel`` at a time."""
    r = spec.resources.local
    ex = submitit.LocalExecutor(folder=folder)
    ex.update_parameters(timeout_min=r.timeout_min)
    pending, running, out = list(todo), [], []
    while pending or running:
        while pending and len(running) < r.max_parallel:
            cfg = pending.pop(0)
            d = to_dict(cfg)
            if r.threads_per_run:
                d["train"]["num_threads"] = r.threads_per_run
            d["train"]["progress_bar"] = False
            job = ex.submit(RunJob(), d)
            _record_job(cfg, job, folder, "local")
            running.append((cfg, job))
            log(f"  started {run_id(cfg)} (pid job {job.job_id})")
        time.sleep(0.5)
        for cfg, job in [x for x in running if x[1].done()]:
            running.remove((cfg, job))
            rec = {"run_id": run_id(cfg), "job_id": job.job_id, **_wait(job)}
            res = rec.get("result", {})
            log(f"  {rec['state']:>6} {run_id(cfg)}" + (f"  train MR {res['train_mr']:.3f}" if "train_mr" in res
                                                        else f"  {rec.get('error', '')}"))
            out.append(rec)
    return out


def sweep_status(spec: SweepSpec) -> list[dict]:
    rows = []
    for cfg in expand(spec):
        d = run_dir(cfg)
        st = status(d) if d.exists() else {"state": "pending", "requeues": 0}
        jobs_file = d / "jobs.json"
        if jobs_file.exists() and st["state"] not in ("done",):
            last = json.loads(jobs_file.read_text())[-1]
            st["job_id"] = last["job_id"]
            if last.get("cluster") == "slurm":
                try:  # SLURM's view of the job (sacct), when the job is a SLURM one
                    st["job_state"] = submitit.SlurmJob(folder=last["folder"], job_id=last["job_id"]).state
                except Exception:
                    pass
        rows.append({"run_id": run_id(cfg), **st})
    return rows
