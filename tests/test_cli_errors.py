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
    return tmp_path


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
])
def test_bad_input_is_one_error_line(files, args, needles, capsys):
    from factscale.cli.main import main

    with pytest.raises(SystemExit) as e:  # in-process: the same main() the console script runs
        main([a.format(d=files) for a in args])
    _one_error_line(subprocess.CompletedProcess(args, e.value.code, "", capsys.readouterr().err), *needles)
    assert not (files / "c").exists() and not (files / "x.parquet").exists()


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
