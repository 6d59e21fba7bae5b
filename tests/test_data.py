"""The columnar data path equals the per-fact reference: packing, probes, and the head-only loss."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from conftest import tiny_run_config
from factscale.data import FactDataModule, Packer, flat_tokens
from factscale.reference import pack_reference


def random_facts(n: int, seed: int, max_len: int = 20) -> pl.DataFrame:
    """Facts with random token ids and lengths, value starts, repeat counts (0 included) and phases."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, max_len + 1, size=n)
    ids = [[1, *rng.integers(3, 500, size=k - 2).tolist(), 2] for k in lengths]
    return pl.DataFrame({
        "input_ids": pl.Series(ids, dtype=pl.List(pl.Int32)),
        "value_start": pl.Series(rng.integers(1, lengths - 1), dtype=pl.Int32),
        "split": ["train"] * n,
        "order": rng.permutation(n),
        "repeats": rng.integers(0, 4, size=n),
        "phase": rng.choice(["b", "a", "c"], size=n),
    })


def reference_epoch(dm: FactDataModule, facts: pl.DataFrame, epoch: int, value_only: bool):
    """The data module's epoch as it was computed before: a numpy array per fact and per-fact packing."""
    cfg = dm.cfg
    seqs = [np.asarray(x, dtype=np.int64) for x in dm.train_facts["input_ids"].to_list()]
    index = np.repeat(np.arange(len(seqs)), dm.repeats)
    col = cfg.train.phase_column
    if col is not None:
        phase = dm.train_facts[col].cast(pl.String).to_numpy()
        names = sorted(set(phase))
        n, E = len(names), cfg.train.epochs
        if cfg.train.order == "blocked":
            keep = phase == names[min(n - 1, epoch * n // E)]
        else:
            perm = np.random.default_rng([cfg.seed, epoch // n, 7]).permutation(len(phase))
            keep = np.zeros(len(phase), dtype=bool)
            keep[perm[epoch % n::n]] = True
        index = index[keep[index]]
    order = index[np.random.default_rng([cfg.seed, epoch]).permutation(len(index))]
    return pack_reference(seqs, dm.train_facts["value_start"].to_numpy(), order, cfg.train.seq_len, 0, value_only)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("loss_on", ["all", "value"])
@pytest.mark.parametrize("variant", ["plain", "repeats", "blocked", "interleaved"])
def test_packing_equals_reference(seed, loss_on, variant):
    facts = random_facts(600, seed)
    over = {"seed": seed, "train.loss_on": loss_on, "train.seq_len": 24 + 8 * seed, "train.epochs": 6}
    if variant == "repeats":
        over["train.repeat_by"] = "repeats"
    if variant in ("blocked", "interleaved"):
        over.update({"train.phase_column": "phase", "train.order": variant, "train.repeat_by": "repeats"})
    dm = FactDataModule(tiny_run_config("/unused", "/unused", **over), facts, pad_id=0)
    for epoch in range(4):
        ref_ids, ref_lab, real = dm_ref = reference_epoch(dm, facts, epoch, loss_on == "value")
        for reuse in (True, False):  # reused buffers (grown and shrunk across epochs) and fresh tensors
            ids, lab = dm.epoch_tensors(epoch, reuse=reuse)
            assert ids.dtype == ref_ids.dtype and lab.dtype == ref_lab.dtype
            assert torch.equal(ids, ref_ids) and torch.equal(lab, ref_lab), (seed, loss_on, variant, epoch)
            assert dm.real_fraction == real / ref_ids.numel()
        del dm_ref


def test_packing_edge_cases():
    """Facts exactly filling a window, a single fact, and facts of the full window length."""
    facts = random_facts(50, 5, max_len=8)
    flat, offsets = flat_tokens(facts["input_ids"])
    seqs = [np.asarray(x, dtype=np.int64) for x in facts["input_ids"].to_list()]
    vs = facts["value_start"].to_numpy()
    for seq_len in (8, 9, 16, 400):
        p = Packer(flat, offsets, vs, seq_len, pad_id=7, value_only=True)
        for order in (np.arange(50), np.array([3]), np.array([4, 4, 4, 1]), np.arange(50)[::-1]):
            got = p.pack(order)
            want = pack_reference(seqs, vs, order, seq_len, 7, True)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]


def test_flat_tokens_of_a_slice():
    """Offsets are right for a sliced (non-zero arrow offset) column."""
    facts = random_facts(30, 3)
    col = facts["input_ids"][7:19]
    flat, offsets = flat_tokens(col)
    assert [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == col.to_list()
