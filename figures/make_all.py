"""Every figure a results table supports (paper figures and study figures), with the reason for each skip.

    python figures/make_all.py results/capacity.parquet [--out-dir DIR (default figures/out/<results name>)]
"""

import argparse

import polars as pl

from factscale.analysis.fitstore import default_dir, saved_fits
from factscale.plots.laws import plot_all

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results")
    ap.add_argument("--out-dir")
    ap.add_argument("--fits", help="a directory of fits saved by `factscale fit` from this results table")
    a = ap.parse_args()
    df = pl.read_parquet(a.results)
    rep = plot_all(df, a.out_dir or str(default_dir("figures", a.results)), saved_fits(df, a.results, a.fits))
    for name, paths in rep["drawn"].items():
        print(f"drew {name}: {paths[0]}")
    for name, why in rep["skipped"].items():
        print(f"skipped {name}: {why}")
