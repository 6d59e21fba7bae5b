"""Mixture-of-experts models (Qwen2-MoE) in the size registry: exact total and per-token parameter counts,
the router's loss in training, and a run end to end with both counts in its rows."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from conftest import tiny_run_config

from factscale.errors import ConfigError
from factscale.training.config import ModelConfig
from factscale.training.models import (
    SIZES,
    build_model,
    count_instantiated,
    non_embedding_params,
    params_per_token,
    resolve_shape,
)
from factscale.training.module import scored_loss

MOE = [n for n, s in SIZES.items() if s.experts]


def per_token_by_hand(model, top_k: int, experts: int) -> int:
    """Non-embedding parameters a token passes through, from the instantiated model: every parameter except
    the embeddings, with the stacked expert tensors counted for top_k of their experts."""
    non_emb, _ = count_instantiated(model)
    routed = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    return non_emb - routed + routed * top_k // experts


@pytest.mark.parametrize("spec", [{"size": n} for n in MOE] + [{"size": "5k", "experts": 3, "experts_per_token": 2,
                                                                  "shared_expert_ffn": 8}], ids=lambda d: str(d))
def test_total_and_per_token_counts_equal_the_instantiated_model(spec):
    cfg = ModelConfig(arch="qwen2", **spec)
    s = resolve_shape(cfg)
    model = build_model(cfg, 64)
    assert model.config.model_type == "qwen2_moe" and s.experts > 0
    assert non_embedding_params("qwen2", s) == count_instantiated(model)[0]
    assert params_per_token("qwen2", s) == per_token_by_hand(model, s.top_k, s.experts)
    assert params_per_token("qwen2", s) < non_embedding_params("qwen2", s)


def test_the_registry_matches_dense_5k_by_total_and_by_tokens():
    dense = non_embedding_params("qwen2", SIZES["5k"])
    assert abs(non_embedding_params("qwen2", SIZES["5k-moe-total"]) - dense) / dense < 0.05
    assert abs(params_per_token("qwen2", SIZES["5k-moe-active"]) - dense) / dense < 0.05
    assert params_per_token("qwen2", SIZES["5k"]) == dense  # dense: every parameter, every token


def test_the_training_loss_adds_the_routers_load_balancing_loss():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="qwen2", size="5k-moe-total"), 64)
    ids = torch.randint(3, 64, (4, 16))
    labels = ids.clone()
    labels[:, :8] = -100
    ref = model(input_ids=ids, labels=labels, output_router_logits=True)  # transformers' own loss + aux loss
    assert float(ref.aux_loss.detach()) > 0
    assert float(scored_loss(model, ids, labels)) == pytest.approx(float(ref.loss), rel=1e-6)


def test_moe_configs_are_checked():
    with pytest.raises(ConfigError, match="Qwen2-MoE; model.arch must be qwen2"):
        resolve_shape(ModelConfig(arch="llama", size="5k", experts=4, experts_per_token=1))
    with pytest.raises(ConfigError, match=r"experts_per_token must be in \[1, experts=4\]"):
        resolve_shape(ModelConfig(arch="qwen2", size="5k", experts=4, experts_per_token=5))
    with pytest.raises(ConfigError, match="model.experts must be an integer >= 0"):
        ModelConfig(arch="qwen2", size="5k", experts=-1)


def test_a_moe_run_reports_total_and_per_token_bits(tiny_corpus, tmp_path):
    from factscale.training.run import run

    cfg = tiny_run_config(tiny_corpus, tmp_path, **{"model.size": "5k-moe-total", "train.epochs": 2,
                                                    "probe.every_epochs": 2})
    out = run(cfg)
    df = pl.read_parquet(tmp_path / out["run_id"] / "results.parquet")
    r = df.filter((pl.col("split") == "train") & (pl.col("group_by") == "all")).row(0, named=True)
    assert r["experts"] == 4 and r["params_per_token"] == 1980 and r["non_embedding_params"] == 3708
    assert r["bits_per_param_per_token"] == pytest.approx(r["capacity_bits"] / 1980)
    assert r["bits_per_param"] == pytest.approx(r["capacity_bits"] / 3708)
