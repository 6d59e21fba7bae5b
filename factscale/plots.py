"""Paper figures from a results table (and the fits computed from it), with seaborn.

One theme, set once here. Each ``fig_*`` function takes the results table, draws one figure and returns
it; ``save`` writes PNG and PDF. ``FIGURES`` maps the CLI names to them; ``plot_all`` draws every figure
the table supports and says why it skipped the others.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import seaborn as sns  # noqa: E402

from factscale.fit import LAWS, FitError, fit_law, params_needed  # noqa: E402

sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
_SIZE_ORDER = "cfg.model.size"


class PlotError(ValueError):
    """The results table cannot support this figure (the message says what is missing)."""


def _overall(df: pl.DataFrame, split: str = "train") -> pl.DataFrame:
    return df.filter((pl.col("split") == split) & (pl.col("group_by") == "all"))


def _final(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("epoch") == pl.col("cfg.train.epochs"))


def _size_palette(sizes: list[str]):
    return dict(zip(sizes, sns.color_palette("viridis", len(sizes))))


def _sizes_sorted(df: pl.DataFrame) -> list[str]:
    return (df.group_by(_SIZE_ORDER).agg(pl.col("non_embedding_params").first()).sort("non_embedding_params")
            [_SIZE_ORDER].to_list())


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def fig_mr_curves(df: pl.DataFrame):
    """MR vs epoch for every run (train solid, held-out dashed), coloured by size."""
    d = _overall(df, "train")
    if d["epoch"].n_unique() < 2:
        raise PlotError("MR curves need probes at >= 2 epochs (probe.every_epochs)")
    sizes = _sizes_sorted(d)
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(d.to_pandas(), x="epoch", y="mr", hue=_SIZE_ORDER, hue_order=sizes, units="run_id",
                 estimator=None, palette=_size_palette(sizes), ax=ax)
    h = _overall(df, "heldout")
    if h.height:
        sns.lineplot(h.to_pandas(), x="epoch", y="mr", hue=_SIZE_ORDER, hue_order=sizes, units="run_id",
                     estimator=None, palette=_size_palette(sizes), ax=ax, linestyle="--", legend=False)
    ax.set(xlabel="epochs (passes over the training facts)", ylabel="memorization rate (exact match)",
           title="MR vs epochs (solid: training facts, dashed: held-out)", ylim=(-0.02, 1.02))
    ax.legend(title="non-emb. size")
    return fig


def fig_capacity_vs_size(df: pl.DataFrame):
    """Capacity (facts memorized) vs non-embedding params at each epoch budget, with the linear fit."""
    d = _final(_overall(df))
    if d["non_embedding_params"].n_unique() < 3:
        raise PlotError("capacity vs size needs >= 3 model sizes")
    fig, ax = plt.subplots(figsize=(6, 4))
    budgets = sorted(d["epoch"].unique().to_list())
    pal = dict(zip(budgets, sns.color_palette("rocket", len(budgets))))
    sns.scatterplot(d.to_pandas(), x="non_embedding_params", y="capacity", hue="epoch", palette=pal, ax=ax, s=50,
                    legend=False)
    xs = np.linspace(0, d["non_embedding_params"].max() * 1.05, 100)
    for e in budgets:
        try:
            r = fit_law(df, "linear-size", {"epoch": e}, n_boot=0)
        except FitError:
            continue
        k, c = r["params"]["k"]["value"], r["params"]["c"]["value"]
        ax.plot(xs, k * xs + c, color=pal[e], lw=1.2, label=f"E={e}: {k:.3g} facts/param, R²={r['r2']:.3f}")
    ax.axhline(d["n_facts"].max(), color="grey", ls=":", lw=1, label="facts in corpus")
    ax.set(xlabel="non-embedding parameters", ylabel="capacity (facts memorized)",
           title="Fact capacity is linear in model size")
    ax.legend(fontsize=7)
    return fig


def fig_capacity_vs_epochs(df: pl.DataFrame):
    """Capacity vs epochs for each size, with the negative-exponential fit."""
    d = _overall(df)
    if d["epoch"].n_unique() < 4:
        raise PlotError("capacity vs epochs needs probes at >= 4 epochs")
    sizes = _sizes_sorted(d)
    pal = _size_palette(sizes)
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.scatterplot(d.to_pandas(), x="epoch", y="capacity", hue=_SIZE_ORDER, hue_order=sizes, palette=pal,
                    ax=ax, s=14, alpha=0.7)
    es = np.linspace(d["epoch"].min(), d["epoch"].max(), 200)
    for s in sizes:
        try:
            r = fit_law(df, "exp-epochs", {"size": s}, n_boot=0)
        except FitError:
            continue
        v = {p: r["params"][p]["value"] for p in ("cstar", "a", "b")}
        ax.plot(es, v["cstar"] - v["a"] * np.exp(-v["b"] * es), color=pal[s], lw=1.3,
                label=f"{s}: C*={v['cstar']:.0f}, R²={r['r2']:.3f}")
    ax.set(xlabel="epochs", ylabel="capacity (facts memorized)", title="Capacity saturates with epochs")
    ax.legend(fontsize=7)
    return fig


def fig_bits_per_param(df: pl.DataFrame):
    """Memorized bits per non-embedding parameter vs epochs (Allen-Zhu & Li's 1-2 bits for reference)."""
    d = _overall(df)
    sizes = _sizes_sorted(d)
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(d.to_pandas(), x="epoch", y="bits_per_param", hue=_SIZE_ORDER, hue_order=sizes,
                 palette=_size_palette(sizes), ax=ax, units="run_id", estimator=None)
    for b in (1, 2):
        ax.axhline(b, color="grey", ls=":", lw=1)
    ax.set(xlabel="epochs", ylabel="memorized bits / non-emb. parameter", title="Capacity in bits per parameter")
    return fig


def fig_extrapolation(df: pl.DataFrame, facts: float | None = None):
    """Parameters needed to memorize a target number of facts vs epochs, from the joint fit."""
    try:
        r = fit_law(df, "joint", n_boot=100)
    except FitError as e:
        raise PlotError(f"extrapolation needs the joint law: {e}") from None
    facts = facts or float(_overall(df)["n_facts"].max()) * 10
    es = np.unique(np.geomspace(max(1, _overall(df)["epoch"].min()), 1000, 40).round())
    sol = [params_needed(r, facts, e) for e in es]
    ok = [s for s in sol if np.isfinite(s["non_embedding_params"]) and s["non_embedding_params"] > 0]
    if not ok:
        raise PlotError("the joint fit gives no positive capacity per parameter in this epoch range")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s["epochs"] for s in ok], [s["non_embedding_params"] for s in ok], color="C0",
            label=f"{facts:.3g} facts")
    band = [s for s in ok if s["ci_low"] is not None]
    if band:
        ax.fill_between([s["epochs"] for s in band], [s["ci_low"] for s in band], [s["ci_high"] for s in band],
                        alpha=0.25, color="C0", label="95% CI (run bootstrap)")
    ax.set(xscale="log", yscale="log", xlabel="epochs", ylabel="non-embedding parameters needed",
           title=f"Extrapolation (joint law, R²={r['r2']:.3f})")
    ax.legend()
    return fig


def fig_generalization(df: pl.DataFrame):
    """Held-out value loss vs number of training facts, with the power law."""
    d = _final(_overall(df, "heldout"))
    if d["train_facts"].n_unique() < 3:
        raise PlotError("generalization needs runs at >= 3 corpus sizes (grid over corpus.max_facts)")
    sizes = _sizes_sorted(d)
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.scatterplot(d.to_pandas(), x="train_facts", y="value_loss", hue=_SIZE_ORDER, hue_order=sizes,
                    palette=_size_palette(sizes), ax=ax)
    try:
        r = fit_law(df, "power-gen", n_boot=0)
        xs = np.geomspace(d["train_facts"].min(), d["train_facts"].max(), 100)
        v = {p: r["params"][p]["value"] for p in LAWS["power-gen"].params}
        ax.plot(xs, v["dc"] * xs ** v["alpha"] + v["linf"], color="k", lw=1.2,
                label=f"L = {v['dc']:.3g}·D^{v['alpha']:.3f} + {v['linf']:.3g}, R²={r['r2']:.3f}")
        ax.legend(fontsize=7)
    except FitError:
        pass
    ax.set(xscale="log", xlabel="training facts D", ylabel="held-out value loss (nats/token)",
           title="Generalization to unseen keys")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return fig


def fig_mr_vs_facts(df: pl.DataFrame):
    """Final MR vs number of training facts, per model size."""
    d = _final(_overall(df))
    if d["train_facts"].n_unique() < 2:
        raise PlotError("MR vs facts needs runs at >= 2 corpus sizes (grid over corpus.max_facts)")
    sizes = _sizes_sorted(d)
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(d.to_pandas(), x="train_facts", y="mr", hue=_SIZE_ORDER, hue_order=sizes, marker="o",
                 palette=_size_palette(sizes), ax=ax)
    ax.set(xscale="log", xlabel="training facts", ylabel="memorization rate", ylim=(-0.02, 1.02),
           title="MR falls once facts exceed capacity")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return fig


def fig_groups(df: pl.DataFrame, group_by: str, title: str | None = None):
    """MR over epochs per group of a breakdown column (frequency bucket, variant, phase ...)."""
    d = df.filter((pl.col("split") == "train") & (pl.col("group_by") == group_by))
    if d.height == 0:
        raise PlotError(f"no rows broken down by {group_by!r}")
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(d.to_pandas(), x="epoch", y="mr", hue="group", style=_SIZE_ORDER, ax=ax, errorbar=None)
    ax.set(xlabel="epochs", ylabel="memorization rate", ylim=(-0.02, 1.02), title=title or f"MR by {group_by}")
    return fig


FIGURES = {
    "mr-curves": fig_mr_curves,
    "capacity-vs-size": fig_capacity_vs_size,
    "capacity-vs-epochs": fig_capacity_vs_epochs,
    "bits-per-param": fig_bits_per_param,
    "extrapolation": fig_extrapolation,
    "generalization": fig_generalization,
    "mr-vs-facts": fig_mr_vs_facts,
}


def _all_figures() -> dict:
    from factscale.studies import STUDY_FIGURES  # studies builds on this module's helpers

    return {**FIGURES, **STUDY_FIGURES}


def plot(name: str, df: pl.DataFrame, out_dir: str | Path) -> list[Path]:
    figures = _all_figures()
    if name not in figures:
        raise PlotError(f"unknown figure {name!r}; allowed values: {list(figures) + ['all']}")
    return save(figures[name](df), out_dir, name)


def plot_all(df: pl.DataFrame, out_dir: str | Path) -> dict:
    done, skipped = {}, {}
    for name in _all_figures():
        try:
            done[name] = [str(p) for p in plot(name, df, out_dir)]
        except PlotError as e:
            skipped[name] = str(e)
    return {"drawn": done, "skipped": skipped}


def script_main(name: str) -> None:
    """Entry point of the one-figure scripts under figures/: ``python figures/X.py RESULTS [--out-dir D]``."""
    import argparse

    ap = argparse.ArgumentParser(description=f"draw the '{name}' figure from a factscale results table")
    ap.add_argument("results")
    ap.add_argument("--out-dir", default="figures/out")
    a = ap.parse_args()
    for path in plot(name, pl.read_parquet(a.results), a.out_dir):
        print(path)
