"""Sharded dump builds (factscale/corpus/shards.py) give exactly the local build, on the real dump samples."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from factscale.cli.main import main
from factscale.corpus import CorpusSpec, build_from_spec
from factscale.corpus.spec import Sharding, dump_options
from factscale.corpus.wikidata.dump import dump_to_raw
from factscale.corpus.wikidata.dumpio import range_lines
from factscale.corpus.wikidata.shards import build_sharded, merge, parse_shard, plan_shards, run_shards
from factscale.errors import CorpusError

ONE = Sharding(cluster="debug", cpus=1, mem_gb=1, time_min=10).resources()


def sharded(spec, cluster, shards):
    """``spec`` parsed as ``shards`` jobs on ``cluster``, each job asking for one CPU."""
    return dataclasses.replace(spec, sharding=Sharding(cluster=cluster, shards=int(shards), cpus=1, mem_gb=1,
                                                       time_min=10))


def _spec(shared, files, **kw):
    return CorpusSpec(dump=[str(f) for f in files], labels=[str(shared / "properties" / "wikidata-predicates.json")],
                      workers=1, **kw)


@pytest.fixture(scope="module")
def corrupt(shared, tmp_path_factory):
    """head50 with bad lines (one truncated entity, non-JSON, a non-entity) and no closing ']'."""
    lines = (shared / "dump-sample" / "latest-all.head50.json").read_text().splitlines(keepends=True)
    bad = lines[:10] + ["this is not json,\n", "{\"truncated\": \n", lines[10][: len(lines[10]) // 2] + "\n"]
    bad += lines[11:30] + ["[1, 2, 3],\n"] + lines[30:]
    p = tmp_path_factory.mktemp("corrupt") / "corrupt.json"
    p.write_text("".join(bad))
    return p


@pytest.fixture(scope="module")
def plain(shared, tmp_path_factory):
    """The local build of both samples (array-layout .json and .json.bz2)."""
    files = [shared / "dump-sample" / "latest-all.head50.json", shared / "dump-sample" / "items100.json.bz2"]
    out = tmp_path_factory.mktemp("plain") / "wd"
    return files, build_from_spec(_spec(shared, files), out), out


def test_byte_ranges_partition_the_lines(shared, tmp_path):
    src = shared / "dump-sample" / "latest-all.head50.json"
    data = src.read_bytes()
    size = len(data)
    # cuts at a line start, just after one, inside lines, and ranges smaller than one line
    for cuts in ([0, size], [0, data.index(b"\n") + 1, size], [0, 1, 2, 3, 1000, size // 2, size],
                 [size * j // 7 for j in range(8)]):
        got = [line for a, b in zip(cuts, cuts[1:]) for line in range_lines(src, a, b)]
        assert b"".join(got) == data and len(got) == data.count(b"\n")


@pytest.mark.parametrize("shards", [2, 5])
def test_shards_finishing_in_any_order_merge_to_the_local_raw_facts(shared, corrupt, tmp_path, shards):
    """Shards parsed last-first (and first-last) merge to dump_to_raw's frame, counts and error lines."""
    if shards > 2:
        pytest.importorskip("indexed_bzip2", reason="5 shards split the .bz2 at its blocks: the fast extra")
    files = [corrupt, shared / "dump-sample" / "items100.json.bz2"]
    spec = _spec(shared, files, max_facts=1500)  # max_facts: the cut falls inside a later shard
    opts = dump_options(spec)
    want, want_counts, want_errors = dump_to_raw(files, opts, label_files=spec.labels)
    assert want_counts["lines_malformed"] == 4 and want_counts["facts_over_max_facts"] > 0
    plan = plan_shards(files, shards)  # with 5, both files split (the .bz2 one at its blocks), by uncompressed size
    assert len(plan) == shards and [s["file"] for s in plan] == [0] * (1 + (shards > 2)) + [1] * (1 + 2 * (shards > 2))
    assert [s.get("bz2", False) for s in plan if s["file"] == 1] == [shards > 2] * (1 + 2 * (shards > 2))
    for name, order in (("last-first", plan[::-1]), ("middle-out", plan[len(plan) // 2:] + plan[: len(plan) // 2])):
        d = tmp_path / name
        for s in order:
            parse_shard(s, opts, d)
        raw, counts, errors = merge(plan, opts, d, spec.labels)
        assert raw.equals(want) and counts == want_counts and errors == want_errors
    assert sorted(e[1] for e in want_errors if e[0] == str(corrupt)) == [11, 12, 13, 33]


def test_finished_shards_are_never_parsed_again(shared, tmp_path):
    files = [shared / "dump-sample" / "latest-all.head50.json"]
    opts, plan, d = dump_options(_spec(shared, files)), plan_shards(files, 3), tmp_path / "shards"
    for s in plan:
        parse_shard(s, opts, d)
    assert parse_shard(plan[0], opts, d) == {"index": 0, "reused": True}
    shutil.rmtree(d / "shard-00001")  # as if its job had failed or been killed
    kept = {p.name: p.stat().st_ino for p in d.iterdir()}
    said = []
    run_shards(plan, opts, d, "debug", ONE, tmp_path / "logs", said.append)
    assert len(said) == 1 and said[0].startswith("  shard 2/3 done: 16 entities")
    assert {p.name: p.stat().st_ino for p in d.iterdir() if p.name in kept} == kept
    assert sorted(p.name for p in d.iterdir()) == ["shard-00000", "shard-00001", "shard-00002"]


@pytest.mark.slow  # shard processes on the local executor, ~4 s
def test_local_executor_sharded_build_has_the_plain_build_hash(shared, plain, tmp_path):
    files, m, plain_dir = plain
    got = build_sharded(sharded(_spec(shared, files), "local", "4"), tmp_path / "wd", log=lambda *_: None)
    assert got["corpus_hash"] == m["corpus_hash"]
    assert got["counts"] == m["counts"] and got["source"]["parse_errors"] == m["source"]["parse_errors"]
    assert got["recipe"] == m["recipe"]  # --cluster/--shards are not part of the recipe
    assert pl.read_parquet(tmp_path / "wd" / "facts.parquet").equals(pl.read_parquet(plain_dir / "facts.parquet"))
    assert sorted(p.name for p in (tmp_path / "wd").iterdir()) == ["facts.parquet", "manifest.json", "tokenizer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wd"]  # no shards, logs, temp dirs or lock file left


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "factscale.cli", "corpus", "build", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("flags, says", [
    (["--cluster", "kubernetes"], "--cluster 'kubernetes'; allowed values: ['slurm', 'local', 'debug']"),
    (["--cluster", "local", "--shards", "0"], "--shards 0 (sharding.shards): expected a positive integer"),
    (["--cluster", "local", "--shards", "two"], "sharding.shards: expected an integer, got 'two'"),
    (["--cluster", "local", "--shards", "3", "--only-gz"], "head50.json.gz is gzip-compressed and a .gz file is one "
                                                           "shard"),
    (["--cluster", "local", "--shard-cpus", "0"], "--shard-cpus 0: must be > 0"),
    (["--shard-cpus", "2"], "--shard-cpus is an option of sharded builds"),
    (["--cluster", "slurm", "--shard-time-min", "1"], "--shard-time-min 1: must be >= 2 (sharding.time_min; SLURM "
                                                      "may send its requeue signal up to 60 s before it is due)"),
])
def test_bad_sharding_options_are_one_error_line_before_anything_is_made(shared, tmp_path, capsys, flags, says):
    dumps = [shared / "dump-sample" / "items100.json.bz2"]
    if "--only-gz" in flags:
        dumps = [tmp_path / "head50.json.gz"]
        dumps[0].write_bytes(gzip.compress((shared / "dump-sample" / "latest-all.head50.json").read_bytes()))
    else:
        dumps.insert(0, shared / "dump-sample" / "latest-all.head50.json")
    flags = [f for f in flags if f != "--only-gz"]
    with pytest.raises(SystemExit) as e:
        main(["corpus", "build", "--dump", *map(str, dumps), "-o", str(tmp_path / "out" / "wd"), *flags])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "out").exists()


def test_a_failed_shard_fails_the_build_naming_the_shard_and_its_log(shared, tmp_path):
    fake = tmp_path / "broken.json.bz2"
    fake.write_bytes(b"not bzip2 at all\n")  # the shard job finds out, not the planner
    out = tmp_path / "out" / "wd"
    with pytest.raises(CorpusError) as e:
        build_sharded(sharded(_spec(shared, [shared / "dump-sample" / "latest-all.head50.json", fake]), "local", 3),
                      out, log=lambda *_: None)
    msg = str(e.value)
    assert msg.startswith("shard 3/3 (broken.json.bz2, whole file) failed: CorpusError: ") and "not bz2 data" in msg
    assert "\n" not in msg
    log = Path(msg.rsplit("log: ", 1)[1])
    assert log.is_file() and "not bz2 data" in log.read_text()
    assert not out.exists() and not list(out.parent.glob(".wd.tmp-*"))  # no half-built corpus


@pytest.mark.slurm
def test_slurm_job_array_builds_the_plain_corpus(shared, plain, tmp_path):
    why = _slurm_down()
    if why:
        if os.environ.get("FACTSCALE_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM required but not reachable: {why}")
        pytest.skip(f"no SLURM cluster reachable ({why}); CI starts one with ../shared/slurm/start-local-slurm.sh")
    files, m, _ = plain
    out = tmp_path / "wd"
    r = _cli("--dump", *files, "--labels", shared / "properties" / "wikidata-predicates.json", "-o", out,
             "--cluster", "slurm", "--shards", 3, "--shard-cpus", 1, "--shard-mem-gb", 1, "--shard-time-min", 10)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "submitted array" in r.stdout and "(3 shards)" in r.stdout
    got = json.loads((out / "manifest.json").read_text())
    assert got["corpus_hash"] == m["corpus_hash"] and got["counts"] == m["counts"]

    r = _cli("--dump", *files, "-o", tmp_path / "big", "--cluster", "slurm", "--shard-cpus", 100000)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--shard-cpus 100000: the largest node" in r.stderr
    assert not (tmp_path / "big").exists() and not (tmp_path / ".big.submitit").exists()

    fake = tmp_path / "broken.json.bz2"
    fake.write_bytes(b"not bzip2 at all\n")
    r = _cli("--dump", files[0], fake, "-o", tmp_path / "bad", "--cluster", "slurm", "--shard-cpus", 1,
             "--shard-mem-gb", 1)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: shard 2/2 (broken.json.bz2, whole file) failed: CorpusError: ")
    assert Path(r.stderr.strip().rsplit("log: ", 1)[1]).is_file() and not (tmp_path / "bad").exists()


def _slurm_down() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch not found"
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return None if r.returncode == 0 and r.stdout.strip() else f"sinfo: {r.stderr.strip() or 'no nodes'}"


@pytest.mark.slow  # the fast tier stays under 2 minutes (the full suite runs it)
def test_benchmark_script_checks_the_same_hash(tmp_path):
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "benchmarks" / "bench_shards.py"),
                        "--gb", "0.01", "--dir", str(tmp_path), "--cluster", "debug", "--shards", "3"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "same corpus hash and counts: True" in r.stdout and "sharded / local time: " in r.stdout


@pytest.mark.slow  # the fast tier stays under 2 minutes (the full suite runs it)
def test_one_bz2_file_split_at_its_blocks_builds_the_local_corpus(shared, tmp_path):
    """3 shards of one .bz2 file (uncompressed byte ranges, each entered at the bz2 block before it through the
    saved block index) give the local build's corpus: same facts, hash, counts and error lines."""
    pytest.importorskip("indexed_bzip2", reason="splitting a .bz2 needs the fast extra: pip install -e '.[fast]'")
    src = shared / "dump-sample" / "items100.json.bz2"
    spec = _spec(shared, [src])
    plan = plan_shards([src], 3)
    assert [(s["start"] > 0, s.get("bz2")) for s in plan] == [(False, True), (True, True), (True, True)]
    assert plan[-1]["end"] == len(bz2.decompress(src.read_bytes())) and len(plan[0]["offsets"]) > 3
    said = []
    got = build_sharded(sharded(spec, "debug", 3), tmp_path / "sharded", log=said.append)
    want = build_from_spec(spec, tmp_path / "local")
    assert got["corpus_hash"] == want["corpus_hash"] and got["counts"] == want["counts"]
    assert got["source"]["parse_errors"] == want["source"]["parse_errors"]
    facts = [pl.read_parquet(tmp_path / d / "facts.parquet") for d in ("sharded", "local")]
    assert facts[0].equals(facts[1]) and facts[0].height > 100
    assert sum("shard" in x and "uncompressed bytes" in x for x in said) == 3, said
    assert said[0].startswith("items100.json.bz2: ") and "bz2 blocks, 10 MB uncompressed, indexed in" in said[0]


def test_a_bz2_file_that_cannot_be_indexed_is_one_shard_said_in_one_line(shared, tmp_path, monkeypatch):
    pytest.importorskip("indexed_bzip2", reason="indexing a .bz2 (and failing to) is the fast extra's path")
    src = shared / "dump-sample" / "items100.json.bz2"
    cut = tmp_path / "truncated.json.bz2"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])  # an interrupted download
    said = []
    plan = plan_shards([cut], 3, log=said.append)
    assert [s["end"] for s in plan] == [None] and len(said) == 1
    assert said[0].startswith("truncated.json.bz2 is one shard, not split at its bz2 blocks: it does not decompress")
    import factscale.corpus.wikidata.dumpio as dumpio

    monkeypatch.setattr(dumpio, "_parallel_module", lambda suffix: None)  # as without indexed_bzip2
    said.clear()
    plan = plan_shards([src, shared / "dump-sample" / "latest-all.head50.json"], 4, log=said.append)
    assert [s["end"] is None for s in plan] == [True, False, False, False]
    assert said == ["items100.json.bz2 is one shard, not split at its bz2 blocks: indexed_bzip2 is not installed "
                    "(pip install indexed_bzip2, or the 'fast' extra)"]


def test_a_sweeps_corpus_build_can_shard_and_reuses_the_corpus(shared, plain, tmp_path):
    """``sharding`` is an option of the dump source in a recipe, so a sweep's ``corpus_build`` parses as a job
    array too: the same corpus hash as the one-process build; not part of the recipe, so a second launch (or a
    recipe without sharding) reuses the corpus instead of rebuilding it."""
    from factscale.launch.spec import spec_from_dict
    from factscale.launch.sweep import ensure_corpus

    files, m, _ = plain
    out = tmp_path / "corpora" / "wd"
    recipe = {"dump": [str(f) for f in files], "labels": [str(shared / "properties" / "wikidata-predicates.json")],
              "workers": 1, "sharding": {"cluster": "debug", "shards": 3, "cpus": 1}}
    sweep = spec_from_dict({"name": "s", "runs_dir": str(tmp_path / "runs"), "corpus_build": recipe,
                            "base": {"corpus": {"path": str(out)}}, "grid": {"seed": [0]}}, "sweep")
    said = []
    ensure_corpus(sweep, log=said.append)
    built = json.loads((out / "manifest.json").read_text())
    assert built["corpus_hash"] == m["corpus_hash"] and built["recipe"] == m["recipe"] and "sharding" not in m["recipe"]
    assert said == [f"building corpus {out} from the sweep's corpus_build"]
    stamp = (out / "facts.parquet").stat().st_mtime_ns
    ensure_corpus(sweep, log=said.append)  # the same recipe: kept
    plain_sweep = spec_from_dict({"name": "s", "runs_dir": str(tmp_path / "runs"), "base": {"corpus": {"path": str(out)}},
                                  "corpus_build": {k: v for k, v in recipe.items() if k != "sharding"},
                                  "grid": {"seed": [0]}}, "sweep")
    ensure_corpus(plain_sweep, log=said.append)  # without sharding: the same recipe, kept
    assert len(said) == 1 and (out / "facts.parquet").stat().st_mtime_ns == stamp


def test_a_short_shard_limit_asks_for_the_signal_early_enough():
    """SLURM sends USR2 up to 60 s early: a 2-minute shard asks for it 30 s before its limit, not 60 s (at the
    job's start, before submitit can catch it)."""
    assert Sharding(cluster="slurm", time_min=2).resources().signal_delay_s == 30
    assert Sharding(cluster="slurm", time_min=3).resources().signal_delay_s == 60


@pytest.mark.parametrize("recipe, message", [
    ({"sharding": {"cluster": "kubernetes"}}, "--cluster 'kubernetes'; allowed values"),
    ({"sharding": {"cpus": 2}}, "--shard-cpus is an option of sharded builds (sharding.cpus)"),
    ({"sharding": {"shards": 2}, "triples": ["x.jsonl"], "dump": []}, "a triples source is read in one process"),
])
def test_bad_sharding_in_a_recipe_names_the_field(shared, recipe, message):
    from factscale.configio import from_dict

    base = {"dump": [str(shared / "dump-sample" / "latest-all.head50.json")]}
    with pytest.raises(CorpusError, match=re.escape(message)):
        from_dict(CorpusSpec, {**base, **recipe})


@pytest.mark.slow  # several parser processes per shard (~3.5 s): the fast tier's margin under 2 minutes
def test_local_shards_with_several_parser_processes_finish(shared, tmp_path):
    """Regression: a shard job's parser pool forked from submitit's job process inherited its SIGTERM handler
    (it only logs), so ``Pool.terminate()`` left a worker alive and the build hung forever (default --shard-cpus
    4, more processes than chunks). The pool now closes when its work is done and its workers take SIGTERM."""
    head = shared / "dump-sample" / "latest-all.head50.json"
    labels = shared / "properties" / "wikidata-predicates.json"
    r = subprocess.run([sys.executable, "-m", "factscale.cli", "corpus", "build", "--dump", str(head), "--labels",
                        str(labels), "--cluster", "local", "--shards", "2", "-o", str(tmp_path / "sh")],
                       capture_output=True, text=True, timeout=300)  # a hang fails here instead of hanging CI
    assert r.returncode == 0, r.stderr[-1500:]
    want = build_from_spec(CorpusSpec(dump=[str(head)], labels=[str(labels)], workers=1), tmp_path / "one")
    assert json.loads((tmp_path / "sh" / "manifest.json").read_text())["corpus_hash"] == want["corpus_hash"]


@pytest.mark.slow  # a CLI build with two local shard processes, ~10 s
def test_sigterm_cancels_local_shard_jobs_and_leaves_no_corpus(shared, tmp_path):
    """``kill`` of a ``--cluster local`` build used to leave its shard processes running (only Ctrl-C cancelled
    them). Now SIGTERM unwinds like Ctrl-C: the shard jobs are cancelled, no corpus or temporary directory is
    left, exit 143. The shard jobs hold (an event: a file the test never creates) until the build is killed."""
    import signal
    import time

    from factscale.corpus.wikidata.shards import HOLD_ENV

    hold = tmp_path / "hold"
    env = {**os.environ, HOLD_ENV: str(hold)}
    p = subprocess.Popen([sys.executable, "-m", "factscale.cli", "corpus", "build", "--dump",
                          str(shared / "dump-sample" / "latest-all.head50.json"), "--labels",
                          str(shared / "properties" / "wikidata-predicates.json"), "--cluster", "local", "--shards", "2",
                          "--shard-cpus", "1", "-o", str(tmp_path / "wd")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while len(list(tmp_path.glob("hold.pid-*"))) < 2:  # both shard jobs started and are holding
            assert p.poll() is None and time.time() < deadline, "the shard jobs never started"
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err[-1500:]
    assert "terminated (SIGTERM)" in err
    pids = [int(f.name.rsplit("-", 1)[1]) for f in tmp_path.glob("hold.pid-*")]
    deadline = time.time() + 120
    while any(_alive(pid) for pid in pids):
        assert time.time() < deadline, f"shard processes {pids} still running after the build was terminated"
        time.sleep(0.1)
    assert not (tmp_path / "wd").exists() and not list(tmp_path.glob(".wd.tmp-*"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
