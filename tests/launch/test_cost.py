"""Costed plans: tokens, FLOPs and GPU-hours before a corpus exists, and the time-limit warnings."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

from factscale.corpus import CorpusSpec, build_from_spec
from factscale.errors import ConfigError
from factscale.launch import cost
from factscale.launch.spec import expand, load_spec, spec_from_dict
from factscale.launch.sweep import plan
from factscale.training.models import SIZES, non_embedding_params

RECIPE = {"synthetic": {"n_keys": 600, "vocab_sizes": [64, 64], "seed": 0}, "heldout_frac": 0.1, "vocab_size": 256}


def spec_dict(tmp_path, **over):
    d = {"name": "c", "runs_dir": str(tmp_path / "runs"), "corpus_build": RECIPE,
         "base": {"corpus": {"path": str(tmp_path / "corpus")}, "model": {"arch": "qwen2"},
                  "train": {"batch_size": 8, "seq_len": 64, "loss_on": "value", "epochs": 10},
                  "optim": {"lr": 0.01, "schedule": "constant"}},
         "grid": {"model.size": ["2k", "5k"]},
         "resources": {"slurm": {"time_min": 2, "gpus_per_node": 1, "signal_delay_s": 30}}}
    d.update(over)
    return d


def test_flops_per_token_is_the_palm_count():
    cfg = expand(spec_from_dict(spec_dict(__import__("pathlib").Path("/tmp")), "x"))[0]
    s = SIZES["2k"]
    n = non_embedding_params("qwen2", s)
    # attention over the whole 64-token window (masked SDPA computes it all); loss_on value: the head at 3 of 12
    assert cost.flops_per_token(cfg, 256, 12.0, 3.0) == 6 * n + 12 * s.n_layers * s.hidden * 64 + 6 * s.hidden * 256 * 0.25
    assert cost.flops_per_token(cfg, 256, 12.0, None) == 6 * n + 12 * s.n_layers * s.hidden * 64 + 6 * s.hidden * 256


def test_a_mixture_of_experts_costs_its_tokens_experts_only():
    from factscale.training.models import params_per_token

    d = spec_dict(__import__("pathlib").Path("/tmp"), grid={"model.size": ["5k-moe-active"]})
    cfg = expand(spec_from_dict(d, "x"))[0]
    s = SIZES["5k-moe-active"]
    assert cost.flops_per_token(cfg, 256, 12.0, None) == (6 * params_per_token("qwen2", s)
                                                          + 12 * s.n_layers * s.hidden * 64 + 6 * s.hidden * 256)


def test_the_sample_estimate_is_close_to_the_built_corpus(tmp_path):
    """200 of 600 keys: facts scaled exactly, tokens per fact within 10% of the full build's."""
    spec = spec_from_dict(spec_dict(tmp_path), "x")
    est = cost.sample_estimate(spec.corpus_build)
    full = build_from_spec(CorpusSpec(**RECIPE), tmp_path / "full")
    assert est.facts == full["counts"]["kept_facts"] == 1200
    assert est.tokens_per_fact == pytest.approx(full["tokens"]["mean_tokens_per_fact"], rel=0.1)
    assert "sample build" in est.source and not (tmp_path / "corpus").exists()
    # the plan from the estimate against the plan from the built corpus: the same to within 10%
    estimated = plan(spec, est)
    build_from_spec(CorpusSpec(**RECIPE), tmp_path / "corpus")
    exact = plan(spec)
    for a, b in zip(estimated, exact):
        assert a["flops"] == pytest.approx(b["flops"], rel=0.1) and b["tokens_from"] == "the built corpus"


def test_a_plan_before_the_corpus_exists_is_costed_and_warns(tmp_path, capsys):
    from factscale.cli.main import main

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec_dict(tmp_path, grid={"model.size": ["2k"], "train.epochs": [100000]})))
    main(["sweep", "plan", str(p), "--mfu", "1e-6"])
    out = capsys.readouterr().out
    assert " ?  " not in out and "tokens from estimated from a sample build" in out
    assert "GPU-hours at MFU 1e-06" in out and "MFU assumed" not in out
    assert "warning: run qwen2-2k-e100000-s0" in out and "exceeds time_min 2 min" in out and "raise time_min" in out
    # a recipe that cannot be sampled (no corpus_build): ? until --assume-facts and --assume-tokens-per-fact
    d = spec_dict(tmp_path)
    del d["corpus_build"]
    p.write_text(yaml.safe_dump(d))
    main(["sweep", "plan", str(p)])
    assert "pass --assume-facts and --assume-tokens-per-fact" in capsys.readouterr().out
    main(["sweep", "plan", str(p), "--assume-facts", "1e6", "--assume-tokens-per-fact", "14"])
    out = capsys.readouterr().out
    assert "assumed: 1,000,000 facts x 14 tokens per fact" in out and "MFU assumed" in out
    with pytest.raises(ConfigError, match="both --assume-facts and --assume-tokens-per-fact"):
        cost.estimate_for(load_spec(p), 1e6, None)


def test_a_stack_of_seeds_is_one_job_costing_all_its_members(tmp_path):
    d = spec_dict(tmp_path, stack="seeds", grid={"model.size": ["2k", "5k"], "seed": [0, 1, 2]})
    spec = spec_from_dict(d, "x")
    est = cost.assumed(1e4, 12, 256, 0.1)
    rows = plan(spec, est)
    jobs = cost.job_costs(spec, rows, 0.2, 100.0)
    assert len(jobs) == 2 and all(j["job"].startswith("stack of 3") for j in jobs)
    assert sum(j["flops"] for j in jobs) == pytest.approx(sum(r["flops"] for r in rows))
    assert {j["epochs"] for j in jobs} == {30}


def test_the_flagship_sweep_is_branched_and_costed_per_job():
    spec = load_spec(ROOT / "sweeps" / "capacity.yaml")
    assert spec.cooldown_branches and len(spec.grid["seed"]) >= 2
    est = cost.assumed(2e7, 14, 2048, 0.1)
    jobs = cost.job_costs(spec, plan(spec, est), cost.DEFAULT_MFU, cost.PEAK_TFLOPS)
    assert len(jobs) == 6 * 2  # one job per size and seed: its trunk, then its 5 branches
    assert {j["epochs"] for j in jobs} == {800 + 2 + 7 + 20 + 60 + 200}  # 1,089 epochs instead of 1,445
    assert all(j["warning"] is None or "raise time_min" not in j["warning"] for j in jobs)  # within max_requeues
