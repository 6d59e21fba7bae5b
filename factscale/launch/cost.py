"""What a sweep costs before anything runs: tokens, FLOPs and GPU-hours per run, per job, and which jobs
outlive their SLURM time limit (``factscale sweep plan``).

Tokens come from the best source available, said in the output:

- the built corpus (exact: its training facts' tokens, the run's ``max_facts``, ``where`` and repeats);
- else ``--assume-facts N`` and ``--assume-tokens-per-fact T`` (a dump the size of Wikidata is not built to
  be priced);
- else, for a sweep whose ``corpus_build`` is synthetic, a sample build of its recipe with
  ``SAMPLE_KEYS`` keys (tokens per fact measured, facts scaled by keys).

FLOPs per token follow PaLM's convention, as ``benchmarks/bench_gpu.py`` does:
``6 N + 12 layers hidden ctx + 6 hidden vocab scored``, with N the non-embedding parameters a token
passes through (all of them; for a mixture of experts its experts only), ctx = ``seq_len`` (masked attention
computes the whole window, fact-isolated or not) and ``scored`` the fraction of positions whose head is
computed (``loss_on: value``: the value tokens and ``<eos>``). GPU-hours = FLOPs / (MFU x peak). The MFU is an
assumption (``--mfu``, default ``DEFAULT_MFU``) until ``bench_gpu.py`` has been run on the target GPU:
tiny models run far below it (kernel-launch bound).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from factscale.errors import ConfigError
from factscale.training.config import RunConfig
from factscale.training.models import params_per_token, resolve_shape

DEFAULT_MFU = 0.2  # assumed, not measured: no GPU run of bench_gpu.py is recorded in docs/results yet
PEAK_TFLOPS = 989.0  # H100 SXM dense bf16, spec sheet (--peak-tflops for other GPUs)
SAMPLE_KEYS = 200


@dataclass
class CorpusEstimate:
    facts: float  # facts in the corpus (before a run's max_facts and held-out split)
    tokens_per_fact: float
    value_tokens_per_fact: float | None  # value tokens + <eos>, for loss_on: value (None: unknown)
    vocab: int
    heldout_frac: float
    source: str  # where the numbers come from, printed

    def train_tokens(self, cfg: RunConfig) -> float:
        facts = self.facts * (1 - self.heldout_frac)
        if cfg.corpus.max_facts is not None:
            facts = min(facts, cfg.corpus.max_facts)
        return with_junk(cfg, facts * self.tokens_per_fact, facts)


def with_junk(cfg: RunConfig, untagged_tokens: float, facts: float) -> float:
    """Tokens an epoch trains: the useful ones, a domain tag per fact, and junk_ratio x the untagged useful
    tokens of junk (``training.data``)."""
    return untagged_tokens * (1 + cfg.train.junk_ratio) + (facts if cfg.train.domain_tag else 0)


def flops_per_token(cfg: RunConfig, vocab: int, tokens_per_fact: float, value_tokens: float | None) -> float:
    shape = resolve_shape(cfg.model)
    n = params_per_token(cfg.model.arch, shape)  # a mixture of experts computes only the token's experts
    ctx = cfg.train.seq_len  # masked SDPA computes the whole window, isolated attention or not (as bench_gpu counts)
    scored = 1.0 if cfg.train.loss_on != "value" or value_tokens is None else min(1.0, value_tokens / tokens_per_fact)
    return 6 * n + 12 * shape.n_layers * shape.hidden * ctx + 6 * shape.hidden * vocab * scored


def sample_estimate(recipe, keys: int = SAMPLE_KEYS) -> CorpusEstimate:
    """Build the synthetic recipe with ``keys`` keys in a temporary directory: tokens per fact measured there,
    facts scaled from ``keys`` to the recipe's ``n_keys``."""
    from factscale.corpus.sources import build_from_spec

    full = recipe.synthetic_spec()
    n_keys = getattr(full, "n_keys", None)
    if n_keys is None:
        raise ConfigError("corpus_build.synthetic: this kind has no n_keys to scale a sample by; give "
                          "--assume-facts and --assume-tokens-per-fact")
    junk = (recipe.variants or {}).get("junk")
    pool = junk.get("n", 0) if junk and junk.get("kind", "random") == "facts" else 0
    useful = max(1, n_keys - pool)  # keys left for useful facts (a facts pool takes one fact per key here)
    sample = min(keys, useful)
    small = dataclasses.replace(recipe, synthetic={**recipe.synthetic, "n_keys": sample + round(pool * sample / useful)})
    if junk:  # the pool scaled with the useful keys: the sample keeps `sample` useful facts to measure tokens on
        small.variants = {"junk": {**junk, "n": max(1, round(junk.get("n", 1) * sample / (useful if pool else n_keys)))}}
    with tempfile.TemporaryDirectory(prefix="factscale-plan-") as d:
        m = build_from_spec(small, Path(d) / "sample")
    t = m["tokens"]
    kept = m["counts"]["kept_facts"]
    return CorpusEstimate(facts=kept * useful / sample, tokens_per_fact=t["mean_tokens_per_fact"],
                          value_tokens_per_fact=t["mean_value_tokens"] + 1, vocab=t["vocab_size"],
                          heldout_frac=0.0 if not m["counts"].get("kept_heldout") else
                          m["counts"]["kept_heldout"] / kept,
                          source=f"estimated from a sample build of the recipe with {sample} of "
                                 f"{useful:,} keys of useful facts")


def assumed(facts: float, tokens_per_fact: float, vocab: int, heldout_frac: float) -> CorpusEstimate:
    if not facts > 0 or not tokens_per_fact > 0:
        raise ConfigError("--assume-facts and --assume-tokens-per-fact must both be > 0")
    return CorpusEstimate(facts=facts, tokens_per_fact=tokens_per_fact, value_tokens_per_fact=None, vocab=vocab,
                          heldout_frac=heldout_frac, source=f"assumed: {facts:,.0f} facts x {tokens_per_fact:g} "
                          "tokens per fact (--assume-facts, --assume-tokens-per-fact)")


def job_hours(flops: float, gpus: int, mfu: float, peak_tflops: float) -> float:
    """Wall-clock hours of ``flops`` on ``gpus`` GPUs at ``mfu`` of ``peak_tflops`` each."""
    return flops / (mfu * peak_tflops * 1e12 * max(1, gpus)) / 3600


def time_warning(name: str, hours: float, gpus: int, time_min: int, max_requeues: int) -> str | None:
    """A line when a job's estimate exceeds its SLURM time limit: how many requeues it needs."""
    if hours * 60 <= time_min:
        return None
    need = math.ceil(hours * 60 / time_min) - 1
    over = " - more than max_requeues, it would count as failed: raise time_min" if need > max_requeues else ""
    return (f"warning: {name}: ~{hours:.1f} h on {max(1, gpus)} GPU(s) exceeds time_min {time_min} min: "
            f"~{need} requeue(s) (max_requeues {max_requeues}){over}")


def estimate_for(spec, assume_facts: float | None = None, assume_tokens_per_fact: float | None = None
                 ) -> CorpusEstimate | None:
    """The corpus estimate ``sweep plan`` uses where the sweep's corpus is not built (None where it is, or
    where nothing can be estimated: the plan then says what to pass)."""
    from factscale.corpus.build import read_manifest

    path = spec.base.get("corpus", {}).get("path", "")
    if read_manifest(path) is not None:
        return None
    recipe = spec.corpus_build
    if assume_facts is not None or assume_tokens_per_fact is not None:
        if assume_facts is None or assume_tokens_per_fact is None:
            raise ConfigError("give both --assume-facts and --assume-tokens-per-fact (or neither)")
        vocab = recipe.vocab_size if recipe else 2048
        return assumed(assume_facts, assume_tokens_per_fact, vocab, recipe.heldout_frac if recipe else 0.1)
    if recipe is not None and recipe.synthetic is not None:
        return sample_estimate(recipe)
    return None


def job_costs(spec, rows: list[dict], mfu: float, peak_tflops: float) -> list[dict]:
    """One entry per job a launch submits (a run, or a cooldown-branch group: its trunk then its branches):
    FLOPs, GPUs, estimated hours and the SLURM time-limit warning."""
    from factscale.configio import from_dict, to_dict
    from factscale.cluster import SlurmResources
    from factscale.launch.branches import BranchGroup, groups
    from factscale.launch.spec import expand
    from factscale.launch.stacks import BranchStack, StackGroup, branch_stack_units, stack_units
    from factscale.training.rundir import run_name

    if not 0 < mfu <= 1 or not peak_tflops > 0:
        raise ConfigError(f"--mfu must be in (0, 1] and --peak-tflops > 0, got {mfu} and {peak_tflops}")
    cfgs = expand(spec)
    per_epoch = {id(c): r["flops"] / r["epochs"] if r["flops"] else None for c, r in zip(cfgs, rows)}
    if spec.cooldown_branches and spec.stack == "seeds":  # a stack of branch groups: one job
        units = [u if isinstance(u, (BranchStack, BranchGroup, StackGroup)) else c
                 for c, u in branch_stack_units(cfgs, [None] * len(cfgs))]
    elif spec.cooldown_branches:
        units = groups(cfgs)
    elif spec.stack == "seeds":  # a stack trains all its members in one job: their FLOPs add up
        units = [u if isinstance(u, StackGroup) else c for c, u in stack_units(cfgs, [None] * len(cfgs))]
    else:
        units = cfgs
    base = to_dict(spec.resources.slurm)
    jobs = []
    def group_cost(g):  # a trunk to its last fork, then each branch's decay
        f = [per_epoch[id(b)] for b in g.branches]
        epochs = g.epochs
        flops = None if None in f else f[0] * max(g.forks) + sum(
            x * (b.train.epochs - k) for x, b, k in zip(f, g.branches, g.forks))
        return epochs, flops

    for u in units:
        if isinstance(u, BranchStack):
            costs = [group_cost(g) for g in u.groups]
            epochs = sum(e for e, _ in costs)
            flops = None if any(f is None for _, f in costs) else sum(f for _, f in costs)
            name = f"stack of {len(u.groups)} trunks ({run_name(u.groups[0].trunk)} ...) and their branches"
            size = u.groups[0].trunk.model.size
        elif isinstance(u, StackGroup):
            f = [per_epoch[id(c)] for c in u.members]
            epochs = sum(c.train.epochs for c in u.members)
            flops = None if None in f else sum(x * c.train.epochs for x, c in zip(f, u.members))
            name, size = f"stack of {len(u.members)} ({run_name(u.members[0])} ...)", u.members[0].model.size
        elif isinstance(u, BranchGroup):
            epochs, flops = group_cost(u)
            name, size = f"trunk {run_name(u.trunk)} and its {len(u.branches)} branches", u.trunk.model.size
        else:
            flops, epochs = per_epoch[id(u)] and per_epoch[id(u)] * u.train.epochs, u.train.epochs
            name, size = f"run {run_name(u)}", u.model.size
        res = from_dict(SlurmResources, {**base, **spec.resources.slurm_by_size.get(size, {})})
        gpus = res.gpus_per_node * res.nodes
        hours = job_hours(flops, gpus, mfu, peak_tflops) if flops else None
        warn = time_warning(name, hours, gpus, res.time_min, res.max_requeues) if hours and gpus else None
        jobs.append({"job": name, "epochs": epochs, "flops": flops, "gpus": gpus, "hours": hours,
                     "gpu_hours": hours * max(1, gpus) if hours else None, "time_min": res.time_min, "warning": warn})
    return jobs
