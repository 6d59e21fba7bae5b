"""Measures and figures for the behaviour studies: compatibility, preference, overwriting, generalization.

Each reads only a results table (probe rows broken down by the study's group column) and draws one
figure; ``plots.FIGURES`` exposes them as ``study-*`` so ``factscale plot study-compatibility R`` works.
Titles say what is plotted; this module imports nothing from ``plots`` (no import cycle) and changes
no global matplotlib state.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from factscale.analysis.studies import (
    compatibility_summary,
    corpus_controls,
    generalization_table,
    rows_by,
)
from factscale.analysis.preference import preference_column, preference_per_seed
from factscale.analysis.vocab import facts_per_size, final_probes
from factscale.errors import PlotError


def _subplots(ncols: int, figsize):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _seed_lines(ax, t: pl.DataFrame, quantities: list[str], labels: list[str], title: str, ylabel: str):
    """Per-seed means vs epoch budget with their t intervals as error bars (none below 3 seeds)."""
    n = 0
    for k, (q, label) in enumerate(zip(quantities, labels)):
        d = t.filter(pl.col("quantity") == q).sort("budget")
        if d.height == 0:
            continue
        lo = (d["mean"] - d["lo"].fill_null(d["mean"])).to_numpy()
        hi = (d["hi"].fill_null(d["mean"]) - d["mean"]).to_numpy()
        ax.errorbar(d["budget"].to_numpy() * (1 + 0.02 * (k - 1.5)), d["mean"].to_numpy(), yerr=[lo, hi],
                    marker="o", capsize=3, label=label)  # budgets nudged apart so the bars do not overlap
        n = max(n, int(d["n"].max()))
    ax.set(xscale="log", xlabel="epoch budget (annealed end point of each)", ylabel=ylabel,
           title=f"{title}\n(mean of {n} seeds, 95% t interval{'' if n >= 3 else ': none, < 3 seeds'})")
    ax.set_xticks(sorted(t["budget"].unique().to_list()), [str(b) for b in sorted(t["budget"].unique().to_list())])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)


def fig_compatibility(df: pl.DataFrame):
    """Forward-statement MR per group (control, twice, paraphrase, inverse) and the differences vs the epoch
    budget (annealed end points), one row per model size."""
    t = compatibility_summary(df)
    sizes = t.sort("non_embedding_params")["cfg.model.size"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(11, 3.8 * len(sizes)))
    axes = fig.subplots(len(sizes), 2, squeeze=False).ravel()  # one row per size: MRs, then differences
    for i, size in enumerate(sizes):
        ts = t.filter(pl.col("cfg.model.size") == size)
        _seed_lines(axes[2 * i], ts, ["fwd_control", "fwd_twice", "fwd_paraphrase", "fwd_inverse"],
                    ["fact once (control)", "fact twice, same words", "fact + paraphrase", "fact + inverse"],
                    f"{size}: MR of the forward statement", "memorization rate")
        axes[2 * i].set_ylim(-0.02, 1.05)
        _seed_lines(axes[2 * i + 1], ts, ["twice_minus_control", "paraphrase_minus_control",
                                          "paraphrase_minus_twice", "inverse_minus_control"],
                    ["twice - control", "paraphrase - control", "paraphrase - twice", "inverse - control"],
                    f"{size}: differences in forward-statement MR", "difference in MR")
        axes[2 * i + 1].axhline(0, color="grey", lw=1)
    fig.tight_layout()
    return fig


def fig_preference(df: pl.DataFrame):
    """MR of each group trained alone vs mixed with the other groups (equal exposures per fact), per size."""
    column = preference_column(df)
    p = preference_per_seed(df, column)
    long = pl.concat([p.select("cfg.model.size", "group", pl.col("mr_alone").alias("mr"), pl.lit("alone").alias("trained")),
                      p.select("cfg.model.size", "group", pl.col("mr_mixed").alias("mr"), pl.lit("mixed").alias("trained"))])
    sizes = p.sort("non_embedding_params")["cfg.model.size"].unique(maintain_order=True).to_list()
    fig, axes = _subplots(len(sizes), (5.5 * len(sizes), 4))
    for ax, size in zip(axes, sizes):
        d = long.filter(pl.col("cfg.model.size") == size).sort("group")
        sns.barplot(d.to_pandas(), x="group", y="mr", hue="trained", ax=ax, errorbar=("pi", 100), capsize=0.1)
        n = p.filter(pl.col("cfg.model.size") == size)["cfg.seed"].n_unique()
        factor, _, half = column.partition("*")
        how = (f"MR of each group's target half,\nalone (beside a {half} half of its own group) vs mixed"
               if half else "each group alone vs mixed, equal exposures per fact")
        ax.set(xlabel=factor, ylabel="memorization rate (annealed end point)", ylim=(0, 1.02),
               title=f"{size}: {how}\n(mean of {n} seeds, bars: range)")
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def fig_overwriting(df: pl.DataFrame):
    """Phase MRs (top) and phase-1 net bits (bottom) vs epochs: blocked order, the continued-phase-1 control
    and interleaved order, per size; the annealed phase-1 reference at the boundary (a first-phase-only run
    of half the epochs) as a point where the sweep has it."""
    d = rows_by(df, "phase")
    if "cfg.train.order" not in d.columns:
        raise PlotError("results lack cfg.train.order")
    d = d.with_columns(curve=pl.format("{} under {}", "group", "cfg.train.order"))
    sizes = d.sort("non_embedding_params")["cfg.model.size"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(6 * len(sizes), 7.5))
    axes = fig.subplots(2, len(sizes), squeeze=False)
    order = [c for c in ("p1 under blocked", "p2 under blocked", "p1 under first-phase-only",
                         "p1 under interleaved", "p2 under interleaved") if c in set(d["curve"].to_list())]
    has_bits = "net_bits" in d.columns and d["net_bits"].null_count() < d.height
    for k, size in enumerate(sizes):
        dsize = d.filter(pl.col("cfg.model.size") == size)
        E = int(dsize["cfg.train.epochs"].max())
        ds = dsize.filter(pl.col("curve").is_in(order) & (pl.col("cfg.train.epochs") == E))
        ref = dsize.filter((pl.col("cfg.train.order") == "first-phase-only") & (pl.col("cfg.train.epochs") == E // 2)
                           & (pl.col("epoch") == E // 2) & (pl.col("group") == "p1"))
        n = ds["cfg.seed"].n_unique()
        for ax, y, label in ((axes[0][k], "mr", "MR of the phase's facts"),
                             (axes[1][k], "net_bits", "net bits of the phase's facts (prior - code, unclipped)")):
            if y == "net_bits" and not has_bits:
                ax.set_axis_off()
                continue
            sns.lineplot(ds.to_pandas(), x="epoch", y=y, hue="curve", hue_order=order, ax=ax, errorbar=("pi", 100))
            if ref.height:
                ax.errorbar([E // 2], [ref[y].mean()], yerr=[[ref[y].mean() - ref[y].min()], [ref[y].max() - ref[y].mean()]],
                            fmt="k*", ms=9, label="p1 annealed at the boundary (first-phase-only, E/2 epochs)")
            ax.axvline(E // 2, color="grey", lw=1, ls=":")
            ax.set(xlabel="epochs (blocked: phase 1 before the dotted line, phase 2 after)", ylabel=label,
                   title=f"{size}: {'phase MRs' if y == 'mr' else 'net bits'} vs epochs (mean of {n} seeds, band: range)")
            if y == "mr":
                ax.set_ylim(-0.02, 1.02)
            ax.title.set_fontsize(9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_generalization_by_relation(df: pl.DataFrame):
    """Held-out MR per relation and held-out excess code length over the known floor vs training facts."""
    from factscale.analysis.fit import fit_law, predict
    from factscale.errors import FitError

    d = final_probes(df.filter((pl.col("split") == "heldout") & (pl.col("group_by") == "relation")))
    if facts_per_size(d) < 2:
        raise PlotError("needs held-out probes at >= 2 corpus sizes at one model size (grid over corpus.max_facts)")
    t = final_probes(generalization_table(df))
    fig, axes = _subplots(2, (10, 4))
    sns.lineplot(d.to_pandas(), x="train_facts", y="mr", hue="group", marker="o", ax=axes[0], errorbar=None)
    axes[0].set(ylabel="held-out MR (unseen keys)", title="Held-out MR by relation vs training facts")
    sns.scatterplot(t.to_pandas(), x="train_facts", y="excess_bits", hue="relation", ax=axes[1])
    labels = []
    for rel in sorted(t["relation"].unique().to_list()):
        try:
            r = fit_law(t.filter(pl.col("relation") == rel), "power-excess", n_boot=0)
        except FitError:
            continue
        xs = np.geomspace(t["train_facts"].min(), t["train_facts"].max(), 50)
        axes[1].plot(xs, predict(r, train_facts=xs), lw=1, color="k")
        labels.append(f"{rel}: {r['params']['dc']['value']:.3g}·D^{r['params']['alpha']['value']:.3f}")
    diff = (t.filter(~pl.col("relation").is_in(corpus_controls(df)) & pl.col("control_excess_bits").is_not_null())
            .group_by("relation", "train_facts").agg(pl.col("excess_over_control_bits").mean()).sort("train_facts"))
    for (rel,), g in diff.group_by("relation", maintain_order=True):
        axes[1].plot(g["train_facts"], g["excess_over_control_bits"], "--", lw=1.2,
                     label=f"{rel} - random control (mean over seeds)")
    axes[1].axhline(0, color="grey", lw=1, ls=":")
    axes[1].set(ylabel="held-out code length - known floor (bits/fact)",
                title="Excess code length over the floor vs training facts" + (f"\n(fits: {'; '.join(labels)})"
                                                                               if labels else ""))
    axes[1].title.set_fontsize(8)
    for ax in axes:
        ax.set(xscale="log", xlabel="training facts")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap
        ax.legend(title="relation", fontsize=7)
    fig.tight_layout()
    return fig


STUDY_FIGURES = {
    "study-compatibility": fig_compatibility,
    "study-preference": fig_preference,
    "study-overwriting": fig_overwriting,
    "study-generalization": fig_generalization_by_relation,
}
