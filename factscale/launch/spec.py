"""A sweep spec: a base run config x grid axes, the resources to run it with, and the corpus recipe.

``load_spec`` reads and checks a spec YAML before anything is created (every grid point must make a
valid run config; a bad field is named); ``expand`` turns it into run configs. Launching, status and the
submitit layer are ``factscale.launch.sweep``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from factscale.cluster import SlurmResources, at_least
from factscale.configio import from_dict, read_yaml_mapping, set_dotted, to_dict
from factscale.corpus.spec import CorpusSpec
from factscale.errors import ConfigError, CorpusError
from factscale.training.config import RunConfig
from factscale.training.models import resolve_shape
from factscale.training.rundir import axes_name, identity_hash


@dataclass
class LocalResources:
    max_parallel: Union[int, Literal["auto"]] = "auto"
    """Jobs at once on this machine (a job: a run, a stack or a branch group): an integer, or ``auto``: on
    the CPU as many as the usable logical CPUs hold (affinity and cgroup quotas; a job counted as its DDP
    ranks x its torch threads), at most one per job and one per GiB of memory available at launch (cgroup
    limits included); on a GPU one at a time. Separate one-thread processes are what tiny models use best
    (docs/results/ensemble.md, ninth session). Each job is a process with its model, corpus and probes in
    memory, and ``auto`` does not estimate how much: set an integer where that many do not fit."""
    threads_per_run: Optional[int] = None
    """torch threads per local job (per process of a DDP job); null = the job's train.num_threads if set,
    else the usable CPUs shared among the jobs that run at once (one each when the jobs outnumber them)."""
    timeout_min: int = 24 * 60
    """Wall-clock limit of one local job in minutes (a run, or a whole stack or branch group)."""

    def __post_init__(self):
        at_least(self, "resources.local", 1, *(("max_parallel",) if self.max_parallel != "auto" else ()),
                 "threads_per_run", "timeout_min")


@dataclass
class Resources:
    local: LocalResources = field(default_factory=LocalResources)
    slurm: SlurmResources = field(default_factory=SlurmResources)
    slurm_by_size: dict = field(default_factory=dict)
    """Per model.size overrides of slurm resources, e.g. {30m: {gpus_per_node: 1, time_min: 240}}."""


@dataclass
class SweepSpec:
    name: str
    """The sweep's name (job names, messages)."""
    runs_dir: str
    """Where the sweep's run directories are made (overrides base.runs_dir)."""
    base: dict = field(default_factory=dict)
    """The run config every grid point starts from (the same keys as `factscale train`'s YAML)."""
    grid: dict = field(default_factory=dict)
    """Dotted config field -> list of values; the sweep is their cartesian product. A linked axis names
    several fields joined by commas and lists one tuple per point (``model.size, corpus.max_facts:
    [[2k, 2100], [5k, 4500]]``): its fields vary together, not crosswise."""
    resources: Resources = field(default_factory=Resources)
    corpus_build: Optional[CorpusSpec] = None
    """Build base.corpus.path from this recipe (the same fields as `factscale corpus build`) if it is missing
    or was built from another recipe."""
    description: str = ""
    """One line on what the sweep measures (shown by `sweep plan`)."""
    cooldown_branches: bool = False
    """Runs differing only in train.epochs (optim.schedule wsd) share one constant-rate trunk and each
    trains only its decay from the trunk's checkpoint at its fork epoch (factscale.launch.branches)."""
    stack: str = "off"
    """``seeds``: runs differing only in seed and optim.* train as one stacked model in one job, each still
    its own run directory (factscale.training.stack); with cooldown_branches, the trunks of all seeds train as
    one stack, then all their branches as another; ``off``: one job per run."""


def spec_from_dict(data: dict, where: str) -> SweepSpec:
    data = dict(data)
    for required in ("name", "runs_dir"):
        if required not in data:
            raise ConfigError(f"{where}: missing required key {required!r}")
    for key in ("base", "grid", "resources", "corpus_build"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"{where}: {key} must be a mapping (key: value lines), got {type(data[key]).__name__}")
    res = data.pop("resources", None) or {}
    cb = data.pop("corpus_build", None)
    if data.get("stack") is False:  # YAML 1.1 reads a bare `stack: off` as false
        data["stack"] = "off"
    spec = from_dict(SweepSpec, data, prefix="")
    spec.resources = from_dict(Resources, {k: v for k, v in res.items() if k != "slurm_by_size"}, "resources.")
    by_size = res.get("slurm_by_size") or {}
    if not isinstance(by_size, dict):
        raise ConfigError(f"{where}: resources.slurm_by_size must be a mapping size -> resources")
    for size, over in by_size.items():
        from_dict(SlurmResources, {**to_dict(spec.resources.slurm), **(over or {})}, f"resources.slurm_by_size.{size}.")
    spec.resources.slurm_by_size = by_size
    try:
        spec.corpus_build = from_dict(CorpusSpec, cb, "corpus_build.") if cb else None
    except CorpusError as e:
        raise ConfigError(f"{where}: corpus_build: {e}") from None
    for k, v in spec.grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}: grid.{k} must be a non-empty list, got {v!r}")
        fields = axis_fields(k)
        if len(fields) > 1 and not all(isinstance(p, list) and len(p) == len(fields) for p in v):
            raise ConfigError(f"{where}: grid.{k} is a linked axis of {len(fields)} fields: every value must be a "
                              f"list of {len(fields)} (one per field), got {v!r}")
    named = [f for k in spec.grid for f in axis_fields(k)]
    if len(set(named)) != len(named):
        raise ConfigError(f"{where}: grid names a field twice: {sorted({f for f in named if named.count(f) > 1})}")
    if spec.stack not in ("off", "seeds"):
        raise ConfigError(f"{where}: stack {spec.stack!r}; allowed values: ['off', 'seeds']")
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    spec = spec_from_dict(read_yaml_mapping(path, "sweep spec"), str(path))
    cfgs = expand(spec)  # every grid point must make a valid run config: fail now, naming the key
    sizes = {c.model.size for c in cfgs}
    unused = sorted(set(map(str, spec.resources.slurm_by_size)) - {str(s) for s in sizes})
    if unused:
        raise ConfigError(f"{path}: resources.slurm_by_size has sizes {unused} that no run uses; "
                          f"sizes in this sweep: {sorted(map(str, sizes))}")
    return spec


def axis_fields(key: str) -> list[str]:
    """The dotted fields a grid key sets: one, or several for a linked axis (``"model.size, corpus.max_facts"``)."""
    return [f.strip() for f in key.split(",")]


def grid_fields(spec: SweepSpec) -> list[str]:
    """Every dotted field the grid varies, linked axes unpacked."""
    return [f for k in spec.grid for f in axis_fields(k)]


def expand(spec: SweepSpec) -> list[RunConfig]:
    keys = list(spec.grid)
    cfgs = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        d = json.loads(json.dumps(spec.base))
        d["runs_dir"] = spec.runs_dir
        point = {}
        for k, v in zip(keys, values):
            fields = axis_fields(k)
            point.update(zip(fields, v if len(fields) > 1 else [v]))
        for k, v in point.items():
            set_dotted(d, k, v)
        label = axes_name(point)  # the grid axes run_name does not spell, as the run name's prefix
        if label:
            d["name"] = "-".join(filter(None, [str(d.get("name") or ""), label]))
        try:
            cfg = from_dict(RunConfig, d)
            resolve_shape(cfg.model)
        except ConfigError as e:
            raise ConfigError(f"sweep {spec.name}, grid point {point}: {e}") from None
        cfgs.append(cfg)
    ids = [identity_hash(c, "") for c in cfgs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep {spec.name}: grid produces duplicate runs")
    if spec.cooldown_branches:
        from factscale.launch.branches import groups

        groups(cfgs, f"sweep {spec.name}, ")  # every run must be a valid branch: fail now, naming the field
    return cfgs
