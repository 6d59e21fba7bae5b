"""The capacity table as a figure: measured bits per parameter by model size, corpus kind and weight
precision, with the published anchors as horizontal reference lines (quoted, not measured here).

    python figures/capacity_table.py results/capacity-table.parquet [--out-dir DIR (default figures/out/<results name>)]

The input is the table `factscale capacity-table ... -o results/capacity-table` wrote (or any results
tables it accepts: they are turned into the table first).
"""

from __future__ import annotations

import argparse

import polars as pl
import seaborn as sns

from factscale.analysis.capacity import capacity_table, read_tables
from factscale.plots.laws import new_figure, save, themed

MARKERS = {"fp32": "o", "int8": "s", "int4": "v"}
LINESTYLES = {"fp32": "-", "int8": "--", "int4": ":"}


@themed
def figure(table: pl.DataFrame):
    fig, axes = new_figure(ncols=2, figsize=(12, 4.6))
    measured = table.filter(pl.col("measured"))
    corpora = sorted(set(measured["corpus"]) | set(table["corpus"]))
    colors = dict(zip(corpora, sns.color_palette("colorblind", len(corpora))))
    for ax, x, y, what in ((axes[0], "non_embedding_params", "bits_per_param", "non-embedding"),
                           (axes[1], "total_params", "bits_per_total_param", "total")):
        for (corpus, weights), g in measured.group_by("corpus", "weights", maintain_order=True):
            g = g.sort(x)
            ax.errorbar(g[x], g[y], yerr=2 * g[f"{y}_se"].fill_null(0), color=colors[corpus],
                        marker=MARKERS.get(weights, "x"), ls=LINESTYLES.get(weights, "-"), capsize=2,
                        label=f"{corpus}, {weights} (measured)")
        refs = table.filter(~pl.col("measured") & pl.col(y).is_not_null())
        labels: dict[tuple, list[str]] = {}  # one line per (corpus, value); its label lists every setting
        for r in refs.iter_rows(named=True):
            exp = f", {r['exposures']} exp." if r["exposures"] else ""
            who = r["source"].split(",")[0].replace("published: ", "")
            labels.setdefault((r["corpus"], r[y], who), []).append(f"{r['weights']}{exp}")
        for i, ((corpus, value, who), settings) in enumerate(sorted(labels.items(), key=lambda kv: kv[0][1])):
            ax.axhline(value, color=colors[corpus], lw=0.9, ls="-.", alpha=0.7)
            ax.annotate(f"{who}: {value:g} ({corpus}; {'; '.join(settings)})", (0.01 + 0.45 * (i % 2), value),
                        xycoords=("axes fraction", "data"), fontsize=6, color=colors[corpus], va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel(f"{what} parameters")
        ax.set_ylabel(f"capacity bits per {what} parameter")
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.14), ncol=3)
    exps = sorted(set(measured["exposures"].drop_nulls().to_list()))
    fig.suptitle(f"Measured bits per parameter at the final probe ({', '.join(map(str, exps))} exposures; error bars "
                 "+-2 SE of the probe sample); dash-dot lines: published values, not measured here", fontsize=9)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+", help="results/capacity-table.parquet, or results tables to build it from")
    ap.add_argument("--out-dir", default="figures/out/capacity-table")
    a = ap.parse_args()
    frames = read_tables(a.tables)
    if len(frames) == 1 and "measured" in frames[0][1].columns:
        table = frames[0][1]
    else:
        table = capacity_table(frames)
    for p in save(figure(table), a.out_dir, "capacity-table"):
        print(p)


if __name__ == "__main__":
    main()
