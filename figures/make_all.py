"""Every figure a results table supports (paper figures and study figures), with the reason for each skip.

    python figures/make_all.py results/capacity.parquet [--out-dir DIR (default figures/out/<results name>)]
"""

import argparse
from pathlib import Path

import polars as pl

from factscale.analysis.fitstore import Fits, results_identity
from factscale.plots.laws import plot_all

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results")
    ap.add_argument("--out-dir")
    ap.add_argument("--fits", help="a directory of fits saved by `factscale fit` from this results table")
    a = ap.parse_args()
    df = pl.read_parquet(a.results)
    fits = Fits(df, a.fits, results_identity(a.results)["sha256"]) if a.fits else None
    rep = plot_all(df, a.out_dir or str(Path("figures/out") / Path(a.results).stem), fits)
    for name, paths in rep["drawn"].items():
        print(f"drew {name}: {paths[0]}")
    for name, why in rep["skipped"].items():
        print(f"skipped {name}: {why}")
