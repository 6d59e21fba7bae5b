"""The run config: one dataclass tree is the single source of truth for a run.

defaults -> YAML -> dotted CLI overrides (``train.epochs=50``), validated on the way in (``configio``).
The resolved config is written next to every run, and its stable hash names the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from factscale.configio import (
    ConfigError,
    from_dict,
    normalize_path,
    parse_override,
    parse_where,
    positive_or_none,
    read_yaml_mapping,
    set_dotted,
)


@dataclass
class CorpusRef:
    path: str = ""
    """Corpus directory made by ``factscale corpus build`` (facts.parquet, tokenizer/, manifest.json)."""
    max_facts: Optional[int] = None
    """Train on the first N training facts in the corpus' seeded order (a corpus-size axis); None = all."""
    heldout_max: Optional[int] = None
    """Probe at most N held-out facts; None = all."""
    where: Optional[str] = None
    """``column=value[,value...]``: train and probe only the facts whose column (read as text) takes one of
    these values, e.g. ``freq_level=x1``: one group trained alone, the preference study's competition
    design (docs/studies.md); ``a*b=x1*p1,x4*p1`` selects combinations of two columns. Applied before
    ``max_facts``. None = every fact."""

    def __post_init__(self):
        self.path = normalize_path(self.path)  # one spelling, one run identity: ./c, c/ and $PWD/c are c
        positive_or_none(self, "max_facts", "corpus")
        positive_or_none(self, "heldout_max", "corpus")
        if self.where is not None:
            col, eq, vals = str(self.where).partition("=")
            if not (eq and col.strip() and vals.strip()):
                raise ConfigError(f"corpus.where must read 'column=value[,value...]', got {self.where!r}")

    def where_filter(self) -> tuple[str, list[str]] | None:
        """(column, allowed values) of ``where``, or None."""
        return None if self.where is None else parse_where(self.where)


@dataclass
class ModelConfig:
    arch: Literal["qwen2", "llama", "gpt2"] = "qwen2"
    """Decoder family: Qwen2 (Lu et al. used Qwen1.5 = Qwen2ForCausalLM), Llama or GPT-2."""
    size: Optional[str] = "100k"
    """Name in the size registry (``factscale sizes``); set to null to give the shape explicitly."""
    n_layers: Optional[int] = None
    """Decoder blocks (with model.size null; else the registry's)."""
    hidden: Optional[int] = None
    """Hidden width (with model.size null)."""
    heads: Optional[int] = None
    """Attention heads; hidden must be divisible by them (with model.size null)."""
    kv_heads: Optional[int] = None
    """Key/value heads (grouped-query attention); None = heads. Ignored by GPT-2."""
    ffn: Optional[int] = None
    """MLP inner width."""
    tie_embeddings: bool = True
    """Share input embedding and output head (neither counts as non-embedding parameters)."""
    max_position: int = 512
    """Longest position the model supports (RoPE range; GPT-2's learned position table). Must cover train.seq_len."""
    experts: Optional[int] = None
    """Mixture of experts (Qwen2-MoE, qwen2 only): experts per layer, each of width model.ffn; 0 = dense;
    None = the registry's (dense unless the size is a ``*-moe-*`` entry)."""
    experts_per_token: Optional[int] = None
    """Experts each token is routed to (top-k), in [1, experts]."""
    shared_expert_ffn: Optional[int] = None
    """Width of the always-on shared expert (0 = none)."""
    router_aux_coef: float = 0.001
    """Weight of the router's load-balancing loss added to the training loss (MoE only)."""

    def __post_init__(self):
        explicit = [self.n_layers, self.hidden, self.heads, self.ffn]
        if self.size is None and any(v is None for v in explicit):
            raise ConfigError(
                "model: give either model.size (a registry name) or all of "
                "model.n_layers, model.hidden, model.heads, model.ffn"
            )
        for name in ("n_layers", "hidden", "heads", "kv_heads", "ffn", "max_position", "experts_per_token"):
            positive_or_none(self, name, "model")
        for name in ("experts", "shared_expert_ffn"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ConfigError(f"model.{name} must be an integer >= 0, got {v!r}")
        if not self.router_aux_coef >= 0:
            raise ConfigError(f"model.router_aux_coef must be >= 0, got {self.router_aux_coef}")


@dataclass
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate of AdamW (after warmup)."""
    weight_decay: float = 0.0
    """AdamW weight decay on every parameter with 2 or more dimensions - the matrices and the token (and
    position) embeddings, as nanoGPT decays them - never on norms or biases; 0 = off."""
    beta1: float = 0.9
    """AdamW first-moment decay, in [0, 1)."""
    beta2: float = 0.98
    """AdamW second-moment decay, in [0, 1)."""
    eps: float = 1e-8
    """AdamW epsilon (> 0)."""
    schedule: Literal["cosine", "constant", "wsd"] = "cosine"
    """cosine: warmup then cosine to min_lr_ratio; constant: warmup then flat;
    wsd: warmup, stable, then linear decay over the last decay_frac of training (counted in epochs, so the
    decay starts exactly at an epoch boundary when epochs x decay_frac is whole: see cooldown branches)."""
    warmup_frac: float = 0.02
    """Linear warmup over this fraction of the run's optimizer steps (when warmup_steps is null)."""
    warmup_steps: Optional[int] = None
    """Warmup length in optimizer steps; None = warmup_frac of the run's steps. A fixed count makes warmup
    independent of the run's length, which cooldown branches need (a branch must equal a standalone run)."""
    min_lr_ratio: float = 0.1
    """The final learning rate as a fraction of lr (cosine and wsd)."""
    decay_frac: float = 0.2
    """wsd: the fraction of the epochs spent decaying (the fork point of cooldown branches)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 = off."""

    def __post_init__(self):
        for name in ("lr", "eps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"optim.{name} must be a finite number > 0, got {v}")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"optim.{name} must be a finite number >= 0 (0 = off), got {v}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ConfigError(f"optim.{name} must be in [0, 1), got {v}")
        if self.warmup_steps is not None and (isinstance(self.warmup_steps, bool) or self.warmup_steps < 0):
            raise ConfigError(f"optim.warmup_steps must be an integer >= 0 or null, got {self.warmup_steps!r}")
        for name in ("warmup_frac", "min_lr_ratio", "decay_frac"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"optim.{name} must be in [0, 1], got {v}")


@dataclass
class TrainConfig:
    epochs: int = 10
    """Passes over the training facts (a fact with frequency k is seen k times per epoch)."""
    batch_size: int = 32
    """Packed sequences per optimizer step."""
    seq_len: int = 128
    """Packed sequence length in tokens; facts are never split across sequences."""
    loss_on: Literal["all", "value"] = "all"
    """Train on every token, or only on value tokens (and the end-of-fact token)."""
    attention: Literal["isolated", "packed"] = "isolated"
    """How facts packed into one ``seq_len`` window see each other. ``isolated``: position ids restart at 0
    at each fact's ``<bos>`` and transformers' packed-sequence mask keeps each fact to itself, so a fact is
    computed exactly as if it were alone (as the probes run it); ``packed``: plain causal attention over the
    window (a fact attends to the earlier facts beside it, at positions offset by them). The default is
    measured: isolated memorized 20-39% more facts at the same cost (docs/results/attention.md)."""
    repeat_by: Optional[str] = None
    """Column of facts.parquet holding a per-fact repeat count per epoch (e.g. ``repeats``)."""
    phase_column: Optional[str] = None
    """Column of facts.parquet naming each fact's phase (e.g. ``phase``), for order studies."""
    order: Literal["interleaved", "blocked", "first-phase-only"] = "interleaved"
    """With phase_column: ``blocked`` trains phase 1 for epochs/n epochs, then phase 2, ...;
    ``interleaved`` trains a random 1/n of all facts each epoch (same steps, same exposures per fact);
    ``first-phase-only`` trains phase 1 in every epoch: the control for ``blocked`` (the same steps and
    schedule, later phases never seen), so forgetting is measured against continued training, not time."""
    junk_ratio: float = 0.0
    """Junk tokens mixed in per useful (training-fact) token, every epoch: pieces drawn from the corpus' junk
    pool (``--variant junk:kind=random|facts,n=N``), cycling through it in a seeded order, so each piece is
    seen about ``epochs x pieces per epoch / n`` times (the rows' ``junk_exposures``). Allen-Zhu & Li's 1:7
    useful-to-junk is 7. Junk is trained on and never probed; 0 = none."""
    domain_tag: bool = False
    """Prefix every useful fact, in training and in every probe, with the junk corpus' ``<domain>`` token
    (junk pieces stay untagged): the model can tell the data worth storing from the junk."""
    inject_where: Optional[str] = None
    """``column=value[,value...]``: facts injected mid-run (e.g. ``phase=p4`` of a ``phases:n=4,by=random``
    corpus): of the run's training facts these select, alternate ones (in the corpus' order) are trained only
    in epochs ``inject_epoch`` .. ``inject_epoch + inject_epochs - 1`` (``injected`` = yes) and the others never
    (``control``: the baseline); every probe breaks facts down by ``injected`` (yes / control / no), and the
    train split's ``all`` rows include the never-trained control. ``factscale study forgetting`` fits the
    decay of the injected half's gain over the control. None = off."""
    inject_epoch: int = 1
    """The epoch (1-based) in which the injected facts are first trained."""
    inject_epochs: int = 1
    """Consecutive epochs in which the injected facts are trained (their exposures, times any repeats)."""
    precision: Literal["auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed"] = "auto"
    """auto = fp32 on CPU, bf16-mixed on GPU. ``bf16-mixed``: fp32 weights and optimizer, bf16 autocast;
    ``bf16-true``: the weights themselves in bf16 (and so the optimizer's state). Probes apply the output
    head in fp32 to the final hidden states. A stack (a sweep's ``stack: seeds``) trains auto, 32-true or
    bf16-mixed."""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    """auto = a GPU if one is visible, else the CPU."""
    devices: int = 1
    """Devices per node; more than one trains with DDP."""
    num_nodes: int = 1
    """Nodes; more than one trains with DDP across nodes (under SLURM)."""
    num_threads: Optional[int] = None
    """torch intra-op threads on CPU; None = torch's default."""
    compile: bool = False
    """``torch.compile`` the decoder body (in place; checkpoints unchanged; a stack compiles its stacked step).
    Compiled graphs are cached in ``<runs_dir>/_compile_cache`` (unless ``TORCHINDUCTOR_CACHE_DIR`` is set), so
    a sweep's jobs on any node reuse them. Off by default: on this project's 2-core CPU it did not pay for
    small models (docs/results/throughput.md); try it on a GPU."""
    keep_checkpoints: Literal["none", "last", "all"] = "none"
    """What stays in ``checkpoints/`` once a run is done: ``none`` (the weights are in ``model/``; the
    checkpoints carry optimizer state, GBs per run at 100m-300m), ``last`` (``last.ckpt`` and ``prev.ckpt``:
    the full state, to extend the run), ``all`` (also ``epoch-<E>.ckpt`` at every probe epoch, hard links
    while training). A cooldown-branch trunk's fork checkpoints are kept whatever this says."""
    log_every_n_steps: int = 10
    """Log the training loss every N optimizer steps (the epoch loss is always logged)."""
    progress_bar: bool = True
    """Lightning's progress bar on a terminal."""
    logger: Literal["csv", "tensorboard", "wandb"] = "csv"
    """Training-loss logger under the run directory (continues across resumes); tensorboard and wandb
    need their packages installed."""

    def __post_init__(self):
        for name in ("epochs", "batch_size", "seq_len", "devices", "num_nodes", "log_every_n_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"train.{name} must be a positive integer, got {v!r}")
        for name in ("inject_epoch", "inject_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"train.{name} must be a positive integer, got {v!r}")
        if self.inject_where is None and (self.inject_epoch, self.inject_epochs) != (1, 1):
            raise ConfigError("train.inject_epoch / inject_epochs are set but train.inject_where is not: they would "
                              "do nothing; name the injected facts (e.g. inject_where: phase=p2) or drop them")
        if self.inject_where is not None and self.phase_column is not None:
            raise ConfigError("train.inject_where with train.phase_column: the phase order would veto the "
                              "injection epochs; use one of them")
        if self.junk_ratio and (self.phase_column is not None or self.inject_where is not None):
            raise ConfigError("train.junk_ratio with train.phase_column or train.inject_where: the facts trained "
                              "differ by epoch, so a fixed junk share would not be junk_ratio; use junk alone")
        if self.inject_where is not None:
            col, eq, vals = str(self.inject_where).partition("=")
            if not (eq and col.strip() and vals.strip()):
                raise ConfigError(f"train.inject_where must read 'column=value[,value...]', got {self.inject_where!r}")
            if self.inject_epoch + self.inject_epochs - 1 > self.epochs:
                raise ConfigError(f"train.inject_epoch={self.inject_epoch} + inject_epochs={self.inject_epochs} - 1 "
                                  f"is past train.epochs={self.epochs}: the injection must end within the run")
        if isinstance(self.junk_ratio, bool) or not (math.isfinite(self.junk_ratio) and self.junk_ratio >= 0):
            raise ConfigError(f"train.junk_ratio must be a finite number >= 0 (0 = no junk), got {self.junk_ratio!r}")


@dataclass
class ProbeConfig:
    every_epochs: int = 1
    """Probe after every K-th epoch (and always after the last)."""
    batch_size: int = 512
    """Facts per probe forward pass (a positive integer): memory, not results."""
    splits: list[str] = field(default_factory=lambda: ["train", "heldout"])
    """Which splits to probe: train (capacity) and heldout (unseen keys: generalization, calibration)."""
    max_train_facts: Optional[int] = 200_000
    """Probe at most this many training facts: above it, a fixed sample stratified by relation
    (``probes.probe_sample``; capacity = MR x facts with its standard error), so a probe of a paper-scale
    corpus takes seconds, not minutes; below it, every fact (exact capacity). None = always every fact."""
    freq_column: Optional[str] = "popularity"
    """Column used for the frequency-bucket breakdown (quantile buckets); None = none."""
    group_columns: list[str] = field(default_factory=list)
    """Extra facts.parquet columns to break the metrics down by (e.g. variant group, phase); ``a*b`` breaks
    them down by the combination of two columns (groups like ``x1*p1``), as ``corpus.where`` may select."""

    def __post_init__(self):
        for name in ("every_epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"probe.{name} must be a positive integer, got {v!r}")
        positive_or_none(self, "max_train_facts", "probe")
        bad = set(self.splits) - {"train", "heldout"}
        if bad:
            raise ConfigError(f"probe.splits: unknown {sorted(bad)}; allowed: ['heldout', 'train']")


@dataclass
class RunConfig:
    corpus: CorpusRef = field(default_factory=CorpusRef)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = 0
    """Seeds initialization and the per-epoch fact order (an integer >= 0); the corpus has its own seed."""
    runs_dir: str = "runs"
    """Where run directories are made; a run's directory name comes from its config, never a job id."""
    name: str = ""
    """Optional prefix of the readable run name."""

    def __post_init__(self):
        if not self.corpus.path:
            raise ConfigError("corpus.path is required: a directory made by `factscale corpus build`")
        if self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed}")


def load_run_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    data: dict = read_yaml_mapping(path) if path is not None else {}
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for k, v in items:
        set_dotted(data, k, v)
    return from_dict(RunConfig, data)


