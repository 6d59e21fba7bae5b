"""Every figure a results table supports (paper figures and study figures), with the reason for each skip.

    python figures/make_all.py results/capacity.parquet [--out-dir figures/out]
"""

import argparse

import polars as pl

from factscale.plots.laws import plot_all

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results")
    ap.add_argument("--out-dir", default="figures/out")
    a = ap.parse_args()
    rep = plot_all(pl.read_parquet(a.results), a.out_dir)
    for name, paths in rep["drawn"].items():
        print(f"drew {name}: {paths[0]}")
    for name, why in rep["skipped"].items():
        print(f"skipped {name}: {why}")
