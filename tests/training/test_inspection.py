"""Looking inside a finished run: the saved model and tokenizer reproduce the probe with plain transformers, and
`factscale facts` lists memorized, forgotten and differing facts exactly as the per-fact tables say."""

from __future__ import annotations

import polars as pl
import pytest

from factscale.testing import run_dir


def test_the_saved_tokenizer_adds_bos_and_generate_reproduces_memorized_facts(trained_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, cfg = trained_run
    d = run_dir(cfg) / "model"
    tok, model = AutoTokenizer.from_pretrained(str(d)), AutoModelForCausalLM.from_pretrained(str(d)).eval()
    final = pl.read_parquet(run_dir(cfg) / "fact_probe.parquet").filter(pl.col("split") == "train")
    memorized = final.filter(pl.col("correct")).head(8)
    assert memorized.height >= 3, "the fixture run should memorize some facts"
    for prompt, value in memorized.select("prompt", "value").iter_rows():
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        assert ids[0, 0].item() == tok.bos_token_id  # as trained and probed: <bos> prompt
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == value
    wrong = final.filter(~pl.col("correct")).head(3)  # and the probe's misses are misses here too
    for prompt, value in wrong.select("prompt", "value").iter_rows():
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        got = out[0, ids.shape[1]:].tolist()
        assert not (tok.decode(got, skip_special_tokens=True).strip() == value and got[-1] == tok.eos_token_id)


def test_fact_history_holds_every_probe_and_facts_lists_what_the_tables_say(trained_run, tmp_path, capsys):
    import shutil

    from factscale.cli.facts import select
    from factscale.cli.main import main

    _, cfg = trained_run
    d = run_dir(cfg)
    hist = pl.read_parquet(d / "fact_history.parquet")
    final = pl.read_parquet(d / "fact_probe.parquet")
    assert sorted(hist["epoch"].unique().to_list()) == list(range(cfg.probe.every_epochs, cfg.train.epochs + 1,
                                                                  cfg.probe.every_epochs))
    assert not (d / "probes").exists()
    last = hist.filter(pl.col("epoch") == cfg.train.epochs).sort("split", "fact_id")
    assert last["correct"].to_list() == final.sort("split", "fact_id")["correct"].to_list()
    # every probe's row carries the fact's text: readable without joining the final table
    text = ["relation", "prompt", "value"]
    assert last.select(text).equals(final.sort("split", "fact_id").select(text))
    assert hist["prompt"].null_count() == 0 and hist["value"].null_count() == 0

    train_final = final.filter(pl.col("split") == "train")
    mem = select(str(d), "memorized")
    assert sorted(mem["fact_id"].to_list()) == sorted(train_final.filter(pl.col("correct"))["fact_id"].to_list())
    # forgotten, the slow obvious way: some probe said memorized, the final one did not
    ever = {f for f, ok in hist.filter(pl.col("split") == "train").select("fact_id", "correct").iter_rows() if ok}
    lost = {f for f, ok in train_final.select("fact_id", "correct").iter_rows() if not ok and f in ever}
    assert set(select(str(d), "forgotten")["fact_id"].to_list()) == lost

    twin = tmp_path / "twin"
    shutil.copytree(d, twin)
    flip = train_final.filter(pl.col("correct"))["fact_id"][0]
    t = pl.read_parquet(twin / "fact_probe.parquet")
    t.with_columns(correct=pl.when(pl.col("fact_id") == flip).then(False).otherwise(pl.col("correct"))) \
        .write_parquet(twin / "fact_probe.parquet")
    diff = select(str(d), "compare", compare=str(twin))
    assert diff["fact_id"].to_list() == [flip] and diff["memorized_by"].to_list() == [d.name]
    assert select(str(d), "compare", compare=str(d)).height == 0

    # above chance, the slow obvious way: memorized and not also right after another key's prompt
    assert "correct_keyblind" in final.columns
    kb = train_final.filter(pl.col("correct") & ~pl.col("correct_keyblind").fill_null(False))["fact_id"].to_list()
    assert sorted(select(str(d), "above-chance")["fact_id"].to_list()) == sorted(kb)
    # the per-fact outcomes give the results' capacity_above_chance: n_facts x mean(correct - correct_keyblind)
    res = pl.read_parquet(d / "results.parquet").filter((pl.col("split") == "train") & (pl.col("group_by") == "all")
                                                         & (pl.col("epoch") == cfg.train.epochs))
    paired = train_final.filter(pl.col("correct_keyblind").is_not_null())
    diff = (paired["correct"].cast(pl.Float64) - paired["correct_keyblind"].cast(pl.Float64)).mean()
    assert paired.height > 0 and res["capacity_above_chance"][0] == pytest.approx(res["n_facts"][0] * diff)
    main(["facts", str(d), "--memorized"])
    assert f"{mem.height} train facts memorized" in capsys.readouterr().out

    main(["facts", str(d), "--forgotten", "-o", str(tmp_path / "lost.csv")])
    assert f"{len(lost)} train facts forgotten" in capsys.readouterr().out
    assert pl.read_csv(tmp_path / "lost.csv").height == len(lost)


def test_facts_on_a_directory_that_is_not_a_finished_run_is_one_error_line(tmp_path, capsys):
    from factscale.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["facts", str(tmp_path)])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: ")


def test_active_parameters_count_the_embedding_rows_training_uses(trained_run):
    """active_params = non-embedding + (distinct token ids in the training text) x hidden, counted the slow way."""
    from factscale.corpus.build import load_corpus
    from factscale.training.data import select_facts
    from factscale.training.models import resolve_shape

    _, cfg = trained_run
    res = pl.read_parquet(run_dir(cfg) / "results.parquet")
    train, _ = select_facts(load_corpus(cfg.corpus.path)[0], cfg)
    used = {t for ids in train["input_ids"].to_list() for t in ids}
    hidden = resolve_shape(cfg.model).hidden
    assert res["used_token_ids"][0] == len(used) < res["vocab_size"][0]
    assert res["active_params"][0] == res["non_embedding_params"][0] + len(used) * hidden < res["total_params"][0]
    row = res.filter((pl.col("split") == "train") & (pl.col("group_by") == "all")).tail(1)
    assert row["bits_per_active_param"][0] == pytest.approx(row["capacity_bits"][0] / row["active_params"][0])
    assert row["bits_per_total_param"][0] <= row["bits_per_active_param"][0] <= row["bits_per_param"][0]


def test_the_progress_bar_shows_no_logger_version(monkeypatch):
    """Lightning's bar adds ``v_num`` (the CSV logger's folder index): noise on a run's console."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from factscale.training.callbacks import RunProgressBar

    monkeypatch.setattr(TQDMProgressBar, "get_metrics", lambda self, t, m: {"v_num": 3, "train/loss": 1.5})
    assert RunProgressBar().get_metrics(None, None) == {"train/loss": 1.5}
