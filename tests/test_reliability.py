"""Nothing lost, nothing hangs, nothing silently wrong: a build never replaces what is not a corpus, Ctrl-C
stops a parallel build cleanly, and no probe value reaches a result unprobed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from factscale.cli.main import main
from factscale.corpus.build import check_target
from factscale.errors import CorpusError


def _build(argv):
    with pytest.raises(SystemExit) as e:
        main(["corpus", "build", *argv])
    return e.value.code


def test_a_directory_holding_a_facts_parquet_is_not_replaced(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "facts.parquet").touch()
    (data / "notes.txt").write_text("keep")
    assert _build(["--synthetic", "--n-keys", "20", "-o", "data"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: -o data: exists and is not a corpus directory")
    assert (data / "notes.txt").read_text() == "keep" and sorted(p.name for p in data.iterdir()) == \
        ["facts.parquet", "notes.txt"]


@pytest.mark.parametrize("target", [".", "..", "./"])
def test_the_current_directory_and_its_parents_are_never_replaced(tmp_path, monkeypatch, capsys, target):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    assert _build(["--synthetic", "--n-keys", "20", "-o", target]) == 2
    assert "is the current directory or holds it" in capsys.readouterr().err
    assert (work / "keep.txt").read_text() == "keep"


def test_a_build_never_replaces_the_directory_holding_its_source(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["corpus", "build", "--synthetic", "--n-keys", "20", "-o", "c1"])
    before = (tmp_path / "c1" / "facts.parquet").read_bytes()
    code = _build(["--hf", "c1/facts.parquet", "--hf-columns", "subject=subject_label,relation=relation,value=value",
                   "-o", "c1"])
    assert code == 2 and "holds the build's input c1/facts.parquet" in capsys.readouterr().err
    assert (tmp_path / "c1" / "facts.parquet").read_bytes() == before


def test_a_corpus_directory_with_foreign_files_is_not_replaced_but_a_plain_one_is(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["corpus", "build", "--synthetic", "--n-keys", "20", "-o", "c"])
    main(["corpus", "build", "--synthetic", "--n-keys", "30", "-o", "c"])  # a corpus: replaced
    assert "120 facts" in capsys.readouterr().out
    (tmp_path / "c" / "notes.md").write_text("mine")
    assert _build(["--synthetic", "--n-keys", "20", "-o", "c"]) == 2
    assert "also holds notes.md" in capsys.readouterr().err
    assert (tmp_path / "c" / "notes.md").read_text() == "mine"


def test_check_target_accepts_new_and_empty_directories(tmp_path):
    assert check_target(tmp_path / "new") == (tmp_path / "new").resolve()
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CorpusError, match="is not a directory"):
        check_target(tmp_path / "file")


# Ctrl-C: the interrupt is injected at a build event (the 3rd parsed chunk reaching the main process), sent to
# the whole process group as a terminal does, so the workers get it too. Never after a sleep.
_INTERRUPT_AT_CHUNK = textwrap.dedent("""
    import os, signal, sys
    # a terminal's Python handles Ctrl-C; a test runner started in the background may pass SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from factscale.corpus.wikidata import dump as wikidata
    chunks = wikidata._chunks
    wikidata._chunks = lambda lines, size, opts: chunks(lines, 4, opts)  # many small chunks
    add, calls = wikidata.Pass1.add, [0]
    def interrupted_add(self, *a, **k):
        calls[0] += 1
        if calls[0] == 3:
            os.killpg(os.getpgrp(), signal.SIGINT)
        return add(self, *a, **k)
    wikidata.Pass1.add = interrupted_add
    from factscale.cli.main import main
    main(sys.argv[1:])
""")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies count as alive for kill(0); a group of zombies only waits for its reaper
    out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return any(not s.startswith("Z") for s in out)


def test_ctrl_c_stops_a_parallel_dump_build_releases_the_lock_and_exits_130(shared, tmp_path):
    sample = (shared / "dump-sample" / "latest-all.head50.json").read_text().splitlines(keepends=True)
    big = tmp_path / "big.json"
    big.write_text("".join(sample[1:] * 3))  # 147 entities: 37 chunks of 4 lines
    out = tmp_path / "c"
    cmd = [sys.executable, "-c", _INTERRUPT_AT_CHUNK, "corpus", "build", "--dump", str(big), "--labels",
           str(shared / "properties" / "pid2name.json"), "-o", str(out), "--workers", "2"]
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=120)  # a safety net: a hang fails here instead of blocking CI
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("a Ctrl-C'd parallel build hung (no exit within 120 s)")
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)"), err
    assert "Traceback" not in err
    assert not _group_alive(p.pid), "a parser worker outlived the build"
    assert not out.exists() and not list(tmp_path.glob(".c.tmp-*"))
    import fcntl

    assert not (tmp_path / ".c.lock").exists()  # released and removed
    with open(tmp_path / ".c.lock", "a+") as lock:  # a later build does not wait
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_build_waiting_on_the_lock_says_who_holds_it(tmp_path):
    import threading

    from factscale.corpus.build import build_lock

    out, lockfile = tmp_path / "c", tmp_path / ".c.lock"
    with build_lock(out, log=pytest.fail):  # free: no waiting line
        assert lockfile.read_text().startswith(f"pid {os.getpid()} on ")
    assert not lockfile.exists()  # removed on release: lock files do not pile up beside corpora
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys
        f = open({str(lockfile)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)
        f.write('pid 4242 on elsewhere, started then'); f.flush()
        print('held', flush=True); sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    seen, got, done = [], threading.Event(), threading.Event()

    def release_when_waiting(msg):  # the waiting line is the event that lets the holder go
        seen.append(msg)
        child.stdin.write("\n")
        child.stdin.flush()

    def second_build():
        with build_lock(out, log=release_when_waiting):
            got.set()
            done.wait(60)

    t = threading.Thread(target=second_build)
    t.start()
    assert got.wait(60) and child.wait(60) == 0
    assert len(seen) == 1 and "held by pid 4242 on elsewhere, started then" in seen[0] and str(out) in seen[0]
    assert lockfile.read_text().startswith(f"pid {os.getpid()} on ")
    done.set()
    t.join(60)
    assert not lockfile.exists()


# ---------------------------------------------------------------- probe values


@pytest.mark.parametrize("override, field", [
    ("probe.batch_size=-1", "probe.batch_size"), ("probe.batch_size=0", "probe.batch_size"),
    ("probe.max_train_facts=-5", "probe.max_train_facts"), ("probe.max_train_facts=0", "probe.max_train_facts"),
    ("probe.every_epochs=0", "probe.every_epochs"),
])
def test_probe_values_out_of_range_are_refused_before_anything_is_created(tiny_corpus, tmp_path, override, field):
    from factscale.errors import ConfigError
    from tests.conftest import tiny_run_config

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_run_config(tiny_corpus, tmp_path / "runs", **dict([override.split("=")]))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("field, value", [("probe.group_columns", ["variantt"]), ("probe.freq_column", "popularty")])
def test_an_unknown_probe_column_is_refused_before_the_run_directory_exists(tiny_corpus, tmp_path, capsys,
                                                                          field, value):
    import yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"corpus": {"path": str(tiny_corpus)}, "runs_dir": str(tmp_path / "runs")}))
    with pytest.raises(SystemExit) as e:
        main(["train", str(cfg), f"{field}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}: column {value if isinstance(value, str) else value[0]!r} is not in "
                          "facts.parquet"), err
    assert not (tmp_path / "runs").exists()


def test_the_prober_refuses_to_count_an_unprobed_fact_as_memorized():
    import torch

    from factscale.probing.engine import probe_batched
    from factscale.training.config import ModelConfig
    from factscale.training.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(size="30k"), vocab_size=64)
    ids = [[1, 5, 6, 7, 2], [1, 8, 9, 2]]
    correct, bits = probe_batched(model, ids, [3, 2], pad_id=0, batch_size=1)
    assert len(correct) == 2 and np.all(bits > 0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        probe_batched(model, ids, [3, 2], pad_id=0, batch_size=-1)
    with pytest.raises(RuntimeError, match="not fully probed"):  # a fact with no value token
        probe_batched(model, ids, [5, 2], pad_id=0)


# ---------------------------------------------------------------- run identity


def test_one_corpus_spelled_four_ways_is_one_run_identity(tiny_corpus, tmp_path, monkeypatch):
    from factscale.training.rundir import RunDir
    from tests.conftest import tiny_run_config

    monkeypatch.chdir(tiny_corpus.parent)
    name = tiny_corpus.name
    ids = {RunDir(tiny_run_config(p, tmp_path / "runs")).id
           for p in (name, f"./{name}", f"{name}/", str(tiny_corpus.resolve()))}
    assert len(ids) == 1


def test_collect_refuses_one_experiment_counted_twice(trained_run, tmp_path, capsys):
    """Older versions named a run after the corpus path as spelled: the same experiment under two ids would pass
    as two seeds (narrower intervals). collect refuses, naming both."""
    import shutil

    import yaml

    from factscale.analysis.collect import collect
    from factscale.errors import CollectError
    from factscale.testing import run_dir

    _, cfg = trained_run
    src = run_dir(cfg)
    runs = tmp_path / "runs"
    shutil.copytree(src, runs / src.name)
    twin = runs / (src.name + "-twin")
    shutil.copytree(src, twin)
    c = yaml.safe_load((twin / "config.yaml").read_text())
    c["corpus"]["path"] = c["corpus"]["path"] + "/"
    (twin / "config.yaml").write_text(yaml.safe_dump(c))
    with pytest.raises(CollectError, match="are the same experiment"):
        collect(runs)
    shutil.rmtree(twin)
    df, report = collect(runs)
    assert report["done"] == [src.name]


def test_a_finished_run_reopens_from_another_directory(trained_run, tmp_path, monkeypatch):
    """A run launched with a relative corpus path (here: ``tiny`` from the corpus' parent) reopens from any
    directory: identity.json keeps where the corpus was, absolute."""
    import json
    import shutil

    import yaml

    from factscale.testing import run_dir
    from factscale.training.rundir import RunDir

    _, cfg = trained_run
    d = tmp_path / "runs" / run_dir(cfg).name
    shutil.copytree(run_dir(cfg), d)
    c = yaml.safe_load((d / "config.yaml").read_text())
    corpus = Path(c["corpus"]["path"])
    c["corpus"]["path"] = corpus.name  # as launched from corpus.parent
    (d / "config.yaml").write_text(yaml.safe_dump(c))
    ident = json.loads((d / "identity.json").read_text())
    assert ident["corpus_dir"] == str(corpus.resolve())
    monkeypatch.chdir(tmp_path)
    rd = RunDir.open(d)
    assert Path(rd.cfg.corpus.path).resolve() == corpus.resolve() and rd.id == d.name


# ---------------------------------------------------------------- bookkeeping


@pytest.mark.parametrize("keep", ["none", "last", "all"])
def test_keep_checkpoints_decides_what_a_done_run_keeps(tiny_corpus, tmp_path, keep):
    from factscale.testing import run_dir
    from factscale.training.run import run
    from tests.conftest import tiny_run_config

    cfg = tiny_run_config(tiny_corpus, tmp_path, **{"train.epochs": 4, "probe.every_epochs": 2, "model.size": "2k",
                                                    "train.keep_checkpoints": keep})
    run(cfg)
    ck = sorted(p.name for p in (run_dir(cfg) / "checkpoints").iterdir())
    assert (run_dir(cfg) / "model" / "model.safetensors").exists()
    assert ck == {"none": [], "last": ["last.ckpt", "prev.ckpt"],
                  "all": ["epoch-2.ckpt", "epoch-4.ckpt", "last.ckpt", "prev.ckpt"]}[keep]


def test_keep_checkpoints_is_not_part_of_the_run_identity(tiny_corpus, tmp_path):
    from factscale.training.rundir import RunDir
    from tests.conftest import tiny_run_config

    ids = {RunDir(tiny_run_config(tiny_corpus, tmp_path, **{"train.keep_checkpoints": k})).id for k in ("none", "all")}
    assert len(ids) == 1


def test_a_killed_attempt_counts_its_wall_time_up_to_its_last_checkpoint(tiny_corpus, tmp_path, monkeypatch):
    import factscale.training.rundir as rundir
    from tests.conftest import tiny_run_config

    clock = iter([100.0, 130.0, 500.0])  # start, a checkpoint 30 s later, then (after a SIGKILL) the next start
    monkeypatch.setattr(rundir.time, "time", lambda: next(clock))
    rd = rundir.RunDir(tiny_run_config(tiny_corpus, tmp_path))
    rd.create()
    rd.start_attempt()
    rd.note_progress()
    st = rd.start_attempt()  # no end_attempt: the first attempt was killed
    assert st["attempts"] == 2 and st["wall_s"] == 30.0


def test_an_attempt_killed_before_its_first_checkpoint_does_not_block_the_next(tiny_corpus, tmp_path):
    """A SIGKILL in the first epoch leaves ``progress: null``; the next attempt starts (it used to raise
    TypeError comparing None with the start time, so the run could never be launched again)."""
    from factscale.training.rundir import RunDir
    from tests.conftest import tiny_run_config

    rd = RunDir(tiny_run_config(tiny_corpus, tmp_path))
    rd.create()
    rd.start_attempt()
    st = rd.start_attempt()  # no checkpoint, no end_attempt: killed in its first epoch
    assert st["attempts"] == 2 and st["wall_s"] == 0.0


def test_corpus_directories_follow_the_umask_not_0700(tmp_path):
    import os
    import stat

    from factscale.corpus import SyntheticSpec, build_synthetic

    old = os.umask(0o022)
    try:
        build_synthetic(tmp_path / "c", SyntheticSpec(n_keys=20, vocab_sizes=[16]), vocab_size=300)
    finally:
        os.umask(old)
    for p in (tmp_path / "c", tmp_path / "c" / "tokenizer"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o755, p
    assert stat.S_IMODE((tmp_path / "c" / "facts.parquet").stat().st_mode) == 0o644


def test_fits_of_two_results_tables_never_overwrite_each_other(tmp_path, monkeypatch, capsys):
    import numpy as np

    from factscale.cli.main import main
    from tests.analysis.test_fit import simulate

    monkeypatch.chdir(tmp_path)
    for name, seed in (("a", 0), ("b", 1)):
        simulate("linear", {"k": 2.0, "c": 100.0}, np.random.default_rng(seed), seeds=2).write_parquet(f"{name}.parquet")
        main(["fit", f"{name}.parquet", "--law", "linear-size", "--bootstrap", "0"])
    assert (tmp_path / "fits/out/a/linear-size.json").exists() and (tmp_path / "fits/out/b/linear-size.json").exists()


# ---------------------------------------------------------------- progress


@pytest.mark.slow  # a CLI training process (imports alone take seconds): 8 s idle, 20 s loaded
def test_a_running_run_shows_its_epoch_mr_and_eta(tiny_corpus, tmp_path):
    """A run stalled (test fault) after epoch 2 of 4 holds its lock: status says running, at epoch 2 of 4, with
    its MRs and an ETA; its own log has a line per probe. The wait is for an event (progress.json), never a sleep."""
    import json
    import time

    from factscale.training.rundir import RunDir
    from tests.conftest import tiny_run_config

    over = {"train.epochs": 4, "probe.every_epochs": 1, "model.size": "2k"}
    cfg = tiny_run_config(tiny_corpus, tmp_path / "runs", **over)
    args = [f"{k}={v}" for k, v in {"corpus.path": tiny_corpus, "runs_dir": tmp_path / "runs", "model.size": "2k",
                                    "train.epochs": 4, "probe.every_epochs": 1, "train.batch_size": 4,
                                    "train.seq_len": 64, "train.loss_on": "value", "train.progress_bar": False,
                                    "optim.lr": 0.01, "optim.schedule": "constant", "train.num_threads": 1}.items()]
    env = {**os.environ, "FACTSCALE_FAULT": "stall@2"}
    log = open(tmp_path / "run.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "factscale.cli", "train", *args], env=env, stdout=log,
                         stderr=subprocess.STDOUT)
    rd = RunDir(cfg)
    try:
        deadline = time.monotonic() + 300  # a safety net, not a timing: the loop ends on the event
        while time.monotonic() < deadline and p.poll() is None:
            prog = json.loads(rd.progress_file.read_text()) if rd.progress_file.exists() else {}
            if prog.get("epoch") == 2 and (rd.path / "checkpoints" / "last.ckpt").exists():
                break
            time.sleep(0.2)
        st = rd.status()
        assert st["state"] == "running", st
        assert st["progress"]["epoch"] == 2 and st["progress"]["epochs"] == 4
        assert set(st["progress"]["mr"]) == {"train", "heldout"} and st["progress"]["eta_s"] > 0
    finally:
        p.kill()
        p.wait()
        log.close()
    lines = (tmp_path / "run.log").read_text()
    assert f"[{rd.id}] epoch 1/4: train MR" in lines and f"[{rd.id}] epoch 2/4: train MR" in lines


def test_the_free_space_check_is_sized_from_the_model(tiny_corpus, tmp_path, monkeypatch):
    import shutil as sh

    import factscale.training.rundir as rundir
    from factscale.training.run import disk_needed_mb, run
    from tests.conftest import tiny_run_config

    big = tiny_run_config(tiny_corpus, tmp_path, **{"model.size": "300m"})
    small = tiny_run_config(tiny_corpus, tmp_path, **{"model.size": "2k"})
    assert disk_needed_mb(big, 384) > 10_000 and 50 <= disk_needed_mb(small, 384) < 60  # 300m: >10 GB
    cfg = tiny_run_config(tiny_corpus, tmp_path, **{"model.size": "10m"})
    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: usage._replace(free=100 * 2**20))
    with pytest.raises(OSError, match=r"only 100 MiB free .* this run needs about \d+ MiB"):
        run(cfg)


def test_status_after_a_corpus_rebuild_says_the_runs_were_done_on_the_earlier_corpus(tmp_path):
    from factscale.corpus import SyntheticSpec, build_synthetic
    from factscale.launch.spec import spec_from_dict
    from factscale.launch.sweep import launch, sweep_status

    corpus = tmp_path / "c"
    build_synthetic(corpus, SyntheticSpec(n_keys=40, vocab_sizes=[16], seed=0), vocab_size=300)
    spec = spec_from_dict({"name": "t", "runs_dir": str(tmp_path / "runs"), "grid": {"seed": [0]},
                           "base": {"corpus": {"path": str(corpus)}, "model": {"size": "1k"},
                                    "train": {"epochs": 2, "batch_size": 4, "seq_len": 32, "progress_bar": False},
                                    "probe": {"every_epochs": 2}}}, "test")
    launch(spec, cluster="debug", log=lambda m: None)
    assert [r["state"] for r in sweep_status(spec)] == ["done"]
    build_synthetic(corpus, SyntheticSpec(n_keys=40, vocab_sizes=[16], seed=1), vocab_size=300)  # new data
    (row,) = sweep_status(spec)
    assert row["state"] == "pending" and "done on an earlier build of the corpus" in row["note"]
