"""The run-directory protocol: one object owns a run's identity, lock, attempts, checkpoints, errors,
job records, results and status. ``train``, ``sweep`` and ``collect`` ask it; nothing else writes here.

Identity: ``<runs_dir>/<readable name>-<hash>``, the hash covering the resolved config (minus fields
that do not change what is computed) *and* the corpus content hash from its manifest, so a rebuilt or
edited corpus gives new runs instead of silently reusing results trained on other data.

Layout of ``<runs_dir>/<run_id>/``::

    config.yaml            resolved config (written before training), identity.json (what the id hashes)
    checkpoints/last.ckpt  written atomically at every epoch end; prev.ckpt is the one before it, kept
                           so a torn or corrupt last.ckpt falls back to it instead of losing the run
    logs/                  training logger output (appended across resumes)
    attempts.json          attempts (requeues = attempts - 1), wall time, recovery events
    jobs.json              every submission (local pid or SLURM job id), checked before resubmitting
    error.json             written when an attempt raised: the run is "failed", never "done"
    fact_probe.parquet     per-fact results of the final probe
    results.parquet        probe rows, written atomically last: its presence means "done"
    model/                 save_pretrained model + tokenizer (opens with transformers alone)
    .lock                  flock held by the process running it: two launches never run it twice
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import traceback
from pathlib import Path

import yaml

from factscale.cluster import process_start, slurm_job_state
from factscale.configio import flatten, to_dict
from factscale.fsio import write_atomic, write_json_atomic, write_parquet_atomic
from factscale.training.config import RunConfig

__all__ = ["RunDir", "RunLock"]

# Fields that do not change what a run computes, so they do not enter its identity hash.
_NON_IDENTITY = {"runs_dir", "name", "train.progress_bar", "train.log_every_n_steps", "train.num_threads",
                 "train.logger", "train.keep_checkpoints"}
# Fields added after runs were already named: at these (default) values they stay out of the identity, so a run
# made before they existed keeps its id and is found again; any other value enters it.
_LATER_DEFAULTS = {"train.junk_ratio": 0.0, "train.domain_tag": False, "train.inject_where": None,
                   "train.inject_epoch": 1, "train.inject_epochs": 1}


def _short(n: int | None) -> str:
    for unit, div in (("m", 1_000_000), ("k", 1_000)):
        if n >= div and n % (div // 10 or 1) == 0:
            return f"{n / div:g}{unit}"
    return str(n)


# Fields ``run_name`` spells itself; a sweep names its other grid axes in the run's ``name`` prefix (``axes_name``)
NAMED_FIELDS = {"model.arch", "model.size", "train.epochs", "corpus.max_facts", "corpus.where", "seed",
                "train.junk_ratio", "train.domain_tag", "train.inject_where", "train.inject_epoch", "runs_dir", "name"}


def axes_name(point: dict) -> str:
    """A grid point's axes that ``run_name`` does not show, e.g. {train.order: blocked, optim.lr: 0.01} ->
    ``order_blocked-lr_0.01``: so runs of an order, learning-rate or attention sweep differ by name, not only
    by hash."""
    parts = []
    for k, v in point.items():
        if k not in NAMED_FIELDS:
            parts.append(re.sub(r"[^A-Za-z0-9.]+", "_", f"{k.rsplit('.', 1)[-1]}_{v}").strip("_"))
    return "-".join(parts)


def run_name(cfg: RunConfig) -> str:
    """Readable part of the id, e.g. ``qwen2-1m-e100-s0`` (plus ``-f20k`` when the corpus is capped)."""
    size = cfg.model.size or f"L{cfg.model.n_layers}h{cfg.model.hidden}"
    parts = [cfg.name] if cfg.name else []
    parts += [cfg.model.arch, size, f"e{cfg.train.epochs}"]
    if cfg.corpus.max_facts is not None:
        parts.append(f"f{_short(cfg.corpus.max_facts)}")
    if cfg.corpus.where is not None:  # e.g. "freq_level=x1" -> "w-x1": which group trained alone
        parts.append("w-" + re.sub(r"[^A-Za-z0-9.]+", "_", cfg.corpus.where.partition("=")[2]).strip("_"))
    if cfg.train.inject_where is not None:  # e.g. "phase=p4" at epoch 10 -> "inj-p4@10"
        parts.append("inj-" + re.sub(r"[^A-Za-z0-9.]+", "_", cfg.train.inject_where.partition("=")[2]).strip("_")
                     + f"@{cfg.train.inject_epoch}")
    if cfg.train.junk_ratio:
        parts.append(f"j{cfg.train.junk_ratio:g}")
    if cfg.train.domain_tag:
        parts.append("tag")
    parts.append(f"s{cfg.seed}")
    return "-".join(parts)


def identity(cfg: RunConfig, corpus_hash: str) -> dict:
    flat = {k: v for k, v in flatten(to_dict(cfg)).items()
            if k not in _NON_IDENTITY and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}
    return {"config": flat, "corpus_hash": corpus_hash}


def experiment_key(cfg: RunConfig, corpus_hash: str) -> str:
    """What a run computes, whatever its directory: the identity without the corpus path (the content hash
    pins the data). Two finished runs with one key are one experiment counted twice (``collect`` refuses)."""
    ident = identity(cfg, corpus_hash)
    ident["config"].pop("corpus.path", None)
    return json.dumps(ident, sort_keys=True, default=str)


def identity_hash(cfg: RunConfig, corpus_hash: str) -> str:
    blob = json.dumps(identity(cfg, corpus_hash), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


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


def _canonical(config) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _read_json(p: Path, default):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return default


class RunDir:
    """One run's directory. ``RunDir(cfg)`` reads the corpus manifest for the content hash."""

    def __init__(self, cfg: RunConfig, corpus_hash: str | None = None):
        from factscale.corpus.build import corpus_hash_of

        self.cfg = cfg
        self.corpus_hash = corpus_hash or corpus_hash_of(cfg.corpus.path)
        h = identity_hash(cfg, self.corpus_hash)
        self.id = f"{run_name(cfg)}-{h}"
        self.path = Path(cfg.runs_dir) / self.id
        if not self.path.exists():  # the same run under another readable name (an older naming, another prefix)
            mine = _canonical(identity(cfg, self.corpus_hash)["config"])
            same = [p for p in Path(cfg.runs_dir).glob(f"*-{h}")
                    if _canonical(_read_json(p / "identity.json", {}).get("config")) == mine]
            if len(same) == 1:
                self.path, self.id = same[0], same[0].name
        self.__init_paths()

    def __init_paths(self):
        ck = self.path / "checkpoints"
        self.last_ckpt, self.prev_ckpt = ck / "last.ckpt", ck / "prev.ckpt"
        self.results, self.fact_probe = self.path / "results.parquet", self.path / "fact_probe.parquet"
        self.fact_history, self.history = self.path / "fact_history.parquet", self.path / "probes"
        self.progress_file = self.path / "progress.json"
        self.error, self.attempts_file = self.path / "error.json", self.path / "attempts.json"
        self.jobs_file, self.logs, self.model = self.path / "jobs.json", self.path / "logs", self.path / "model"
        self.lock = RunLock(self.path)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """The run living in an existing directory (from its config.yaml and identity.json)."""
        from factscale.configio import from_dict

        path = Path(path)
        cfg = from_dict(RunConfig, yaml.safe_load((path / "config.yaml").read_text()))
        cfg.runs_dir = str(path.parent)
        ident = _read_json(path / "identity.json", {})
        if not Path(cfg.corpus.path).exists() and ident.get("corpus_dir") and Path(ident["corpus_dir"]).exists():
            cfg.corpus.path = ident["corpus_dir"]  # opened from another directory than the run was launched from
        rd = cls(cfg, corpus_hash=ident.get("corpus_hash") or "unknown")
        rd.path, rd.id = path, path.name  # trust the directory we were given (its name is the id it was created under)
        rd.__init_paths()
        return rd

    # ------------------------------------------------------------------ creation, attempts, errors
    def hold_lock(self) -> None:
        """Take the run's lock, or raise RunBusy if another process trains this run. A ``status`` probe holds
        the lock for microseconds: not a reason to give up, so a taken lock is retried for up to 5 s."""
        from factscale.errors import RunBusy

        for _ in range(50):
            if self.lock.acquire():
                return
            time.sleep(0.1)
        raise RunBusy(f"run {self.id} is already running in another process (lock {self.lock.path})")

    def create(self, min_free_mb: int = 50) -> Path:
        """Create the directory and write the resolved config; fail loudly if it cannot be written."""
        d = self.path
        try:
            (d / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_atomic(d / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            # corpus_dir (not hashed): where the corpus was, absolute, so the run can be reopened from anywhere
            write_json_atomic(d / "identity.json", {**identity(self.cfg, self.corpus_hash),
                                                    "corpus_dir": str(Path(self.cfg.corpus.path).resolve())},
                              indent=1, default=str)
        except OSError as e:
            raise OSError(e.errno, f"run directory {d} is not writable: {e.strerror}") from e
        free = shutil.disk_usage(d).free / 2**20
        if free < min_free_mb:
            raise OSError(errno.ENOSPC, f"only {free:.0f} MiB free under {d}; this run needs about {min_free_mb} MiB "
                          "(checkpoints with optimizer state, the model, logs and results)")
        return d

    def attempts(self) -> dict:
        return _read_json(self.attempts_file, {"attempts": 0, "wall_s": 0.0, "events": []})

    def start_attempt(self) -> dict:
        st = self.attempts()
        if st.get("started") and not st.get("ended") and (st.get("progress") or 0) > st["started"]:
            # the previous attempt was killed (SIGKILL, OOM): count it up to its last checkpoint (None: no checkpoint)
            st["wall_s"] = st.get("wall_s", 0.0) + st["progress"] - st["started"]
        st["attempts"] += 1
        st["started"], st["ended"], st["progress"] = time.time(), None, None
        write_json_atomic(self.attempts_file, st)
        self.error.unlink(missing_ok=True)
        return st

    def note_progress(self) -> None:
        """A checkpoint was committed: the wall time a killed attempt had spent counts up to here."""
        st = self.attempts()
        st["progress"] = time.time()
        write_json_atomic(self.attempts_file, st)

    def write_progress(self, epoch: int, epochs: int, mr: dict, resumed_from: int = 0) -> None:
        """After each probe: the epoch, the latest MRs, when the attempt started and the epoch it resumed from
        (``progress`` derives the pace and the ETA)."""
        att = self.attempts()
        write_json_atomic(self.progress_file, {"epoch": epoch, "epochs": epochs, "mr": mr, "time": time.time(),
                                               "attempt": att["attempts"], "attempt_started": att.get("started"),
                                               "first_epoch_this_attempt": resumed_from})

    def progress(self) -> dict | None:
        """The latest probe of a running run: epoch of epochs, MRs, and an ETA from this attempt's pace (None
        before the attempt's first probe). The pace counts from the attempt's start, resumed epochs excluded."""
        p = _read_json(self.progress_file, None)
        if not p or p.get("attempt") != self.attempts()["attempts"]:
            return None
        out = {"epoch": p["epoch"], "epochs": p["epochs"], "mr": p["mr"], "eta_s": None}
        first = p.get("first_epoch_this_attempt")
        if p.get("attempt_started") and first is not None and p["epoch"] > first:
            per_epoch = (p["time"] - p["attempt_started"]) / (p["epoch"] - first)
            out["eta_s"] = per_epoch * (p["epochs"] - p["epoch"])
        return out

    def end_attempt(self, seconds: float) -> None:
        """An attempt ended (done, failed, interrupted or preempted): its wall time counts."""
        st = self.attempts()
        st["wall_s"] = st.get("wall_s", 0.0) + seconds
        st["ended"] = time.time()
        write_json_atomic(self.attempts_file, st)

    def note(self, event: str) -> None:
        """A recovery event (corrupt checkpoint, restart) kept in attempts.json and shown by status."""
        st = self.attempts()
        st.setdefault("events", []).append({"attempt": st["attempts"], "time": time.time(), "event": event})
        write_json_atomic(self.attempts_file, st)

    def write_error(self, exc: BaseException) -> None:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        write_json_atomic(self.error, {
            "error": f"{type(exc).__name__}: {exc}", "traceback_tail": "".join(tb).strip().splitlines()[-15:],
            "log": str(self.error), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "written": time.time()})

    # ------------------------------------------------------------------ checkpoints
    def commit_checkpoint(self, tmp: Path) -> None:
        """Make a freshly written checkpoint ``last``, keeping the previous one as ``prev``."""
        if self.last_ckpt.exists():
            os.replace(self.last_ckpt, self.prev_ckpt)
        os.replace(tmp, self.last_ckpt)

    def resume_checkpoint(self, readonly: bool = False) -> tuple[Path | None, int | None]:
        """(checkpoint to resume from, epochs it completed); falls back from a corrupt last to prev,
        and moves unreadable checkpoints aside (``*.corrupt``) so the run restarts cleanly. ``readonly``
        (DDP ranks other than 0) only reads: rank 0 owns the directory."""
        import torch

        for p in (self.last_ckpt, self.prev_ckpt):
            if not p.exists():
                continue
            try:  # mmap: validating a large checkpoint does not read it all into memory
                state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
                return p, int(state["epoch"]) + 1
            except MemoryError:
                raise
            except Exception as e:  # truncated zip (torch says EINVAL), unpickling error, missing key: unusable
                why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                if readonly:
                    continue
                os.replace(p, p.with_name(p.name + ".corrupt"))
                self.note(f"checkpoint {p} is unreadable ({why}); moved to {p.name}.corrupt")
        if readonly:
            return None, None
        if list(self.last_ckpt.parent.glob("*.corrupt")) and not self.last_ckpt.exists():
            self.note("no readable checkpoint left: restarting from epoch 0")
        return None, None

    def keep_epoch_checkpoint(self, epoch: int) -> None:
        """``train.keep_checkpoints: all``: the checkpoint of a probe epoch kept as ``epoch-<E>.ckpt`` (a hard
        link to the just-committed ``last.ckpt``: no copy while training)."""
        dst = self.last_ckpt.with_name(f"epoch-{epoch}.ckpt")
        dst.unlink(missing_ok=True)
        try:
            os.link(self.last_ckpt, dst)
        except OSError:  # a file system without hard links
            shutil.copyfile(self.last_ckpt, dst)

    def drop_checkpoints(self, keep: str) -> int:
        """After results are written: remove what ``train.keep_checkpoints`` does not keep; returns bytes freed.
        Fork checkpoints (``fork-e<F>.ckpt``) stay: cooldown branches start from them; so do ``*.corrupt`` files,
        the evidence behind a recovery note in ``attempts.json``."""
        drop = [] if keep != "none" else [self.last_ckpt, self.prev_ckpt]
        drop += list(self.last_ckpt.parent.glob(".*.tmp"))
        freed = 0
        for p in drop:
            if p.exists():
                freed += p.stat().st_size
                p.unlink()
        return freed

    # ------------------------------------------------------------------ results
    def write_results(self, df, per_fact=None, history_epochs=None) -> None:
        """``per_fact``: the final probe of every probed fact (``fact_probe.parquet``); the per-probe files
        under ``probes/`` of ``history_epochs`` become ``fact_history.parquet`` (every probe this run made,
        with each fact's relation, prompt and value from ``per_fact``)."""
        if per_fact is not None:
            write_parquet_atomic(per_fact, self.fact_probe)
        parts = sorted(self.history.glob("epoch-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
        parts = [p for p in parts if history_epochs is None or int(p.stem.split("-")[1]) in history_epochs]
        if parts:
            import polars as pl

            history = pl.concat([pl.read_parquet(p) for p in parts])
            if per_fact is not None:  # every probe's row readable on its own: the fact's relation, prompt, value
                text = per_fact.select("fact_id", "split", "relation", "prompt", "value")
                history = history.join(text, on=["fact_id", "split"], how="left")
            write_parquet_atomic(history, self.fact_history)
        write_parquet_atomic(df, self.results)  # last: its presence marks the run done
        shutil.rmtree(self.history, ignore_errors=True)
        self.progress_file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ jobs
    def jobs(self) -> list[dict]:
        return _read_json(self.jobs_file, [])

    def record_job(self, job_id: str, cluster: str, folder: Path) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        rec = {"job_id": str(job_id), "cluster": cluster, "folder": str(folder), "time": time.time()}
        if cluster == "local":
            rec.update(host=os.uname().nodename, start=process_start(int(job_id)))
        write_json_atomic(self.jobs_file, self.jobs() + [rec])

    def queued_job(self) -> dict | None:
        """The last submission if its scheduler still holds it (pending/running/requeued), else None."""
        jobs = self.jobs()
        if not jobs:
            return None
        last = jobs[-1]
        if last["cluster"] == "slurm":
            state = slurm_job_state(last["job_id"])
            return {**last, "job_state": state} if state else None
        if last["cluster"] == "local" and str(last["job_id"]).isdigit():
            if last.get("host") != os.uname().nodename:
                return None  # another machine's local job: its lock (if running) is what tells
            start = process_start(int(last["job_id"]))
            if start is not None and start == last.get("start"):
                return {**last, "job_state": "LOCAL"}  # its controller process is alive (starting or stopping)
        return None

    @staticmethod
    def _job_log(job: dict) -> Path | None:
        """The submitit stderr of a job (where its traceback is), if it exists."""
        p = Path(job["folder"]) / f"{job['job_id']}_0_log.err"
        return p if p.exists() else None

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """done / failed / running / queued / interrupted / pending, with requeues, events and errors."""
        att = self.attempts()
        info = {"run_id": self.id, "run_dir": str(self.path), "requeues": max(0, att["attempts"] - 1)}
        if att.get("events"):
            info["events"] = [e["event"] for e in att["events"]]
        if not self.path.exists():
            return {**info, "state": "pending"}
        if self.results.exists():
            return {**info, "state": "done"}
        if self.lock.held_by_other():
            return {**info, "state": "running", **({"progress": p} if (p := self.progress()) else {})}
        queued = self.queued_job()
        err = _read_json(self.error, None) if self.error.exists() else None
        # an error written after the last submission is that job's (it may still show as COMPLETING); an older
        # one belongs to an earlier attempt, and the queued retry is not to be submitted again. Both times come
        # from time.time(), never from file mtimes (whose granularity depends on the file system).
        if queued and not (err is not None and err.get("written", float("inf")) >= float(queued["time"])):
            return {**info, "state": "queued", "job_id": queued["job_id"], "job_state": queued["job_state"]}
        if err is not None:
            jobs = self.jobs()
            log = self._job_log(jobs[-1]) if jobs else None
            return {**info, "state": "failed", "error": err.get("error"), "traceback_tail": err.get("traceback_tail"),
                    "log": str(log or self.error)}
        jobs = self.jobs()
        has_ckpt = self.last_ckpt.exists() or self.prev_ckpt.exists()
        if jobs and att["attempts"] == 0 and jobs[-1]["cluster"] == "slurm":
            return {**info, "state": "failed", "job_id": jobs[-1]["job_id"],
                    "error": f"SLURM job {jobs[-1]['job_id']} ended before the run started (cancelled?); "
                             f"its log is under {jobs[-1]['folder']}"}
        if att["attempts"] > 0:
            # an attempt started, left no error and holds no lock: killed (SIGKILL, OOM, scancel, timeout)
            by = f"{jobs[-1]['cluster']} job {jobs[-1]['job_id']}" if jobs else "the process"
            where = f"; its log is under {jobs[-1]['folder']}" if jobs else ""
            # nothing is lost either way: without a checkpoint the next launch starts it over (not a failure)
            out = {**info, "state": "interrupted",
                   "error": f"{by} ended without results or an error (killed?"
                            f"{'' if has_ckpt else ', before its first checkpoint'}); launch again to "
                            f"{'resume it' if has_ckpt else 'rerun it'}{where}"}
            return {**out, "job_id": jobs[-1]["job_id"]} if jobs else out
        return {**info, "state": "interrupted" if has_ckpt else "pending"}
