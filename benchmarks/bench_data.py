"""The columnar data path beside the per-fact one it replaced, at paper scale (1M+ training facts).

    python benchmarks/bench_data.py [--facts 1000000] [--big 5000000] [--seq 128]

Facts are token arrays shaped like a synthetic corpus' (9-19 tokens, 2-5 value tokens; building a real
1M-fact corpus takes minutes and does not change these timings). Times, best of ``--reps``:

* data-module setup: a numpy array per fact (before) vs flat ids + offsets (now);
* packing one epoch, both ``loss_on`` modes: ``reference.pack_reference`` (a Python loop per fact,
  rebuilt every epoch) vs ``data.Packer`` (vectorized, buffers reused); the tensors are checked equal;
* probe preparation for one probe of every fact: ``to_list()`` and per-row padding every probe
  (before) vs batches gathered from ``ProbeTokens`` arrays prepared once (now; the one-off
  preparation is printed separately);
* ``--big``: seconds per epoch of the new packer alone at that many facts (the per-fact path there
  would take minutes and gigabytes: it is not run).
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from factscale.corpus.render import flat_tokens
from factscale.probing.engine import ProbeTokens
from factscale.testing import pack_reference, probe_prep_reference
from factscale.training.data import Packer


def fake_facts(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    lengths = 9 + rng.binomial(10, 0.44, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = rng.integers(3, 2048, size=offsets[-1], dtype=np.int32)
    flat[offsets[:-1]], flat[offsets[1:] - 1] = 1, 2
    ids = pl.Series("input_ids", pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)))
    return pl.DataFrame([ids, pl.Series("value_start", lengths - rng.integers(2, 6, size=n), dtype=pl.Int32)])


def best(f, reps: int) -> float:
    out = float("inf")
    for _ in range(reps):
        gc.collect()
        t = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=1_000_000)
    ap.add_argument("--big", type=int, default=5_000_000, help="facts for the new-path-only epoch time; 0 = skip")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--probe-batch", type=int, default=512)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)  # numpy/the Python loop use one core; keep the comparison like for like
    side_by_side(a)  # its arrays are freed on return, before the big run
    gc.collect()
    if a.big:
        big_epoch(a)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def side_by_side(a):
    facts = fake_facts(a.facts)
    col, vs = facts["input_ids"], facts["value_start"].to_numpy()
    print(f"{a.facts:,} facts, {col.list.len().sum():,} tokens, seq_len {a.seq}")

    # --- data-module setup
    old_seqs = []

    def setup_old():
        old_seqs[:] = [np.asarray(x, dtype=np.int64) for x in col.to_list()]
        max(len(s) for s in old_seqs)

    t_setup_old = best(setup_old, 1)
    packers = {}

    def setup_new():
        flat, offsets = flat_tokens(col)
        int(np.diff(offsets).max())
        packers.update({m: Packer(flat, offsets, vs, a.seq, 0, m == "value") for m in ("all", "value")})

    t_setup_new = best(setup_new, 1)
    print(f"data-module setup:  per-fact arrays {t_setup_old:6.2f} s   flat + offsets (2 packers) {t_setup_new:6.2f} s")

    # --- packing, one epoch
    order = np.random.default_rng([0, 0]).permutation(a.facts)
    t_old_all = t_new_all = 0.0
    for mode in ("all", "value"):
        ref = pack_reference(old_seqs, vs, order, a.seq, 0, mode == "value")
        new = packers[mode].pack(order)  # allocates the reused buffers
        assert torch.equal(ref[0], new[0]) and torch.equal(ref[1], new[1]) and ref[2] == new[2], mode
        del ref, new
        t_old = best(lambda m=mode: pack_reference(old_seqs, vs, order, a.seq, 0, m == "value"), a.reps)
        t_new = best(lambda m=mode: packers[m].pack(order), a.reps)
        t_old_all, t_new_all = t_old_all + t_old, t_new_all + t_new
        print(f"packing (loss_on={mode:<5}): per-fact loop {t_old:6.2f} s/epoch   vectorized {t_new:6.3f} s/epoch "
              f"({t_old / t_new:.1f}x, identical tensors)")
    print(f"packing speed-up: {t_old_all / t_new_all:.1f}x")
    old_seqs.clear()

    # --- probe preparation, one probe of every fact
    def prep_old():
        for _ in probe_prep_reference(col.to_list(), 0, a.probe_batch):
            pass

    t_once = best(lambda: ProbeTokens(col, vs), 1)
    tokens = ProbeTokens(col, vs)

    def prep_new():
        for b in range(0, tokens.n, a.probe_batch):
            tokens.batch(b, a.probe_batch, 0)

    # same padded batches, fact for fact
    for (_, ids_old, _), b in zip(probe_prep_reference(col[:5000].to_list(), 0, a.probe_batch),
                                    range(0, 5000, a.probe_batch)):
        small = ProbeTokens(col[:5000], vs[:5000])
        assert torch.equal(ids_old, small.batch(b, a.probe_batch, 0)[0])
    t_old = best(prep_old, a.reps)
    t_new = best(prep_new, a.reps)
    print(f"probe prep per probe: to_list + per-row padding {t_old:6.2f} s   from prepared arrays {t_new:6.3f} s "
          f"(one-off preparation {t_once:.2f} s per probe set)")
    print(f"probe prep speed-up: {t_old / t_new:.1f}x")


def big_epoch(a):
    big = fake_facts(a.big, seed=1)
    t = time.perf_counter()
    flat, offsets = flat_tokens(big["input_ids"])
    p = Packer(flat, offsets, big["value_start"].to_numpy(), a.seq, 0, True)
    t_setup = time.perf_counter() - t
    order = np.random.default_rng([0, 1]).permutation(a.big)
    p.pack(order)
    t_big = best(lambda: p.pack(order), a.reps)
    print(f"{a.big:,} facts: setup {t_setup:.2f} s, packing {t_big:.2f} s per epoch (loss_on=value, new path)")


if __name__ == "__main__":
    main()
