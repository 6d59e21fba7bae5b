"""Expected bad input gets one `error:` line (exit 2, no traceback) naming the file or field and the fix."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import polars as pl
import pytest
from conftest import tiny_run_config

from factscale.training.rundir import RunDir


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "factscale.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def _one_error_line(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)) * 2)
    (tmp_path / "notparquet.parquet").write_text("x")
    pl.DataFrame({"a": []}).write_parquet(tmp_path / "empty.parquet")
    pl.DataFrame({"run_id": ["r"], "split": ["train"]}).write_parquet(tmp_path / "fewcol.parquet")
    (tmp_path / "t.jsonl").write_text('{"sub_label": "a", "predicate_id": "P17", "obj_label": "b"}\n')
    return tmp_path


@pytest.fixture
def bad_corpus(files, tiny_corpus):
    """A corpus directory whose facts.parquet is random bytes."""
    import shutil

    d = files / "badcorpus"
    shutil.copytree(tiny_corpus, d)
    (d / "facts.parquet").write_bytes(os.urandom(1000))
    return d


@pytest.mark.parametrize("args, needles", [
    (["sweep", "plan", "{d}/bin.yaml"], ["bin.yaml", "not a text file"]),
    (["train", "{d}/bin.yaml"], ["bin.yaml", "not a text file"]),
    (["sweep", "plan", "{d}/missing.yaml"], ["not found"]),
    (["corpus", "build", "--synthetic", "--n-keys", "0", "-o", "{d}/c"], ["--n-keys", ">= 1"]),
    (["corpus", "build", "--synthetic", "--value-vocab", "abc", "-o", "{d}/c"], ["--value-vocab", "integers"]),
    (["fit", "{d}/notparquet.parquet", "--law", "linear-size"], ["not a parquet results table"]),
    (["fit", "{d}/empty.parquet", "--law", "linear-size"], ["no result rows"]),
    (["plot", "all", "{d}/notparquet.parquet"], ["not a parquet results table"]),
    (["fit", "{d}/empty.parquet", "--law", "joint", "--solve", "facts=abc"], ["--solve", "numbers"]),
    (["fit", "{d}/empty.parquet", "--law", "joint", "--solve", "epochs=100"], ["--solve", "facts=F"]),
    (["fit", "{d}/empty.parquet", "--law", "joint", "--name", "../../x"], ["--name", "plain file name"]),
    (["train", "corpus.path={d}/nope"], ["not a corpus directory", "factscale corpus build"]),
    (["collect", "{d}/nope", "-o", "{d}/x.parquet"], ["runs directory not found"]),
    # the second reliability pass: each of these was a traceback or silently accepted
    (["corpus", "build", "--synthetic", "--variant", "frequency:mode=assigned,levels=1/x", "-o", "{d}/c"],
     ["--variant", "levels are integers"]),
    (["corpus", "build", "--synthetic", "--seed", "-1", "-o", "{d}/c"], ["seed", ">= 0"]),
    (["corpus", "build", "--synthetic", "--workers", "0", "-o", "{d}/c"], ["--workers", "positive integer"]),
    (["corpus", "build", "--dump", "{d}/x.json", "--subject-filter", "P31", "-o", "{d}/c"], ["P31=Q5"]),
    (["corpus", "build", "--triples", "{d}/t.jsonl", "--templates", "{d}/bin.yaml", "-o", "{d}/c"],
     ["bin.yaml", "not a text file"]),
    (["fit", "{d}/fewcol.parquet", "--law", "joint"], ["not a results table", "group_by"]),
    (["study", "overwriting", "{d}/notparquet.parquet"], ["not a parquet results table"]),
    (["study", "preference", "{d}/fewcol.parquet"], ["not a results table"]),
    (["fit", "{d}/empty.parquet", "--law", "joint", "--solve", "facts=10,epochs=-10"], ["--solve", "> 0"]),
    (["train", "corpus.path={d}/badcorpus", "runs_dir={d}/runs"], ["facts.parquet", "unreadable"]),
])
def test_bad_input_is_one_error_line(files, bad_corpus, args, needles, capsys):
    from factscale.cli.main import main

    with pytest.raises(SystemExit) as e:  # in-process: the same main() the console script runs
        main([a.format(d=files) for a in args])
    _one_error_line(subprocess.CompletedProcess(args, e.value.code, "", capsys.readouterr().err), *needles)
    assert not (files / "c").exists() and not (files / "x.parquet").exists() and not (files / "runs").exists()


@pytest.mark.slow  # over 4 s: the fast tier stays under 2 minutes
def test_a_second_concurrent_train_is_one_error_line(tiny_corpus, tmp_path, capsys):
    from factscale.cli.main import main

    cfg = tiny_run_config(tiny_corpus, tmp_path)
    rd = RunDir(cfg)
    rd.create()
    assert rd.lock.acquire()  # another process is training this run (flock: a second open conflicts, same process too)
    try:
        args = [f"{k}={v}" for k, v in {"corpus.path": tiny_corpus, "runs_dir": tmp_path, "model.size": "30k",
                                        "train.epochs": 60, "train.batch_size": 4, "train.seq_len": 64,
                                        "train.loss_on": "value", "optim.lr": 0.01, "optim.schedule": "constant",
                                        "probe.every_epochs": 20}.items()]
        with pytest.raises(SystemExit) as e:  # in-process: the console script's main(), without ~5 s of imports
            main(["train", *args])
        _one_error_line(subprocess.CompletedProcess([], e.value.code, "", capsys.readouterr().err), "already running")
    finally:
        rd.lock.release()


def test_saved_model_files_are_readable_by_others(trained_run):
    """save_pretrained writes model.safetensors through a private temp file (mode 0600); the run fixes it."""
    _, cfg = trained_run
    mask = os.umask(0)
    os.umask(mask)
    for p in (RunDir(cfg).model).iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p


def test_a_run_longer_than_the_models_positions_is_refused_before_training(tiny_corpus, tmp_path):
    from factscale.errors import ConfigError
    from factscale.training.run import run

    cfg = tiny_run_config(tiny_corpus, tmp_path / "runs", **{"model.arch": "gpt2", "model.max_position": 4})
    with pytest.raises(ConfigError, match="exceeds model.max_position=4"):
        run(cfg)
    assert not (tmp_path / "runs").exists()


def test_a_corpus_cap_above_the_corpus_is_refused(tiny_corpus, tmp_path):
    from factscale.errors import ConfigError
    from factscale.training.run import run

    cfg = tiny_run_config(tiny_corpus, tmp_path / "runs", **{"corpus.max_facts": 100_000})
    with pytest.raises(ConfigError, match="corpus.max_facts=100000 exceeds the"):
        run(cfg)
    assert not (tmp_path / "runs").exists()


def test_launching_on_an_unreachable_slurm_is_one_line_and_creates_nothing(tmp_path, tiny_corpus, monkeypatch):
    from factscale.errors import ConfigError
    from factscale.launch.spec import spec_from_dict
    from factscale.launch.sweep import launch

    spec = spec_from_dict({"name": "t", "runs_dir": str(tmp_path / "runs"), "grid": {"seed": [0]},
                           "base": {"corpus": {"path": str(tiny_corpus)}, "model": {"size": "1k"}}}, "test")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ConfigError, match="sbatch not found"):
        launch(spec, cluster="slurm")
    assert not (tmp_path / "runs").exists()
