"""Measures and figures for the behaviour studies: compatibility, preference, overwriting, generalization.

Each reads only a results table (probe rows broken down by the study's group column) and draws one
figure; ``plots.FIGURES`` exposes them as ``study-*`` so ``factscale plot study-compatibility R`` works.
Titles say what is plotted; this module imports nothing from ``plots`` (no import cycle) and changes
no global matplotlib state.
"""

from __future__ import annotations

import polars as pl
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from factscale.vocab import PlotError, final_probes


def _subplots(ncols: int, figsize):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _groups(df: pl.DataFrame, by: str, split: str = "train") -> pl.DataFrame:
    d = df.filter((pl.col("split") == split) & (pl.col("group_by") == by))
    if d.height == 0:
        raise PlotError(f"no probe rows broken down by {by!r}: build the corpus with the study's variant and "
                        f"set probe.group_columns: [{by}]")
    return d


def compatibility_table(df: pl.DataFrame) -> pl.DataFrame:
    """Per run and probe epoch: facts and bits memorized in each redundant set vs its matched control.

    A redundant set (a fact + its inverse, or + its paraphrase; 2n facts carrying n facts' information)
    is compared with its control (n forward facts + n unrelated inverse/paraphrase facts; 2n facts).
    ``extra_facts`` = redundant - control: > 0 means the redundancy was stored more cheaply.
    """
    d = _groups(df, "variant")
    piv = d.select("run_id", "cfg.model.size", "non_embedding_params", "epoch", "group", "capacity",
                   "capacity_bits", "n_facts")
    rows = []
    for (run, size, n_params, epoch), g in piv.group_by(["run_id", "cfg.model.size", "non_embedding_params",
                                                          "epoch"]):
        by = {r["group"]: r for r in g.iter_rows(named=True)}
        for kind in ("inverse", "paraphrase"):
            ctrl = [by.get("control-forward"), by.get(f"control-{kind}")]
            if kind not in by or None in ctrl:
                continue
            red = by[kind]
            rows.append({
                "run_id": run, "size": size, "non_embedding_params": n_params, "epoch": epoch, "redundancy": kind,
                "redundant_facts": red["capacity"], "control_facts": sum(c["capacity"] for c in ctrl),
                "set_size": red["n_facts"],
                "redundant_bits": red["capacity_bits"], "control_bits": sum(c["capacity_bits"] for c in ctrl),
            })
    if not rows:
        raise PlotError("compatibility rows need the variant groups inverse/paraphrase and their controls")
    return pl.DataFrame(rows).with_columns(extra_facts=pl.col("redundant_facts") - pl.col("control_facts"),
                                           extra_bits=pl.col("redundant_bits") - pl.col("control_bits")
                                           ).sort("non_embedding_params", "epoch", "redundancy")


def fig_compatibility(df: pl.DataFrame):
    t = compatibility_table(df)
    final = t.filter(pl.col("epoch") == pl.col("epoch").max().over("run_id"))
    long = pl.concat([
        final.select("size", "redundancy", pl.col("redundant_facts").alias("facts"), pl.lit("redundant set").alias("set")),
        final.select("size", "redundancy", pl.col("control_facts").alias("facts"), pl.lit("matched control").alias("set")),
    ])
    fig, axes = _subplots(2, (10, 4))
    sns.barplot(long.to_pandas(), x="redundancy", y="facts", hue="set", ax=axes[0], errorbar=None)
    axes[0].set(xlabel="kind of redundancy (same set size)", ylabel="facts memorized (final epoch, mean of sizes)",
                title="Facts memorized: redundant sets vs matched controls")
    sns.lineplot(t.to_pandas(), x="epoch", y="extra_facts", hue="redundancy", style="size", ax=axes[1])
    axes[1].axhline(0, color="grey", lw=1)
    axes[1].set(xlabel="epochs", ylabel="redundant - control (facts memorized)",
                title="Redundant minus control facts memorized vs epochs")
    fig.tight_layout()
    return fig


def fig_preference(df: pl.DataFrame):
    """MR per frequency level and per difficulty bucket over epochs (equal budget within a run)."""
    panels = [(c, t) for c, t in (("freq_level", "exposures per epoch"), ("rarity_bucket", "value rarity (q4 rarest)"),
                                   ("value_len", "value length (tokens)"))
              if df.filter(pl.col("group_by") == c).height]
    if not panels:
        raise PlotError("no frequency/difficulty breakdown: set probe.group_columns: [freq_level, rarity_bucket, value_len]")
    fig, axes = _subplots(len(panels), (5 * len(panels), 4))
    for ax, (col, title) in zip(axes, panels):
        d = _groups(df, col).sort("group")
        sns.lineplot(d.to_pandas(), x="epoch", y="mr", hue="group", ax=ax, errorbar=None,
                     palette="viridis", hue_order=sorted(d["group"].unique().to_list()))
        ax.set(xlabel="epochs", ylabel="memorization rate", ylim=(-0.02, 1.02), title=f"MR by {title}")
        ax.legend(title=col, fontsize=7)
    fig.tight_layout()
    return fig


def fig_overwriting(df: pl.DataFrame):
    """MR of each phase's facts over time, blocked order (solid) vs interleaved (dashed)."""
    d = _groups(df, "phase")
    if "cfg.train.order" not in d.columns:
        raise PlotError("results lack cfg.train.order")
    fig, axes = _subplots(1, (6.5, 4))
    ax = axes[0]
    sns.lineplot(d.to_pandas(), x="epoch", y="mr", hue="group", style="cfg.train.order",
                 style_order=["blocked", "interleaved"], ax=ax, errorbar=None)
    ax.set(xlabel="epochs", ylabel="memorization rate of the phase's facts", ylim=(-0.02, 1.02),
           title="MR of each phase's facts vs epochs, blocked vs interleaved order")
    ax.legend(fontsize=7)
    return fig


def fig_generalization_by_relation(df: pl.DataFrame):
    """Held-out MR and value loss per relation vs training facts (each run's final probe)."""
    d = final_probes(df.filter((pl.col("split") == "heldout") & (pl.col("group_by") == "relation")))
    if d.height == 0 or d["train_facts"].n_unique() < 2:
        raise PlotError("needs held-out probes at >= 2 corpus sizes (grid over corpus.max_facts)")
    fig, axes = _subplots(2, (10, 4))
    panels = ((axes[0], "mr", "held-out MR (unseen keys)"), (axes[1], "value_loss", "held-out value loss (nats/token)"))
    for ax, y, lab in panels:
        sns.lineplot(d.to_pandas(), x="train_facts", y=y, hue="group", marker="o", ax=ax, errorbar=None)
        ax.set(xscale="log", xlabel="training facts", ylabel=lab)
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap
        ax.legend(title="relation", fontsize=8)
    axes[0].set_title("Held-out MR by relation vs training facts")
    axes[1].set_title("Held-out value loss by relation vs training facts")
    fig.tight_layout()
    return fig


STUDY_FIGURES = {
    "study-compatibility": fig_compatibility,
    "study-preference": fig_preference,
    "study-overwriting": fig_overwriting,
    "study-generalization": fig_generalization_by_relation,
}
