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


def test_probes_score_fp32_logits_of_a_bf16_model():
    """bf16 weights: the decoder runs in bf16, but the output head is applied in fp32 to the final hidden
    states, so code lengths are not rounded to bf16 (checked against the computation by hand)."""
    import numpy as np
    import torch.nn.functional as F
    from conftest import token_facts

    from factscale.probing.engine import probe_batched
    from factscale.training.config import ModelConfig
    from factscale.training.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(size="5k"), 64).to(torch.bfloat16).eval()
    facts = token_facts(12, vocab=64)
    _, bits = probe_batched(model, facts["input_ids"], facts["value_start"].to_numpy(), batch_size=4)
    want = []
    with torch.no_grad():
        for ids, vs in zip(facts["input_ids"].to_list(), facts["value_start"].to_list()):
            t = torch.tensor([ids])
            h = model.base_model(input_ids=t).last_hidden_state[0, :-1].float()
            logits = F.linear(h, model.get_output_embeddings().weight.float())
            nats = F.cross_entropy(logits[vs - 1:], t[0, vs:], reduction="sum")
            want.append(float(nats) / np.log(2))
    assert bits == pytest.approx(np.array(want), rel=1e-5)
