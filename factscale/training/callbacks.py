"""Lightning callbacks and loggers that belong to the run protocol.

- ``AtomicLastCheckpoint``: ``last.ckpt`` at every epoch end through ``RunDir.commit_checkpoint``.
- ``EpochLoss``: the mean loss of every epoch in the log; a NaN/inf loss fails the run (never done).
- ``FaultInjector``: test-only faults at a training event, never at a time (``FACTSCALE_FAULT``).
- ``make_logger``: CSV (default), TensorBoard or W&B, appending across resumes.
- ``ProbeCallback``: the Lightning adapter of ``probing.Prober`` (a probe every K epochs, rows in the checkpoint).
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from factscale.errors import ConfigError
from factscale.fsio import write_atomic

FAULT_ENV = "FACTSCALE_FAULT"
FAULT_ACTIONS = ("kill", "raise", "usr2", "stall")


class RunProgressBar(TQDMProgressBar):
    """Lightning's bar without the logger's version number (``v_num``: a CSV folder index that says nothing
    about the run; the run's id is on every probe line)."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class AtomicLastCheckpoint(L.Callback):
    """``last.ckpt`` at every epoch end, written to a temp file and renamed (the previous one is kept as
    ``prev.ckpt``). Listed after the probe callback so this epoch's probe rows are inside the checkpoint."""

    def __init__(self, rundir, keep_every: int | None = None):
        """``keep_every``: also keep the checkpoint of every ``keep_every``-th epoch (``keep_checkpoints: all``)."""
        self.rundir = rundir
        self.keep_every = keep_every

    def on_train_epoch_end(self, trainer, pl_module):
        for logger in trainer.loggers:  # the log covers what the checkpoint covers, even if killed next
            logger.save()
        tmp = self.rundir.last_ckpt.with_name(".last.ckpt.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state; collective under DDP, rank 0 writes
        if trainer.is_global_zero:
            self.rundir.commit_checkpoint(tmp)
            self.rundir.note_progress()
            epoch = trainer.current_epoch + 1
            if self.keep_every and (epoch % self.keep_every == 0 or epoch == trainer.max_epochs):
                self.rundir.keep_epoch_checkpoint(epoch)


class EpochLoss(L.Callback):
    """Mean training loss per epoch, logged as ``train/epoch_loss`` before the epoch's checkpoint (so the
    log covers exactly what the checkpoint covers), and a guard: a NaN or infinite loss fails the run, it
    is never marked done. Accumulates on the device; one host sync per epoch."""

    def __init__(self):
        self.total = self.count = None

    def on_train_epoch_start(self, trainer, pl_module):
        self.total, self.count = torch.zeros((), device=pl_module.device), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.total += loss.detach().float()
        self.count += 1

    def on_train_epoch_end(self, trainer, pl_module):
        mean = float(self.total) / max(1, self.count)
        epoch = trainer.current_epoch + 1
        if not math.isfinite(mean):
            raise FloatingPointError(f"training loss is {mean} in epoch {epoch}: the run diverged; lower optim.lr "
                                     "or set optim.grad_clip")
        for logger in trainer.loggers:
            # "epoch" as Lightning writes it (0-based), so resumed logs trim consistently
            logger.log_metrics({"train/epoch_loss": mean, "epoch": epoch - 1}, step=trainer.global_step)


def parse_fault(text: str | None) -> tuple[str, int, int] | None:
    """``ACTION@EPOCH[:ATTEMPT]`` -> (action, epoch, attempt); attempt defaults to 1 (the first)."""
    if not text:
        return None
    try:
        action, rest = text.split("@", 1)
        epoch, _, attempt = rest.partition(":")
        parsed = action, int(epoch), int(attempt or 1)
    except ValueError:
        parsed = None
    if parsed is None or parsed[0] not in FAULT_ACTIONS or parsed[1] < 1:
        raise ConfigError(f"{FAULT_ENV}={text!r}: expected ACTION@EPOCH[:ATTEMPT] with ACTION in "
                          f"{list(FAULT_ACTIONS)}, e.g. kill@5")
    return parsed


class FaultInjector(L.Callback):
    """Test-only: inject a fault right after epoch ``epoch`` is checkpointed, on attempt ``attempt`` only.

    kill  - SIGKILL this process (a crash: nothing runs after it)
    raise - raise RuntimeError (a failing run)
    usr2  - send this process SIGUSR2, what SLURM sends on preemption or before a time limit; under
            submitit the handler checkpoints and requeues the job
    stall - stop making progress (sleep) until a signal ends the attempt: a run that cannot finish
            before a real time limit, whatever the machine's speed
    Listed last, so the fault comes after the epoch's probe rows and checkpoint are on disk.
    """

    def __init__(self, action: str, epoch: int, attempt: int, current_attempt: int):
        self.action, self.epoch = action, epoch
        self.armed = attempt == current_attempt

    def on_train_epoch_end(self, trainer, pl_module):
        if not self.armed or trainer.current_epoch + 1 != self.epoch:
            return
        self.armed = False
        inject_fault(self.action, self.epoch)


def inject_fault(action: str, epoch: int) -> None:
    """The fault itself (``FaultInjector``; a stack injects it after its epoch checkpoint too)."""
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise RuntimeError(f"injected fault ({FAULT_ENV}) at epoch {epoch}")
    elif action == "usr2":
        os.kill(os.getpid(), signal.SIGUSR2)
        signal.pause()  # the handler requeues and exits; nothing trains past the fault
    else:  # bounded, so a forgotten stalled process still ends by itself
        time.sleep(3600)
        raise RuntimeError(f"injected stall ({FAULT_ENV}) at epoch {epoch} was never interrupted")


def fault_callbacks(current_attempt: int) -> list:
    f = parse_fault(os.environ.get(FAULT_ENV))
    return [FaultInjector(*f, current_attempt=current_attempt)] if f else []


class _ResumedWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; on resume keep the rows of the epochs the
    checkpoint covers (those after it are trained again) and append."""

    keep_epochs_below: int | None = None

    def _check_log_dir_exists(self) -> None:
        p = Path(self.metrics_file_path)
        if not p.exists():
            return
        if self.keep_epochs_below is None:
            p.unlink()
            return
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("epoch") not in (None, "")
                    and int(float(r["epoch"])) < self.keep_epochs_below]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        write_atomic(p, buf.getvalue())  # a kill here leaves the old log, never half of it
        self.metrics_keys = sorted(fields)


class ResumableCSVLogger(CSVLogger):
    def __init__(self, save_dir: str, epochs_done: int | None):
        super().__init__(save_dir, name="logs", version=0)
        self._epochs_done = epochs_done

    @property
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer_cls = type("Writer", (_ResumedWriter,), {"keep_epochs_below": self._epochs_done})
            self._experiment = writer_cls(log_dir=self.log_dir)
        return self._experiment


LOGGERS = ("csv", "tensorboard", "wandb")
_LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_logger(kind: str) -> None:
    """Fail before a run directory exists if the chosen logger's package is not installed."""
    import importlib.util

    pkg = _LOGGER_PACKAGES.get(kind)
    if pkg and importlib.util.find_spec(pkg) is None and not (pkg == "tensorboard"
                                                              and importlib.util.find_spec("tensorboardX")):
        raise ConfigError(f"train.logger={kind} needs the {pkg} package; pip install {pkg} (or train.logger=csv)")


def make_logger(kind: str, rundir, epochs_done: int | None):
    """The training logger; every kind writes under the run directory and continues across resumes."""
    if kind == "csv":
        return ResumableCSVLogger(str(rundir.path), epochs_done)
    if kind == "tensorboard":
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            return TensorBoardLogger(str(rundir.path), name="logs", version=0)  # event files append
        except ModuleNotFoundError as e:
            raise ConfigError(f"train.logger=tensorboard needs the tensorboard package ({e}); "
                              "pip install tensorboard") from None
    if kind == "wandb":
        try:
            from lightning.pytorch.loggers import WandbLogger

            return WandbLogger(save_dir=str(rundir.path), id=rundir.id, name=rundir.id, resume="allow")
        except ModuleNotFoundError as e:
            raise ConfigError(f"train.logger=wandb needs the wandb package ({e}); pip install wandb") from None
    raise ConfigError(f"train.logger: {kind!r} is not allowed; allowed values: {list(LOGGERS)}")


def probe_and_record(prober, model, epoch: int, step: int, tokens: int, history_dir: Path | None) -> list[dict]:
    """Probe ``model`` after ``epoch``: the result rows, and each probed fact's result written to
    ``history_dir/epoch-<E>.parquet`` (atomic) so a run's fact history survives a kill without living in its
    checkpoints (None: not written)."""
    rows = prober.probe(model, epoch, step, tokens)
    if history_dir is not None:
        import polars as pl

        from factscale.fsio import write_parquet_atomic

        history_dir.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(pl.concat([t.select("fact_id", "split", "correct", "code_bits")
                                        for t in prober.last_tables.values()]).with_columns(
            epoch=pl.lit(epoch, dtype=pl.Int32), code_bits=pl.col("code_bits").cast(pl.Float32)),
            history_dir / f"epoch-{epoch}.parquet")
    return rows


class ProbeCallback(L.Callback):
    """Runs a ``probing.Prober`` every K epochs (and after the last); rows survive checkpoint/resume through
    the callback state."""

    def __init__(self, prober, every: int, history_dir: Path | None = None, report=None):
        """``history_dir``: where each probe's per-fact results go (``epoch-<E>.parquet``, atomic), so a run's
        fact history survives a kill without living in its checkpoints; None (DDP ranks but 0): not written."""
        self.prober = prober
        self.every = every
        self.history_dir = history_dir
        self.report = report  # (epoch, epochs, {split: MR}) after each probe, on rank 0: progress for status
        self.rows: list[dict] = []

    @property
    def last_tables(self):
        return self.prober.last_tables

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1  # epochs completed
        if epoch % self.every and epoch != trainer.max_epochs:
            return
        rows = probe_and_record(self.prober, pl_module.model, epoch, trainer.global_step,
                                int(pl_module.tokens_seen.item()), self.history_dir if trainer.is_global_zero else None)
        self.rows.extend(rows)
        for r in rows:
            if r["group_by"] == "all":
                pl_module.log(f"probe/{r['split']}_mr", r["mr"], on_epoch=True)
        if self.report is not None and trainer.is_global_zero:
            self.report(epoch, trainer.max_epochs, {r["split"]: r["mr"] for r in rows if r["group_by"] == "all"})

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = list(state.get("rows", []))
