"""``factscale probe MODEL_DIR CORPUS``: any local causal LM gets a run's probes. Proven against a run's own
probe (its exported model re-probed gives its final rows back) and on a model that knows nothing."""

from __future__ import annotations

import polars as pl
import pytest

from factscale.analysis.external import encode_for, probe_model
from factscale.testing import run_dir

MEASURES = ["mr", "capacity", "capacity_bits", "net_bits", "prior_bits", "value_loss"]


def test_a_runs_exported_model_reprobed_gives_its_own_final_rows(trained_run, tmp_path, capsys):
    _, cfg = trained_run
    d = run_dir(cfg)
    rows, info = probe_model(d / "model", cfg.corpus.path)
    assert info["realigned"] == 0  # its own tokenizer: the corpus' ids exactly
    own = pl.read_parquet(d / "results.parquet")
    own = own.filter(pl.col("epoch") == own["epoch"].max())
    for split in ("train", "heldout"):
        a = rows.filter((pl.col("split") == split) & (pl.col("group_by") == "all")).row(0, named=True)
        b = own.filter((pl.col("split") == split) & (pl.col("group_by") == "all")).row(0, named=True)
        for m in MEASURES + (["mr_keyblind", "capacity_above_chance"] if split == "train" else []):
            assert a[m] == pytest.approx(b[m], rel=1e-6, abs=1e-6), (split, m)
    assert info["non_embedding_params"] == own["non_embedding_params"][0]
    from factscale.cli.main import main

    out = tmp_path / "p.parquet"
    main(["probe", str(d / "model"), str(cfg.corpus.path), "-o", str(out)])
    assert "0 re-aligned" in capsys.readouterr().out and pl.read_parquet(out).height == rows.height
    with pytest.raises(SystemExit):
        main(["probe", str(d), str(cfg.corpus.path)])  # the run directory, not its model/
    assert "not a from_pretrained model directory" in capsys.readouterr().err


def test_a_model_that_knows_nothing_scores_about_zero(tiny_corpus, tmp_path):
    """A randomly initialized model with a foreign tokenizer (another vocabulary): no fact memorized beyond
    what guessing gets, no memorized bits on the training set."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from factscale.corpus.build import load_corpus
    from factscale.corpus.render import train_tokenizer
    from factscale.training.config import ModelConfig
    from factscale.training.models import build_model

    facts, _ = load_corpus(tiny_corpus)
    train_tokenizer(facts["text"], 300, tmp_path / "tok")  # a different vocabulary from the corpus' 384
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="5k"), len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    rows, info = probe_model(tmp_path / "m", tiny_corpus)
    train = rows.filter((pl.col("split") == "train") & (pl.col("group_by") == "all")).row(0, named=True)
    assert info["vocab_size"] == len(tok) and train["mr"] < 0.05 and train["capacity_bits"] == 0.0
    assert train["net_bits"] < 0  # random logits code values worse than the prior
    assert abs(train["capacity_above_chance"]) <= 0.05 * train["n_facts"]
    import json

    from factscale.errors import CollectError

    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "final_logit_softcapping": 30.0}))
    with pytest.raises(CollectError, match="transforms its logits"):  # code lengths would not be the model's
        probe_model(tmp_path / "m", tiny_corpus)


class _MergingTokenizer:
    """One token per character, except ": " as one token (what a tokenizer without whitespace pre-splitting can
    learn): after a colon, no token begins at the space before the value."""
    bos_token_id, eos_token_id = 1, 2

    def decode(self, ids):
        return "".join(chr(i) if i >= 32 else "?" for i in ids)  # only whether a piece is blank matters here

    def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
        one = isinstance(texts, str)
        out = {"input_ids": [], "offset_mapping": []}
        for t in ([texts] if one else texts):
            spans, i = [], 0
            while i < len(t):
                j = i + 2 if t[i] == ":" and t[i + 1:i + 2] == " " else i + 1
                spans.append((i, j))
                i = j
            out["input_ids"].append([3 + sum(map(ord, t[a:b])) % 97 for a, b in spans])
            out["offset_mapping"].append(spans)
        return {k: v[0] for k, v in out.items()} if one else out


def test_values_are_realigned_to_the_models_token_boundaries():
    facts = pl.DataFrame({"fact_id": [0, 1], "prompt": ["Ab:", "Cd"], "value": ["xy", "z"],
                          "text": ["Ab: xy", "Cd z"]})
    tok = _MergingTokenizer()
    got, realigned = encode_for(facts, tok)
    assert realigned == 1  # "Ab: xy" has the token ": "; "Cd z" keeps " " on its own
    ids, vs = got["input_ids"].to_list(), got["value_start"].to_list()
    value = tok(" xy")["input_ids"]
    assert ids[0] == [1] + tok("Ab:")["input_ids"] + value + [2] and vs[0] == 1 + 3
    assert ids[0][vs[0]:-1] == value  # the value's own tokens, after the prompt's
    assert ids[1] == [1] + tok("Cd z")["input_ids"] + [2] and vs[1] == 1 + 2
    no_eos, _ = encode_for(facts, tok, eos=False)
    assert no_eos["input_ids"].to_list()[1] == ids[1][:-1]
    tok.bos_token_id = None  # a tokenizer without <bos> (Qwen's): the ids start with the prompt
    no_bos, _ = encode_for(facts, tok)
    assert no_bos["input_ids"].to_list()[1] == ids[1][1:] and no_bos["value_start"].to_list() == [3, 2]
