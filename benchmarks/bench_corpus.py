"""Dump parser throughput: factscale's streaming parser (orjson + a process pool) beside a plain
``json.loads``-per-line loop doing the same extraction, on a real dump sample replicated to ~100 MB.

    python benchmarks/bench_corpus.py [--mb 100]

Prints entities/s of each, the ratio, and peak memory (RSS above the start, main process + workers).
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import resource
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from factscale.corpus.wikidata import DumpOptions, extract_entity, stream_dump

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/wikidata/dump-sample/items100.json.bz2"


class PeakRSS:
    """Samples this process's RSS every 20 ms; workers' peak comes from getrusage(RUSAGE_CHILDREN)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _rss(self):
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


def make_dump(mb: int) -> Path:
    lines = [ln for ln in bz2.open(SAMPLE, "rt") if ln.strip() not in ("[", "]")]
    path = Path(tempfile.gettempdir()) / f"factscale-bench-{mb}mb.json"
    if not path.exists():
        size = 0
        with open(path, "w") as fh:
            fh.write("[\n")
            while size < mb * 2**20:
                for ln in lines:
                    fh.write(ln if ln.endswith(",\n") else ln.rstrip("\n").rstrip(",") + ",\n")
                    size += len(ln)
    return path


def plain_loop(path: Path, opts: DumpOptions):
    """The obvious way: one process, json.loads per line, the same extraction."""
    counts: Counter = Counter()
    facts = []
    with open(path) as fh:
        for line in fh:
            s = line.strip().rstrip(",")
            if s in ("[", "]", ""):
                continue
            ent = json.loads(s)
            counts["entities_seen"] += 1
            facts.extend(extract_entity(ent, opts, counts)[1])
    return facts, counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    path = make_dump(a.mb)
    opts = DumpOptions()
    print(f"dump: {path} ({path.stat().st_size / 2**20:.0f} MB), {os.cpu_count()} cores")

    def best_of(fn, reps):  # the machine is shared and runs are short: best of a few repetitions
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    with PeakRSS() as m0:
        t_plain, (facts_plain, c0) = best_of(lambda: plain_loop(path, opts), a.reps)
    n = c0["entities_seen"]
    results = {"plain json.loads loop": (t_plain, m0.delta_mb)}
    for workers in (1, os.cpu_count() or 1):
        with PeakRSS() as m:
            dt, (facts, _, _, c, _) = best_of(lambda w=workers: stream_dump(path, opts, workers=w, chunk_lines=64),
                                              a.reps)
        assert c["entities_seen"] == n and len(facts) == len(facts_plain), "fast path disagrees with the baseline"
        results[f"factscale, {workers} process(es)"] = (dt, m.delta_mb)
    print(f"{'variant':<28} {'entities/s':>12} {'MB/s':>8} {'peak RSS +MB':>13} {'speed-up':>9}")
    for name, (dt, mem) in results.items():
        print(f"{name:<28} {n / dt:>12,.0f} {path.stat().st_size / 2**20 / dt:>8.1f} {mem:>13.0f} "
              f"{t_plain / dt:>8.2f}x")
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"largest worker peak RSS: {child:.0f} MB; facts extracted: {len(facts_plain):,} from {n:,} entities")


if __name__ == "__main__":
    main()
