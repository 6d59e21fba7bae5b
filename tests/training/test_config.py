from __future__ import annotations

import pytest

from factscale.errors import ConfigError
from factscale.training.config import load_run_config
from factscale.training.rundir import identity_hash

pytestmark = pytest.mark.unit  # pure functions: the seconds-long tier


def test_overrides_and_hash(tmp_path):
    cfg = load_run_config(None, ["corpus.path=/x", "train.epochs=50", "optim.lr=1e-3", "model.size=1m"])
    assert cfg.train.epochs == 50 and cfg.optim.lr == 1e-3 and cfg.model.size == "1m"
    same = load_run_config(None, {"corpus.path": "/x", "train.epochs": 50, "optim.lr": 0.001, "model.size": "1m",
                                  "train.progress_bar": False})
    assert identity_hash(cfg, "c1") == identity_hash(same, "c1")  # cosmetic fields do not change identity
    assert identity_hash(cfg, "c1") != identity_hash(same, "c2")  # another corpus content is another run
    other = load_run_config(None, {"corpus.path": "/x", "train.epochs": 51, "optim.lr": 0.001, "model.size": "1m"})
    assert identity_hash(cfg, "c1") != identity_hash(other, "c1")


@pytest.mark.parametrize("override, message", [
    ({"train.epochs": -3}, "train.epochs must be a positive integer"),
    ({"train.epochs": "many"}, "train.epochs: expected an integer"),
    ({"train.epoch": 3}, "unknown config key 'train.epoch'"),
    ({"optim.schedule": "linear"},
     r"optim.schedule: 'linear' is not allowed; allowed values: \['cosine', 'constant', 'wsd'\]"),
    ({"model.arch": "bert"}, "model.arch: 'bert' is not allowed"),
    ({"train.loss_on": "keys"}, "train.loss_on"),
    ({"probe.splits": ["train", "test"]}, "probe.splits: unknown"),
    ({"optim.lr": float("inf")}, "optim.lr must be a finite number > 0"),
    ({"optim.lr": float("nan")}, "optim.lr must be a finite number > 0"),
    ({"optim.weight_decay": -0.1}, "optim.weight_decay must be a finite number >= 0"),
    ({"optim.grad_clip": -1.0}, "optim.grad_clip must be a finite number >= 0"),
    ({"optim.beta2": 1.0}, r"optim.beta2 must be in \[0, 1\)"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"corpus.where": False}, r"corpus.where: expected a string, got False \(YAML reads unquoted yes, no"),
    ({"train.logger": "mlflow"},
     r"train.logger: 'mlflow' is not allowed; allowed values: \['csv', 'tensorboard', 'wandb'\]"),
])
def test_bad_fields_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, {"corpus.path": "/x", **override})


def test_missing_corpus_path():
    with pytest.raises(ConfigError, match="corpus.path is required"):
        load_run_config(None, {})


def test_cli_reports_bad_config_without_traceback(tmp_path, capsys):
    from factscale.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("corpus: {path: /nonexistent}\nmodel: {size: 7b}\n")
    for args, message in ((["train", str(cfg)], "not a corpus directory"),  # the corpus is checked first
                          (["train", str(cfg), "train.epochs=-1"], "train.epochs must be a positive integer")):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err and message in err
