"""Peak memory and time of the build after parsing: in memory (``build.build_into``) against bucket by bucket
(``corpus.bounded``, ``bucket_facts``), at growing scale, and whether both make the same corpus.

Input: the real T-REx facts of ../shared/data/wikidata/trex/mTRExf (``--base`` raw facts of them), replicated
``--scales`` times with renamed subjects (Q42 -> Q42000007 in copy 7: new subjects, the same labels, so every
key is ambiguous and disambiguated, and every value's count grows with the copies). The copies are written as
parquet parts of 50,000 raw facts by a separate process (cached in ``--dir``), as a parse leaves them.

Each (scale, way) runs in a fresh process: its peak RSS is reset after imports (``/proc/self/clear_refs``), then
``memory`` reads every part into one frame and runs ``build_into``, ``buckets`` runs ``build_bounded`` over the
parts with buckets of ``--bucket-facts`` raw facts. Both train the BPE on at most ``--tokenizer-sample`` texts
(the same sample). Each line prints seconds, seconds per 1M raw facts, peak RSS and the corpus hash; the last
lines compare the hashes and the peak memory across scales.

    python benchmarks/bench_build.py --scales 4,40,400
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_labels import _reset_peak, _rss_mb  # this directory is on sys.path when run as a script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikidata"
PART = 50_000


def generate(scale: int, base: int, d: Path) -> list[Path]:
    """The replicated raw facts as parquet parts (written once per scale and base, then reused)."""
    import polars as pl

    from factscale.corpus.tables.triples import read_triples, templates_for

    root = d / f"raw-{base}x{scale}"
    if (root / "done").exists():
        return sorted(root.glob("part-*.parquet"))
    root.mkdir(parents=True, exist_ok=True)
    templates, _ = templates_for([], SHARED / "trex" / "relations.jsonl")
    raw = read_triples([SHARED / "trex" / "mTRExf"], templates=templates)[0].head(base)
    buf, n = [], 0
    for copy in range(scale):
        buf.append(raw.with_columns(subject_id=pl.col("subject_id") + f"{copy:06d}"))
        if sum(b.height for b in buf) >= PART or copy == scale - 1:
            pl.concat(buf).write_parquet(root / f"part-{n:07d}.parquet")
            buf, n = [], n + 1
    (root / "done").write_text("")
    return sorted(root.glob("part-*.parquet"))


def one(scale: int, way: str, a) -> dict:
    import polars as pl

    from factscale.corpus.bounded import build_bounded
    from factscale.corpus.build import build_into

    files = sorted((Path(a.dir) / f"raw-{a.base}x{scale}").glob("part-*.parquet"))
    rules = dict(multi_value="drop", ambiguous_keys="disambiguate", heldout_frac=0.1, vocab_size=2048, seed=0,
                 copyable="drop", tokenizer_sample=a.tokenizer_sample, source_info={"kind": "triples"})
    before = _rss_mb("VmRSS")
    _reset_peak()
    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=a.dir) as out:
        if way == "memory":
            m = build_into(pl.read_parquet(files), out, **rules)
        else:
            m = build_bounded(files, Path(out), bucket_facts=a.bucket_facts, **rules)
    return {"scale": scale, "way": way, "raw": m["counts"]["raw_facts"], "kept": m["counts"]["kept_facts"],
            "seconds": time.time() - t0, "peak_mb": _rss_mb(), "start_mb": before, "hash": m["corpus_hash"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", default="4,40,400")
    ap.add_argument("--base", type=int, default=5000, help="raw T-REx facts per copy")
    ap.add_argument("--bucket-facts", type=int, default=50_000)
    ap.add_argument("--tokenizer-sample", type=int, default=100_000)
    ap.add_argument("--ways", default="memory,buckets")
    ap.add_argument("--dir", default="/tmp/factscale-bench-build")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--gen", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.gen:
        generate(a.gen, a.base, Path(a.dir))
        return
    if a.one:
        scale, way = a.one.split(":")
        print(json.dumps(one(int(scale), way, a)))
        return
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    args = ["--base", str(a.base), "--bucket-facts", str(a.bucket_facts), "--tokenizer-sample",
            str(a.tokenizer_sample), "--dir", a.dir]
    scales, ways = [int(s) for s in a.scales.split(",")], a.ways.split(",")
    print(f"{a.base:,} real T-REx raw facts per copy; buckets of {a.bucket_facts:,} raw facts; BPE on at most "
          f"{a.tokenizer_sample:,} texts; each run a fresh process")
    print(f"{'way':<8} {'copies':>6} {'raw facts':>11} {'kept':>10} {'seconds':>8} {'s / 1M raw':>10} "
          f"{'peak RSS MB':>11} {'above start':>11}  corpus hash")
    rows = []
    for scale in scales:
        subprocess.run([sys.executable, __file__, "--gen", str(scale), *args], check=True)
        for way in ways:
            r = subprocess.run([sys.executable, __file__, "--one", f"{scale}:{way}", *args], capture_output=True,
                               text=True)
            if r.returncode != 0:
                print(f"{way:<8} {scale:>6} failed: {r.stderr.strip().splitlines()[-1][:200]}")
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{way:<8} {scale:>6} {row['raw']:>11,} {row['kept']:>10,} {row['seconds']:>8.1f} "
                  f"{1e6 * row['seconds'] / row['raw']:>10.1f} {row['peak_mb']:>11.0f} "
                  f"{row['peak_mb'] - row['start_mb']:>11.0f}  {row['hash']}")
    for scale in scales:
        hashes = {r["hash"] for r in rows if r["scale"] == scale}
        if len([r for r in rows if r["scale"] == scale]) > 1:
            print(f"{scale}x: same corpus hash in every way: {len(hashes) == 1}")
    for way in ways:
        got = [r for r in rows if r["way"] == way]
        if len(got) > 1:
            lo, hi = got[0], got[-1]
            print(f"{way} peak RSS above start, {hi['scale']}x / {lo['scale']}x: "
                  f"{(hi['peak_mb'] - hi['start_mb']) / max(lo['peak_mb'] - lo['start_mb'], 1):.2f}x "
                  f"({lo['peak_mb'] - lo['start_mb']:.0f} -> {hi['peak_mb'] - hi['start_mb']:.0f} MB; raw facts "
                  f"{hi['raw'] / lo['raw']:.0f}x)")


if __name__ == "__main__":
    main()
