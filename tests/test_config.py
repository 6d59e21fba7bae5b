from __future__ import annotations

import subprocess
import sys

import pytest

from factscale.config import ConfigError, config_hash, load_run_config


def test_overrides_and_hash(tmp_path):
    cfg = load_run_config(None, ["corpus.path=/x", "train.epochs=50", "optim.lr=1e-3", "model.size=1m"])
    assert cfg.train.epochs == 50 and cfg.optim.lr == 1e-3 and cfg.model.size == "1m"
    same = load_run_config(None, {"corpus.path": "/x", "train.epochs": 50, "optim.lr": 0.001, "model.size": "1m",
                                  "train.progress_bar": False})
    assert config_hash(cfg) == config_hash(same)  # cosmetic fields do not change identity
    other = load_run_config(None, {"corpus.path": "/x", "train.epochs": 51, "optim.lr": 0.001, "model.size": "1m"})
    assert config_hash(cfg) != config_hash(other)


@pytest.mark.parametrize("override, message", [
    ({"train.epochs": -3}, "train.epochs must be a positive integer"),
    ({"train.epochs": "many"}, "train.epochs: expected an integer"),
    ({"train.epoch": 3}, "unknown config key 'train.epoch'"),
    ({"optim.schedule": "linear"},
     r"optim.schedule: 'linear' is not allowed; allowed values: \['cosine', 'constant', 'wsd'\]"),
    ({"model.arch": "bert"}, "model.arch: 'bert' is not allowed"),
    ({"train.loss_on": "keys"}, "train.loss_on"),
    ({"probe.splits": ["train", "test"]}, "probe.splits: unknown"),
])
def test_bad_fields_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, {"corpus.path": "/x", **override})


def test_missing_corpus_path():
    with pytest.raises(ConfigError, match="corpus.path is required"):
        load_run_config(None, {})


def test_cli_reports_bad_config_without_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("corpus: {path: /nonexistent}\nmodel: {size: 7b}\n")
    r = subprocess.run([sys.executable, "-m", "factscale.cli", "train", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not a corpus directory" in r.stderr  # the corpus is checked first
    r = subprocess.run([sys.executable, "-m", "factscale.cli", "train", str(cfg), "train.epochs=-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "train.epochs must be a positive integer" in r.stderr
