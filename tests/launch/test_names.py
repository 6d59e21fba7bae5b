"""Readable run names: a sweep's grid axes that ``run_name`` does not spell become the name's prefix, and a
run made under another name (older naming) is found again by its identity hash."""

from __future__ import annotations

from factscale.launch.spec import expand, spec_from_dict
from factscale.training.rundir import RunDir, axes_name
from tests.conftest import tiny_run_config


def test_axes_name_spells_only_what_run_name_does_not():
    assert axes_name({"train.order": "blocked", "optim.lr": 0.01, "seed": 1, "model.size": "2k"}) == \
        "order_blocked-lr_0.01"
    assert axes_name({"train.precision": "bf16-true"}) == "precision_bf16_true"
    assert axes_name({"seed": 0, "train.epochs": 10}) == ""


def test_a_sweeps_grid_axes_are_in_its_run_names(tiny_corpus, tmp_path):
    spec = spec_from_dict({"name": "t", "runs_dir": str(tmp_path), "base": {"corpus": {"path": str(tiny_corpus)},
                           "name": "pre", "model": {"size": "30k"}},
                           "grid": {"train.attention": ["isolated", "packed"], "seed": [0]}}, "t")
    names = sorted(RunDir(c).id.rsplit("-", 1)[0] for c in expand(spec))
    assert names == ["pre-attention_isolated-qwen2-30k-e10-s0", "pre-attention_packed-qwen2-30k-e10-s0"]


def test_a_run_under_another_name_is_found_by_its_identity(tiny_corpus, tmp_path):
    cfg = tiny_run_config(tiny_corpus, tmp_path)
    rd = RunDir(cfg)
    rd.create()
    old = rd.path.with_name("an-older-name-" + rd.id.rsplit("-", 1)[1])
    rd.path.rename(old)
    again = RunDir(cfg)
    assert again.path == old and again.id == old.name
    other = RunDir(tiny_run_config(tiny_corpus, tmp_path, seed=1))  # another identity: never adopted
    assert other.path != old


def test_a_foreign_directory_with_the_hash_is_not_adopted(tiny_corpus, tmp_path):
    cfg = tiny_run_config(tiny_corpus, tmp_path)
    h = RunDir(cfg).id.rsplit("-", 1)[1]
    (tmp_path / f"x-{h}").mkdir()  # no identity.json: not this run
    assert RunDir(cfg).path.name != f"x-{h}"


def test_the_name_prefix_does_not_split_stacks_or_branch_groups(tiny_corpus, tmp_path):
    from factscale.launch.branches import _group_key
    from factscale.training.stack import stack_key

    spec = spec_from_dict({"name": "t", "runs_dir": str(tmp_path), "base": {"corpus": {"path": str(tiny_corpus)},
                           "model": {"size": "30k"}}, "grid": {"optim.lr": [0.01, 0.02], "seed": [0, 1]}}, "t")
    cfgs = expand(spec)
    assert {c.name for c in cfgs} == {"lr_0.01", "lr_0.02"}
    assert len({stack_key(c) for c in cfgs}) == 1  # runs differing in optim.* and seed stack as one
    assert len({_group_key(c) for c in cfgs}) == 4  # (lr, seed) pairs; the name alone never separates them
