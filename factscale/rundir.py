"""A run's identity and its directory: name and hash from the resolved config, never from a job id.

Layout of ``<runs_dir>/<run_id>/``::

    config.yaml          resolved config (written before training)
    checkpoints/last.ckpt  written atomically at every epoch end; a restart resumes from it
    logs/                CSV logger (fixed version, so a requeued attempt appends to the same place)
    attempts.json        attempt count (requeues = attempts - 1), cumulative wall time
    error.json           written when an attempt raised: the run is "failed", never "done"
    results.parquet      probe rows, written atomically last: its presence means "done"
    model/               save_pretrained model + tokenizer (opens with transformers alone)
    .lock                flock held by the process running it: two launches never run it twice
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import yaml

from factscale.config import RunConfig, config_hash, to_dict


def _short(n: int | None) -> str:
    if n is None:
        return "all"
    for unit, div in (("m", 1_000_000), ("k", 1_000)):
        if n >= div and n % (div // 10 or 1) == 0:
            v = n / div
            return f"{v:g}{unit}"
    return str(n)


def run_name(cfg: RunConfig) -> str:
    """Readable part of the id, e.g. ``qwen2-1m-e100-s0`` (plus ``-f20k`` when the corpus is capped)."""
    size = cfg.model.size or f"L{cfg.model.n_layers}h{cfg.model.hidden}"
    parts = [cfg.name] if cfg.name else []
    parts += [cfg.model.arch, size, f"e{cfg.train.epochs}"]
    if cfg.corpus.max_facts is not None:
        parts.append(f"f{_short(cfg.corpus.max_facts)}")
    parts.append(f"s{cfg.seed}")
    return "-".join(parts)


def run_id(cfg: RunConfig) -> str:
    return f"{run_name(cfg)}-{config_hash(cfg)}"


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.runs_dir) / run_id(cfg)


def write_atomic(path: Path, data: bytes | str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare(cfg: RunConfig, min_free_mb: int = 50) -> Path:
    """Create the run directory and write the resolved config; fail loudly if it cannot be written."""
    d = run_dir(cfg)
    try:
        d.mkdir(parents=True, exist_ok=True)
        write_atomic(d / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    except OSError as e:
        raise OSError(e.errno, f"run directory {d} is not writable: {e.strerror}") from e
    free = shutil.disk_usage(d).free / 2**20
    if free < min_free_mb:
        raise OSError(errno.ENOSPC, f"only {free:.0f} MiB free under {d}; need at least {min_free_mb} MiB")
    return d


class RunLock:
    """An exclusive, non-blocking flock on ``<run>/.lock``; released by the OS even on SIGKILL."""

    def __init__(self, d: Path):
        self.path = Path(d) / ".lock"
        self.fh = None

    def acquire(self) -> bool:
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            self.fh = None
            return False
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()} {os.uname().nodename}\n")
        self.fh.flush()
        return True

    def release(self):
        if self.fh:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    def held_by_other(self) -> bool:
        if not self.path.exists():
            return False
        if self.acquire():
            self.release()
            return False
        return True


def record_attempt(d: Path, seconds: float | None = None) -> dict:
    """Start of an attempt (seconds=None) increments ``attempts``; the end adds its wall time."""
    p = Path(d) / "attempts.json"
    state = json.loads(p.read_text()) if p.exists() else {"attempts": 0, "wall_s": 0.0}
    if seconds is None:
        state["attempts"] += 1
        state["started"] = time.time()
    else:
        state["wall_s"] += seconds
    write_atomic(p, json.dumps(state))
    return state


def status(d: Path) -> dict:
    """done / failed / running / pending for one run directory, with requeues and the error's tail."""
    d = Path(d)
    att = json.loads((d / "attempts.json").read_text()) if (d / "attempts.json").exists() else {"attempts": 0}
    info = {"run_dir": str(d), "requeues": max(0, att["attempts"] - 1)}
    if (d / "results.parquet").exists():
        return {**info, "state": "done"}
    if RunLock(d).held_by_other():
        return {**info, "state": "running"}
    if (d / "error.json").exists():
        err = json.loads((d / "error.json").read_text())
        return {**info, "state": "failed", "error": err.get("error"), "traceback_tail": err.get("traceback_tail"),
                "log": err.get("log")}
    state = "interrupted" if (d / "checkpoints" / "last.ckpt").exists() else "pending"
    return {**info, "state": state}
