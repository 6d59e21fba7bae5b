"""Training precision is a config axis: fp32, bf16 autocast (fp32 weights) and bf16 weights, each recorded in
the result rows, with probes that score in fp32 logits whatever the weights."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
from conftest import tiny_run_config

from factscale.testing import run_dir
from factscale.training.run import run


@pytest.mark.slow  # ~10 s a run on the shared 2-core CPU
@pytest.mark.parametrize("precision, weights", [("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)])
def test_a_bf16_run_trains_probes_and_records_its_precision(tiny_corpus, tmp_path, precision, weights):
    cfg = tiny_run_config(tiny_corpus, tmp_path, **{"train.epochs": 4, "probe.every_epochs": 2,
                                                    "train.precision": precision})
    run(cfg)
    d = run_dir(cfg)
    df = pl.read_parquet(d / "results.parquet")
    assert df["precision"].unique().to_list() == [precision]
    final = df.filter((pl.col("split") == "train") & (pl.col("group_by") == "all") & (pl.col("epoch") == 4))
    assert final.height == 1 and all(math.isfinite(final[c][0]) for c in ("value_loss", "net_bits", "capacity_bits"))
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(d / "model" / "model.safetensors").values()} == {weights}  # the exported model
