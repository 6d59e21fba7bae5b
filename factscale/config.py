"""One dataclass tree is the single source of truth for a run.

defaults -> YAML -> dotted CLI overrides (``train.epochs=50``), validated on the way in.
Every error names the offending field (``train.epochs``) and, for choices, the allowed values.
The resolved config is written next to every run, and its stable hash names the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A config field is missing, unknown or out of range; the message names the field."""


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
    design (README, "Behaviour studies"). Applied before ``max_facts``. None = every fact."""

    def __post_init__(self):
        _positive_or_none(self, "max_facts", "corpus")
        _positive_or_none(self, "heldout_max", "corpus")
        if self.where is not None:
            col, eq, vals = str(self.where).partition("=")
            if not (eq and col.strip() and vals.strip()):
                raise ConfigError(f"corpus.where must read 'column=value[,value...]', got {self.where!r}")

    def where_filter(self) -> tuple[str, list[str]] | None:
        """(column, allowed values) of ``where``, or None."""
        return None if self.where is None else parse_where(self.where)


def parse_where(text: str) -> tuple[str, list[str]]:
    """``column=value[,value...]`` -> (column, values): the one reading of ``corpus.where``."""
    col, _, vals = str(text).partition("=")
    return col.strip(), [v.strip() for v in vals.split(",") if v.strip()]


def key_values(text: str | None) -> dict:
    """``a=1,b=x`` -> {"a": "1", "b": "x"} (values stay strings): the CLI's key=value lists."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        if "=" not in part:
            raise ConfigError(f"expected key=value, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@dataclass
class ModelConfig:
    arch: Literal["qwen2", "llama", "gpt2"] = "qwen2"
    """Decoder family: Qwen2 (Lu et al. used Qwen1.5 = Qwen2ForCausalLM), Llama or GPT-2."""
    size: Optional[str] = "100k"
    """Name in the size registry (``factscale sizes``); set to null to give the shape explicitly."""
    n_layers: Optional[int] = None
    hidden: Optional[int] = None
    heads: Optional[int] = None
    kv_heads: Optional[int] = None
    """Key/value heads (grouped-query attention); None = heads. Ignored by GPT-2."""
    ffn: Optional[int] = None
    """MLP inner width."""
    tie_embeddings: bool = True
    """Share input embedding and output head (neither counts as non-embedding parameters)."""
    max_position: int = 512

    def __post_init__(self):
        explicit = [self.n_layers, self.hidden, self.heads, self.ffn]
        if self.size is None and any(v is None for v in explicit):
            raise ConfigError(
                "model: give either model.size (a registry name) or all of "
                "model.n_layers, model.hidden, model.heads, model.ffn"
            )
        for name in ("n_layers", "hidden", "heads", "kv_heads", "ffn", "max_position"):
            _positive_or_none(self, name, "model")


@dataclass
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    schedule: Literal["cosine", "constant", "wsd"] = "cosine"
    """cosine: warmup then cosine to min_lr_ratio; constant: warmup then flat;
    wsd: warmup, stable, then linear decay over the last decay_frac of training (counted in epochs, so the
    decay starts exactly at an epoch boundary when epochs x decay_frac is whole: see cooldown branches)."""
    warmup_frac: float = 0.02
    warmup_steps: Optional[int] = None
    """Warmup length in optimizer steps; None = warmup_frac of the run's steps. A fixed count makes warmup
    independent of the run's length, which cooldown branches need (a branch must equal a standalone run)."""
    min_lr_ratio: float = 0.1
    decay_frac: float = 0.2
    grad_clip: float = 1.0

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
    measured: isolated memorized 20-39% more facts at the same cost (README, "Packing and attention")."""
    repeat_by: Optional[str] = None
    """Column of facts.parquet holding a per-fact repeat count per epoch (e.g. ``repeats``)."""
    phase_column: Optional[str] = None
    """Column of facts.parquet naming each fact's phase (e.g. ``phase``), for order studies."""
    order: Literal["interleaved", "blocked", "first-phase-only"] = "interleaved"
    """With phase_column: ``blocked`` trains phase 1 for epochs/n epochs, then phase 2, ...;
    ``interleaved`` trains a random 1/n of all facts each epoch (same steps, same exposures per fact);
    ``first-phase-only`` trains phase 1 in every epoch: the control for ``blocked`` (the same steps and
    schedule, later phases never seen), so forgetting is measured against continued training, not time."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    """auto = fp32 on CPU, bf16-mixed on GPU."""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    num_threads: Optional[int] = None
    """torch intra-op threads on CPU; None = torch's default."""
    compile: bool = False
    """``torch.compile`` the decoder body (in place; checkpoints unchanged). Off by default: on this
    project's 2-core CPU it did not pay for small models (README, Throughput); try it on a GPU."""
    log_every_n_steps: int = 10
    progress_bar: bool = True
    logger: Literal["csv", "tensorboard", "wandb"] = "csv"
    """Training-loss logger under the run directory (continues across resumes); tensorboard and wandb
    need their packages installed."""

    def __post_init__(self):
        for name in ("epochs", "batch_size", "seq_len", "devices", "num_nodes", "log_every_n_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"train.{name} must be a positive integer, got {v!r}")


@dataclass
class ProbeConfig:
    every_epochs: int = 1
    """Probe after every K-th epoch (and always after the last)."""
    batch_size: int = 512
    splits: list[str] = field(default_factory=lambda: ["train", "heldout"])
    max_train_facts: Optional[int] = 200_000
    """Probe at most this many training facts: above it, a fixed sample stratified by relation
    (``probes.probe_sample``; capacity = MR x facts with its standard error), so a probe of a paper-scale
    corpus takes seconds, not minutes; below it, every fact (exact capacity). None = always every fact."""
    freq_column: Optional[str] = "popularity"
    """Column used for the frequency-bucket breakdown (quantile buckets); None = none."""
    group_columns: list[str] = field(default_factory=list)
    """Extra facts.parquet columns to break the metrics down by (e.g. variant group, phase)."""

    def __post_init__(self):
        for name in ("every_epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"probe.{name} must be a positive integer, got {v!r}")
        _positive_or_none(self, "max_train_facts", "probe")
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
    runs_dir: str = "runs"
    """Where run directories are made; a run's directory name comes from its config, never a job id."""
    name: str = ""
    """Optional prefix of the readable run name."""

    def __post_init__(self):
        if not self.corpus.path:
            raise ConfigError("corpus.path is required: a directory made by `factscale corpus build`")
        if self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed}")


# ---------------------------------------------------------------- building from dicts


def _positive_or_none(obj, name, section):
    v = getattr(obj, name)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        raise ConfigError(f"{section}.{name} must be a positive integer or null, got {v!r}")


def _check_type(value, tp, where: str):
    """Coerce/validate a YAML value against a dataclass field type; name the field on error."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed values: {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_type(value, args[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, typing.get_args(tp)[0], f"{where}[]") for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys by name."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown config key '{prefix}{key}'; allowed keys here: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        where = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(data[f.name], dict):
                raise ConfigError(f"{where}: expected a mapping, got {data[f.name]!r}")
            kwargs[f.name] = from_dict(tp, data[f.name], prefix=f"{where}.")
        else:
            kwargs[f.name] = _check_type(data[f.name], tp, where)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def parse_override(text: str) -> tuple[str, Any]:
    """``train.epochs=50`` -> ("train.epochs", 50); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key!r}: {p!r} is not a mapping")
        d = nxt
    d[parts[-1]] = value


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (binary content); a {what} is YAML") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory; a {what} is a YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def load_run_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    data: dict = read_yaml_mapping(path) if path is not None else {}
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for k, v in items:
        set_dotted(data, k, v)
    return from_dict(RunConfig, data)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"train.epochs": 10, ...}; lists become JSON strings (one column each)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out
