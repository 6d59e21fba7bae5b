"""Result rows: one per (run, probe step, split, breakdown group), config flattened into columns.

Every row records the full resolved config, seed, git sha, library versions, device and wall time.
Each run writes its own ``results.parquet`` atomically; ``collect`` concatenates a runs directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
from tqdm import tqdm

from factscale.errors import CollectError
from factscale.fsio import write_parquet_atomic  # noqa: F401  (re-exported: results are written with it)
from factscale.training.rundir import RunDir, experiment_key


def collect(runs_dir: str | Path, allow_mixed_corpora: bool = False) -> tuple[pl.DataFrame, dict]:
    """Concatenate every finished run's results; report missing, failed and duplicate runs."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise CollectError(f"runs directory not found: {runs_dir}")
    report = {"done": [], "failed": [], "missing": [], "duplicates": []}
    frames = []
    seen: dict[str, str] = {}
    dirs = sorted(p for p in runs_dir.iterdir() if (p / "config.yaml").exists())
    for d in tqdm(dirs, desc="collect", unit="run", disable=not sys.stderr.isatty() or len(dirs) < 20):
        rd = RunDir.open(d)
        st = rd.status()
        if st["state"] == "done":
            key = experiment_key(rd.cfg, rd.corpus_hash)
            if key in seen:
                raise CollectError(f"{seen[key]} and {d.name} are the same experiment (the same config and corpus "
                                   "content; made by an older factscale from two spellings of the corpus path): "
                                   f"counted twice they would pass as two seeds. Remove one of them from {runs_dir}")
            seen[key] = d.name
            frames.append(pl.read_parquet(d / "results.parquet"))
            report["done"].append(d.name)
        elif st["state"] == "failed":
            report["failed"].append({"run": d.name, "error": st.get("error")})
        else:
            report["missing"].append({"run": d.name, "state": st["state"]})
    if not frames:
        raise CollectError(f"no finished runs under {runs_dir}: {json.dumps(report)}")
    df = pl.concat(frames, how="diagonal_relaxed")
    hashes = df["corpus_hash"].unique().to_list()
    if len(hashes) > 1 and not allow_mixed_corpora:
        raise CollectError(f"runs under {runs_dir} come from {len(hashes)} different corpora {sorted(hashes)}; "
                           "pass --allow-mixed-corpora to combine them anyway")
    key = ["run_id", "epoch", "split", "group_by", "group"]
    dup = df.filter(df.select(key).is_duplicated())
    if dup.height:
        report["duplicates"] = sorted(dup["run_id"].unique().to_list())
        df = df.unique(subset=key, keep="first", maintain_order=True)
    return df, report
