"""Dump parsing throughput at scale: .json / .json.gz / .json.bz2, one process against all cores.

    python benchmarks/bench_corpus.py [--gb 1.0] [--dir /tmp/factscale-bench]

Input: the real entities of ../shared/data/wikidata/dump-sample (head50 + items100, 149 items) replicated
in the dump's array layout to ``--gb`` GB of JSON, then gzip- and bzip2-compressed (cached in ``--dir``,
never in the repository). For each format it times, in this process:

- ``1 process``: ``stream_dump(workers=1)``: the standard library's gzip/bz2 and orjson in one process;
- ``N cores``: ``stream_dump(workers=N)``: indexed_bzip2/rapidgzip decompressing on N threads, N parser
  processes;
- for .json also the plain baseline: ``json.loads`` per line, the same extraction, one process;
- decompression alone (standard library, one thread, against the parallel library on N threads).

MB/s are megabytes of uncompressed JSON per second; per core = MB/s / cores used. Peak memory is the
main process's RSS above its start, plus the largest worker's peak. The full-dump extrapolation divides
an assumed 1.6 TB of JSON (~108M entities, the issue's figure for a 2024 dump) by the measured per-core
rate times 2 and 64 cores: linear scaling in cores is an assumption (measured here only up to this
machine's cores). The last line is ``bz2 speed-up: N.Nx`` (all cores against one process, same .bz2).
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import os
import resource
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

from factscale.corpus.wikidata.dump import DumpOptions, extract_entity, stream_dump
from factscale.corpus.wikidata.dumpio import decompressor_name, open_dump

SAMPLES = Path(__file__).resolve().parents[2] / "shared/data/wikidata/dump-sample"
FULL_DUMP_MB = 1.6e6  # ~1.6 TB of JSON


class PeakRSS:
    """Samples this process's RSS every 20 ms."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    @staticmethod
    def _rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __exit__(self, *a):
        self.stop = True
        self.t.join()
        self.delta_mb = (self.peak - self.start) / 2**20


def make_inputs(gb: float, d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    lines = [ln.rstrip(",\n") + ",\n" for ln in open(SAMPLES / "latest-all.head50.json") if ln.strip() not in "[]"]
    lines += [ln.rstrip(",\n") + ",\n" for ln in bz2.open(SAMPLES / "items100.json.bz2", "rt") if ln.strip() not in "[]"]
    block = "".join(lines).encode()
    path = d / f"wd-{gb:g}gb.json"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"[\n")
            for _ in range(int(gb * 1e9 / len(block)) + 1):
                fh.write(block)
        os.replace(tmp, path)
    out = {"json": path}
    for ext, opener in (("gz", lambda p: gzip.open(p, "wb", compresslevel=6)), ("bz2", lambda p: bz2.open(p, "wb"))):
        cpath = Path(f"{path}.{ext}")
        if not cpath.exists():
            t = time.perf_counter()
            with open(path, "rb") as src, opener(cpath.with_suffix(".tmp")) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
            os.replace(cpath.with_suffix(".tmp"), cpath)
            print(f"  wrote {cpath.name} ({cpath.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t:.0f} s")
        out[ext] = cpath
    return out


def plain_loop(path: Path, opts: DumpOptions):
    """The obvious way: one process, json.loads per line, the same extraction."""
    counts: Counter = Counter()
    n_facts = 0
    with open(path) as fh:
        for line in fh:
            s = line.strip().rstrip(",")
            if s in ("[", "]", ""):
                continue
            counts["entities_seen"] += 1
            n_facts += len(extract_entity(json.loads(s), opts, counts)[1])
    return n_facts, counts["entities_seen"]


def decompress_only(path: Path, threads: int) -> float:
    t = time.perf_counter()
    with open_dump(path, threads) as r:
        while r.fh.read(16 << 20):
            pass
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dir", default="/tmp/factscale-bench")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    files = make_inputs(a.gb, Path(a.dir))
    mb = files["json"].stat().st_size / 1e6
    opts = DumpOptions()
    print(f"input: {mb:,.0f} MB of JSON (real entities replicated), {cores} cores; "
          + ", ".join(f".{k} {p.stat().st_size / 1e6:,.0f} MB" for k, p in files.items()))
    rows, times = [], {}
    with PeakRSS() as m:
        t = time.perf_counter()
        n_plain, ents = plain_loop(files["json"], opts)
        dt = time.perf_counter() - t
    rows.append(("json", "plain json.loads loop", 1, dt, m.delta_mb))
    for fmt, path in files.items():
        for workers in (1, cores):
            with PeakRSS() as m:
                t = time.perf_counter()
                facts, _, c, _ = stream_dump(path, opts, workers=workers)
                dt = time.perf_counter() - t
            assert c["entities_seen"] == ents and len(facts) == n_plain, "fast path disagrees with the baseline"
            del facts
            name = f"{'1 process' if workers == 1 else f'{workers} cores'} ({decompressor_name(path, workers)})"
            rows.append((fmt, name, workers, dt, m.delta_mb))
            times[fmt, workers] = dt
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\n{'format':<6} {'variant':<42} {'MB/s':>7} {'MB/s/core':>10} {'entities/s':>11} {'peak RSS +MB':>13}")
    for fmt, name, used, dt, mem in rows:
        print(f"{fmt:<6} {name:<42} {mb / dt:>7.1f} {mb / dt / used:>10.1f} {ents / dt:>11,.0f} {mem:>13,.0f}")
    print(f"largest worker peak RSS: {worker_peak:,.0f} MB; {n_plain:,} facts from {ents:,} entities per run")

    print("\ndecompression alone (MB/s of JSON out):")
    for fmt in ("gz", "bz2"):
        t1, tn = decompress_only(files[fmt], 1), decompress_only(files[fmt], cores)
        print(f"  .{fmt}: {decompressor_name(files[fmt], 1)} 1 thread {mb / t1:,.0f} MB/s; "
              f"{decompressor_name(files[fmt], cores)} {mb / tn:,.0f} MB/s")

    print(f"\nfull dump extrapolation ({FULL_DUMP_MB / 1e6:.1f} TB of JSON; linear in cores, an assumption):")
    for fmt in files:
        per_core = mb / times[fmt, cores] / cores
        h2, h64 = (FULL_DUMP_MB / (per_core * n) / 3600 for n in (2, 64))
        print(f"  .{fmt}: {per_core:.1f} MB/s per core -> {h2:,.1f} h on 2 cores, {h64:,.1f} h on 64 cores")
    print(f"bz2 speed-up: {times['bz2', 1] / times['bz2', cores]:.1f}x")


if __name__ == "__main__":
    main()
