"""Shared fixtures: real data from ../shared (skipped with a reason where absent), tiny corpora and runs."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACTSCALE_SHARED", ROOT.parent / "shared")) / "data" / "wikidata"

# One intra-op thread per process (also for the runs tests start): tiny models gain nothing from more, and
# on a loaded or 2-core machine oversubscribed threads make them 10-50x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared():
    if not SHARED.exists():
        reason = f"real Wikidata sample data not found at {SHARED} (set FACTSCALE_SHARED)"
        if os.environ.get("FACTSCALE_REQUIRE_DATA") == "1":  # CI: the data is part of the test, never a skip
            pytest.fail(reason + "; FACTSCALE_REQUIRE_DATA=1")
        pytest.skip(reason)
    return SHARED


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """100 keys x 2 attributes (16 and 64 values): 200 facts, ~20 held out."""
    from factscale.corpus import SyntheticSpec, build_synthetic

    out = tmp_path_factory.mktemp("corpus") / "tiny"
    build_synthetic(out, SyntheticSpec(n_keys=100, vocab_sizes=[16, 64], seed=0), vocab_size=384)
    return out


def tiny_run_config(corpus, runs_dir, **over):
    from factscale.training.config import load_run_config

    base = {
        "corpus.path": str(corpus), "runs_dir": str(runs_dir), "model.size": "30k", "train.epochs": 60,
        "train.batch_size": 4, "train.seq_len": 64, "train.loss_on": "value", "train.progress_bar": False,
        "optim.lr": 1e-2, "optim.schedule": "constant", "probe.every_epochs": 20, "train.num_threads": 1,
    }
    base.update(over)
    return load_run_config(None, base)


@pytest.fixture(scope="session")
def trained_run(tiny_corpus, tmp_path_factory):
    """One trained tiny run (shared by probe tests): its summary and config."""
    from factscale.training.run import run

    cfg = tiny_run_config(tiny_corpus, tmp_path_factory.mktemp("runs"))
    return run(cfg), cfg


def token_facts(n: int, seed: int = 0, vocab: int = 64, bos: int = 1, eos: int = 2):
    """``n`` random tokenized facts (4-11 tokens, ``<bos>`` first, ``<eos>`` last) as the data module reads
    them: input_ids, value_start, split (all train), order."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 12, size=n)
    return pl.DataFrame({
        "input_ids": pl.Series([[bos, *rng.integers(3, vocab, size=k - 2).tolist(), eos] for k in lengths],
                               dtype=pl.List(pl.Int32)),
        "value_start": pl.Series(rng.integers(1, lengths - 1), dtype=pl.Int32),
        "split": ["train"] * n,
        "order": np.arange(n),
    })


STACK_COLUMNS = ("mr", "capacity", "capacity_bits", "net_bits", "value_loss", "mr_keyblind", "capacity_above_chance",
                 "non_embedding_params", "total_params", "active_params", "tokens_seen")


def assert_same_results(a, b) -> None:
    """Two runs' result rows agree: the same probes, and every measure to float noise (a stacked member
    against its standalone run: eager attention beside SDPA, ~1e-7 per step)."""
    import numpy as np
    import polars as pl

    assert a.height == b.height and a["epoch"].to_list() == b["epoch"].to_list()
    for col in STACK_COLUMNS:
        if col in a.columns:
            x, y = a[col].cast(pl.Float64).to_numpy(), b[col].cast(pl.Float64).to_numpy()
            assert np.allclose(x, y, rtol=1e-4, atol=1e-6, equal_nan=True), (col, x, y)


def cli_with_fault(*args, fault=None, cwd=None):
    """``factscale ARGS`` in a subprocess with ``FACTSCALE_FAULT`` set to ``fault`` there only (never inherited)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("FACTSCALE_FAULT", None)
    if fault:
        env["FACTSCALE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "factscale.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, cwd=cwd)
