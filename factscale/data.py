"""Rendered facts -> packed fixed-length training sequences (a LightningDataModule).

Each epoch the training facts (each repeated by its per-fact frequency, if asked) are shuffled with a
seed derived from (run seed, epoch) and packed greedily into ``seq_len`` windows; a fact is never split.
Because packing depends only on (seed, epoch), a run resumed from a checkpoint sees exactly the batches
it would have seen. Padding sits at the end of a window and is masked out of the loss; causal attention
means it cannot affect real tokens, so no attention mask is needed (keeps SDPA on its fast path).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

import lightning as L

from factscale.config import ConfigError, RunConfig

IGNORE = -100


def select_facts(facts: pl.DataFrame, cfg: RunConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training facts, held-out facts) as this run sees them: corpus-size and held-out caps applied."""
    train = facts.filter(pl.col("split") == "train").sort("order")
    if cfg.corpus.max_facts is not None:
        train = train.head(cfg.corpus.max_facts)
    heldout = facts.filter(pl.col("split") == "heldout").sort("order")
    if cfg.corpus.heldout_max is not None:
        heldout = heldout.head(cfg.corpus.heldout_max)
    return train, heldout


def repeats_of(train: pl.DataFrame, column: str | None) -> np.ndarray:
    if column is None:
        return np.ones(train.height, dtype=np.int64)
    if column not in train.columns:
        raise ConfigError(f"train.repeat_by: column {column!r} is not in facts.parquet; "
                          f"available: {sorted(train.columns)}")
    r = train[column].fill_null(1).cast(pl.Int64).to_numpy()
    if (r < 0).any():
        raise ConfigError(f"train.repeat_by: column {column!r} has negative counts")
    return r


def pack(seqs: list[np.ndarray], value_starts: np.ndarray, order: np.ndarray, seq_len: int, pad_id: int,
         value_only: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Greedy packing of facts (in ``order``) into windows. Returns (input_ids, labels, real tokens)."""
    rows_ids, rows_lab = [], []
    cur_ids: list[np.ndarray] = []
    cur_lab: list[np.ndarray] = []
    used = 0

    def flush():
        ids = np.full(seq_len, pad_id, dtype=np.int64)
        lab = np.full(seq_len, IGNORE, dtype=np.int64)
        if cur_ids:
            a = np.concatenate(cur_ids)
            ids[: len(a)] = a
            lab[: len(a)] = np.concatenate(cur_lab)
        rows_ids.append(ids)
        rows_lab.append(lab)

    real = 0
    for i in order:
        s = seqs[i]
        if used + len(s) > seq_len:
            flush()
            cur_ids, cur_lab, used = [], [], 0
        cur_ids.append(s)
        if value_only:
            lab = np.full(len(s), IGNORE, dtype=np.int64)
            lab[value_starts[i]:] = s[value_starts[i]:]
        else:
            lab = s.copy()
            lab[0] = IGNORE  # <bos> is not a target: which fact comes next is noise, not a fact
        cur_lab.append(lab)
        used += len(s)
        real += len(s)
    if cur_ids:
        flush()
    return torch.from_numpy(np.stack(rows_ids)), torch.from_numpy(np.stack(rows_lab)), real


class FactDataModule(L.LightningDataModule):
    def __init__(self, cfg: RunConfig, facts: pl.DataFrame, pad_id: int):
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.train_facts, self.heldout_facts = select_facts(facts, cfg)
        if self.train_facts.height == 0:
            raise ConfigError(f"corpus.path {cfg.corpus.path}: no training facts")
        self.seqs = [np.asarray(x, dtype=np.int64) for x in self.train_facts["input_ids"].to_list()]
        self.value_starts = self.train_facts["value_start"].to_numpy()
        longest = max(len(s) for s in self.seqs)
        if longest > cfg.train.seq_len:
            raise ConfigError(f"train.seq_len={cfg.train.seq_len} is shorter than the longest fact "
                              f"({longest} tokens); raise train.seq_len")
        self.repeats = repeats_of(self.train_facts, cfg.train.repeat_by)
        self.index = np.repeat(np.arange(len(self.seqs)), self.repeats)
        self.real_fraction: float | None = None
        self.tokens_per_epoch = int(sum(len(s) * r for s, r in zip(self.seqs, self.repeats)))

    def epoch_facts(self, epoch: int) -> np.ndarray:
        """Indices of the facts trained in this epoch (all of them, unless phases are in play)."""
        col = self.cfg.train.phase_column
        if col is None:
            return self.index
        if col not in self.train_facts.columns:
            raise ConfigError(f"train.phase_column: column {col!r} is not in facts.parquet")
        phase = self.train_facts[col].cast(pl.String).to_numpy()
        names = sorted(set(phase))
        n, E = len(names), self.cfg.train.epochs
        if self.cfg.train.order == "blocked":
            keep = phase == names[min(n - 1, epoch * n // E)]
        else:  # a fresh random partition of all facts into n slots every n epochs
            perm = np.random.default_rng([self.cfg.seed, epoch // n, 7]).permutation(len(phase))
            keep = np.zeros(len(phase), dtype=bool)
            keep[perm[epoch % n::n]] = True
        return self.index[keep[self.index]]

    def epoch_tensors(self, epoch: int):
        rng = np.random.default_rng([self.cfg.seed, epoch])
        facts = self.epoch_facts(epoch)
        order = facts[rng.permutation(len(facts))]
        ids, labels, real = pack(self.seqs, self.value_starts, order, self.cfg.train.seq_len, self.pad_id,
                                 self.cfg.train.loss_on == "value")
        self.real_fraction = real / ids.numel()
        return ids, labels

    def train_dataloader(self):
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        ids, labels = self.epoch_tensors(epoch)
        # order is already shuffled by epoch_tensors; a fixed order here keeps resume exact. Whole batches
        # are sliced out at once (a batch sampler, no per-row collate): tiny models are overhead-bound.
        batches = BatchSampler(SequentialSampler(range(len(ids))), self.cfg.train.batch_size, drop_last=False)
        return DataLoader(TensorDataset(ids, labels), sampler=batches, batch_size=None)
