"""A stack trains where and how its standalone runs would (``stack.stack_device``: ``run.resolve_device``): on a GPU
when one is visible unless ``train.accelerator: cpu``, in fp32 or bf16-mixed (fp32 weights and optimizer, the
forward and loss under bf16 autocast, as Lightning's bf16-mixed), and records it in every result row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_run_config

from factscale.errors import ConfigError
from factscale.training.ensemble import Ensemble
from factscale.training.rundir import RunDir
from factscale.training.stack import check_stackable, run_stack, stack_device

# 2 members, 2 epochs (the GPU check); lr 3e-3 as test_stack's equality test (little noise amplification)
OVER = {"model.size": "2k", "train.epochs": 2, "probe.every_epochs": 1, "optim.schedule": "wsd",
        "optim.warmup_steps": 5, "optim.decay_frac": 0.5, "optim.lr": 3e-3, "train.precision": "bf16-mixed"}
GPU = pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                      reason="needs a CUDA device")])


@pytest.mark.slow  # 2 stacked and 2 standalone runs (about 20 s on 2 cores)
@pytest.mark.parametrize("accelerator", ["cpu", GPU])
def test_a_bf16_mixed_stack_equals_its_standalone_bf16_mixed_runs(tiny_corpus, tmp_path, accelerator, monkeypatch):
    from factscale.training.run import run

    made = []  # the stack's ensembles: what they really train in, not only what the rows say
    init = Ensemble.__init__
    monkeypatch.setattr(Ensemble, "__init__", lambda self, *a, **k: (init(self, *a, **k), made.append(self))[0])
    over = {**OVER, "train.accelerator": accelerator}
    # members of 2 and 3 epochs: the first leaves the stack (Ensemble.keep) on the device
    cfgs = [tiny_run_config(tiny_corpus, tmp_path / "stack", seed=s, **{**over, "train.epochs": 2 + s}) for s in (0, 1)]
    assert run_stack(cfgs)["state"] == "done"
    assert len(made) == 1 and made[0].bf16 and made[0].flat.dtype == torch.float32
    assert made[0].flat.device.type == ("cuda" if accelerator == "gpu" else "cpu") and made[0].K == 1
    for c in cfgs:
        alone = tiny_run_config(tiny_corpus, tmp_path / "alone", seed=c.seed, **{**over, "train.epochs": c.train.epochs})
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


def test_a_stack_does_not_resume_in_another_precision(tiny_corpus, tmp_path, monkeypatch):
    """A bf16 stack relaunched where its config resolves to fp32 (precision auto on a node without a GPU) stops
    with one line instead of going on in fp32 under the bf16 run's name."""
    import factscale.training.stack as stack

    cfgs = [tiny_run_config(tiny_corpus, tmp_path, seed=s, **{"model.size": "2k", "train.epochs": 3,
                                                                 "probe.every_epochs": 1}) for s in (0, 1)]
    monkeypatch.setattr(stack, "stack_device", lambda cfg: (torch.device("cpu"), "bf16-mixed"))
    monkeypatch.setenv("FACTSCALE_FAULT", "raise@1")
    with pytest.raises(RuntimeError, match="injected fault"):
        run_stack(cfgs)
    monkeypatch.delenv("FACTSCALE_FAULT")
    monkeypatch.setattr(stack, "stack_device", lambda cfg: (torch.device("cpu"), "32-true"))
    with pytest.raises(ConfigError, match="trained in bf16-mixed; this job would go on in 32-true"):
        run_stack(cfgs)
    assert all("trained in bf16-mixed" in RunDir(c).error.read_text() for c in cfgs)  # failed, not hidden


def test_the_stack_never_mixes_devices(monkeypatch):
    """The meta device, like CUDA, refuses host tensors in its ops: every step, fork and exit of members runs
    there (fp32 and bf16; autocast mapped to the CPU's, which knows no meta device)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_ensemble import BOS, EOS, PAD, VOCAB, batches, member_configs

    autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device_type, **k: autocast("cpu" if device_type == "meta"
                                                                             else device_type, **k))
    cfgs = member_configs("qwen2")
    data = [batches(c, 2) for c in cfgs]
    ids, labels = (torch.stack([d[0][i] for d in data]) for i in (0, 1))
    for bf16 in (False, True):
        ens = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [4] * 3, device="meta", bf16=bf16)
        assert ens.train_step(ids, labels).device.type == "meta"
        ens.train_step(ids, labels, torch.tensor([True, False, True]))
        ens.fork(0, 1, cfgs[1], 4)
        ens.keep([2, 0])
        ens.train_step(ids[:2], labels[:2])
        assert ens.member(1).lm_head.weight.device.type == "meta"
        assert ens.opt.steps.tolist() == [3, 3] and ens.flat.shape[0] == 2


def test_compiled_graphs_are_cached_under_the_runs_directory_unless_the_user_chose(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    from factscale.training.config import load_run_config
    from factscale.training.run import COMPILE_CACHE, use_compile_cache

    cfg = load_run_config(None, {"corpus.path": "x", "runs_dir": str(tmp_path / "runs")})
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing Lightning leaves there
    use_compile_cache(cfg)
    assert cache_dir() == str((tmp_path / "runs" / COMPILE_CACHE).resolve())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    use_compile_cache(cfg)
    assert cache_dir() == str(tmp_path / "mine")


@pytest.mark.slow  # dynamo traces the stacked step 10 times (~15 s here)
def test_a_compiled_stack_may_take_more_shapes_than_dynamos_default_limit(monkeypatch):
    """Dynamo runs a function eager after ``recompile_limit`` shapes (8 by default); one job's stacks may see
    more (K x scored-count buckets x mask kinds), so the stacked step compiles up to ``RECOMPILE_LIMIT``
    shapes, with the process's own limit left as it was. Dynamo's ``eager`` backend: tracing, no inductor."""
    import sys

    import torch._dynamo
    from torch._dynamo.utils import counters

    from factscale.training.ensemble import RECOMPILE_LIMIT, StackedProgram

    sys.path.insert(0, str(Path(__file__).parent))
    from test_ensemble import BOS, EOS, PAD, VOCAB, config

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    torch._dynamo.reset()
    cfgs = [config(seed=s) for s in (0, 1)]
    ens = Ensemble.from_configs(cfgs, VOCAB, BOS, EOS, PAD, [20, 20])
    ens.program = StackedProgram(ens.model_cfg, ens.token_ids)  # its own compiled step (backend: eager)
    ens._losses, ens.compiled = ens.program.compiled_losses(backend="eager"), True
    counters.clear()
    shapes = 10  # more than dynamo's default limit: windows of 6 to 15 tokens
    for t in range(6, 6 + shapes):
        ids = torch.randint(3, VOCAB, (2, 2, t))
        ids[..., 0] = BOS
        labels = ids.clone()
        labels[..., : t // 2] = -100
        ens.train_step(ids, labels)
    assert counters["stats"]["unique_graphs"] == shapes  # every shape compiled, none left to run eager
    assert torch._dynamo.config.recompile_limit == 8 < shapes < RECOMPILE_LIMIT


@pytest.mark.slow  # two fresh Python processes importing Lightning (~18 s here)
def test_compiled_graphs_are_cached_under_the_runs_directory_in_a_fresh_process(tmp_path):
    """In a fresh process, after Lightning's import wrote inductor's default cache directory into the environment,
    ``use_compile_cache`` still moves it under the runs directory; a directory the user chose is kept."""
    import os
    import subprocess
    import sys

    code = ("import lightning, sys\n"
            "from factscale.training.config import load_run_config\n"
            "from factscale.training.run import use_compile_cache\n"
            "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
            "use_compile_cache(load_run_config(None, {'corpus.path': 'x', 'runs_dir': sys.argv[1]}))\n"
            "print(cache_dir())\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str((tmp_path / "runs" / "_compile_cache").resolve())
    mine = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                         env={**env, "TORCHINDUCTOR_CACHE_DIR": mine})
    assert out.stdout.strip() == mine


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
