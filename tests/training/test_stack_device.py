"""A stack trains where and how its standalone runs would (``stack.stack_device``: ``run.resolve_device``): on a GPU
when one is visible unless ``train.accelerator: cpu``, in fp32 or bf16-mixed (fp32 weights and optimizer, the
forward and loss under bf16 autocast, as Lightning's bf16-mixed), and records it in every result row."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_run_config

from factscale.errors import ConfigError
from factscale.training.rundir import RunDir
from factscale.training.stack import check_stackable, run_stack, stack_device

# 2 members, 2 epochs (the GPU check); lr 3e-3 as test_stack's equality test (little noise amplification)
OVER = {"model.size": "2k", "train.epochs": 2, "probe.every_epochs": 1, "optim.schedule": "wsd",
        "optim.warmup_steps": 5, "optim.decay_frac": 0.5, "optim.lr": 3e-3, "train.precision": "bf16-mixed"}
GPU = pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                      reason="needs a CUDA device")])


@pytest.mark.slow  # 2 stacked and 2 standalone runs (about 20 s on 2 cores)
@pytest.mark.parametrize("accelerator", ["cpu", GPU])
def test_a_bf16_mixed_stack_equals_its_standalone_bf16_mixed_runs(tiny_corpus, tmp_path, accelerator):
    from factscale.training.run import run

    over = {**OVER, "train.accelerator": accelerator}
    cfgs = [tiny_run_config(tiny_corpus, tmp_path / "stack", seed=s, **over) for s in (0, 1)]
    assert run_stack(cfgs)["state"] == "done"
    for c in cfgs:
        alone = tiny_run_config(tiny_corpus, tmp_path / "alone", seed=c.seed, **over)
        run(alone)
        a, b = pl.read_parquet(RunDir(alone).results), pl.read_parquet(RunDir(c).results)
        assert a["epoch"].to_list() == b["epoch"].to_list() and b["stack_members"][0] == 2
        # what it ran on, as the standalone run records it (the GPU's name on a GPU)
        assert b["precision"].unique().to_list() == a["precision"].unique().to_list() == ["bf16-mixed"]
        assert b["device"].unique().to_list() == a["device"].unique().to_list()
        # bf16 noise, amplified by training as any kernel change is (test_ensemble: 1e-4 relative per 24 steps)
        for col in ("value_loss", "net_bits", "tokens_seen"):
            x, y = (d[col].cast(pl.Float64).to_numpy() for d in (a, b))
            assert np.allclose(x, y, rtol=1e-2), (col, x, y)
        assert np.abs(a["mr"].to_numpy() - b["mr"].to_numpy()).max() <= 0.05


def test_a_stack_refuses_what_it_cannot_train_before_anything_is_created(tiny_corpus, tmp_path):
    for over, says in (({"train.precision": "bf16-true"}, "allowed in a stack: auto, 32-true, bf16-mixed"),
                       ({"train.precision": "16-mixed"}, "train.precision=16-mixed cannot be stacked"),
                       ({"train.devices": 2}, "train.devices and train.num_nodes stay 1")):
        cfgs = [tiny_run_config(tiny_corpus, tmp_path, seed=s, **over) for s in (0, 1)]
        with pytest.raises(ConfigError, match=says):
            run_stack(cfgs)
    assert not any(tmp_path.iterdir())


def test_the_stack_device_is_the_standalone_runs(tiny_corpus, tmp_path):
    cpu = tiny_run_config(tiny_corpus, tmp_path, **{"train.accelerator": "cpu"})
    assert stack_device(cpu) == (torch.device("cpu"), "32-true")
    auto = tiny_run_config(tiny_corpus, tmp_path)
    cuda = torch.cuda.is_available()
    assert stack_device(auto) == (torch.device("cuda" if cuda else "cpu"), "bf16-mixed" if cuda else "32-true")
    gpu = tiny_run_config(tiny_corpus, tmp_path, **{"train.accelerator": "gpu"})
    if not cuda:
        with pytest.raises(ConfigError, match="no CUDA device"):
            stack_device(gpu)
    check_stackable([gpu, gpu])  # launching needs no GPU: a login node has none; the job's node resolves it
