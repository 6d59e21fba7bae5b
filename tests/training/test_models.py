from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from factscale.errors import ConfigError
from factscale.training.config import ModelConfig
from factscale.training.models import ARCHS, SIZES, build_model, count_instantiated, non_embedding_params, resolve_shape


@pytest.mark.parametrize(("arch", "size"), [(a, s) for s in SIZES for a in ARCHS
                                             if not SIZES[s].experts or a == "qwen2"])  # MoE: Qwen2-MoE only
def test_non_embedding_count_matches_instantiated_model(arch, size):
    cfg = ModelConfig(arch=arch, size=size, tie_embeddings=size not in ("2k", "1m"))
    with torch.device("meta"):  # shapes only: the 300M models cost nothing
        model = build_model(cfg, vocab_size=1000)
    non_emb, total = count_instantiated(model)
    assert non_emb == non_embedding_params(arch, resolve_shape(cfg))
    assert total > non_emb


def test_count_by_parameter_names_on_a_real_model():
    """Independent check of what is excluded: name-based, on a materialized Qwen2 and GPT-2."""
    for arch, excluded in (("qwen2", ("embed_tokens", "lm_head")), ("gpt2", ("wte", "wpe", "lm_head"))):
        cfg = ModelConfig(arch=arch, size="10k", tie_embeddings=False)
        m = build_model(cfg, vocab_size=300)
        by_name = sum(p.numel() for n, p in m.named_parameters() if not any(e in n for e in excluded))
        assert by_name == non_embedding_params(arch, resolve_shape(cfg))


def test_explicit_shape_and_errors():
    cfg = ModelConfig(size=None, n_layers=2, hidden=32, heads=4, ffn=64, kv_heads=2)
    m = build_model(cfg, vocab_size=100)
    assert count_instantiated(m)[0] == non_embedding_params("qwen2", resolve_shape(cfg))
    with pytest.raises(ConfigError, match="model.size '7b' is not in the registry"):
        resolve_shape(ModelConfig(size="7b"))
    with pytest.raises(ConfigError, match="divisible"):
        resolve_shape(ModelConfig(size=None, n_layers=1, hidden=30, heads=4, ffn=8))


def test_sizes_cli():
    r = subprocess.run([sys.executable, "-m", "factscale.cli", "sizes", "--vocab", "1000"], capture_output=True, text=True)
    assert r.returncode == 0
    line = next(x for x in r.stdout.splitlines() if x.split()[0] == "300m")
    assert "308,405,248" in line  # Qwen2 300m: the paper's largest size (308M)
