from __future__ import annotations

import json
import math

import polars as pl
import pytest
from transformers import AutoTokenizer

from factscale.corpus import SyntheticSpec, build_synthetic
from factscale.corpus.synthetic import generate


def test_exact_entropy_and_uniqueness(tmp_path):
    spec = SyntheticSpec(n_keys=300, vocab_sizes=[16, 64, 256], seed=3)
    m = build_synthetic(tmp_path / "s", spec, vocab_size=512)
    assert m["entropy_bits"]["kind"] == "exact"
    assert m["entropy_bits"]["all"] == pytest.approx(300 * (4 + 6 + 8))
    df = pl.read_parquet(tmp_path / "s" / "facts.parquet")
    assert df.height == 900 and m["counts"]["kept_facts"] == 900
    assert df["key"].n_unique() == 300
    assert df.select("key", "relation").is_duplicated().sum() == 0
    # the train entropy is the per-fact log2 V summed over training facts
    train = df.filter(pl.col("split") == "train")
    assert m["entropy_bits"]["train"] == pytest.approx(sum(math.log2({"S1": 16, "S2": 64, "S3": 256}[r])
                                                           for r in train["relation"]))
    # held-out facts have unseen keys: no key is in both splits
    assert not set(train["key"]) & set(df.filter(pl.col("split") == "heldout")["key"])
    assert 0 < m["counts"]["kept_heldout"] < 200
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "s" / "tokenizer"))
    assert tok.decode(df["input_ids"][0][df["value_start"][0]:-1]).strip() == df["value"][0]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["corpus_hash"] == m["corpus_hash"]


def test_values_uniform_and_seeded():
    a, _ = generate(SyntheticSpec(n_keys=4000, vocab_sizes=[16], seed=1))
    b, _ = generate(SyntheticSpec(n_keys=4000, vocab_sizes=[16], seed=1))
    c, _ = generate(SyntheticSpec(n_keys=4000, vocab_sizes=[16], seed=2))
    assert a.equals(b) and not a.equals(c)
    counts = a["value"].value_counts()["count"].to_numpy()
    assert counts.min() > 4000 / 16 * 0.7 and counts.max() < 4000 / 16 * 1.3  # uniform over 16 values


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="vocab_sizes"):
        SyntheticSpec(vocab_sizes=[1])
    with pytest.raises(ValueError, match="n_keys"):
        SyntheticSpec(n_keys=0)
