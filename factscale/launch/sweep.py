"""Sweeps: a base run config x grid axes, launched through submitit (local, SLURM or in-process).

A run's directory comes from its resolved config (``rundir.run_id``), so launching a spec again skips
finished runs and resumes unfinished ones from ``last.ckpt``. On SLURM the grid is one job array per
resource group; each task is a ``submitit.helpers.Checkpointable`` whose ``checkpoint()`` (called on
preemption or time limit) resubmits a fresh instance that resumes from disk. Lightning's own SLURM
requeue is off (``train.make_trainer``), so only submitit handles the signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Literal

import submitit

from factscale.cluster import (
    SlurmResources,  # noqa: F401 (re-exported)
    executor,
    require_available,
)
from factscale.configio import from_dict, to_dict
from factscale.corpus.build import read_manifest
from factscale.corpus.sources import build_from_spec as build_corpus_from
from factscale.errors import ConfigError
from factscale.launch.spec import SweepSpec, expand, grid_fields
from factscale.training.config import RunConfig
from factscale.training.models import non_embedding_params, resolve_shape
from factscale.training.rundir import RunDir, run_name


def ensure_corpus(spec: SweepSpec, log=print) -> None:
    """Build the sweep's corpus unless one built from the same recipe is there (concurrent launches
    serialize on the corpus lock; the second finds it built)."""
    if spec.corpus_build is None:
        return
    path = Path(spec.base.get("corpus", {}).get("path", ""))
    m = read_manifest(path)
    if m is not None and m.get("recipe") == spec.corpus_build.recipe():
        return
    log(f"building corpus {path} from the sweep's corpus_build" + (" (its recipe changed)" if m else ""))
    build_corpus_from(spec.corpus_build, path, reuse=True)


def _run_dirs(spec: SweepSpec, cfgs: list[RunConfig], validate_runs: bool = False) -> list[RunDir | None]:
    """The run directory of each config (None where its corpus is not built yet); with ``validate_runs``
    every config is checked against its corpus first, so a bad one fails before anything is submitted."""
    from factscale.corpus.build import load_corpus
    from factscale.training.run import validate

    corpora: dict = {}
    out = []
    for cfg in cfgs:
        path = cfg.corpus.path
        if path not in corpora:
            corpora[path] = load_corpus(path) if validate_runs else (None, read_manifest(path))
        facts, manifest = corpora[path]
        if manifest is None:
            out.append(None)
            continue
        if validate_runs:
            try:
                validate(cfg, facts)
            except ConfigError as e:
                raise ConfigError(f"sweep {spec.name}, run {run_name(cfg)}: {e}") from None
        out.append(RunDir(cfg, manifest["corpus_hash"]))
    return out


def plan(spec: SweepSpec, estimate=None) -> list[dict]:
    """What a launch would do, without launching: params, tokens, FLOPs and current state. Tokens come from the
    built corpus, else from ``estimate`` (``launch.cost``: assumed, or a sample build of the recipe)."""
    from factscale.corpus.build import load_corpus
    from factscale.launch.cost import flops_per_token, with_junk
    from factscale.training.data import repeats_of, select_facts

    rows = []
    by_corpus: dict = {}
    cfgs = expand(spec)
    for cfg, rd in zip(cfgs, _run_dirs(spec, cfgs)):
        n = non_embedding_params(cfg.model.arch, resolve_shape(cfg.model))
        per_epoch = fpt = None
        source = "corpus not built: pass --assume-facts and --assume-tokens-per-fact"
        if rd is not None:
            key = (cfg.corpus.path, cfg.corpus.max_facts, cfg.corpus.where, cfg.train.repeat_by, cfg.train.domain_tag)
            if key not in by_corpus:
                facts, manifest = load_corpus(cfg.corpus.path)
                train, _ = select_facts(facts, cfg)
                lens = train["input_ids"].list.len() - int(cfg.train.domain_tag)  # untagged lengths
                reps = repeats_of(train, cfg.train.repeat_by)
                by_corpus[key] = (int((lens.to_numpy() * reps).sum()), int(reps.sum()),
                                  float(lens.mean()), float(train["n_value_tokens"].mean()) + 1,
                                  manifest["tokens"]["vocab_size"])
            untagged, n_seen, tpf, value, vocab = by_corpus[key]
            per_epoch = with_junk(cfg, untagged, n_seen)
            fpt, source = flops_per_token(cfg, vocab, tpf, value), "the built corpus"
        elif estimate is not None:
            per_epoch, source = estimate.train_tokens(cfg), estimate.source
            fpt = flops_per_token(cfg, estimate.vocab, estimate.tokens_per_fact, estimate.value_tokens_per_fact)
        tokens = per_epoch * cfg.train.epochs if per_epoch else None
        rows.append({"run_id": rd.id if rd else f"{run_name(cfg)}-?", "axes": axes_label(spec, cfg),
                     "non_embedding_params": n, "epochs": cfg.train.epochs, "tokens": tokens,
                     "flops_per_token": fpt, "flops": fpt * tokens if tokens else None, "tokens_from": source,
                     "state": rd.status()["state"] if rd else "pending (corpus not built yet)"})
    return rows


class RunJob(submitit.helpers.Checkpointable):
    """The submitted callable. Takes a plain config dict (small to pickle) and runs or resumes it.

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


def _slurm_groups(spec: SweepSpec, todo: list) -> dict[str, tuple[SlurmResources, list]]:
    groups: dict[str, tuple[SlurmResources, list]] = {}
    base = to_dict(spec.resources.slurm)
    for cfg, rd in todo:
        over = spec.resources.slurm_by_size.get(cfg.model.size, {})
        r = from_dict(SlurmResources, {**base, **over})
        key = json.dumps(to_dict(r), sort_keys=True)
        groups.setdefault(key, (r, []))[1].append((cfg, rd))
    return groups


_SKIP = ("done", "running", "queued")


def launch(spec: SweepSpec, cluster: Literal["local", "slurm", "debug"] = "local", wait: bool = True,
           log=print) -> list[dict]:
    """Submit every run that is not done, running or still queued; returns one record per run."""
    require_available(cluster)  # before the corpus is built or a folder is made
    ensure_corpus(spec, log)
    cfgs = expand(spec)
    todo, out = [], []
    units = list(zip(cfgs, _run_dirs(spec, cfgs, validate_runs=True)))
    if spec.cooldown_branches and spec.stack == "seeds":  # one job per stack of branch groups
        from factscale.launch.stacks import branch_stack_units

        units = branch_stack_units(cfgs, [rd for _, rd in units])
    elif spec.cooldown_branches:  # one job per group: (its trunk config for resources, the group)
        from factscale.launch.branches import launch_units

        units = launch_units(cfgs, [rd for _, rd in units])
    elif spec.stack == "seeds":  # one job per stack: its members differ only in seed and optim.*
        from factscale.launch.stacks import stack_units

        units = stack_units(cfgs, [rd for _, rd in units])
    if spec.stack == "seeds":
        from factscale.launch.stacks import check_units

        check_units(units)
    for cfg, rd in units:
        st = rd.status()
        if st["state"] in _SKIP:
            out.append({"run_id": rd.id, "state": st["state"], "skipped": True, "job_id": st.get("job_id")})
        else:
            todo.append((cfg, rd))
    log(f"sweep {spec.name}: {len(cfgs)} runs in {len(units)} jobs, {len(units) - len(todo)} done, running or "
        f"queued, launching {len(todo)} on {cluster}")
    if not todo:
        return out
    folder = Path(spec.runs_dir) / "_submitit" / time.strftime("%Y%m%d-%H%M%S")
    if cluster == "local":
        return out + _launch_local(spec, todo, folder, log)
    if cluster == "slurm":
        jobs = []
        for r, group in _slurm_groups(spec, todo).values():
            ex = executor("slurm", folder, slurm=r, job_name=f"factscale-{spec.name}",
                          num_nodes=group[0][0].train.num_nodes)
            with ex.batch():
                group_jobs = [ex.submit(RunJob(), _job_arg(c, rd)) for c, rd in group]
            for (_, rd), j in zip(group, group_jobs):
                rd.record_job(j.job_id, "slurm", folder)
            jobs += [(rd, j) for (_, rd), j in zip(group, group_jobs)]
            log(f"  submitted array {group_jobs[0].job_id.split('_')[0]} ({len(group)} runs)")
    else:
        ex = executor("debug", folder)
        jobs = [(rd, ex.submit(RunJob(), _job_arg(c, rd))) for c, rd in todo]
    for rd, j in jobs:
        rec = {"run_id": rd.id, "job_id": j.job_id, "state": "submitted"}
        if wait:
            rec.update(_wait(j, rd))
        out.append(rec)
    return out


def _job_arg(cfg: RunConfig, rd, **train_over) -> dict:
    """The submitted argument: a run's config dict, or a cooldown-branch group's payload."""
    if hasattr(rd, "payload"):
        return rd.payload(**train_over)
    d = to_dict(cfg)
    d["train"].update(train_over)
    return d


def _wait(job, rd: RunDir) -> dict:
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


@contextlib.contextmanager
def _output_to(path: Path):
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
def _ctrl_c_flag():
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


def _launch_local(spec: SweepSpec, todo: list, folder: Path, log) -> list[dict]:
    """Run on this machine through submitit's LocalExecutor, at most ``max_parallel`` at a time."""
    r = spec.resources.local
    ex = executor("local", folder, timeout_min=r.timeout_min)
    # longest first: with max_parallel workers the last job to start is a short one, not a long one left
    # running alone (the demo's largest size last kept one core idle for ~2 of its 14 minutes)
    pending, running, out = sorted(todo, key=lambda u: -work_estimate(u[0]) * len(getattr(u[1], "members", [0]))), [], []
    try:
        with _ctrl_c_flag() as ctrl_c:
            _poll_local(ex, r, pending, running, out, folder, log, ctrl_c)
            if ctrl_c:  # pressed after the last run finished: still an interruption
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        for _, job in running:
            job.cancel(check=False)
        log(f"interrupted: stopped {len(running)} running run(s), {len(pending)} not started; "
            "launch again to resume them from their last checkpoint")
        raise
    return out


def work_estimate(cfg: RunConfig) -> float:
    """A job's relative cost for ordering local jobs: facts x epochs x non-embedding parameters (a trunk's
    config stands for its branch group; a stack's member for each of its members). Runs on the whole corpus
    count as larger than any slice; junk mixed in multiplies the tokens."""
    facts = cfg.corpus.max_facts or 1e12
    return (facts * cfg.train.epochs * (1 + cfg.train.junk_ratio)
            * non_embedding_params(cfg.model.arch, resolve_shape(cfg.model)))


def _poll_local(ex, r, pending: list, running: list, out: list, folder: Path, log, ctrl_c: list) -> None:
    """Start runs up to ``max_parallel``, collect finished ones; a Ctrl-C (``ctrl_c`` non-empty) raises here."""
    seen: dict[str, int] = {}
    while pending or running:
        if ctrl_c:
            raise KeyboardInterrupt
        while pending and len(running) < r.max_parallel:
            cfg, rd = pending.pop(0)
            over = {"progress_bar": False, **({"num_threads": r.threads_per_run} if r.threads_per_run else {})}
            d = _job_arg(cfg, rd, **over)
            with _output_to(folder / "controllers.log"):
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
            rec = {"run_id": rd.id, "job_id": job.job_id, **_wait(job, rd)}
            res = rec.get("result", {})
            log(f"  {rec['state']:>6} {rd.id}" + (f"  train MR {res['train_mr']:.3f}" if "train_mr" in res
                                                  else f"  {rec.get('error', '')}"))
            out.append(rec)


def progress_text(p: dict) -> str:
    """``epoch 40/100, train MR 0.412, heldout MR 0.000, ETA 3m20s``"""
    eta = p.get("eta_s")
    eta_text = "" if eta is None else f", ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    mrs = "".join(f", {s} MR {v:.3f}" for s, v in (p.get("mr") or {}).items())
    piece = f" ({p['piece']})" if p.get("piece") else ""
    return f"epoch {p['epoch']}/{p['epochs']}{mrs}{eta_text}{piece}"


def axes_label(spec: SweepSpec, cfg: RunConfig) -> str:
    """The run's values of the grid axes its name does not show (an LR, order or attention sweep would
    otherwise list names that differ only in their hash), e.g. ``optim.lr=0.01 train.order=blocked``."""
    from factscale.configio import flatten, to_dict

    shown = {"model.size", "train.epochs", "seed", "corpus.max_facts", "corpus.where", "name"}
    flat = flatten(to_dict(cfg))
    return " ".join(f"{k}={flat.get(k)}" for k in grid_fields(spec) if k not in shown and k in flat)


def _config_key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "corpus.path"}, sort_keys=True, default=str)


def _runs_on_other_corpora(runs_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Config (without the corpus path) -> [(run directory, corpus hash)] of the finished runs under ``runs_dir``."""
    out: dict[str, list[tuple[str, str]]] = {}
    for d in sorted(Path(runs_dir).glob("*/identity.json")) if Path(runs_dir).is_dir() else []:
        try:
            ident = json.loads(d.read_text())
        except (OSError, ValueError):
            continue
        if (d.parent / "results.parquet").exists():
            out.setdefault(_config_key(ident.get("config", {})), []).append((d.parent.name, ident.get("corpus_hash")))
    return out


def sweep_status(spec: SweepSpec) -> list[dict]:
    """Each run's state; a run not started on the corpus now on disk says when it was done on an earlier build
    of it (a rebuilt corpus is new data: those results are not this run's, and are not counted as done)."""
    from factscale.training.rundir import identity

    cfgs = expand(spec)
    rows = []
    earlier = None
    for cfg, rd in zip(cfgs, _run_dirs(spec, cfgs)):
        if rd is None:
            rows.append({"run_id": f"{run_name(cfg)}-?", "state": "pending", "requeues": 0})
            continue
        st = rd.status()
        if st["state"] == "pending":
            earlier = earlier if earlier is not None else _runs_on_other_corpora(Path(spec.runs_dir))
            others = [(n, h) for n, h in earlier.get(_config_key(identity(cfg, rd.corpus_hash)["config"]), [])
                      if h != rd.corpus_hash]
            if others:
                st["note"] = (f"done on an earlier build of the corpus ({others[-1][1][:8]}: {others[-1][0]}); "
                              f"not yet on the corpus now on disk ({rd.corpus_hash[:8]})")
        jobs = rd.jobs()
        if jobs and "job_id" not in st and st["state"] != "done":
            st["job_id"] = jobs[-1]["job_id"]
        st["axes"] = axes_label(spec, cfg)
        rows.append(st)
    if spec.cooldown_branches:  # and each trunk: its group's job trains it before the branches
        from factscale.launch.branches import trunk_status

        rows += trunk_status(cfgs)
    return rows
