"""Capacity across three papers: random-sequence capacity with known answers, the quantization probe and the
capacity table (reference rows, bad input)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from factscale.analysis.quantize import identity_quantizer, probe_run, quantize_model, rtn_quantizer, target_weights
from factscale.corpus.build import load_corpus
from factscale.probing.engine import Prober

N_SEQ, L, V = 120, 10, 32


class LookupLM(torch.nn.Module):
    """A constructed "model" for the probe: at every position it looks the prefix up in a table of known
    sequences and puts all its mass (up to e^-60) on the gold next token; an unknown prefix gets the
    ``fallback`` distribution (uniform over the given tokens, or over the whole vocabulary)."""

    def __init__(self, sequences: list[list[int]], vocab: int, fallback: list[int] | None = None):
        super().__init__()
        self.next = {tuple(s[:t + 1]): s[t + 1] for s in sequences for t in range(len(s) - 1)}
        self.config = SimpleNamespace(vocab_size=vocab, pad_token_id=0)
        self.fallback = torch.zeros(vocab)
        if fallback is not None:
            self.fallback = torch.full((vocab,), -60.0)
            self.fallback[fallback] = 0.0
        self.head = torch.nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(vocab))
        outer = self

        class Base(torch.nn.Module):
            def forward(self, input_ids):
                h = outer.fallback.repeat(*input_ids.shape, 1)
                for b, row in enumerate(input_ids.tolist()):
                    for t in range(len(row)):
                        nxt = outer.next.get(tuple(row[:t + 1]))
                        if nxt is not None:
                            h[b, t] = -60.0
                            h[b, t, nxt] = 0.0
                return SimpleNamespace(last_hidden_state=h)

        self.base_model = Base()

    def get_output_embeddings(self):
        return self.head


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    from factscale.corpus import CorpusSpec, build_from_spec

    out = tmp_path_factory.mktemp("seq") / "c"
    build_from_spec(CorpusSpec(synthetic={"kind": "random-sequences", "n_keys": N_SEQ, "length": L, "symbols": V},
                               vocab_size=320), out)
    facts, manifest = load_corpus(out)
    return facts.filter(pl.col("split") == "train"), manifest, out


def _probe(model, train):
    r = Prober({"train": train}, 64, 0, 1000, [], total_params=2000).probe(model, 1, 0, 0)
    return next(x for x in r if x["group_by"] == "all")


def test_random_sequence_capacity_is_the_entropy_for_a_model_that_reproduces_every_sequence(sequences):
    train, manifest, _ = sequences
    vocab = int(train["input_ids"].explode().max()) + 1
    r = _probe(LookupLM(train["input_ids"].to_list(), vocab), train)
    entropy = train.height * L * math.log2(V)  # independent of the manifest
    assert r["mr"] == 1.0 and r["capacity"] == train.height
    assert r["capacity_bits"] == pytest.approx(entropy, rel=1e-9)
    assert r["capacity_bits"] == pytest.approx(manifest["entropy_bits"]["train"], rel=1e-9)
    # knowing half the sequences (the rest coded uniformly over the symbols, <eos> certain) is half the entropy
    ids = train["input_ids"].to_list()
    half = ids[: len(ids) // 2]
    starts = train["value_start"].to_list()
    symbols = sorted({t for s, v in zip(ids, starts) for t in s[v:-1]})
    structure = [s[:v] for s, v in zip(ids, starts)]  # every prompt is known, no value is
    model = LookupLM(half + structure, vocab, fallback=symbols)
    eos = train["input_ids"].list.last()[0]
    for s in ids[len(half):]:  # <eos> after L symbols: known structure, no knowledge
        model.next[tuple(s[:-1])] = eos
    r = _probe(model, train)
    assert r["capacity_bits"] == pytest.approx(len(half) * L * math.log2(V), rel=1e-6)
    assert r["mr"] == pytest.approx(len(half) / len(ids))


def test_random_sequence_capacity_is_zero_for_a_model_that_knows_only_the_format(sequences):
    train, _, _ = sequences
    ids, starts = train["input_ids"].to_list(), train["value_start"].to_list()
    vocab = int(train["input_ids"].explode().max()) + 1
    symbols = sorted({t for s, v in zip(ids, starts) for t in s[v:-1]})
    model = LookupLM([s[:v] for s, v in zip(ids, starts)], vocab, fallback=symbols)
    eos = ids[0][-1]
    for s in ids:
        model.next[tuple(s[:-1])] = eos
    r = _probe(model, train)
    assert abs(r["net_bits"]) < 1e-6 * r["prior_bits"] and r["mr"] == 0.0


def test_random_sequence_capacity_of_an_untrained_model_is_zero_within_its_error(sequences):
    from factscale.training.config import ModelConfig
    from factscale.training.models import build_model

    train, manifest, out = sequences
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="5k"), manifest["tokens"]["vocab_size"], 1, 2, 0)
    sample = train.sample(60, seed=0)  # a sampled probe, so the standard error is not 0
    r = next(x for x in Prober({"train": sample}, 64, 0, 1000, [], train_facts=train).probe(model, 0, 0, 0)
             if x["group_by"] == "all")
    assert r["mr"] == 0.0 and r["capacity_bits_se"] > 0
    assert r["capacity_bits"] <= 2 * r["capacity_bits_se"]


# ---------------------------------------------------------------- quantizer


@pytest.mark.parametrize("bits", [8, 4])
def test_round_to_nearest_error_is_at_most_half_a_step_per_output_channel(bits):
    torch.manual_seed(bits)
    w = torch.randn(24, 40) * torch.logspace(-3, 1, 24)[:, None]  # channels of very different scales
    w[3] = 0.0
    q = rtn_quantizer(bits)
    qmax = 2 ** (bits - 1) - 1
    for out_dim, ww in ((0, w), (1, w.T.contiguous())):  # nn.Linear [out, in] and GPT-2 Conv1D [in, out]
        scale = ww.abs().amax(dim=1 - out_dim, keepdim=True) / qmax
        err = (q(ww, out_dim) - ww).abs()
        assert (err <= scale / 2 * (1 + 1e-6) + 1e-12).all()
        levels = torch.round(q(ww, out_dim) / torch.where(scale > 0, scale, 1.0))
        assert levels.abs().max() <= qmax
        per_channel = levels.T if out_dim == 0 else levels
        assert max(len(torch.unique(c)) for c in per_channel.T) <= 2 * qmax + 1
    assert (q(w, 0)[3] == 0).all()
    with pytest.raises(ValueError, match=r"integers in \[2, 16\]"):
        rtn_quantizer(1)


def test_quantized_tensors_are_the_block_linears_not_the_embeddings():
    from factscale.training.config import ModelConfig
    from factscale.training.models import build_model, count_instantiated

    for arch in ("qwen2", "gpt2"):
        m = build_model(ModelConfig(arch=arch, size="5k"), 300, 1, 2, 0)
        names = [n for n, _, _ in target_weights(m)]
        assert names and not any("embed" in n or "wte" in n or "wpe" in n or "lm_head" in n for n in names)
        n_lin = sum(w.numel() for _, w, _ in target_weights(m))
        emb = {id(p) for p in (*m.get_input_embeddings().parameters(), *m.get_output_embeddings().parameters())}
        emb |= {id(p) for n, p in m.named_parameters() if "wpe" in n}
        matrices = sum(p.numel() for p in m.parameters() if p.ndim == 2 and id(p) not in emb)
        assert n_lin == matrices and n_lin < count_instantiated(m)[0]  # every block matrix; norms, biases stay
        with_emb = target_weights(m, embeddings=True)
        assert len(with_emb) == len(names) + 1  # the tied head is the embedding tensor: once
        before = m.get_input_embeddings().weight.clone()
        quantize_model(m, rtn_quantizer(4))
        assert torch.equal(before, m.get_input_embeddings().weight)


@pytest.mark.slow  # over 4 s: the fast tier stays under 2 minutes
def test_quantization_probe_identity_is_exact_and_int8_changes_little(trained_run):
    from factscale.testing import run_dir

    summary, cfg = trained_run
    d = run_dir(cfg)
    final = pl.read_parquet(d / "results.parquet").filter(
        (pl.col("split") == "train") & (pl.col("group_by") == "all") & (pl.col("epoch") == cfg.train.epochs)).row(
        0, named=True)
    copy_back = lambda w, dim: w.clone()  # noqa: E731 - an identity that really rewrites every weight
    rows = probe_run(d, quantizers={"fp32": identity_quantizer, "copy": copy_back, "int8": rtn_quantizer(8),
                                    "int4": rtn_quantizer(4)})
    by = {r["weights"]: r for r in rows.iter_rows(named=True)}
    for name in ("fp32", "copy"):
        for k in ("mr", "capacity", "capacity_bits", "net_bits", "bits_per_param", "bits_per_total_param"):
            assert by[name][k] == final[k], (name, k)
    assert by["copy"]["quantized_params"] > 0 and by["fp32"]["quantized_params"] == 0
    assert 0.2 < final["mr"] and abs(by["int8"]["capacity"] - final["capacity"]) <= 0.03 * final["n_facts"]
    assert by["int8"]["capacity_bits"] == pytest.approx(final["capacity_bits"], rel=0.03)
    assert by["int4"]["capacity"] != final["capacity"] or by["int4"]["capacity_bits"] != final["capacity_bits"]
    assert all(r["run_id"] == final["run_id"] and r["cfg.model.size"] == "30k" for r in by.values())
    # eos bits: what the code length spends on <eos>; adding them back gives the eos-free measure
    assert by["fp32"]["eos_bits"] >= 0
    assert by["fp32"]["capacity_bits_no_eos"] == pytest.approx(max(0, final["net_bits"] + by["fp32"]["eos_bits"]))


# ---------------------------------------------------------------- the table


def _results(kind: str, size: str, non_emb: int, total: int, bits: float, se: float, **extra) -> dict:
    return {"run_id": f"{kind}-{size}", "epoch": 100, "cfg.train.epochs": 100, "split": "train", "group_by": "all",
            "group": "all", "mr": 0.5, "capacity": 100.0, "capacity_bits": bits, "capacity_bits_se": se,
            "non_embedding_params": non_emb, "total_params": total, "corpus_kind": kind, "cfg.model.size": size,
            "cfg.model.arch": "qwen2", "cfg.train.repeat_by": None, "prior_bits": 4 * bits, **extra}


def test_capacity_table_has_measured_and_published_rows(tmp_path, capsys):
    from factscale.analysis.capacity import REFERENCES
    from factscale.cli.main import main

    rows = [_results("synthetic", "2k", 1000, 4000, 1500.0, 30.0),
            _results("synthetic-bios", "2k", 1000, 5000, 1200.0, 0.0),
            _results("synthetic-random-sequences", "5k", 3000, 9000, 6000.0, 0.0),
            {**_results("synthetic-random-sequences", "5k", 3000, 9000, 5000.0, 0.0), "precision": "bf16-true",
             "run_id": "bf16-run"}]  # trained with bf16 weights: the table says so
    rows += [{**rows[0], "epoch": 50, "capacity_bits": 1.0}, {**rows[0], "split": "heldout"},
             {**rows[0], "group_by": "relation", "group": "S1"}]  # not final / not train / not overall: ignored
    pl.DataFrame(rows).write_parquet(tmp_path / "r.parquet")
    q = pl.DataFrame([{**rows[1], "weights": "int8", "capacity_bits": 1100.0},
                      {**rows[1], "weights": "fp32"}])  # a quantize-probe table: its fp32 row repeats the run
    q.write_parquet(tmp_path / "q.parquet")
    main(["capacity-table", str(tmp_path / "r.parquet"), str(tmp_path / "q.parquet"), "-o", str(tmp_path / "t")])
    out = capsys.readouterr().out
    t = pl.read_parquet(tmp_path / "t.parquet")
    assert pl.read_csv(tmp_path / "t.csv").height == t.height
    m = t.filter(pl.col("measured"))
    assert m.height == 5 and sorted(m["corpus"]) == ["bios", "bios", "facts", "random-sequences", "random-sequences"]
    assert m.filter(pl.col("run_id") == "bf16-run")["weights"].to_list() == ["bf16"]
    f = m.filter(pl.col("corpus") == "facts").row(0, named=True)
    assert f["bits_per_param"] == 1.5 and f["bits_per_total_param"] == 1500 / 4000
    assert f["bits_per_param_se"] == pytest.approx(0.03) and f["exposures"] == 100 and f["weights"] == "fp32"
    b8 = m.filter(pl.col("weights") == "int8").row(0, named=True)
    assert b8["corpus"] == "bios" and b8["bits_per_total_param"] == pytest.approx(1100 / 5000)
    ref = t.filter(~pl.col("measured"))
    assert ref.height == len(REFERENCES) and ref["source"].str.starts_with("published: ").all()
    assert ref["run_id"].is_null().all() and ref["capacity_bits"].is_null().all()
    got = {(r["corpus"], r["weights"], r["exposures"]): r["bits_per_total_param"] for r in ref.iter_rows(named=True)}
    assert got[("bios", "fp16 mixed", 1000)] == 2.0 and got[("bios", "fp16 mixed", 100)] == 1.0
    assert got[("bios", "int4", None)] == 0.7 and got[("random-sequences", "bf16", None)] == 3.51
    assert got[("random-sequences", "fp32", None)] == 3.83
    lu = ref.filter(pl.col("source").str.contains("Lu et al")).row(0, named=True)
    assert lu["bits_per_param"] is None and "linear" in lu["note"]
    assert "published: Morris et al. 2025" in out and "synthetic-bios-2k" in out


@pytest.mark.parametrize("table, message", [
    (pl.DataFrame({"run_id": ["a"], "epoch": [1]}), "missing column(s) ['split', 'group_by', 'mr'"),
    (pl.DataFrame([_results("synthetic", "2k", 1000, 4000, 1.0, 0.0, epoch=3)]), "no final (annealed) probe"),
])
def test_capacity_table_bad_input_is_one_error_line(table, message, tmp_path, capsys):
    from factscale.cli.main import main

    table.write_parquet(tmp_path / "r.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    for path, msg in ((tmp_path / "r.parquet", message), (tmp_path / "junk.parquet", "not a parquet results table"),
                      (tmp_path / "none.parquet", "results table not found")):
        with pytest.raises(SystemExit) as e:
            main(["capacity-table", str(path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and msg in err


def test_quantize_probe_bad_input_is_one_error_line(tmp_path, capsys):
    from factscale.cli.main import main

    for args, msg in ((["--bits", "8,x"], "--bits '8,x': comma-separated integers in [2, 16]"),
                      (["--bits", "1"], "--bits '1'"), ([], "not a finished run directory")):
        with pytest.raises(SystemExit) as e:
            main(["quantize-probe", str(tmp_path), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and msg in err


def test_the_figure_script_draws_the_table(tmp_path):
    import runpy

    from conftest import ROOT

    from factscale.analysis.capacity import capacity_table

    rows = [_results("synthetic-bios", s, n, 3 * n, b, 5.0) for s, n, b in (("2k", 1000, 900.0), ("5k", 3000, 4000.0))]
    table = capacity_table([("r", pl.DataFrame(rows))])
    script = runpy.run_path(str(ROOT / "figures" / "capacity_table.py"), run_name="figure_test")
    fig = script["figure"](table)
    ax = fig.axes[1]
    assert "published values, not measured here" in fig._suptitle.get_text()
    assert any("Morris et al. 2025: 3.83" in t.get_text() for t in ax.texts)
    assert any(np.allclose(line.get_ydata(), [0.3, 4000 / 9000]) for line in ax.lines if len(line.get_ydata()) == 2)
    paths = script["save"](fig, tmp_path, "capacity-table")
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.slow  # trains a run (trained_run): the fast tier stays under 2 minutes
def test_bios_rows_say_their_bits_are_not_allen_zhu_and_lis(trained_run):
    from factscale.analysis.capacity import BIOS_NOT_COMPARABLE, capacity_table
    from factscale.testing import run_dir

    _, cfg = trained_run
    df = pl.read_parquet(run_dir(cfg) / "results.parquet")
    t = capacity_table([("facts", df), ("bios", df.with_columns(corpus_kind=pl.lit("synthetic-bios"),
                                                                run_id=pl.lit("bios-run")))], references=False)
    notes = dict(zip(t["corpus"], t["note"]))
    assert notes["bios"] == BIOS_NOT_COMPARABLE and notes["facts"] == ""
    assert t["active_params"].null_count() == 0 and (t["bits_per_active_param"] <= t["bits_per_param"]).all()
