"""Paper figures from a results table (and the fits computed from it), with seaborn.

Each ``fig_*`` function takes the results table, draws one figure and returns it; ``save`` writes PNG
and PDF. Titles say what is plotted, never what a paper concluded. A fitted law is drawn solid over
the range it was fitted on and dashed where it extrapolates; its band is the fit's interval (run bootstrap,
t-interval or trunk jackknife: absent, and the legend says so, when the fit gives none). Axes name the
parameter count and the capacity measure used (``plot --measure``).

Importing this module changes no global state: figures are built on ``matplotlib.figure.Figure``
(no pyplot, no backend switch) inside a seaborn theme context.
"""

from __future__ import annotations

import functools
import inspect
import io
from pathlib import Path

import matplotlib.ticker
import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.figure import Figure

from factscale.analysis.fit import params_needed, predict, predict_band
from factscale.analysis.laws import MAX_FILL, MEASURES
from factscale.analysis.fitstore import Fits, default_dir, saved_fits
from factscale.analysis.vocab import SIZE, facts_per_size, final_probes, label_annealed, overall, sizes_sorted
from factscale.errors import FitError, PlotError
from factscale.fsio import write_atomic
from factscale.plots.axes import AXES_FIGURES
from factscale.plots.data import DATA_FIGURES
from factscale.plots.studies import STUDY_FIGURES

__all__ = ["FIGURES", "PlotError", "plot", "plot_all", "save", "script_main"]
NON_EMB = "non-embedding parameters"
MEASURE_LABELS = {"capacity": "capacity (facts memorized, exact match)",
                  "capacity_above_chance": "capacity above the key-blind baseline (facts)",
                  "keyed_bits": "keyed bits (key-blind code - own-key code, bits)"}


def themed(fn):
    """Draw inside the project's seaborn theme without touching global matplotlib state."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.1):
            return fn(*a, **kw)
    return wrapper


def new_figure(ncols: int = 1, figsize=(6, 4)):
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, (axes[0] if ncols == 1 else axes)


def _size_palette(sizes: list[str]):
    return dict(zip(sizes, sns.color_palette("viridis", len(sizes))))


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path, kw in zip(paths, ({"dpi": 150}, {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix[1:], bbox_inches="tight", **kw)
        write_atomic(path, buf.getvalue())  # a reader never sees half a figure
    return paths


def draw_fit(ax, result: dict, x_col: str, xs: np.ndarray, color, label: str, **fixed_x):
    """The law over ``xs``: solid inside the fitted x range, dashed outside, bootstrap band if any."""
    pts = np.asarray(result["points"][x_col], dtype=float)
    lo, hi = pts.min(), pts.max()
    kw = {x_col: xs, **{k: np.full_like(xs, v, dtype=float) for k, v in fixed_x.items()}}
    y = predict(result, **kw)
    inside = (xs >= lo) & (xs <= hi)
    ax.plot(xs[inside], y[inside], color=color, lw=1.3, label=label)
    for part in (xs < lo, xs > hi):
        if part.any():
            ax.plot(xs[part], y[part], color=color, lw=1.1, ls="--")
    band = predict_band(result, **kw)
    if band is not None:
        ax.fill_between(xs, band[0], band[1], color=color, alpha=0.18, lw=0)


def _ci_note(result: dict) -> str:
    why = result["bootstrap"]["no_interval"]
    bound = [p for p, v in result["params"].items() if v["at_bound"]]
    if bound:
        return f" (no band: {', '.join(bound)} at its bound)"
    return "" if not why else " (no band: too few runs)" if "runs" in why else " (no band)"


@themed
def fig_mr_curves(df: pl.DataFrame):
    """MR vs epoch for every run (train solid, held-out dashed), coloured by size."""
    d = overall(df, "train")
    if d["epoch"].n_unique() < 2:
        raise PlotError("MR curves need probes at >= 2 epochs (probe.every_epochs)")
    sizes = sizes_sorted(d)
    fig, ax = new_figure()
    # markers: a run probed once (a short budget) is a single point, invisible as a line alone
    sns.lineplot(d.to_pandas(), x="epoch", y="mr", hue=SIZE, hue_order=sizes, units="run_id",
                 estimator=None, palette=_size_palette(sizes), ax=ax, marker="o", markersize=3)
    h = overall(df, "heldout")
    if h.height:
        sns.lineplot(h.to_pandas(), x="epoch", y="mr", hue=SIZE, hue_order=sizes, units="run_id",
                     estimator=None, palette=_size_palette(sizes), ax=ax, linestyle="--", legend=False,
                     marker="o", markersize=2)
    ax.set(xlabel="epochs (passes over the training facts)", ylabel="memorization rate (exact match)",
           title="MR vs epochs, every probe of each run\n(solid: training facts, dashed: held-out; "
                 "a run's last probe is its end of schedule)", ylim=(-0.02, 1.02))
    ax.title.set_fontsize(9)
    ax.legend(title="model size")
    return fig


@themed
def fig_capacity_vs_size(df: pl.DataFrame, fits: Fits | None = None):
    """Capacity at each run's final probe vs non-embedding params, with the linear law; the measure is the fits'
    (``plot --measure``); sizes the corpus caps (left out of the law) drawn hollow."""
    d = final_probes(overall(df))
    if d["non_embedding_params"].n_unique() < 3:
        raise PlotError("capacity vs size needs >= 3 model sizes")
    fits = fits or Fits(df)
    y = fits.measure
    if y not in d.columns or d[y].null_count() == d.height:
        raise PlotError(f"the results table has no {y} values (probed before the key-blind baseline existed?)")
    se = f"{y}_se"
    fig, ax = new_figure()
    budgets = sorted(d["epoch"].unique().to_list())
    pal = dict(zip(budgets, sns.color_palette("rocket", len(budgets))))
    capped_note = ""
    for e in budgets:
        de = d.filter(pl.col("epoch") == e)
        try:
            r = fits.get("linear-size", {"epoch": e})
        except FitError:
            r = None
        left = {c["non_embedding_params"] for c in (r or {}).get("excluded_capped", [])}
        for hollow in (False, True):
            part = de.filter(pl.col("non_embedding_params").is_in(list(left)) == hollow)
            if part.height:
                yerr = 1.96 * part[se].to_numpy() if se in part.columns else None
                ax.errorbar(part["non_embedding_params"].to_numpy(), part[y].to_numpy(), yerr=yerr, fmt="o",
                            color=pal[e], mfc="none" if hollow else pal[e], ms=5, capsize=2)
        if left:
            capped_note = f"\n(hollow: filled > {r['max_fill']:.0%} of the facts, capped by the corpus: left out of the law)"
        if r is None:
            continue
        xs = np.linspace(0, d["non_embedding_params"].max() * 1.05, 200)
        k = r["params"]["k"]["value"]
        draw_fit(ax, r, "non_embedding_params", xs, pal[e],
                 f"{e} epochs: C = {k:.3g}·N + c, R²={r['r2']:.3f}{_ci_note(r)}")
    if y != "keyed_bits":  # a ceiling in facts, not in bits
        per_size = d.group_by("non_embedding_params").agg(pl.col("n_facts").max()).sort("non_embedding_params")
        if per_size["n_facts"].n_unique() == 1:
            ax.axhline(per_size["n_facts"][0], color="grey", ls=":", lw=1, label="training facts")
        else:  # each size trained on its own slice (data proportional to size): its own ceiling
            ax.plot(per_size["non_embedding_params"].to_numpy(), per_size["n_facts"].to_numpy(), ls="none",
                    marker="_", ms=14, mew=1.5, color="grey", label="training facts of each size")
    ax.set(xlabel=f"{NON_EMB} N", ylabel=MEASURE_LABELS.get(y, y))
    ax.set_title(f"{MEASURE_LABELS.get(y, y).capitalize()} vs non-embedding parameters\n(final probe of each run;"
                 f" laws solid over the fitted sizes, dashed beyond){capped_note}", fontsize=9)
    ax.legend(fontsize=7)
    return fig


@themed
def fig_capacity_vs_epochs(df: pl.DataFrame, fits: Fits | None = None):
    """Capacity vs epochs per size: final probes (markers), intermediate probes (faint), exp law on final ones."""
    d = label_annealed(overall(df))
    if d["epoch"].n_unique() < 2:
        raise PlotError("capacity vs epochs needs probes at >= 2 epochs")
    fits = fits or Fits(df)
    y = fits.measure
    if y not in d.columns or d[y].null_count() == d.height:
        raise PlotError(f"the results table has no {y} values (probed before the key-blind baseline existed?)")
    sizes = sizes_sorted(d)
    pal = _size_palette(sizes)
    fig, ax = new_figure()
    mid = d.filter(~pl.col("annealed"))
    if mid.height:
        sns.lineplot(d.to_pandas(), x="epoch", y=y, hue=SIZE, hue_order=sizes, units="run_id",
                     estimator=None, palette=pal, ax=ax, lw=0.8, alpha=0.35, legend=False)
    for s in sizes:
        end = d.filter(pl.col("annealed") & (pl.col(SIZE) == s))
        ax.plot(end["epoch"].to_numpy(), end[y].to_numpy(), "o", color=pal[s], ms=5, label=f"{s}")
        try:
            r = fits.get("exp-epochs", {"size": s})
        except FitError:
            continue
        es = np.linspace(end["epoch"].min(), d["epoch"].max() * 2, 300)  # not below the first budget: nothing fitted there
        c = r["params"]["cstar"]["value"]
        draw_fit(ax, r, "epoch", es, pal[s], f"{s}: C* = {c:.0f}, R²={r['r2']:.3f}{_ci_note(r)}")
    ax.set(xlabel="epochs", ylabel=MEASURE_LABELS.get(y, y),
           title=f"{MEASURE_LABELS.get(y, y).capitalize()} vs epochs\n(markers: end-of-schedule probes; faint: "
                 "unannealed intermediate probes;\nlaws solid over the fitted budgets, dashed beyond)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, title="model size")
    return fig


@themed
def fig_bits_per_param(df: pl.DataFrame):
    """Memorized bits per non-embedding and per total parameter vs epochs, with published anchors.

    With annealed end points at >= 2 epoch budgets (several budgets, or cooldown branches) only those are
    drawn (mean over seeds, seeds as markers); otherwise every probe of each run, and the title says so."""
    d = label_annealed(overall(df))
    sizes = sizes_sorted(d)
    ends = d.filter(pl.col("annealed"))
    annealed_axis = ends["epoch"].n_unique() >= 2
    what = ("annealed end points; line: mean over seeds" if annealed_axis
            else "every probe of each run, unannealed intermediate probes included")
    panels = [("bits_per_param", f"memorized bits / {NON_EMB[:-1]}")]
    if "bits_per_total_param" in d.columns and d["bits_per_total_param"].is_not_null().any():
        panels.append(("bits_per_total_param", "memorized bits / total parameter"))
    fig, axes = new_figure(len(panels), figsize=(5.5 * len(panels), 4))
    for ax, (col, lab) in zip(np.atleast_1d(axes), panels):
        if annealed_axis:
            sns.lineplot(ends.to_pandas(), x="epoch", y=col, hue=SIZE, hue_order=sizes, palette=_size_palette(sizes),
                         ax=ax, errorbar=None)
            sns.scatterplot(ends.to_pandas(), x="epoch", y=col, hue=SIZE, hue_order=sizes,
                            palette=_size_palette(sizes), ax=ax, legend=False, s=18)
        else:
            sns.lineplot(d.to_pandas(), x="epoch", y=col, hue=SIZE, hue_order=sizes, palette=_size_palette(sizes),
                         ax=ax, units="run_id", estimator=None)
        for b, note in ((1, "~1 at 100 exposures"), (2, "~2 at 1000 exposures")):
            ax.axhline(b, color="grey", ls=":", lw=1)
            ax.text(ax.get_xlim()[0], b, f" Allen-Zhu & Li: {note}", fontsize=6, va="bottom", color="grey")
        ax.set(xlabel="epochs", ylabel=lab)
        ax.set_title(f"Memorized bits per {lab.split('/ ')[1]} vs epochs\n({what})", fontsize=9)
        ax.legend(title="model size", fontsize=7)
    return fig


@themed
def fig_extrapolation(df: pl.DataFrame, facts: float | None = None, fits: Fits | None = None):
    """Parameters needed to memorize a target number of facts vs epochs, from the joint fit."""
    try:
        r = (fits or Fits(df)).get("joint")
    except FitError as e:
        raise PlotError(f"extrapolation needs the joint law: {e}") from None
    facts = facts or float(overall(df)["n_facts"].max()) * 10
    es = np.unique(np.geomspace(max(1, overall(df)["epoch"].min()), 1000, 40).round())
    sol = [params_needed(r, facts, e) for e in es]
    ok = [s for s in sol if np.isfinite(s["non_embedding_params"]) and s["non_embedding_params"] > 0]
    if not ok:
        raise PlotError("the joint fit gives no positive capacity per parameter in this epoch range")
    fitted = np.asarray(r["points"]["epoch"], dtype=float)
    fig, ax = new_figure()
    e_ok = np.array([s["epochs"] for s in ok])
    n_ok = np.array([s["non_embedding_params"] for s in ok])
    inside = (e_ok >= fitted.min()) & (e_ok <= fitted.max())
    ax.plot(e_ok[inside], n_ok[inside], color="C0", label=f"{facts:.3g} facts (epochs fitted)")
    ax.plot(e_ok[~inside], n_ok[~inside], color="C0", ls="--", label="extrapolated in epochs")
    bound = [p for p, v in r["params"].items() if v["at_bound"]]
    band = [] if bound else [s for s in ok if s["ci_low"] is not None]
    if band:
        ax.fill_between([s["epochs"] for s in band], [s["ci_low"] for s in band], [s["ci_high"] for s in band],
                        alpha=0.25, color="C0", label=f"{int(r['bootstrap']['ci'] * 100)}% CI ({r['interval']})")
    n_max = max(r["points"]["non_embedding_params"])
    beyond = f"\n(the largest fitted size is N = {n_max:,.0f}: beyond it the law is extrapolated in N)" \
        if n_ok.max() > n_max else ""
    ax.set(xscale="log", yscale="log", xlabel="epochs", ylabel=f"{NON_EMB} needed")
    ax.set_title(f"Non-embedding parameters needed for {facts:.3g} facts vs epochs (joint law){beyond}", fontsize=9)
    why = f"no band: {', '.join(bound)} at its bound" if bound else f"no interval: {r['bootstrap']['no_interval']}"
    ax.legend(title=None if band else why[:60], fontsize=7)
    return fig


@themed
def fig_generalization(df: pl.DataFrame, fits: Fits | None = None):
    """Held-out value loss at each run's final probe vs number of training facts, with the power law."""
    d = final_probes(overall(df, "heldout"))
    if facts_per_size(d) < 3:
        raise PlotError("generalization needs runs at >= 3 corpus sizes at one model size (grid over corpus.max_facts)")
    sizes = sizes_sorted(d)
    fig, ax = new_figure()
    sns.scatterplot(d.to_pandas(), x="train_facts", y="value_loss", hue=SIZE, hue_order=sizes,
                    palette=_size_palette(sizes), ax=ax)
    try:
        r = (fits or Fits(df)).get("power-gen")
        v = {p: r["params"][p]["value"] for p in r["params"]}
        xs = np.geomspace(d["train_facts"].min(), d["train_facts"].max(), 100)
        draw_fit(ax, r, "train_facts", xs, "k",
                 f"L = {v['dc']:.3g}·D^{v['alpha']:.3f} + {v['linf']:.3g}, R²={r['r2']:.3f}{_ci_note(r)}")
        ax.legend(fontsize=7)
    except FitError:
        pass
    ax.set(xscale="log", xlabel="training facts D", ylabel="held-out value loss (nats/token)",
           title="Held-out value loss vs training facts (unseen keys)")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return fig


@themed
def fig_mr_vs_facts(df: pl.DataFrame):
    """MR at each run's final probe vs number of training facts, per model size."""
    d = final_probes(overall(df))
    if facts_per_size(d) < 2:
        raise PlotError("MR vs facts needs runs at >= 2 corpus sizes at one model size (grid over corpus.max_facts)")
    sizes = sizes_sorted(d)
    fig, ax = new_figure()
    sns.lineplot(d.to_pandas(), x="train_facts", y="mr", hue=SIZE, hue_order=sizes, marker="o",
                 palette=_size_palette(sizes), ax=ax)
    ax.set(xscale="log", xlabel="training facts", ylabel="memorization rate", ylim=(-0.02, 1.02),
           title="MR vs training facts (final probe of each run)")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return fig


FIGURES = {
    "mr-curves": fig_mr_curves,
    "capacity-vs-size": fig_capacity_vs_size,
    "capacity-vs-epochs": fig_capacity_vs_epochs,
    "bits-per-param": fig_bits_per_param,
    "extrapolation": fig_extrapolation,
    "generalization": fig_generalization,
    "mr-vs-facts": fig_mr_vs_facts,
    **{name: themed(fn) for name, fn in {**DATA_FIGURES, **STUDY_FIGURES, **AXES_FIGURES}.items()},
}


def plot(name: str, df: pl.DataFrame, out_dir: str | Path, fits: Fits | None = None) -> list[Path]:
    """Draw figure ``name`` into ``out_dir``. Its laws come from ``fits`` (saved fits of this table, or fits
    made once with the fit command's defaults: ``analysis.fitstore``)."""
    if name not in FIGURES:
        raise PlotError(f"unknown figure {name!r}; allowed values: {list(FIGURES) + ['all']}")
    fn = FIGURES[name]
    uses_fits = "fits" in inspect.signature(fn).parameters
    return save(fn(df, fits=fits or Fits(df)) if uses_fits else fn(df), out_dir, name)


def plot_all(df: pl.DataFrame, out_dir: str | Path, fits: Fits | None = None) -> dict:
    done, skipped = {}, {}
    fits = fits or Fits(df)  # one store: a law two figures draw is fitted once
    for name in FIGURES:
        try:
            done[name] = [str(p) for p in plot(name, df, out_dir, fits)]
        except PlotError as e:
            skipped[name] = str(e)
    return {"drawn": done, "skipped": skipped}


def script_main(name: str) -> None:
    """Entry point of the one-figure scripts under figures/: ``python figures/X.py RESULTS [--out-dir D]``."""
    import argparse

    ap = argparse.ArgumentParser(description=f"draw the '{name}' figure from a results table")
    ap.add_argument("results")
    ap.add_argument("--out-dir", help="default figures/out/<results table name>/")
    ap.add_argument("--fits", help="a directory of fits saved by `factscale fit` from this results table")
    ap.add_argument("--measure", choices=list(MEASURES), default="capacity")
    ap.add_argument("--max-fill", type=float, default=MAX_FILL)
    a = ap.parse_args()
    df = pl.read_parquet(a.results)
    for path in plot(name, df, a.out_dir or default_dir("figures", a.results),
                     saved_fits(df, a.results, a.fits, a.measure, a.max_fill)):
        print(path)
