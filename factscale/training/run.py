"""One run, end to end: ``run()``, the Trainer it builds and the checks made before anything is created.

``run(cfg)`` is everything one run does: claim the run directory, resume from ``last.ckpt`` if there is
one, train with probes every K epochs, save the model with ``save_pretrained`` and write the results
atomically. An exception leaves ``error.json`` (the run is failed, never done) and is re-raised.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import lightning as L
import polars as pl
import torch

from factscale.corpus.build import corpus_hash_of, load_corpus
from factscale.errors import ConfigError, CorpusError
from factscale.fsio import fix_mode
from factscale.probing.engine import Prober
from factscale.probing.measures import frequency_buckets, probe_sample
from factscale.provenance import git_sha
from factscale.training.callbacks import (
    FAULT_ENV,
    AtomicLastCheckpoint,
    EpochLoss,
    ProbeCallback,
    RunProgressBar,
    check_logger,
    fault_callbacks,
    make_logger,
    parse_fault,
)
from factscale.training.config import RunConfig
from factscale.training.data import FactDataModule, junk_pool, select_facts
from factscale.training.models import (
    count_instantiated,
    embedding_params,
    non_embedding_params,
    params_per_token,
    resolve_shape,
)
from factscale.training.module import FactLM
from factscale.training.rows import build_rows, summary_fields
from factscale.training.rundir import RunDir


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


# Lightning's console chatter that says nothing about this run (factscale prints a line per probe instead):
# the srun hint (submitit, not srun, launches SLURM jobs), availability banners, tips, a deprecation inside
# Lightning, the logging-interval hint for tiny epochs, and the progress bar's logger version (v_num).
_QUIET_WARNINGS = (r".*`srun` command is available.*", r".*isinstance\(treespec, LeafSpec\).*",
                   r".*smaller than the logging interval.*", r".*does not have many workers.*",
                   r".*`IterableDataset` has `__len__` defined.*")


@functools.cache  # once per process: warning filters would otherwise pile up, one set per run of a sweep job
def quiet_lightning() -> None:
    import logging
    import warnings

    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.pytorch.trainer.connectors.signal_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's one-shard bar


def make_trainer(cfg: RunConfig, logger, callbacks: list) -> L.Trainer:
    acc, prec = resolve_device(cfg)
    plugins = []
    if "SLURM_JOB_ID" in os.environ:
        # submitit owns requeue (checkpoint() + resubmit); Lightning must not grab the signal too
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    world = cfg.train.devices * cfg.train.num_nodes
    quiet_lightning()
    return L.Trainer(
        accelerator=acc, devices=cfg.train.devices, num_nodes=cfg.train.num_nodes,
        strategy="ddp" if world > 1 else "auto", precision=prec, max_epochs=cfg.train.epochs,
        gradient_clip_val=cfg.optim.grad_clip or None, reload_dataloaders_every_n_epochs=1,
        logger=logger, callbacks=[*callbacks, *([RunProgressBar()] if cfg.train.progress_bar else [])],
        plugins=plugins,
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


def probe_groups(cfg: RunConfig, facts: pl.DataFrame) -> list[str]:
    """The columns every probe breaks its rows down by: frequency bucket, ``probe.group_columns``, and
    ``injected`` when facts are injected mid-run."""
    return [c for c in ["freq_bucket", *cfg.probe.group_columns] if all(p in facts.columns for p in c.split("*"))] + (
        ["injected"] if cfg.train.inject_where is not None else [])


def validate(cfg: RunConfig, facts: pl.DataFrame) -> None:
    """Everything about a run that can be checked before its directory exists (ConfigError names the field)."""
    resolve_shape(cfg.model)
    resolve_device(cfg)
    columns = [("train.repeat_by", cfg.train.repeat_by), ("train.phase_column", cfg.train.phase_column),
               ("probe.freq_column", cfg.probe.freq_column), *(("probe.group_columns", c) for c in cfg.probe.group_columns)]
    for field, col in columns:  # a crossed group column (a*b) needs each of its parts; only probe groups cross
        parts = col.split("*") if col is not None and field == "probe.group_columns" else [col]
        if col is not None and any(p not in facts.columns for p in parts):
            raise ConfigError(f"{field}: column {col!r} is not in facts.parquet; available: {sorted(facts.columns)}")
    if cfg.train.seq_len > cfg.model.max_position:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} exceeds model.max_position={cfg.model.max_position} "
                          "(the longest position the model has); raise model.max_position or lower train.seq_len")
    train, _ = select_facts(facts, cfg)
    if train.height == 0:
        raise ConfigError(f"corpus.path {cfg.corpus.path}: no training facts")
    junk = junk_pool(facts, cfg)
    if cfg.corpus.max_facts is not None and train.height < cfg.corpus.max_facts:
        raise ConfigError(f"corpus.max_facts={cfg.corpus.max_facts} exceeds the {train.height} training facts of "
                          f"{cfg.corpus.path}{' where ' + cfg.corpus.where if cfg.corpus.where else ''}: the run "
                          "would be named for a cap it does not apply; lower it or build a larger corpus")
    longest = max(int(d["input_ids"].list.len().max()) for d in (train, junk) if d is not None)
    if longest > cfg.train.seq_len:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} is shorter than the longest fact or junk piece "
                          f"({longest} tokens); raise train.seq_len")
    check_logger(cfg.train.logger)
    parse_fault(os.environ.get(FAULT_ENV))


def with_bos(tok, domain_tag: bool = False):
    """The tokenizer as a run saves it: encoding a prompt prepends ``<bos>`` (and, for a ``train.domain_tag``
    run, ``<domain>``), as every fact was trained and probed, so ``AutoTokenizer.from_pretrained(run/model)`` +
    ``generate`` reproduce the probe. (The corpus tokenizer itself is left as built: its files enter the
    corpus hash.)"""
    from tokenizers.processors import TemplateProcessing

    from factscale.corpus.render import DOMAIN_TAG, DOMAIN_TAG_ID

    head = [(tok.bos_token, tok.bos_token_id)] + ([(DOMAIN_TAG, DOMAIN_TAG_ID)] if domain_tag else [])
    prefix = " ".join(t for t, _ in head)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{prefix} $A", pair=f"{prefix} $A $B", special_tokens=head)
    return tok


def used_token_ids(train: pl.DataFrame | np.ndarray) -> int:
    """Distinct token ids in the run's training text (a facts frame, or the packer's flat ids: useful facts,
    their tags and any junk pool): the embedding rows any training step touches."""
    if isinstance(train, np.ndarray):
        return int(np.unique(train).size)
    return int(train["input_ids"].explode().n_unique())


def active_params(cfg: RunConfig, train: pl.DataFrame, ids: np.ndarray | None = None) -> int:
    """Parameters that can hold what the run memorized: the non-embedding ones, plus the embedding rows of
    the token ids its training text uses (an untied head's rows for them too, and for GPT-2 the learned
    positions up to the longest fact). At toy scale most of a tokenizer's rows never appear in training, so
    total parameters understate capacity per parameter, while key tokens' rows do store part of the facts,
    so non-embedding parameters overstate it; this count sits between."""
    shape = resolve_shape(cfg.model)
    rows = used_token_ids(train if ids is None else ids) * (1 if cfg.model.tie_embeddings else 2)
    if cfg.model.arch == "gpt2":
        rows += int(train["input_ids"].list.len().max())
    return non_embedding_params(cfg.model.arch, shape) + rows * shape.hidden


COMPILE_CACHE = "_compile_cache"


def use_compile_cache(cfg: RunConfig) -> None:
    """``train.compile``'s on-disk cache (inductor's) at ``<runs_dir>/_compile_cache`` unless the user set
    ``TORCHINDUCTOR_CACHE_DIR``: a sweep's jobs of one shape, on any node of a cluster (the runs directory is
    shared), reuse each other's compiled graphs and a relaunch finds them, where inductor's default is a
    per-machine temporary directory. Inductor reads the variable at each cache access, and writes its default
    there when torch's compile modules load (importing Lightning does): that value counts as unset."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    now = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if now is None or os.path.abspath(now) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cfg.runs_dir).resolve() / COMPILE_CACHE)


def disk_needed_mb(cfg: RunConfig, vocab_size: int) -> int:
    """Disk a run needs, from its size: two full checkpoints (fp32 weights + AdamW's two moments = 12 bytes
    per parameter each: ``last`` and ``prev``), ``model/`` (4 bytes per parameter), a checkpoint being written
    (12 more) and 50 MiB for logs, results and per-fact tables. A fork checkpoint per cooldown branch comes on
    top for trunks."""
    shape = resolve_shape(cfg.model)
    total = non_embedding_params(cfg.model.arch, shape) + embedding_params(
        cfg.model.arch, shape, vocab_size, cfg.model.tie_embeddings, cfg.model.max_position)
    return 50 + (3 * 12 + 4) * total // 2**20


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

    Cooldown branches (``factscale.launch.branches``): ``init_from`` is a checkpoint to start from while the run has
    none of its own (its trunk's at the fork epoch), ``branch_of`` the trunk's id (recorded on every row),
    ``callbacks`` extra callbacks that run after the epoch's probe and before its checkpoint.
    """
    facts, manifest = load_corpus(cfg.corpus.path)
    validate(cfg, facts)
    rd = RunDir(cfg, manifest["corpus_hash"])
    if global_rank(cfg) != 0:  # DDP: rank 0 owns the run directory (lock, attempts, errors, results)
        rd.path.mkdir(parents=True, exist_ok=True)
        return _train(cfg, rd, facts, manifest, rd.attempts()["attempts"], init_from, branch_of, list(callbacks))
    rd.create(min_free_mb=disk_needed_mb(cfg, manifest["tokens"]["vocab_size"]))
    rd.hold_lock()
    t0 = time.time()
    try:
        if rd.results.exists():
            return {"run_id": rd.id, "state": "done", "skipped": True, "run_dir": str(rd.path)}
        attempt = rd.start_attempt()["attempts"]
        summary = _train(cfg, rd, facts, manifest, attempt, init_from, branch_of, list(callbacks))
        rd.end_attempt(time.time() - t0)
        return summary
    except BaseException as e:
        rd.end_attempt(time.time() - t0)  # interrupted attempts cost time too
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):  # preemption/Ctrl-C: resumable, not failed
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
    if cfg.train.compile:
        use_compile_cache(cfg)
    non_emb, total = count_instantiated(module.model)
    if non_emb != non_embedding_params(cfg.model.arch, resolve_shape(cfg.model)):  # the registry's count is reported
        raise RuntimeError(f"non-embedding parameters: the model has {non_emb}, the size registry counts "
                           f"{non_embedding_params(cfg.model.arch, resolve_shape(cfg.model))}: the count formula drifted")
    groups = probe_groups(cfg, facts)
    prober = Prober(probe_sets(cfg, dm), cfg.probe.batch_size, tok.pad_token_id, non_emb, groups,
                    train_facts=dm.train_facts, total_params=total, donors=dm.heldout_facts)
    ckpt, epochs_done = rd.resume_checkpoint(readonly=global_rank(cfg) != 0)
    rank0 = global_rank(cfg) == 0

    def report(epoch, epochs, mr):  # one line per probe in the run's log, then progress.json for `sweep status`
        print(f"[{rd.id}] epoch {epoch}/{epochs}: " + ", ".join(f"{s} MR {v:.3f}" for s, v in mr.items()), flush=True)
        rd.write_progress(epoch, epochs, mr, resumed_from=epochs_done or forked_at or 0)

    probe_cb = ProbeCallback(prober, cfg.probe.every_epochs, rd.history if rank0 else None, report if rank0 else None)
    forked_at = None
    if ckpt is None and init_from is not None:  # a branch with no checkpoint of its own: its trunk's
        ckpt, epochs_done = Path(init_from), None
        forked_at = int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1
        rd.note(f"started from {ckpt} (epoch {forked_at}) of trunk {branch_of}")
    keep_every = cfg.probe.every_epochs if cfg.train.keep_checkpoints == "all" else None
    callbacks = [EpochLoss(), probe_cb, *extra_callbacks, AtomicLastCheckpoint(rd, keep_every), *fault_callbacks(attempt)]
    trainer = make_trainer(cfg, make_logger(cfg.train.logger, rd, epochs_done or forked_at), callbacks)
    t0 = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    if trainer.current_epoch < cfg.train.epochs or trainer.interrupted:
        raise RuntimeError(f"training stopped at epoch {trainer.current_epoch} of {cfg.train.epochs}")
    if not trainer.is_global_zero:
        return {"run_id": rd.id, "state": "done", "rank": trainer.global_rank}

    meta = {"resumed_from_epoch": epochs_done, "attempts": attempt, "train_wall_s": time.time() - t0}
    if branch_of is not None:
        meta.update(branch_of=branch_of, fork_epoch=round(cfg.train.epochs * (1 - cfg.optim.decay_frac)))
    return write_run(cfg, rd, module.model, tok, dm, manifest, probe_cb.rows, probe_cb.last_tables, meta)


def write_run(cfg: RunConfig, rd: RunDir, model, tok, dm: FactDataModule, manifest: dict, probe_rows: list[dict],
              last_tables: dict | None, meta: dict) -> dict:
    """A trained run's outputs: ``model/`` (``save_pretrained``, the tokenizer adding ``<bos>``), its result
    rows (the probe rows with the run's metadata and config), the final per-fact table and the fact history;
    then the checkpoints ``train.keep_checkpoints`` does not keep. Shared by a standalone run and a stacked
    member (``training.stack``). Returns the run's summary."""
    model.save_pretrained(str(rd.model))
    with_bos(tok, cfg.train.domain_tag).save_pretrained(str(rd.model))
    fix_mode(rd.model)  # safetensors writes 0600 through a temp file
    acc, prec = resolve_device(cfg)
    non_emb, total = count_instantiated(model)
    per_token = params_per_token(cfg.model.arch, resolve_shape(cfg.model))
    meta = {
        "run_id": rd.id, "corpus_hash": manifest["corpus_hash"], "corpus_kind": manifest["source"]["kind"],
        "non_embedding_params": non_emb, "total_params": total, "vocab_size": len(tok),
        "params_per_token": per_token, "experts": resolve_shape(cfg.model).experts,
        "active_params": active_params(cfg, dm.train_facts, dm.flat), "used_token_ids": used_token_ids(dm.flat),
        "train_facts": dm.train_facts.height, "heldout_facts": dm.heldout_facts.height,
        "tokens_per_epoch": dm.tokens_per_epoch, "real_token_fraction": dm.real_fraction,
        "junk_pieces_per_epoch": dm.junk_per_epoch, "junk_exposures": dm.junk_exposures(),
        "git_sha": git_sha(), "device": torch.cuda.get_device_name(0) if acc == "gpu" else "cpu",
        "precision": prec, **meta,
    }
    # rows on this run's probe schedule only: a branch inherits its trunk's rows, and the trunk probed at
    # its own last epoch too, which a standalone run of the branch's length does not
    E, every = cfg.train.epochs, cfg.probe.every_epochs
    df = build_rows([r for r in probe_rows if r["epoch"] % every == 0 or r["epoch"] == E], cfg, meta)
    df = df.with_columns(bits_per_active_param=pl.col("capacity_bits") / pl.col("active_params"),
                         bits_per_param_per_token=pl.col("capacity_bits") / pl.col("params_per_token"))
    per_fact = None
    if last_tables:
        # correct_keyblind: also right after another key's prompt (the key-blind guess: chance, not memory)
        cols = ["fact_id", "split", "relation", "prompt", "value", "correct", "code_bits", "memorized_bits",
                "correct_keyblind"]
        per_fact = pl.concat([t.select([c for c in cols if c in t.columns]) for t in last_tables.values()],
                             how="diagonal_relaxed")
    rd.write_results(df, per_fact, history_epochs={r["epoch"] for r in df.select("epoch").unique().to_dicts()})
    rd.drop_checkpoints(cfg.train.keep_checkpoints)  # after the results: a crash here leaves a done run
    final = df.filter((pl.col("epoch") == df["epoch"].max()) & (pl.col("group_by") == "all"))
    return {"run_id": rd.id, "state": "done", "run_dir": str(rd.path),
            **{f"{r['split']}_mr": r["mr"] for r in final.iter_rows(named=True)},
            "capacity": final.filter(pl.col("split") == "train")["capacity"].sum(),
            **({"capacity_above_chance": final.filter(pl.col("split") == "train")["capacity_above_chance"].sum()}
               if "capacity_above_chance" in final.columns else {}),
            "non_embedding_params": non_emb, **summary_fields(df)}
