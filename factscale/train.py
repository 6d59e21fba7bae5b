"""Training core: a LightningModule over a from-scratch ``transformers`` decoder, and ``run()``.

``run(cfg)`` is everything one run does: claim the run directory, resume from ``last.ckpt`` if there is
one, train with probes every K epochs, save the model with ``save_pretrained`` and write the results
atomically. An exception leaves ``error.json`` (the run is failed, never done) and is re-raised.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import polars as pl
import torch

import lightning as L

from factscale.callbacks import (FAULT_ENV, AtomicLastCheckpoint, EpochLoss, check_logger, fault_callbacks,
                                 make_logger, parse_fault)
from factscale.config import ConfigError, RunConfig
from factscale.corpus.build import CorpusError, corpus_hash_of, load_corpus
from factscale.data import FactDataModule, select_facts
from factscale.fsio import fix_mode
from factscale.models import build_model, count_instantiated, non_embedding_params, resolve_shape
from factscale.probes import ProbeCallback, frequency_buckets, probe_sample
from factscale.results import build_rows, git_sha
from factscale.rundir import RunDir
from factscale.vocab import summary_fields


class RunBusy(RuntimeError):
    """Another process holds this run's lock (a concurrent launch); this one does nothing."""


def epoch_progress(trainer):
    """Training progress in epochs when the scheduler steps after a batch: epoch + batches done / batches
    in this epoch. Packing makes the number of steps vary by a step or so between epochs, so only this, not
    a step count, puts a decay's start exactly on an epoch boundary."""
    def progress(step: int) -> float:
        done = trainer.fit_loop.epoch_loop.batch_idx + 1  # batch_idx: index within the epoch (-1 before any)
        return trainer.current_epoch + done / max(1, trainer.num_training_batches)

    return progress


def lr_lambda(cfg, total_steps: int, trainer=None):
    """LR multiplier per optimizer step. ``wsd`` decays over the last ``decay_frac`` of the epochs by training
    progress (from ``trainer``; without one, by steps of ``total_steps``), so a run of E epochs keeps the
    stable rate through epoch E(1 - decay_frac) exactly: a cooldown branch forked there from a constant-rate
    trunk with the same warmup equals this run (factscale.branches)."""
    o = cfg.optim
    if o.warmup_steps is not None:
        warm = o.warmup_steps
    else:
        warm = max(1, math.ceil(o.warmup_frac * total_steps)) if o.warmup_frac > 0 else 0
    epochs = cfg.train.epochs
    progress = epoch_progress(trainer) if trainer is not None else (lambda step: step * epochs / max(1, total_steps))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "cosine":
            p = min(1.0, (step - warm) / max(1, total_steps - warm))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        decay_start = epochs * (1 - o.decay_frac)  # wsd: warmup, stable, linear decay (in epochs)
        e = progress(step)
        if e < decay_start:
            return 1.0
        p = min(1.0, (e - decay_start) / max(1e-12, epochs - decay_start))
        return 1.0 - (1 - o.min_lr_ratio) * p

    return f


def fact_positions(ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Each token's position within its fact: 0 at every ``<bos>`` (each fact's first token, and only there:
    checked by the data module), +1 after it. Padding continues the window's last fact; it is never scored
    and, attending causally, never seen by a real token."""
    t = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    start = torch.where(ids == bos_id, t, torch.zeros_like(t)).cummax(dim=1).values
    return t - start


def fact_isolation(ids: torch.Tensor, bos_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(position_ids, SDPA attention mask) that make every fact of a packed window attend only to itself.

    The mask is the block-diagonal causal one, ``(batch, 1, seq, seq)`` booleans (True = attend), that
    transformers builds itself for SDPA from restarting ``position_ids`` (masking_utils:
    ``find_packed_sequence_indices`` and a chain of mask functions): ``None`` when no window holds more than
    one fact (plain causal attention, SDPA's mask-free kernels), else the mask. A 4D mask is used as given,
    and two tensor ops here take ~0.16 ms per 32 x 64 batch instead of ~0.52 ms on this CPU
    (benchmarks/bench_train.py prints both). Boolean masks are SDPA's convention only: eager attention
    would add them to the scores (FactLM.batch_loss passes the mask to SDPA models only). RoPE / GPT-2's
    ``wpe`` see the positions the fact would have alone. The tests prove the mask equal to transformers'
    own and the logits equal to those of each fact run alone, for every architecture.
    """
    fact = (ids == bos_id).cumsum(dim=1)  # which fact of its window each token belongs to
    if not bool((fact[:, -1] != fact[:, 0]).any()):  # one fact per window: causal (as transformers decides)
        return fact_positions(ids, bos_id), None
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).tril_()
    return fact_positions(ids, bos_id), (fact[:, None, :, None] == fact[:, None, None, :]) & causal


def scored_loss(model, ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The causal-LM loss with the output head computed only where a label is scored.

    Equal to ``model(input_ids=ids, labels=labels).loss`` (mean cross-entropy over labels != -100,
    shifted by one; proven in the tests), but under ``loss_on: value`` only ~1/4 of the positions are
    scored, and for small models the vocabulary-wide head is most of the step's work.
    """
    hidden = model.base_model(input_ids=ids, position_ids=position_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    rows, cols = (targets != -100).nonzero(as_tuple=True)  # the state at t predicts the token at t + 1
    logits = model.get_output_embeddings()(hidden[rows, cols])
    return torch.nn.functional.cross_entropy(logits.float(), targets[rows, cols])


class FactLM(L.LightningModule):
    def __init__(self, cfg: RunConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
        super().__init__()
        self.cfg = cfg
        self.model = build_model(cfg.model, vocab_size, bos_id, eos_id, pad_id)
        # real (non-pad) tokens trained on; a buffer so it is saved in and restored from checkpoints
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long))

    def configure_model(self):
        if self.cfg.train.compile and not getattr(self, "_compiled", False):
            # in place (nn.Module.compile): parameter names, checkpoints and save_pretrained are unchanged
            self.model.base_model.compile()
            self._compiled = True

    def batch_loss(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one packed batch, as this run's attention and loss_on say."""
        pos = mask = None
        if self.cfg.train.attention == "isolated":
            pos, mask = fact_isolation(ids, self.model.config.bos_token_id)
            if self.model.config._attn_implementation != "sdpa":
                mask = None  # a boolean mask is SDPA's convention; others build theirs from the positions
        if self.cfg.train.loss_on == "value":
            return scored_loss(self.model, ids, labels, pos, mask)
        # nearly every position is scored: the plain full-logits path (no data-dependent shapes)
        return self.model(input_ids=ids, labels=labels, position_ids=pos, attention_mask=mask, use_cache=False).loss

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        loss = self.batch_loss(ids, labels)
        self.tokens_seen += (ids != self.model.config.pad_token_id).sum()
        # only on the steps the logger writes (a self.log call costs ~2 ms, a tiny model's step ~15 ms);
        # the epoch mean is logged by callbacks.EpochLoss
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning's default clips tensor by tensor on CPU; foreach is one call (same norm, same result).
        # Gradients are already unscaled here under 16-mixed.
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), gradient_clip_val, foreach=True)
        elif gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer(self, fused: bool = True) -> torch.optim.AdamW:
        """AdamW as configured; weight decay on matrices only (not on norms and biases)."""
        o = self.cfg.optim
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
            # one kernel for all parameters instead of a Python loop of small ones (CPU and CUDA)
            fused=fused and self.device.type in ("cuda", "cpu"),
        )

    def configure_optimizers(self):
        opt = self.optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg, total, self.trainer))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def resolve_device(cfg: RunConfig) -> tuple[str, str]:
    acc = cfg.train.accelerator
    if acc == "auto":
        acc = "gpu" if torch.cuda.is_available() else "cpu"
    if acc == "gpu" and not torch.cuda.is_available():
        raise ConfigError("train.accelerator=gpu but no CUDA device is visible")
    prec = cfg.train.precision
    if prec == "auto":
        prec = "bf16-mixed" if acc == "gpu" else "32-true"
    return acc, prec


def make_trainer(cfg: RunConfig, logger, callbacks: list) -> L.Trainer:
    acc, prec = resolve_device(cfg)
    plugins = []
    if "SLURM_JOB_ID" in os.environ:
        # submitit owns requeue (checkpoint() + resubmit); Lightning must not grab the signal too
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    world = cfg.train.devices * cfg.train.num_nodes
    return L.Trainer(
        accelerator=acc, devices=cfg.train.devices, num_nodes=cfg.train.num_nodes,
        strategy="ddp" if world > 1 else "auto", precision=prec, max_epochs=cfg.train.epochs,
        gradient_clip_val=cfg.optim.grad_clip or None, reload_dataloaders_every_n_epochs=1,
        logger=logger, callbacks=callbacks, plugins=plugins,
        enable_checkpointing=False, enable_progress_bar=cfg.train.progress_bar, enable_model_summary=False,
        log_every_n_steps=cfg.train.log_every_n_steps, num_sanity_val_steps=0,
    )


def probe_sets(cfg: RunConfig, dm: FactDataModule) -> dict[str, pl.DataFrame]:
    sets = {}
    if "train" in cfg.probe.splits:
        sets["train"] = probe_sample(dm.train_facts, cfg.probe.max_train_facts)
    if "heldout" in cfg.probe.splits:
        sets["heldout"] = dm.heldout_facts
    return sets


def validate(cfg: RunConfig, facts: pl.DataFrame) -> None:
    """Everything about a run that can be checked before its directory exists (ConfigError names the field)."""
    resolve_shape(cfg.model)
    resolve_device(cfg)
    columns = [("train.repeat_by", cfg.train.repeat_by), ("train.phase_column", cfg.train.phase_column),
               ("probe.freq_column", cfg.probe.freq_column), *(("probe.group_columns", c) for c in cfg.probe.group_columns)]
    for field, col in columns:
        if col is not None and col not in facts.columns:
            raise ConfigError(f"{field}: column {col!r} is not in facts.parquet; available: {sorted(facts.columns)}")
    train, _ = select_facts(facts, cfg)
    if train.height == 0:
        raise ConfigError(f"corpus.path {cfg.corpus.path}: no training facts")
    longest = int(train["input_ids"].list.len().max())
    if longest > cfg.train.seq_len:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} is shorter than the longest fact ({longest} tokens); "
                          "raise train.seq_len")
    check_logger(cfg.train.logger)
    parse_fault(os.environ.get(FAULT_ENV))


def global_rank(cfg: RunConfig) -> int:
    """This process's rank before Lightning starts: SLURM tasks carry SLURM_PROCID, and Lightning's local DDP
    launcher re-runs the command in children with LOCAL_RANK / NODE_RANK set."""
    if cfg.train.devices * cfg.train.num_nodes == 1:
        return 0
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ["SLURM_PROCID"])
    return int(os.environ.get("NODE_RANK", 0)) * cfg.train.devices + int(os.environ.get("LOCAL_RANK", 0))


def run(cfg: RunConfig, init_from: str | Path | None = None, branch_of: str | None = None,
        callbacks: tuple = ()) -> dict:
    """Train one run to completion (resuming if possible) and write its results. Returns a summary.

    Bad configs fail before anything is created; an attempt that raises leaves ``error.json`` (failed, never
    done); a process killed mid-run resumes from its last good checkpoint when run again.

    Cooldown branches (``factscale.branches``): ``init_from`` is a checkpoint to start from while the run has
    none of its own (its trunk's at the fork epoch), ``branch_of`` the trunk's id (recorded on every row),
    ``callbacks`` extra callbacks that run after the epoch's probe and before its checkpoint.
    """
    facts, manifest = load_corpus(cfg.corpus.path)
    validate(cfg, facts)
    rd = RunDir(cfg, manifest["corpus_hash"])
    if global_rank(cfg) != 0:  # DDP: rank 0 owns the run directory (lock, attempts, errors, results)
        rd.path.mkdir(parents=True, exist_ok=True)
        return _train(cfg, rd, facts, manifest, rd.attempts()["attempts"], init_from, branch_of, list(callbacks))
    rd.create()
    for _ in range(50):  # a `status` probe holds the lock for microseconds: not a reason to give up
        if rd.lock.acquire():
            break
        time.sleep(0.1)
    else:
        raise RunBusy(f"run {rd.id} is already running in another process (lock {rd.lock.path})")
    t0 = time.time()
    try:
        if rd.results.exists():
            return {"run_id": rd.id, "state": "done", "skipped": True, "run_dir": str(rd.path)}
        attempt = rd.start_attempt()["attempts"]
        summary = _train(cfg, rd, facts, manifest, attempt, init_from, branch_of, list(callbacks))
        rd.end_attempt(time.time() - t0)
        return summary
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):  # preemption/Ctrl-C: resumable, not failed
            rd.end_attempt(time.time() - t0)
            rd.write_error(e)
        raise
    finally:
        rd.lock.release()


def _train(cfg: RunConfig, rd: RunDir, facts: pl.DataFrame, manifest: dict, attempt: int, init_from=None,
           branch_of=None, extra_callbacks=()) -> dict:
    from transformers import AutoTokenizer

    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tok = AutoTokenizer.from_pretrained(str(Path(cfg.corpus.path) / "tokenizer"))
    if corpus_hash_of(cfg.corpus.path) != manifest["corpus_hash"]:  # rebuilt between reading facts and tokenizer
        raise CorpusError(f"corpus {cfg.corpus.path} was rebuilt while this run started; launch it again")
    if cfg.probe.freq_column and cfg.probe.freq_column in facts.columns:
        facts = facts.with_columns(frequency_buckets(facts[cfg.probe.freq_column]))
    dm = FactDataModule(cfg, facts, tok.pad_token_id)
    module = FactLM(cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    non_emb, total = count_instantiated(module.model)
    assert non_emb == non_embedding_params(cfg.model.arch, resolve_shape(cfg.model)), "param count drifted"
    groups = [c for c in ["freq_bucket", *cfg.probe.group_columns] if c in facts.columns]
    probe_cb = ProbeCallback(probe_sets(cfg, dm), cfg.probe.every_epochs, cfg.probe.batch_size,
                             tok.pad_token_id, non_emb, groups, train_facts=dm.train_facts, total_params=total)
    ckpt, epochs_done = rd.resume_checkpoint(readonly=global_rank(cfg) != 0)
    forked_at = None
    if ckpt is None and init_from is not None:  # a branch with no checkpoint of its own: its trunk's
        ckpt, epochs_done = Path(init_from), None
        forked_at = int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1
        rd.note(f"started from {ckpt} (epoch {forked_at}) of trunk {branch_of}")
    callbacks = [EpochLoss(), probe_cb, *extra_callbacks, AtomicLastCheckpoint(rd), *fault_callbacks(attempt)]
    trainer = make_trainer(cfg, make_logger(cfg.train.logger, rd, epochs_done or forked_at), callbacks)
    t0 = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    if trainer.current_epoch < cfg.train.epochs or trainer.interrupted:
        raise RuntimeError(f"training stopped at epoch {trainer.current_epoch} of {cfg.train.epochs}")
    if not trainer.is_global_zero:
        return {"run_id": rd.id, "state": "done", "rank": trainer.global_rank}

    module.model.save_pretrained(str(rd.model))
    tok.save_pretrained(str(rd.model))
    fix_mode(rd.model)  # safetensors writes 0600 through a temp file
    acc, prec = resolve_device(cfg)
    meta = {
        "run_id": rd.id, "corpus_hash": manifest["corpus_hash"], "corpus_kind": manifest["source"]["kind"],
        "non_embedding_params": non_emb, "total_params": total, "vocab_size": len(tok),
        "train_facts": dm.train_facts.height, "heldout_facts": dm.heldout_facts.height,
        "tokens_per_epoch": dm.tokens_per_epoch, "real_token_fraction": dm.real_fraction,
        "git_sha": git_sha(), "device": torch.cuda.get_device_name(0) if acc == "gpu" else "cpu",
        "precision": prec, "train_wall_s": time.time() - t0, "resumed_from_epoch": epochs_done,
        "attempts": attempt,
    }
    if branch_of is not None:
        meta.update(branch_of=branch_of, fork_epoch=round(cfg.train.epochs * (1 - cfg.optim.decay_frac)))
    # rows on this run's probe schedule only: a branch inherits its trunk's rows, and the trunk probed at
    # its own last epoch too, which a standalone run of the branch's length does not
    E, every = cfg.train.epochs, cfg.probe.every_epochs
    df = build_rows([r for r in probe_cb.rows if r["epoch"] % every == 0 or r["epoch"] == E], cfg, meta)
    per_fact = None
    if probe_cb.last_tables:
        per_fact = pl.concat([t.select("fact_id", "split", "relation", "correct", "code_bits", "memorized_bits")
                              for t in probe_cb.last_tables.values()])
    rd.write_results(df, per_fact)
    final = df.filter((pl.col("epoch") == df["epoch"].max()) & (pl.col("group_by") == "all"))
    return {"run_id": rd.id, "state": "done", "run_dir": str(rd.path),
            **{f"{r['split']}_mr": r["mr"] for r in final.iter_rows(named=True)},
            "capacity": final.filter(pl.col("split") == "train")["capacity"].sum(),
            "non_embedding_params": non_emb, **summary_fields(df)}
