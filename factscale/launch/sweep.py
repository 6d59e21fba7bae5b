"""Sweeps: a base run config x grid axes, launched through submitit (local, SLURM or in-process): the jobs a
sweep makes (a run, a cooldown-branch group, a stack), what each costs (``plan``), launching them
(``launch``: on this machine through ``launch.local``, the job itself is ``launch.jobs.RunJob``) and
their status.

A run's directory comes from its resolved config (``rundir.run_id``), so launching a spec again skips
finished runs and resumes unfinished ones from ``last.ckpt``. On SLURM the grid is one job array per
resource group; each task is a ``submitit.helpers.Checkpointable`` whose ``checkpoint()`` (called on
preemption or time limit) resubmits a fresh instance that resumes from disk. Lightning's own SLURM
requeue is off (``train.make_trainer``), so only submitit handles the signal.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from factscale.cluster import (
    SlurmResources,  # noqa: F401 (re-exported)
    executor,
    require_available,
)
from factscale.configio import from_dict, to_dict
from factscale.corpus.build import read_manifest
from factscale.corpus.sources import build_from_spec as build_corpus_from
from factscale.errors import ConfigError
from factscale.launch.jobs import RunJob, job_arg, progress_text, wait_job  # noqa: F401 (progress_text re-exported)
from factscale.launch.local import launch_local
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
    n_runs, n_jobs = f"{len(cfgs)} run{'s' * (len(cfgs) != 1)}", f"{len(units)} job{'s' * (len(units) != 1)}"
    log(f"sweep {spec.name}: {n_runs} in {n_jobs}, {len(units) - len(todo)} done, running or "
        f"queued, launching {len(todo)} on {cluster}")
    if not todo:
        return out
    folder = Path(spec.runs_dir) / "_submitit" / time.strftime("%Y%m%d-%H%M%S")
    if cluster == "local":
        return out + launch_local(spec, todo, folder, log)
    if cluster == "slurm":
        jobs = []
        for r, group in _slurm_groups(spec, todo).values():
            ex = executor("slurm", folder, slurm=r, job_name=f"factscale-{spec.name}",
                          num_nodes=group[0][0].train.num_nodes)
            with ex.batch():
                group_jobs = [ex.submit(RunJob(), job_arg(c, rd)) for c, rd in group]
            for (_, rd), j in zip(group, group_jobs):
                rd.record_job(j.job_id, "slurm", folder)
            jobs += [(rd, j) for (_, rd), j in zip(group, group_jobs)]
            log(f"  submitted array {group_jobs[0].job_id.split('_')[0]} ({len(group)} runs)")
    else:
        ex = executor("debug", folder)
        jobs = [(rd, ex.submit(RunJob(), job_arg(c, rd))) for c, rd in todo]
    for rd, j in jobs:
        rec = {"run_id": rd.id, "job_id": j.job_id, "state": "submitted"}
        if wait:
            rec.update(wait_job(j, rd))
        out.append(rec)
    return out


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
