"""Nothing lost, nothing hangs, nothing silently wrong: a build never replaces what is not a corpus, Ctrl-C
stops a parallel build cleanly, and no probe value reaches a result unprobed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

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

    with open(tmp_path / ".c.lock", "a+") as lock:  # released: a later build does not wait
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_build_waiting_on_the_lock_says_who_holds_it(tmp_path):
    import threading

    from factscale.corpus.build import build_lock

    out, lockfile = tmp_path / "c", tmp_path / ".c.lock"
    with build_lock(out, log=pytest.fail):  # free: no waiting line
        assert lockfile.read_text().startswith(f"pid {os.getpid()} on ")
    assert lockfile.read_text() == ""  # the holder line is cleared on release
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
