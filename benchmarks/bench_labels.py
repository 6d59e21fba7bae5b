"""Peak memory and time of label resolution (``corpus/labels.py``) against the number of entities, and the old way.

Input: pass 1 of the 149 real entities of ../shared/data/wikidata/dump-sample (their kept facts and labels),
plus a label row for every value they refer to (as a full dump would have), replicated ``--scales`` times
with renamed item ids (Q42 -> Q42000007 in copy 7, so every copy is new entities, values and labels).
Each scale runs in a fresh process: the copies are written as spill parts of ``--batch-rows`` rows, the
process's peak RSS is reset (``/proc/self/clear_refs``), then ``labels.resolve`` runs with buckets of
``--bucket-rows`` rows (label rows + referenced ids), and its time and peak RSS are read (VmHWM). For
comparison, the same process holds what the in-memory code held for the same input (a list of fact tuples and
a dict of labels). Time per million facts is printed so that linear growth shows as a flat column.

    python benchmarks/bench_labels.py --scales 1,10,100
    python benchmarks/bench_labels.py --scales 1000 --ways disk    # one size, resolution only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikidata"


def _rss_mb(field: str = "VmHWM") -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def base_frames():
    import polars as pl

    from factscale.corpus.tables.tsv import load_label_table
    from factscale.corpus.wikidata.dump import DumpOptions, pass1
    from factscale.corpus.wikidata.labels import Spill

    with tempfile.TemporaryDirectory() as d:
        spill, opts = Spill(d), DumpOptions()
        for name in ("latest-all.head50.json", "items100.json.bz2"):
            pass1(SHARED / "dump-sample" / name, opts, spill, 0)
        facts = pl.read_parquet(spill.files("facts"))
        labels = pl.read_parquet(spill.files("labels"))
    props = load_label_table(SHARED / "properties" / "wikidata-predicates.json")
    values = pl.concat([facts["value_id"], facts["unit_id"]]).drop_nulls().unique()
    extra = pl.DataFrame({"id": values, "label": "label of " + values}).with_columns(file=pl.lit(0, dtype=pl.UInt32))
    plabels = pl.DataFrame({"id": list(props), "label": list(props.values())})
    plabels = plabels.with_columns(file=pl.lit(0, dtype=pl.UInt32))
    return facts, pl.concat([labels, extra.filter(~pl.col("id").is_in(labels["id"].implode())), plabels])


def _renamed(df, cols, copy: int):
    import polars as pl

    def ren(c):  # item ids only: property ids stay (a full dump has ~12k of them, whatever its size)
        return pl.when(pl.col(c).str.starts_with("Q")).then(pl.col(c) + f"{copy:06d}").otherwise(pl.col(c))

    return df.with_columns([ren(c) for c in cols])


def one_scale(scale: int, batch_rows: int, bucket_rows: int, way: str) -> dict:
    import polars as pl

    from factscale.corpus.wikidata.labels import Spill, resolve

    facts, labels = base_frames()
    with tempfile.TemporaryDirectory() as d:
        spill = Spill(d, batch_rows, bucket_rows)
        for copy in range(scale):
            spill.add("facts", _renamed(facts, ["subject_id", "value_id", "unit_id"], copy).drop("file"), 0)
            spill.add("labels", _renamed(labels, ["id"], copy).drop("file"), 0)
        spill.flush()
        before = _rss_mb("VmRSS")
        _reset_peak()
        t0 = time.time()
        if way == "disk":
            kept, counts, info, _ = resolve(spill, [], False, {})
            n_kept = sum(pl.scan_parquet(k).select(pl.len()).collect().item() for k in kept)
            buckets = info["buckets"]
        else:  # what the in-memory code held: every kept fact as a tuple, a dict of the labels
            fact_rows = pl.read_parquet(spill.files("facts")).rows()
            lab = dict(pl.read_parquet(spill.files("labels")).select("id", "label").iter_rows())
            n_kept, buckets = sum(1 for f in fact_rows if f[4] is None or f[4] in lab), 0
        return {"scale": scale, "facts": spill.rows["facts"], "labels": spill.rows["labels"], "kept": n_kept,
                "buckets": buckets, "seconds": time.time() - t0, "rss_before_mb": before, "peak_mb": _rss_mb()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", default="1,10,100")
    ap.add_argument("--batch-rows", type=int, default=50_000)
    ap.add_argument("--bucket-rows", type=int, default=100_000)
    ap.add_argument("--ways", default="disk,in-memory", help="disk (labels.resolve), in-memory (the old way's data)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        scale, way = a.one.split(":")
        print(json.dumps(one_scale(int(scale), a.batch_rows, a.bucket_rows, way)))
        return
    rows = []
    print(f"parts of {a.batch_rows:,} rows, buckets of {a.bucket_rows:,} rows (labels + referenced ids); "
          "each run a fresh process")
    print(f"{'way':<10} {'copies':>6} {'facts':>11} {'labels':>10} {'buckets':>7} {'seconds':>8} {'s / 1M facts':>12}"
          f" {'peak RSS MB':>11} {'above start':>11}")
    ways = a.ways.split(",")
    for way in ways:
        for scale in map(int, a.scales.split(",")):
            r = subprocess.run([sys.executable, __file__, "--one", f"{scale}:{way}", "--batch-rows", str(a.batch_rows),
                                "--bucket-rows", str(a.bucket_rows)], capture_output=True, text=True, check=True)
            row = {**json.loads(r.stdout.strip().splitlines()[-1]), "way": way}
            rows.append(row)
            print(f"{way:<10} {scale:>6} {row['facts']:>11,} {row['labels']:>10,} {row['buckets']:>7} "
                  f"{row['seconds']:>8.1f} {1e6 * row['seconds'] / row['facts']:>12.2f} {row['peak_mb']:>11.0f} "
                  f"{row['peak_mb'] - row['rss_before_mb']:>11.0f}")
    for way in ways:
        got = [r for r in rows if r["way"] == way]
        lo, hi = got[0], got[-1]
        print(f"{way} peak RSS {hi['scale']}x / {lo['scale']}x entities: {hi['peak_mb'] / lo['peak_mb']:.2f}x "
              f"({lo['peak_mb']:.0f} -> {hi['peak_mb']:.0f} MB)")
        if way == "disk" and len(got) > 1:
            print(f"disk time {hi['scale']}x / {lo['scale']}x entities: {hi['seconds'] / lo['seconds']:.1f}x "
                  f"({lo['seconds']:.1f} -> {hi['seconds']:.1f} s; linear: {hi['facts'] / lo['facts']:.0f}x)")


if __name__ == "__main__":
    main()
