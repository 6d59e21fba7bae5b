"""Capacity as a plateau in the data: memorized bits vs the training set's entropy at a fixed model size.

Morris et al. 2025 define a model's capacity as the plateau its total memorization reaches as the training
set grows (Allen-Zhu & Li's bits per parameter is the same plateau over N people). This figure draws, per
model size, memorized bits (``capacity_bits``: prior code - model code, clipped at the set) at each training
set size against the set's entropy (``prior_bits``: all of it memorized is the diagonal), and the plateau as
``analysis.saturation.data_plateau`` judges it: a solid line where the gain between the two largest sets is
within +-10% with its interval, dotted and labelled otherwise (still rising, falling, undetermined), and the
peak over D as a star. Imports nothing from ``plots`` (no cycle).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from factscale.analysis.saturation import data_plateau
from factscale.analysis.vocab import SIZE, facts_per_size, final_probes, overall, sizes_sorted
from factscale.errors import PlotError


def fig_bits_vs_data(df: pl.DataFrame):
    """Memorized bits vs training-set entropy per size (final probes at each size's largest budget)."""
    ends = final_probes(overall(df))
    ends = ends.filter(pl.col("epoch") == pl.col("epoch").max().over(SIZE))
    if facts_per_size(ends) < 2:
        raise PlotError("bits vs data needs runs at >= 2 training-set sizes at one model size (grid over corpus.max_facts)")
    sizes = sizes_sorted(ends)
    palette = dict(zip(sizes, sns.color_palette("viridis", len(sizes))))
    plateau = {r["size"]: r for r in data_plateau(df).iter_rows(named=True)}
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    sns.scatterplot(ends.to_pandas(), x="prior_bits", y="capacity_bits", hue=SIZE, hue_order=sizes,
                    palette=palette, alpha=0.5, ax=ax, legend=False)
    means = ends.group_by(SIZE, "train_facts").agg(pl.col("prior_bits").mean(), pl.col("capacity_bits").mean())
    for s in sizes:
        m = means.filter(pl.col(SIZE) == s).sort("prior_bits")
        ax.plot(m["prior_bits"], m["capacity_bits"], "-o", color=palette[s], ms=4, label=f"{s} (mean over seeds)")
        p = plateau.get(s)
        if p is None:
            continue
        ci = (f" (gain {p['gain']:+.0%} [{p['gain_ci_low']:+.0%}, {p['gain_ci_high']:+.0%}] from D={p['from_facts']} "
              f"to {p['to_facts']})" if p["gain_ci_low"] is not None else f" ({p['why']})")
        text = (f"plateau {p['bits_at_largest']:,.0f} bits = {p['bits_per_param_at_largest']:.2f}/non-emb param"
                if p["verdict"] == "plateau" else f"{s}: {p['verdict']} at the largest D")
        ax.axhline(p["bits_at_largest"], color=palette[s], ls="-" if p["verdict"] == "plateau" else ":", lw=1,
                   label=text + ci)
        peak = means.filter((pl.col(SIZE) == s) & (pl.col("train_facts") == p["peak_facts"]))
        ax.plot(peak["prior_bits"], peak["capacity_bits"], "*", color=palette[s], ms=12,
                label=f"{s}: peak {p['peak_bits']:,.0f} bits = {p['peak_bits_per_param']:.2f}/non-emb param "
                      f"at D={p['peak_facts']:,}")
    lim = float(ends["prior_bits"].max())
    xs = np.geomspace(max(1.0, float(ends["prior_bits"].min())), lim, 50)
    ax.plot(xs, xs, color="0.6", ls="--", lw=1, label="every bit of the set memorized")
    ax.set(xscale="log", yscale="log", xlabel="training-set entropy (bits: facts x prior bits per fact)",
           ylabel="memorized bits (code length)",
           title=f"Memorized bits vs training-set size ({int(ends['epoch'].max())} epochs, final probes)")
    ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap
    ax.legend(fontsize=6)
    return fig


def fig_recall_vs_exposures(df: pl.DataFrame):
    """MR of each frequency group vs its exposures (repeats x epochs) per size, final probes, with the fitted
    ``sigmoid-recall`` law MR = sigmoid(a ln N + b ln k + c) drawn per size where it fits."""
    from factscale.analysis.fit import fit_law
    from factscale.analysis.laws import LAWS
    from factscale.errors import FitError

    law = LAWS["sigmoid-recall"]
    try:
        rows = law.select(df)
    except FitError as e:
        raise PlotError(f"recall vs exposures: {e}") from None
    if rows["exposures"].n_unique() < 2:
        raise PlotError("recall vs exposures needs >= 2 exposure counts (a frequency variant and "
                        "probe.group_columns: [freq_level])")
    sizes = sizes_sorted(rows)
    palette = dict(zip(sizes, sns.color_palette("viridis", len(sizes))))
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    sns.lineplot(rows.to_pandas(), x="exposures", y="mr", hue=SIZE, hue_order=sizes, palette=palette, marker="o",
                 errorbar=("pi", 100), ax=ax)
    try:
        r = fit_law(df, "sigmoid-recall", n_boot=0)
        v = {p: r["params"][p]["value"] for p in r["params"]}
        ks = np.geomspace(float(rows["exposures"].min()), float(rows["exposures"].max()), 60)
        for s in sizes:
            n = float(rows.filter(pl.col(SIZE) == s)["non_embedding_params"][0])
            ax.plot(ks, law.fn([np.full_like(ks, n), ks], **v), color=palette[s], ls="--", lw=1)
        ax.set_title(f"MR vs exposures per fact (final probes; dashed: MR = sigmoid({v['a']:.2f} ln N + "
                     f"{v['b']:.2f} ln k {v['c']:+.1f}), R² = {r['r2']:.2f})", fontsize=8)
    except FitError as e:
        ax.set_title(f"MR vs exposures per fact (final probes; law not fitted: {str(e)[:60]})", fontsize=8)
    ax.set(xscale="log", xlabel="exposures k (repeats per epoch x epochs)", ylabel="MR of the facts with k exposures",
           ylim=(-0.02, 1.02))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7, title="size (band: range over seeds)")
    return fig


DATA_FIGURES = {"bits-vs-data": fig_bits_vs_data, "recall-vs-exposures": fig_recall_vs_exposures}
