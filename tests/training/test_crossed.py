"""Crossed columns (``a*b``) in ``corpus.where`` and ``probe.group_columns``: the partnered preference design."""

from __future__ import annotations

import polars as pl
import pytest

from factscale.corpus import SyntheticSpec, build_synthetic
from factscale.errors import ConfigError
from factscale.training.data import select_facts
from tests.conftest import tiny_run_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("crossed") / "c"
    build_synthetic(out, SyntheticSpec(n_keys=120, vocab_sizes=[64], seed=0), vocab_size=384,
                    variants={"frequency": {"mode": "assigned", "levels": [1, 4]}, "phases": {"n": 2, "by": "random"}})
    return out


def test_where_on_a_crossed_column_selects_the_combinations(corpus, tmp_path):
    facts = pl.read_parquet(corpus / "facts.parquet")
    cfg = tiny_run_config(corpus, tmp_path, **{"corpus.where": "freq_level*phase=x1*p1,x4*p1"})
    train, _ = select_facts(facts, cfg)
    want = facts.filter((pl.col("split") == "train") & (pl.col("phase") == "p1"))
    assert sorted(train["fact_id"].to_list()) == sorted(want["fact_id"].to_list())
    assert set(train["freq_level*phase"].unique().to_list()) == {"x1*p1", "x4*p1"}
    alone = select_facts(facts, tiny_run_config(corpus, tmp_path, **{"corpus.where": "freq_level=x1"}))[0]
    assert set(alone["phase"].unique().to_list()) == {"p1", "p2"}  # the target half and its partner half
    with pytest.raises(ConfigError, match="not in facts.parquet"):
        select_facts(facts, tiny_run_config(corpus, tmp_path, **{"corpus.where": "freq_level*nope=x1*p1"}))


def test_a_run_breaks_its_probes_down_by_the_crossed_column(corpus, tmp_path):
    from factscale.training.run import run

    cfg = tiny_run_config(corpus, tmp_path, **{"corpus.where": "phase=p1", "train.epochs": 2, "probe.every_epochs": 2,
                                               "probe.group_columns": ["freq_level*phase"], "train.repeat_by": "repeats"})
    rows = pl.read_parquet(f"{run(cfg)['run_dir']}/results.parquet")
    g = rows.filter((pl.col("group_by") == "freq_level*phase") & (pl.col("split") == "train"))
    assert set(g["group"].to_list()) == {"x1*p1", "x4*p1"}
    assert g["n_facts"].sum() == rows.filter((pl.col("group_by") == "all") & (pl.col("split") == "train"))["n_facts"][0]


def test_only_probe_groups_and_where_take_crossed_columns(corpus, tmp_path):
    from factscale.training.run import validate

    facts = pl.read_parquet(corpus / "facts.parquet")
    with pytest.raises(ConfigError, match="train.repeat_by"):
        validate(tiny_run_config(corpus, tmp_path, **{"train.repeat_by": "phase*repeats"}), facts)
    with pytest.raises(ConfigError, match="probe.group_columns: 'freq_level\\*nope'"):
        select_facts(facts, tiny_run_config(corpus, tmp_path, **{"probe.group_columns": ["freq_level*nope"]}))


def test_random_phases_are_independent_of_an_assigned_frequency(corpus):
    facts = pl.read_parquet(corpus / "facts.parquet")
    t = facts.group_by("freq_level", "phase").len()
    assert t.height == 4 and t["len"].min() > 15  # every combination, none empty (120 facts)
