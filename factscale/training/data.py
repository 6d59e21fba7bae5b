"""Rendered facts -> packed fixed-length training sequences (a LightningDataModule).

Each epoch the training facts (each repeated by its per-fact frequency, if asked) are shuffled with a
seed derived from (run seed, epoch) and packed greedily into ``seq_len`` windows; a fact is never split.
Because packing depends only on (seed, epoch), a run resumed from a checkpoint sees exactly the batches
it would have seen. Padding sits at the end of a window and is masked out of the loss; causal attention
means it cannot affect real tokens, so no padding mask is needed. Whether facts in a window see each other
is ``train.attention`` (train.fact_positions): the windows are the same either way.

Junk mixing (``train.junk_ratio``): each epoch also packs pieces of the corpus' junk pool, drawn by cycling
through seeded permutations of the pool, so an epoch's junk is again a function of (seed, epoch) only.
"""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from factscale.corpus.render import DOMAIN_TAG_ID, flat_tokens
from factscale.configio import parse_where
from factscale.errors import ConfigError
from factscale.training.config import RunConfig

IGNORE = -100


def select_facts(facts: pl.DataFrame, cfg: RunConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training facts, held-out facts) as this run sees them: ``corpus.where``, then the corpus-size and
    held-out caps applied."""
    where_col = (cfg.corpus.where_filter() or ("",))[0]
    facts = with_crossed(facts, [c for c in cfg.probe.group_columns if CROSS in c], "probe.group_columns")
    facts = with_crossed(facts, [where_col] if CROSS in where_col else [], "corpus.where")
    if (w := cfg.corpus.where_filter()) is not None:
        col, values = w
        if col not in facts.columns:
            raise ConfigError(f"corpus.where: column {col!r} is not in facts.parquet; available: {sorted(facts.columns)}")
        text = pl.col(col).cast(pl.String)
        present = sorted(facts[col].cast(pl.String).drop_nulls().unique().to_list())
        if not set(values) & set(present):
            raise ConfigError(f"corpus.where: no fact has {col} in {values}; values there: {present[:20]}")
        facts = facts.filter(text.is_in(values))
    train = facts.filter(pl.col("split") == "train").sort("order")
    if cfg.corpus.max_facts is not None:
        train = train.head(cfg.corpus.max_facts)
    heldout = facts.filter(pl.col("split") == "heldout").sort("order")
    if cfg.corpus.heldout_max is not None:
        heldout = heldout.head(cfg.corpus.heldout_max)
    if cfg.train.domain_tag:
        train, heldout = with_domain_tag(train), with_domain_tag(heldout)
    if cfg.train.inject_where is not None:
        train, heldout = _mark_injected(train, cfg), heldout.with_columns(injected=pl.lit("no"))
    return train, heldout


def _mark_injected(train: pl.DataFrame, cfg: RunConfig) -> pl.DataFrame:
    """The ``injected`` column of the run's training facts (``train.inject_where``): of the selected facts,
    alternate ones in the corpus' seeded order are ``yes`` (trained in the injection epochs only) and
    ``control`` (never trained: the same kind of facts, keys as familiar, the baseline forgetting is measured
    against); every other fact ``no``. The halves depend on the corpus only, so seeds share them."""
    col, values = parse_where(cfg.train.inject_where)
    if col not in train.columns:
        raise ConfigError(f"train.inject_where: column {col!r} is not in facts.parquet; available: "
                          f"{sorted(train.columns)}")
    hit = train[col].cast(pl.String).is_in(values)
    if not 1 < int(hit.sum()) < train.height:
        raise ConfigError(f"train.inject_where={cfg.train.inject_where}: selects {int(hit.sum())} of the run's "
                          f"{train.height} training facts; it must select some (two or more), not all")
    rank = pl.col("order").rank("ordinal").over(pl.lit(hit))  # train is sorted by order: alternate within the hit
    return train.with_columns(injected=pl.when(~hit).then(pl.lit("no")).when(rank % 2 == 1).then(pl.lit("yes"))
                              .otherwise(pl.lit("control")))


CROSS = "*"  # "freq_level*phase": a crossed column, each fact's values of the parts joined by "*" ("x1*p1")


def with_crossed(facts: pl.DataFrame, names: list[str], field: str) -> pl.DataFrame:
    """Add the crossed columns ``names`` (``a*b``) that ``probe.group_columns`` or ``corpus.where`` use."""
    for name in names:
        parts = name.split(CROSS)
        missing = [p for p in parts if p not in facts.columns]
        if missing:
            raise ConfigError(f"{field}: {name!r}: column(s) {missing} not in facts.parquet; available: "
                              f"{sorted(facts.columns)}")
        facts = facts.with_columns(pl.concat_str([pl.col(p).cast(pl.String) for p in parts], separator=CROSS).alias(name))
    return facts


def junk_pool(facts: pl.DataFrame, cfg: RunConfig) -> pl.DataFrame | None:
    """The corpus' junk pieces this run mixes in (``train.junk_ratio``), or None; checks that a junk ratio or
    a domain tag has a junk corpus under it."""
    if not (cfg.train.junk_ratio or cfg.train.domain_tag):
        return None
    pool = facts.filter(pl.col("split") == "junk").sort("fact_id")
    if pool.height == 0:
        field = "train.junk_ratio" if cfg.train.junk_ratio else "train.domain_tag"
        raise ConfigError(f"{field}: corpus {cfg.corpus.path} has no junk pool (nor a <domain> token); build one "
                          "with `factscale corpus build ... --variant junk:kind=random,n=N` (or kind=facts)")
    return pool if cfg.train.junk_ratio else None


def with_domain_tag(df: pl.DataFrame) -> pl.DataFrame:
    """``<bos> <domain> text <eos>``: the tag after ``<bos>``, so the value starts one token later."""
    return df.with_columns(
        input_ids=pl.concat_list(pl.col("input_ids").list.head(1), pl.lit(DOMAIN_TAG_ID, dtype=pl.Int32),
                                 pl.col("input_ids").list.slice(1)),
        value_start=pl.col("value_start") + 1)


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


class Packer:
    """Greedy packing of facts into ``seq_len`` windows, vectorized, into buffers reused across epochs.

    Same semantics as the per-fact loop ``factscale.testing.pack_reference`` (proven equal in the tests):
    facts are taken in ``order``; a fact that does not fit in the current window starts a new one; a fact
    is never split. Window boundaries come from one ``searchsorted`` over the cumulative lengths (the
    window starting at fact p ends before the first fact whose cumulative end passes start(p) + seq_len)
    and a walk along those jumps (one Python step per *window*, not per fact). The tokens are gathered
    into one stream in training order, and each window is then a contiguous slice of that stream: one
    row gather (``unfold`` + ``index_select``) and a masked fill of the padding.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray, value_starts: np.ndarray, seq_len: int,
                 pad_id: int, value_only: bool, pin_memory: bool = False):
        self.offsets = offsets
        self.lengths = np.diff(offsets)
        self.seq_len, self.pad_id, self.pin_memory = seq_len, pad_id, pin_memory
        # per-token labels, once: the packed labels of every epoch are a gather of these
        lab = flat.copy()  # int32 like the ids (half the memory of int64); widened when written to a batch
        if value_only:  # tokens [start, start + value_start) of each fact: a +1/-1 difference array, summed
            d = np.zeros(len(flat) + 1, dtype=np.int8)
            d[offsets[:-1]] = 1
            np.add.at(d, offsets[:-1] + np.asarray(value_starts, dtype=np.int64), -1)
            np.putmask(lab, np.cumsum(d[:-1], dtype=np.int8).view(bool), IGNORE)
        else:
            lab[offsets[:-1]] = IGNORE  # <bos> is not a target: which fact comes next is noise, not a fact
        self.flat_ids = torch.from_numpy(flat)
        self.flat_labels = torch.from_numpy(lab)
        self._src = torch.empty(0, dtype=torch.long)  # scratch, reused: source index of each stream token
        self._stream = torch.empty(0, dtype=torch.int32)  # scratch: the epoch's tokens in training order
        self._rows = torch.empty(0, dtype=torch.int32)  # scratch: windows before widening to int64
        self._ids = self._lab = None

    def _buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._ids is None or self._ids.shape[0] < rows:
            cap = int(rows * 1.05) + 1  # a little slack: the row count varies a little with the shuffle
            self._ids = torch.empty((cap, self.seq_len), dtype=torch.long, pin_memory=self.pin_memory)
            self._lab = torch.empty((cap, self.seq_len), dtype=torch.long, pin_memory=self.pin_memory)
        elif self.pin_memory:
            # an asynchronous host->device copy of the last epoch may still read these pages
            torch.cuda.current_stream().synchronize()
        return self._ids[:rows], self._lab[:rows]

    def pack(self, order: np.ndarray, reuse: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(input_ids, labels, real tokens) for facts in ``order``. With ``reuse`` the tensors are views
        of buffers that the next call overwrites; without, they are fresh."""
        L = self.lengths[order]
        cs = np.cumsum(L)
        first = cs - L  # token offset of each fact in the epoch stream
        nxt = np.searchsorted(cs, first + self.seq_len, side="right").tolist()
        n, p, starts = len(L), 0, []
        while p < n:
            starts.append(p)
            p = nxt[p]
        total, rows = int(cs[-1]), len(starts)
        if reuse:
            ids, lab = self._buffers(rows)
        else:
            ids = torch.empty((rows, self.seq_len), dtype=torch.long)
            lab = torch.empty((rows, self.seq_len), dtype=torch.long)
        if self._src.numel() < total:
            self._src = torch.empty(int(1.05 * total), dtype=torch.long)
            self._stream = torch.empty(int(1.05 * total) + self.seq_len, dtype=torch.int32)
        if self._rows.numel() < rows * self.seq_len:
            self._rows = torch.empty(int(1.05 * rows) * self.seq_len + self.seq_len, dtype=torch.int32)
        # source index of every token of the stream: +1 within a fact, a jump at each fact's first token
        src = self._src[:total]
        step = src.numpy()
        base = self.offsets[:-1][order]
        step.fill(1)
        step[first[1:]] = base[1:] - (base[:-1] + L[:-1] - 1)
        step[0] = base[0]
        np.cumsum(step, out=step)
        stream = self._stream[:total + self.seq_len]
        tmp = self._rows[:rows * self.seq_len].view(rows, self.seq_len)
        win_first = torch.from_numpy(first[starts])
        used = torch.from_numpy(np.diff(first[starts], append=total))
        pad = torch.arange(self.seq_len) >= used[:, None]
        for out, source, fill in ((ids, self.flat_ids, self.pad_id), (lab, self.flat_labels, IGNORE)):
            torch.index_select(source, 0, src, out=stream[:total])
            stream[total:] = fill
            # window w is stream[first token of w : + seq_len], its tail past the window's facts masked
            torch.index_select(stream.unfold(0, self.seq_len, 1), 0, win_first, out=tmp)
            out.copy_(tmp)  # int32 -> int64
            out.masked_fill_(pad, fill)
        return ids, lab, total


class FactDataModule(L.LightningDataModule):
    def __init__(self, cfg: RunConfig, facts: pl.DataFrame, pad_id: int):
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.train_facts, self.heldout_facts = select_facts(facts, cfg)
        if self.train_facts.height == 0:
            raise ConfigError(f"corpus.path {cfg.corpus.path}: no training facts")
        junk = junk_pool(facts, cfg)
        # the packer's pieces: the training facts, then the junk pool (indices n_useful.. in epoch orders)
        pieces = self.train_facts if junk is None else pl.concat(
            [self.train_facts.select("input_ids", "value_start"), junk.select("input_ids", "value_start")])
        self.n_useful = self.train_facts.height
        self.flat, self.offsets = flat_tokens(pieces["input_ids"])
        self.lengths = np.diff(self.offsets)
        self.value_starts = pieces["value_start"].to_numpy().astype(np.int64)
        longest = int(self.lengths.max())
        if longest > cfg.train.seq_len:
            raise ConfigError(f"train.seq_len={cfg.train.seq_len} is shorter than the longest fact "
                              f"({longest} tokens); raise train.seq_len")
        if cfg.train.attention == "isolated":  # train.fact_positions restarts a fact at every <bos>
            bos = self.flat[self.offsets[:-1]]
            if (bos != bos[0]).any() or int((self.flat == bos[0]).sum()) != len(bos):
                raise ConfigError("train.attention=isolated needs <bos> at the start of every fact and nowhere "
                                  "else; rebuild the corpus with `factscale corpus build` or use packed")
        self.repeats = repeats_of(self.train_facts, cfg.train.repeat_by)
        self.index = np.repeat(np.arange(self.train_facts.height), self.repeats)
        self.real_fraction: float | None = None
        self.tokens_per_epoch = int((self.lengths[:self.n_useful] * self.repeats).sum())  # useful tokens
        # junk pieces per epoch: junk_ratio x the epoch's useful tokens (without tags, so a tagged run and an
        # untagged one mix in the same junk) over the pool's mean piece length
        untagged = self.tokens_per_epoch - (int(self.repeats.sum()) if cfg.train.domain_tag else 0)
        self.junk_pool_size = 0 if junk is None else junk.height
        self.junk_per_epoch = 0 if junk is None else max(1, round(
            cfg.train.junk_ratio * untagged / float(self.lengths[self.n_useful:].mean())))
        # pinned host batches let the host->device copy run asynchronously on a GPU
        pin = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
        self.packer = Packer(self.flat, self.offsets, self.value_starts, cfg.train.seq_len, pad_id,
                             cfg.train.loss_on == "value", pin_memory=pin)
        self._phase: tuple[np.ndarray, int] | None = None
        self.injected = self.train_facts["injected"].to_numpy() if cfg.train.inject_where else None

    def epoch_facts(self, epoch: int) -> np.ndarray:
        """Indices of the facts trained in this epoch (all of them, unless phases or an injection are in play)."""
        keep = self._phase_keep(epoch)
        if self.injected is not None:  # the control half never; the injected half only in its epochs
            c = self.cfg.train
            now = c.inject_epoch - 1 <= epoch < c.inject_epoch - 1 + c.inject_epochs
            trained = (self.injected == "no") | ((self.injected == "yes") & now)
            keep = trained if keep is None else keep & trained
        return self.index if keep is None else self.index[keep[self.index]]

    def _phase_keep(self, epoch: int) -> np.ndarray | None:
        """Which training facts this epoch's phase trains (``train.phase_column``); None = all."""
        col = self.cfg.train.phase_column
        if col is None:
            return None
        if col not in self.train_facts.columns:
            raise ConfigError(f"train.phase_column: column {col!r} is not in facts.parquet")
        if self._phase is None:  # phase codes 0..n-1 in sorted name order, once (not per epoch)
            codes = self.train_facts[col].cast(pl.String).fill_null("").rank("dense").to_numpy() - 1
            self._phase = (codes.astype(np.int64), int(codes.max()) + 1)
        phase, n = self._phase
        E = self.cfg.train.epochs
        if self.cfg.train.order == "blocked":
            return phase == min(n - 1, epoch * n // E)
        if self.cfg.train.order == "first-phase-only":
            return phase == 0
        # a fresh random partition of all facts into n slots every n epochs
        perm = np.random.default_rng([self.cfg.seed, epoch // n, 7]).permutation(len(phase))
        keep = np.zeros(len(phase), dtype=bool)
        keep[perm[epoch % n::n]] = True
        return keep

    def junk_pieces(self, epoch: int) -> np.ndarray:
        """Packer indices of this epoch's junk: positions [e J, (e + 1) J) of an endless walk through the pool,
        one seeded permutation per pass, so every piece is drawn once per pass (exposures differ by at most 1)."""
        J, P = self.junk_per_epoch, self.junk_pool_size
        k = np.arange(epoch * J, (epoch + 1) * J, dtype=np.int64)
        out = np.empty(J, dtype=np.int64)
        for c in np.unique(k // P).tolist():  # the passes this epoch's draws fall in (one or two, unless J > P)
            at = (k // P) == c
            out[at] = np.random.default_rng([self.cfg.seed, c, 17]).permutation(P)[k[at] % P]
        return self.n_useful + out

    def junk_exposures(self) -> float:
        """Mean times a junk piece is trained on over the run (0 without junk)."""
        return self.junk_per_epoch * self.cfg.train.epochs / self.junk_pool_size if self.junk_pool_size else 0.0

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The facts (and junk pieces) of this epoch in training order; a function of (seed, epoch) only."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        facts = self.epoch_facts(epoch)
        if self.junk_per_epoch:
            facts = np.concatenate([facts, self.junk_pieces(epoch)])
        return facts[rng.permutation(len(facts))]

    def epoch_tensors(self, epoch: int, reuse: bool = False):
        """Packed (input_ids, labels) of this epoch. ``reuse``: views of buffers the next call overwrites
        (the training loop's choice: no allocation per epoch); else fresh tensors the caller owns."""
        ids, labels, real = self.packer.pack(self.epoch_order(epoch), reuse=reuse)
        self.real_fraction = real / ids.numel()
        return ids, labels

    def train_dataloader(self):
        t = self.trainer
        epoch = t.current_epoch if t is not None else 0
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        ids, labels = self.epoch_tensors(epoch, reuse=True)
        # order is already shuffled by epoch_tensors; a fixed order here keeps resume exact. A batch is a
        # slice of the packed tensors: a view, no copy, no per-row collate (tiny models are overhead-bound),
        # and still in pinned memory on a GPU machine, so its host->device copy is asynchronous.
        bs = self.cfg.train.batch_size
        batches = [slice(i, min(i + bs, len(ids))) for i in range(0, len(ids), bs)]
        if world > 1:  # rank r trains batches r, r + world, ...; every rank the same count (DDP steps together)
            batches = batches[rank::world][: len(batches) // world]
        return DataLoader(EpochBatches(ids, labels, batches), batch_size=None)


# EpochBatches knows its exact length (no worker processes split it); Lightning warns for any iterable
# dataset with __len__ just in case
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning)


class EpochBatches(IterableDataset):
    """One rank's batches of a packed epoch, as views. Iterable, so that under DDP Lightning does not put
    a DistributedSampler in (it would deal out single rows); the sharding is done above, by batch."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor, batches: list[slice]):
        self.ids, self.labels, self.batches = ids, labels, batches

    def __iter__(self):
        return ((self.ids[b], self.labels[b]) for b in self.batches)

    def __len__(self):
        return len(self.batches)
