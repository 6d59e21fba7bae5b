"""Figures of the new axes: capacity against the junk ratio (``capacity-vs-junk``) and the forgetting curve
of an injected set with its two fitted forms (``forgetting``). Each reads only a results table; titles say
what is plotted. No global matplotlib state is changed."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from factscale.analysis.axes import FORMS, forgetting_curves, forgetting_fits, junk_per_seed, junk_summary
from factscale.analysis.studies import PARAMS, SIZE


def fig_capacity_vs_junk(df: pl.DataFrame):
    """Keyed bits of the useful facts (left) and the fraction of the clean run's kept (right) against the
    junk ratio, one line per size, solid untagged and dashed tagged; seeds as dots."""
    per_seed = junk_per_seed(df)
    t = junk_summary(df)
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    sizes = per_seed.sort(PARAMS)[SIZE].unique(maintain_order=True).to_list()
    colors = {s: f"C{i}" for i, s in enumerate(sizes)}
    x = lambda r: np.log1p(np.asarray(r, dtype=float))  # noqa: E731 - ratio 0 on a log axis
    for ax, q, ylabel in ((axes[0], "keyed_bits", "keyed bits of the useful facts (final, annealed)"),
                          (axes[1], "retained", "keyed bits / the clean run's (ratio 0, untagged)")):
        for (size, tag), g in t.filter(pl.col("quantity") == q).group_by([SIZE, "tag"], maintain_order=True):
            g = g.sort("ratio")
            ax.plot(x(g["ratio"]), g["mean"], color=colors[size], ls="--" if tag else "-", marker="o",
                    label=f"{size}{' tagged' if tag else ''}")
            s = per_seed.filter((pl.col(SIZE) == size) & (pl.col("tag") == tag))
            ax.scatter(x(s["ratio"]), s[q], color=colors[size], s=8, alpha=0.5)
        ratios = sorted(per_seed["ratio"].unique().to_list())
        ax.set_xticks(x(ratios), [f"{r:g}" for r in ratios])
        ax.set(xlabel="junk tokens per useful token (log(1 + ratio) axis)", ylabel=ylabel)
        ax.legend(fontsize=7)
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    n = int(t["n"].min())
    fig.suptitle(f"Capacity on useful facts vs junk mixed in: mean of {n} seed(s) (lines), each seed (dots); "
                 "dashed = useful facts prefixed with a domain token", fontsize=9)
    fig.tight_layout()
    return fig


def fig_forgetting(df: pl.DataFrame):
    """Bits gained on the injected facts over the never-trained control against optimizer steps since the
    injection ended, per seed, with the power-law and exponential fits; one panel per size and injection."""
    curves = forgetting_curves(df)
    fits = forgetting_fits(df)
    design = [SIZE, "inject_epoch", "inject_epochs"]  # one panel per size and injection
    panels = curves.sort(PARAMS).select(design).unique(maintain_order=True).rows()
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (size, e0, ne) in zip(axes, panels):
        mine = pl.all_horizontal(pl.col(c) == v for c, v in zip(design, (size, e0, ne)))
        for k, ((seed,), g) in enumerate(curves.filter(mine).group_by(["seed"], maintain_order=True)):
            g = g.sort("t")
            ax.scatter(g["t"] + 1, g["gain"], s=10, color=f"C{k}", label=f"seed {seed}")
            f = fits.filter(mine & (pl.col("seed") == seed)).row(0, named=True)
            tt = np.linspace(0, float(g["t"].max()), 200)
            for form, ls in (("power", "-"), ("exponential", "--")):
                p = [f[f"{form}_{n}"] for n in FORMS[form][1]]
                if all(v is not None and math.isfinite(v) for v in p):
                    ax.plot(tt + 1, FORMS[form][0](tt, *p), color=f"C{k}", ls=ls, lw=1,
                            label=f"{form} (held-out RMSE {f[form + '_heldout_rmse']:.3f})")
            ax.axvline(f["split_t"] + 1, color=f"C{k}", lw=0.6, ls=":")
        ax.set(xscale="log", xlabel="optimizer steps since the injection ended (+1)",
               ylabel="bits gained per injected fact (over the control)",
               title=f"{size}, injected in epochs {e0}-{e0 + ne - 1}: fit on the points left of the dotted line,\n"
               "scored on those right of it")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    fig.suptitle("Forgetting of facts trained only at the injection: solid = power law, dashed = exponential",
                 fontsize=9)
    fig.tight_layout()
    return fig


AXES_FIGURES = {"capacity-vs-junk": fig_capacity_vs_junk, "forgetting": fig_forgetting}
