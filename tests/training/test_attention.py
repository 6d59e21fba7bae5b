"""train.attention: in ``isolated`` mode a packed window computes every fact exactly as that fact alone."""

from __future__ import annotations

import types

import polars as pl
import pytest
import torch
from conftest import tiny_run_config, token_facts

from factscale.errors import ConfigError
from factscale.training.config import ModelConfig
from factscale.training.data import FactDataModule
from factscale.training.models import ARCHS, build_model
from factscale.training.module import FactLM, fact_isolation, fact_positions

BOS, EOS, PAD, VOCAB = 1, 2, 0, 64


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def facts(n: int = 24, seed: int = 0) -> pl.DataFrame:
    return token_facts(n, seed, VOCAB, BOS, EOS)


def packed_windows(attention: str, loss_on: str = "value"):
    cfg = tiny_run_config("/unused", "/unused", **{"train.attention": attention, "train.loss_on": loss_on,
                                                   "train.seq_len": 32})
    ids, labels = FactDataModule(cfg, facts(), pad_id=PAD).epoch_tensors(0)
    assert ((ids == BOS).sum(1) >= 2).all()  # every window holds several facts: there is something to isolate
    return cfg, ids, labels


def segments(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of every fact in a packed row: from each <bos> to its <eos>."""
    starts = (row == BOS).nonzero().flatten().tolist()
    return [(s, s + int((row[s:] == EOS).nonzero()[0]) + 1) for s in starts]


def tiny_model(arch: str):
    torch.manual_seed(0)
    shape = dict(size=None, n_layers=2, hidden=16, heads=2, ffn=24)
    return build_model(ModelConfig(arch=arch, **shape), VOCAB, BOS, EOS, PAD).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_isolated_window_logits_equal_each_fact_alone(arch):
    model = tiny_model(arch)
    _, ids, _ = packed_windows("isolated")
    with torch.no_grad():
        # transformers' own mask from restarting positions, and the one training builds (fact_isolation)
        iso = model(input_ids=ids, position_ids=fact_positions(ids, BOS), use_cache=False).logits
        pos, mask = fact_isolation(ids, BOS)
        ours = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits
        plain = model(input_ids=ids, use_cache=False).logits  # packed: causal over the whole window
        worst_iso = worst_ours = worst_plain = 0.0
        for r in range(len(ids)):
            for s, e in segments(ids[r]):
                alone = model(input_ids=ids[r:r + 1, s:e]).logits[0]
                worst_iso = max(worst_iso, (iso[r, s:e] - alone).abs().max().item())
                worst_ours = max(worst_ours, (ours[r, s:e] - alone).abs().max().item())
                if s > 0:  # a fact after another one in its window
                    worst_plain = max(worst_plain, (plain[r, s:e] - alone).abs().max().item())
    assert worst_iso < 1e-5 and worst_ours < 1e-5
    assert torch.equal(iso, ours)  # the same mask, so the same numbers (padding included)
    assert worst_plain > 1e-3  # packed attention really does see the neighbours: the check above can fail


def attached(cfg, model) -> FactLM:
    """A FactLM around ``model`` with just the trainer fields training_step reads (no logging)."""
    m = FactLM(cfg, VOCAB, BOS, EOS, PAD)
    m.model = model
    m._trainer = types.SimpleNamespace(log_every_n_steps=10**9, global_step=0)
    return m


@pytest.mark.parametrize("loss_on,attn", [("value", "sdpa"), ("all", "sdpa"), ("value", "eager")])
def test_isolated_training_loss_equals_facts_alone(loss_on, attn):
    model = tiny_model("qwen2")
    model.set_attn_implementation(attn)  # eager would add a boolean mask to its scores: it must not get one
    cfg, ids, labels = packed_windows("isolated", loss_on)
    total, count = 0.0, 0
    with torch.no_grad():
        for r in range(len(ids)):
            for s, e in segments(ids[r]):
                logits = model(input_ids=ids[r:r + 1, s:e]).logits[0, :-1]
                target = labels[r, s + 1:e]
                keep = target != -100
                total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
                count += int(keep.sum())
        alone = total / count
        isolated = attached(cfg, model).training_step((ids, labels), 0).item()
        packed_cfg = tiny_run_config("/unused", "/unused", **{"train.attention": "packed", "train.loss_on": loss_on,
                                                              "train.seq_len": 32})
        packed = attached(packed_cfg, model).training_step((ids, labels), 0).item()
    assert abs(isolated - alone) < 1e-5
    assert abs(packed - alone) > 1e-4


def test_isolation_mask_is_the_one_transformers_builds_from_positions():
    from transformers.masking_utils import create_causal_mask

    model = tiny_model("qwen2")
    _, ids, _ = packed_windows("isolated")
    pos, mask = fact_isolation(ids, BOS)
    embeds = model.get_input_embeddings()(ids)
    theirs = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=None, cache=None,
                                position_ids=pos)
    assert theirs.shape == mask.shape == (len(ids), 1, ids.shape[1], ids.shape[1])
    assert torch.equal(theirs, mask)
    # one fact per window (none restarts): plain causal attention, no mask, as transformers decides
    single = ids[:, :4].clone()
    single[:, 0] = BOS
    single[:, 1:] = 5
    assert fact_isolation(single, BOS)[1] is None
    assert create_causal_mask(config=model.config, inputs_embeds=model.get_input_embeddings()(single),
                              attention_mask=None, cache=None, position_ids=fact_positions(single, BOS)) is None
    # slow and obvious: token j is visible from token i iff j <= i and no <bos> lies in (j, i]
    for r in range(len(ids)):
        for i in range(ids.shape[1]):
            for j in range(ids.shape[1]):
                assert bool(mask[r, 0, i, j]) == (j <= i and not bool((ids[r, j + 1:i + 1] == BOS).any()))


def test_attention_option_is_validated_and_defaults_to_isolated():
    assert tiny_run_config("/unused", "/unused").train.attention == "isolated"
    with pytest.raises(ConfigError, match=r"train.attention.*allowed values: \['isolated', 'packed'\]"):
        tiny_run_config("/unused", "/unused", **{"train.attention": "blockwise"})


def test_isolated_refuses_a_corpus_with_bos_inside_a_fact():
    bad = facts().with_columns(pl.col("input_ids").list.concat(pl.lit([BOS, EOS], dtype=pl.List(pl.Int32))))
    cfg = tiny_run_config("/unused", "/unused", **{"train.attention": "isolated", "train.seq_len": 32})
    with pytest.raises(ConfigError, match="train.attention=isolated needs <bos>"):
        FactDataModule(cfg, bad, pad_id=PAD)
    packed = tiny_run_config("/unused", "/unused", **{"train.attention": "packed", "train.seq_len": 32})
    FactDataModule(packed, bad, pad_id=PAD)  # packed attention does not care where <bos> occurs
