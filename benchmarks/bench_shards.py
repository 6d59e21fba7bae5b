"""Sharded dump build (job array + merge) against the local build, on the same replicated real entities.

Input: the 149 real entities of ../shared/data/wikidata/dump-sample replicated to ``--gb`` of array-layout
JSON (written once under ``--dir``, outside the repository). Runs the local build (``--workers`` = all
cores) and the sharded build (``--cluster``, ``--shards``, one parser process per shard) of the same
recipe, checks that the two corpora have the same hash, and prints both times, the sum of the shard jobs'
own parse times, and the ratio. With ``--cluster slurm``, source a cluster's env.sh first.

    python benchmarks/bench_shards.py --gb 0.5 --cluster slurm --shards 4
"""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from factscale.corpus import CorpusSpec, build_from_spec
from factscale.corpus.spec import Sharding
from factscale.corpus.wikidata.shards import build_sharded

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikidata"
LABELS = SHARED / "properties" / "wikidata-predicates.json"


def make_json(gb: float, d: Path) -> Path:
    """The real sample entities, one per line in the dump's array layout, repeated to ``gb`` (as bench_corpus)."""
    lines = [ln.rstrip(",\n") + ",\n" for ln in open(SHARED / "dump-sample" / "latest-all.head50.json")
             if ln.strip() not in "[]"]
    lines += [ln.rstrip(",\n") + ",\n" for ln in bz2.open(SHARED / "dump-sample" / "items100.json.bz2", "rt")
              if ln.strip() not in "[]"]
    block = "".join(lines).encode()
    path = d / f"wd-{gb:g}gb.json"
    if not path.exists():
        d.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".tmp"), "wb") as fh:
            fh.write(b"[\n")
            for _ in range(int(gb * 1e9 / len(block)) + 1):
                fh.write(block)
        os.replace(path.with_suffix(".tmp"), path)
    return path


def make_bz2(src: Path) -> Path:
    """``src`` compressed once (lbzip2/bzip2 when installed, else Python's bz2) beside it."""
    path = src.with_name(src.name + ".bz2")
    if not path.exists():
        tool = shutil.which("lbzip2") or shutil.which("bzip2")
        tmp = path.with_suffix(".tmp")
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            if tool:
                subprocess.run([tool, "-c"], stdin=fin, stdout=fout, check=True)
            else:
                fout.write(bz2.compress(fin.read()))
        os.replace(tmp, path)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=0.5)
    ap.add_argument("--dir", default="/tmp/factscale-bench-corpus")
    ap.add_argument("--cluster", default="local", choices=["local", "slurm", "debug"])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--bz2", action="store_true", help="the same JSON as one .bz2 file, split at its blocks")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    src = make_json(a.gb, Path(a.dir))
    if a.bz2:
        src = make_bz2(src)
    spec = CorpusSpec(dump=[str(src)], labels=[str(LABELS)], workers=cores)
    out = Path(a.dir) / "out"
    print(f"input: {src.stat().st_size / 1e6:,.0f} MB of {'.bz2' if a.bz2 else 'JSON'} (real entities replicated), "
          f"{cores} cores")

    t = time.perf_counter()
    plain = build_from_spec(spec, out / "local")
    t_local = time.perf_counter() - t
    print(f"local build, {cores} worker processes: {t_local:.1f} s")

    said = []
    t = time.perf_counter()
    as_shards = Sharding(cluster=a.cluster, shards=int(a.shards), cpus=1, mem_gb=2, time_min=30)
    sharded = build_sharded(dataclasses.replace(spec, sharding=as_shards), out / "sharded", log=said.append)
    t_sharded = time.perf_counter() - t
    shard_s = sum(float(m.group(1)) for line in said if (m := re.search(r", ([\d.]+) s \(", line)))
    print(f"sharded build, --cluster {a.cluster} --shards {a.shards} (1 process each): {t_sharded:.1f} s "
          f"(shard jobs' own parse time, summed: {shard_s:.1f} s)")
    print("  " + next((line for line in said if line.startswith("merged")), "merge: no log line").strip())
    for line in said:
        if "bz2 blocks" in line:
            print("  planner: " + line)
    same = sharded["corpus_hash"] == plain["corpus_hash"] and sharded["counts"] == plain["counts"]
    print(f"same corpus hash and counts: {same} ({plain['corpus_hash']}, {plain['counts']['kept_facts']} facts, "
          f"{plain['counts']['raw_facts']:,} raw)")
    print(f"sharded / local time: {t_sharded / t_local:.2f}x")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
