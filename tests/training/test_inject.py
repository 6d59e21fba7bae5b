"""Mid-run injection (``train.inject_where``): injected facts are trained only in their epochs, probed as the
``injected`` group, know nothing before the injection (a known answer), and feed the forgetting fits."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from factscale.corpus import SyntheticSpec, build_synthetic
from factscale.errors import ConfigError
from factscale.training.data import FactDataModule
from tests.conftest import tiny_run_config

INJ = {"train.inject_where": "phase=p4", "train.inject_epoch": 5, "train.inject_epochs": 3, "train.epochs": 16}


@pytest.fixture(scope="module")
def phased(tmp_path_factory):
    out = tmp_path_factory.mktemp("inject") / "c"
    build_synthetic(out, SyntheticSpec(n_keys=100, vocab_sizes=[16, 64], seed=0), vocab_size=384,
                    variants={"phases": {"n": 4, "by": "random"}})
    return out


def test_injected_facts_train_only_in_their_epochs(phased, tmp_path):
    facts = pl.read_parquet(phased / "facts.parquet")
    dm = FactDataModule(tiny_run_config(phased, tmp_path, **INJ), facts, 0)
    col = dm.train_facts["injected"]
    injected, control = np.flatnonzero(col == "yes"), np.flatnonzero(col == "control")
    assert abs(len(injected) - len(control)) <= 1 and len(injected) + len(control) < dm.n_useful
    assert set(dm.train_facts.filter(pl.col("injected") != "no")["phase"].unique()) == {"p4"}
    for epoch in range(16):  # 0-based: the injection is 1-based epochs 5-7
        seen = set(dm.epoch_facts(epoch).tolist())
        assert (set(injected.tolist()) <= seen) == (4 <= epoch <= 6)
        assert not (set(injected.tolist()) & seen) or 4 <= epoch <= 6
        assert not set(control.tolist()) & seen  # the control is never trained
        assert len(seen) == dm.n_useful - len(control) - (0 if 4 <= epoch <= 6 else len(injected))


@pytest.mark.parametrize("over, match", [
    ({"train.inject_epoch": 15, "train.inject_epochs": 3}, "past train.epochs"),
    ({"train.inject_where": "phase"}, "must read 'column=value"),
    ({"train.inject_epochs": 0}, "positive integer"),
])
def test_bad_injection_config_is_one_line(phased, tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        tiny_run_config(phased, tmp_path, **{**INJ, **over})


@pytest.mark.parametrize("where, match", [("nope=p4", "not in facts.parquet"), ("phase=p9", "selects 0"),
                                          ("phase=p1,p2,p3,p4", "not all")])
def test_injection_must_select_some_facts(phased, tmp_path, where, match):
    facts = pl.read_parquet(phased / "facts.parquet")
    with pytest.raises(ConfigError, match=match):
        FactDataModule(tiny_run_config(phased, tmp_path, **{**INJ, "train.inject_where": where}), facts, 0)


@pytest.mark.slow
def test_injected_set_knows_nothing_before_and_feeds_the_fits(tmp_path):
    from factscale.analysis.axes import forgetting_curves, forgetting_fits
    from factscale.training.run import run

    corpus = tmp_path / "c"  # one attribute of 64 values: keys of injected and control facts are equally unseen
    build_synthetic(corpus, SyntheticSpec(n_keys=600, vocab_sizes=[64], seed=0), vocab_size=512,
                    variants={"phases": {"n": 4, "by": "random"}})
    over = {"model.size": "5k", "train.batch_size": 8, "train.seq_len": 32, "train.epochs": 44,
            "train.inject_where": "phase=p4", "train.inject_epoch": 21, "train.inject_epochs": 8,
            "probe.every_epochs": 2, "optim.warmup_steps": 10}
    summary = run(tiny_run_config(corpus, tmp_path / "runs", **over))
    assert "-inj-p4@21-" in summary["run_id"]
    rows = pl.read_parquet(f"{summary['run_dir']}/results.parquet")
    curves = forgetting_curves(rows)
    before, after = curves.filter(pl.col("t") < 0), curves.filter(pl.col("t") >= 0)
    assert before["epoch"].max() == 26 and after["epoch"].to_list() == list(range(28, 45, 2))
    # never trained before epoch 21: the injected half is recalled at chance (1/64 values) and coded like the
    # never-trained control half, within the noise of two groups of ~75 facts, while the others are learned
    pre = before.filter(pl.col("epoch") <= 20)
    assert pre["mr"].mean() < 0.05 and pre["gain"].abs().mean() < after["gain"].mean() / 2
    others = rows.filter((pl.col("split") == "train") & (pl.col("group_by") == "injected") & (pl.col("group") == "no")
                         & (pl.col("epoch") == 20))
    assert others["mr"].item() > 0.1
    fits = forgetting_fits(rows)
    assert fits.height == 1 and fits["preferred"][0] in ("power", "exponential")
    assert fits["gain_end_injection"][0] == pytest.approx(after["gain"][0])


@pytest.mark.parametrize("over, match", [
    ({"train.inject_where": None, "train.inject_epoch": 5}, "would do nothing"),
    ({"train.phase_column": "phase"}, "veto the injection"),
    ({"train.junk_ratio": 1.0}, "differ by epoch"),
])
def test_injection_settings_that_would_do_nothing_or_interfere_are_refused(phased, tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        tiny_run_config(phased, tmp_path, **{**INJ, **over})


def test_an_injection_after_the_last_fork_names_the_trunk(phased, tmp_path):
    from factscale.launch.spec import expand, spec_from_dict

    spec = spec_from_dict({"name": "t", "runs_dir": str(tmp_path), "cooldown_branches": True,
                           "base": {"corpus": {"path": str(phased)}, "model": {"size": "30k"},
                                    "optim": {"schedule": "wsd", "decay_frac": 0.5, "warmup_steps": 2},
                                    "train": {"inject_where": "phase=p4", "inject_epoch": 21, "inject_epochs": 3}},
                           "grid": {"train.epochs": [24, 40]}}, "t")
    with pytest.raises(ConfigError, match="last fork of the cooldown-branch trunk"):
        expand(spec)


def test_forgetting_refuses_two_runs_of_one_design_and_seed():
    from factscale.analysis.axes import forgetting_fits
    from factscale.errors import PlotError

    rows = []
    for run, ne in (("a", 2), ("a2", 2)):
        for e in range(1, 15):
            base = {"run_id": run, "split": "train", "group_by": "injected", "epoch": e, "step": 10 * e,
                    "cfg.model.size": "2k", "non_embedding_params": 1656, "cfg.seed": 0, "mr": 0.0,
                    "cfg.train.inject_epoch": 3, "cfg.train.inject_epochs": ne}
            rows += [{**base, "group": "yes", "code_bits_mean": 5.0}, {**base, "group": "control", "code_bits_mean": 6.0}]
    with pytest.raises(PlotError, match="two probe rows"):
        forgetting_fits(pl.DataFrame(rows))
