"""The behaviour studies' numbers: what each design compares, per seed, with an interval over seeds.

Every reported difference is formed *within a seed* (the treatment and its control share the seed's
corpus order and initialisation), then summarised over seeds as a mean with a Student-t 95% interval.
Fewer than ``MIN_SEEDS`` seeds give the mean and no interval (``why`` says so): an interval from two runs
is not worth printing. The intervals are conditional on the corpus: every seed trains on the same facts in
the same groups, so they carry training noise only. A difference between two groups of different facts
also has fact-sampling noise (binomial: ~0.06 in MR for two groups of 128 facts near MR 0.5) that seeds
cannot show; vary the corpus seed to include it.

- overwriting (``train.order`` blocked / first-phase-only / interleaved, two phases): forgetting =
  phase-1 MR of the control (phase 1 trained throughout) - phase-1 MR under blocked order, at the end;
- compatibility (variant groups, see ``corpus.variants``): the forward statement's MR in each group and
  the differences that separate cheaper storage from more exposure (paraphrase - twice);
- preference (``analysis.preference``: each group alone, and the groups mixed at equal exposures per fact):
  a group's loss = MR alone - MR mixed; preference for A over B = loss(B) - loss(A).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy import stats

from factscale.analysis.vocab import final_probes
from factscale.errors import PlotError

MIN_SEEDS = 3
SEED, SIZE, PARAMS = "cfg.seed", "cfg.model.size", "non_embedding_params"

ORDER, WHERE = "cfg.train.order", "cfg.corpus.where"


def seed_interval(values, ci: float = 0.95) -> dict:
    """Mean of per-seed values with a t interval; no interval below ``MIN_SEEDS`` values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    out = {"mean": float(x.mean()) if len(x) else math.nan, "lo": None, "hi": None, "n": len(x), "why": None}
    if len(x) < MIN_SEEDS:
        out["why"] = f"{len(x)} seed(s); an interval needs >= {MIN_SEEDS}"
        return out
    half = stats.t.ppf(0.5 + ci / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out


def seed_interval_binomial(values, binomial_var, ci: float = 0.95) -> dict:
    """``seed_interval`` whose variance also counts which facts were sampled into the groups: the squared
    standard error is s^2/k (seeds) + the mean over seeds of the binomial term p(1-p)/n of each group's MR
    (the groups' facts are fixed across seeds, so the seeds' spread alone misses it). t on k - 1 dof."""
    pairs = [(v, b) for v, b in zip(values, binomial_var) if v is not None and b is not None and math.isfinite(v)]
    out = seed_interval([v for v, _ in pairs], ci)
    if out["lo"] is None:
        return out
    x, k = np.asarray([v for v, _ in pairs]), len(pairs)
    se = math.sqrt(x.var(ddof=1) / k + float(np.mean([b for _, b in pairs])))
    half = stats.t.ppf(0.5 + ci / 2, k - 1) * se
    return {**out, "lo": out["mean"] - half, "hi": out["mean"] + half}


def fmt(d: dict, digits: int = 3) -> str:
    m = f"{d['mean']:.{digits}f}"
    if d["lo"] is None:
        return f"{m} (n={d['n']}, no interval: {d['why']})"
    same = " (every seed gave the same value)" if d["hi"] - d["lo"] == 0 else ""
    return f"{m} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}] (n={d['n']}){same}"


def unique_rows(rows, key, what: str) -> dict:
    """{key(row): row}, refusing two rows for one key (a re-run or a concatenated table would otherwise
    let whichever row came last win, silently)."""
    out = {}
    for r in rows:
        k = key(r)
        if k in out:
            raise PlotError(f"{what}: two probe rows for {k} (runs {out[k].get('run_id')} and {r.get('run_id')}); "
                            "collect one run per design point and seed")
        out[k] = r
    return out


def rows_by(df: pl.DataFrame, by: str, split: str = "train") -> pl.DataFrame:
    """The probe rows of ``split`` broken down by ``by`` (a study's group column)."""
    d = df.filter((pl.col("split") == split) & (pl.col("group_by") == by))
    if d.height == 0:
        raise PlotError(f"no {split} probe rows broken down by {by!r}: build the corpus with the study's "
                        f"variant and set probe.group_columns: [{by}]")
    return d


def summarise(per_seed: pl.DataFrame, keys: list[str], quantities: list[str]) -> pl.DataFrame:
    """Per-seed rows -> one row per (keys, quantity) with mean, lo, hi, n, why."""
    out = []
    for key, g in per_seed.sort(keys).group_by(keys, maintain_order=True):
        for q in quantities:
            if q in g.columns:
                out.append({**dict(zip(keys, key)), "quantity": q, **seed_interval(g[q].to_list())})
    return pl.DataFrame(out, schema_overrides={"lo": pl.Float64, "hi": pl.Float64, "why": pl.String}
                        ).sort(PARAMS, maintain_order=True)  # sizes in parameter order, not text order


def overwriting_per_seed(df: pl.DataFrame) -> pl.DataFrame:
    """Per (size, seed): phase MRs and phase-1 net bits (prior - code, unclipped: a fact that stays partly
    coded still counts) at the phase boundary and at the (annealed) end, for each order. The blocked run at
    the boundary is mid-schedule (at the stable rate, not annealed); a first-phase-only run of half the
    epochs is the annealed reference there, and ``forgetting_annealed`` = that reference - blocked at the end."""
    d = rows_by(df, "phase")
    if ORDER not in d.columns:
        raise PlotError("results lack cfg.train.order")
    orders = set(d[ORDER].unique().to_list())
    if not {"blocked", "first-phase-only"} <= orders:
        raise PlotError(f"overwriting needs runs with train.order blocked and first-phase-only (the control); "
                        f"got {sorted(orders)}")
    phases = sorted(d["group"].unique().to_list())
    if phases != ["p1", "p2"]:
        raise PlotError(f"overwriting summarises two phases p1, p2; the results have {phases}")
    rows = []
    for (size, params, seed), g in d.group_by([SIZE, PARAMS, SEED]):
        E = int(g.filter(pl.col(ORDER) == "blocked")["cfg.train.epochs"].max())
        rs = unique_rows(g.iter_rows(named=True), lambda r: (r[ORDER], r["cfg.train.epochs"], r["epoch"], r["group"]),
                     "overwriting")
        end, mid = E, E // 2
        if E % 2 or mid not in set(g.filter(pl.col(ORDER) == "blocked")["epoch"].to_list()):
            raise PlotError(f"overwriting needs a probe at the phase boundary, epoch {E}/2 (train.epochs even, "
                            "probe.every_epochs dividing it)")
        row = {SIZE: size, PARAMS: params, SEED: seed, "boundary_epoch": mid, "end_epoch": end}
        for q, col in (("", "mr"), ("bits_", "net_bits")):
            def at(order, epochs, epoch, ph, col=col, rs=rs):
                r = rs.get((order, epochs, epoch, ph))
                return None if r is None or r.get(col) is None else float(r[col])
            for order, tag in (("blocked", "blocked"), ("first-phase-only", "control"), ("interleaved", "interleaved")):
                for ph in ("p1", "p2"):
                    row[f"{ph}_{q}end_{tag}"] = at(order, E, end, ph)
                row[f"p1_{q}boundary_{tag}"] = at(order, E, mid, "p1")
            row[f"p1_{q}boundary_annealed"] = at("first-phase-only", mid, mid, "p1")
            for name, a, b in (("forgetting", "end_control", "end_blocked"),
                               ("p1_drop_blocked", "boundary_blocked", "end_blocked"),
                               ("forgetting_annealed", "boundary_annealed", "end_blocked")):
                x, y = row[f"p1_{q}{a}"], row[f"p1_{q}{b}"]
                row[f"{q}{name}" if q else name] = None if x is None or y is None else x - y
        rows.append(row)
    return pl.DataFrame(rows).sort(PARAMS, SEED)


OVERWRITING_QUANTITIES = ["p1_boundary_blocked", "p1_boundary_annealed", "p1_end_blocked", "p1_end_control",
                          "p1_end_interleaved", "p2_end_blocked", "p2_end_interleaved", "p1_drop_blocked",
                          "forgetting", "forgetting_annealed",
                          "p1_bits_boundary_blocked", "p1_bits_boundary_annealed", "p1_bits_end_blocked",
                          "p1_bits_end_control", "bits_forgetting", "bits_forgetting_annealed"]


def overwriting_summary(df: pl.DataFrame) -> pl.DataFrame:
    return summarise(overwriting_per_seed(df), [SIZE, PARAMS], OVERWRITING_QUANTITIES)


def compatibility_per_seed(df: pl.DataFrame) -> pl.DataFrame:
    """Per (size, seed, epoch budget), at the budget's final (annealed) probe: MR of the forward statement in
    each group, the differences, and each redundant set's extra facts over its control. With several budgets
    (cooldown branches), ``*_change`` = the value at this budget - at the next smaller one: ~0 at a plateau."""
    d = rows_by(df, "part").filter(pl.col("epoch") == pl.col("cfg.train.epochs"))
    rows = []
    for (size, params, seed, budget), g in d.group_by([SIZE, PARAMS, SEED, "cfg.train.epochs"]):
        at = unique_rows(g.iter_rows(named=True), lambda r: r["group"], f"compatibility ({size}, seed {seed}, {budget})")

        def mr(part, at=at):
            return at[part]["mr"] if part in at else None

        def facts(*parts, at=at):
            return sum(at[p]["capacity"] for p in parts) if all(p in at for p in parts) else None

        def binom(part, at=at):  # the binomial variance of a group's MR over its probed facts
            r = at.get(part)
            n = (r or {}).get("n_probed") or (r or {}).get("n_facts")
            return None if r is None or not n else r["mr"] * (1 - r["mr"]) / n

        row = {SIZE: size, PARAMS: params, SEED: seed, "budget": budget,
               "fwd_control": mr("control-forward/forward"), "fwd_twice": mr("twice/forward"),
               "fwd_paraphrase": mr("paraphrase/forward"), "fwd_inverse": mr("inverse/forward")}
        for kind in ("paraphrase", "inverse"):
            red, ctl = facts(f"{kind}/forward", f"{kind}/{kind}"), facts("control-forward/forward", f"control-{kind}/{kind}")
            row[f"extra_facts_{kind}"] = None if None in (red, ctl) else red - ctl
        parts = {"fwd_control": "control-forward/forward", "fwd_twice": "twice/forward",
                 "fwd_paraphrase": "paraphrase/forward", "fwd_inverse": "inverse/forward"}
        for q, part in parts.items():
            row[f"binom_{q}"] = binom(part)
        for name, a, b in (("paraphrase_minus_control", "fwd_paraphrase", "fwd_control"),
                           ("twice_minus_control", "fwd_twice", "fwd_control"),
                           ("paraphrase_minus_twice", "fwd_paraphrase", "fwd_twice"),
                           ("inverse_minus_control", "fwd_inverse", "fwd_control")):
            row[name] = None if row[a] is None or row[b] is None else row[a] - row[b]
            va, vb = row[f"binom_{a}"], row[f"binom_{b}"]
            row[f"binom_{name}"] = None if va is None or vb is None else va + vb  # disjoint groups of facts
        rows.append(row)
    if not rows:
        raise PlotError("no final (annealed) probe rows broken down by 'part'")
    out = pl.DataFrame(rows).sort(PARAMS, SEED, "budget")
    prev = [pl.col(c) - pl.col(c).shift(1).over(SIZE, SEED) for c in
            ("paraphrase_minus_twice", "extra_facts_paraphrase", "extra_facts_inverse")]
    return out.with_columns(*(e.alias(f"{c}_change") for e, c in zip(prev, ("paraphrase_minus_twice",
                                                                            "extra_facts_paraphrase",
                                                                            "extra_facts_inverse"))))


COMPATIBILITY_QUANTITIES = ["fwd_control", "fwd_twice", "fwd_paraphrase", "fwd_inverse", "twice_minus_control",
                            "paraphrase_minus_control", "paraphrase_minus_twice", "inverse_minus_control",
                            "extra_facts_paraphrase", "extra_facts_inverse", "paraphrase_minus_twice_change",
                            "extra_facts_paraphrase_change", "extra_facts_inverse_change"]


def compatibility_summary(df: pl.DataFrame) -> pl.DataFrame:
    """The compatibility quantities over seeds; an MR or a difference of MRs gets the binomial term of the
    fact sampling in its interval (``seed_interval_binomial``): every contrast is between different facts."""
    per_seed = compatibility_per_seed(df)
    out = []
    for key, g in per_seed.sort(SIZE, "budget").group_by([SIZE, PARAMS, "budget"], maintain_order=True):
        for q in COMPATIBILITY_QUANTITIES:
            if q not in g.columns:
                continue
            b = f"binom_{q}"
            binomial = b in g.columns and g[b].null_count() == 0  # tables without n_probed: the seeds only
            stat = (seed_interval_binomial(g[q].to_list(), g[b].to_list()) if binomial
                    else seed_interval(g[q].to_list()))
            out.append({**dict(zip([SIZE, PARAMS, "budget"], key)), "quantity": q, **stat})
    return pl.DataFrame(out, schema_overrides={"lo": pl.Float64, "hi": pl.Float64, "why": pl.String}
                        ).sort(PARAMS, maintain_order=True)


def print_summary(t: pl.DataFrame, title: str, print=print) -> None:
    print(title)
    keys = [c for c in (SIZE, "budget", "group") if c in t.columns]
    for r in t.iter_rows(named=True):
        where = "  ".join(f"{r[k]}" for k in keys if r[k] is not None)
        print(f"  {where:<12} {r['quantity']:<34} {fmt(r)}")


# ---------------------------------------------------------------- generalization against known floors


def floor_bits(spec: dict) -> dict[str, float]:
    """Per relation (S1, S2, ...) of a synthetic ``facts`` corpus: the least expected code length (bits) of a
    held-out value for a model that knows how the corpus was generated. A random attribute: log2 V. A
    predictable one (value = rule(first name), replaced by a uniform draw with probability ``noise``): the
    entropy of p = 1 - noise + noise/V on the rule's value and noise/V on each other value."""
    V = spec["vocab_sizes"]
    pred = spec.get("predictable") or [False] * len(V)
    eps = float(spec.get("noise", 0.0))
    out = {}
    for a, (v, is_pred) in enumerate(zip(V, pred)):
        if not is_pred:
            out[f"S{a + 1}"] = math.log2(v)
            continue
        hit, miss = 1 - eps + eps / v, eps / v
        out[f"S{a + 1}"] = -sum(p * math.log2(p) for p in [hit] + [miss] * (v - 1) if p > 0)
    return out


def corpus_floors(df: pl.DataFrame) -> dict[str, float]:
    """``floor_bits`` of the synthetic corpus the runs trained on (read from its manifest)."""
    return floor_bits(_synthetic_spec(df))


def corpus_controls(df: pl.DataFrame) -> list[str]:
    """The random attributes (nothing to generalize) of the synthetic corpus the runs trained on."""
    return _controls(_synthetic_spec(df))


def _controls(spec: dict) -> list[str]:
    pred = spec.get("predictable") or [False] * len(spec["vocab_sizes"])
    return [f"S{a + 1}" for a, p in enumerate(pred) if not p]


def _synthetic_spec(df: pl.DataFrame) -> dict:
    from factscale.corpus.build import read_manifest

    paths = df["cfg.corpus.path"].unique().to_list() if "cfg.corpus.path" in df.columns else []
    if len(paths) != 1:
        raise PlotError(f"the generalization floors need runs on one corpus, got {len(paths)}: {paths[:3]}")
    m = read_manifest(paths[0])
    src = (m or {}).get("source", {})
    if src.get("kind") != "synthetic" or "vocab_sizes" not in src.get("spec", {}):
        raise PlotError(f"{paths[0]}: no synthetic facts manifest there; the known floors need the corpus recipe")
    return src["spec"]


def generalization_table(df: pl.DataFrame, floors: dict[str, float] | None = None,
                         controls: list[str] | None = None) -> pl.DataFrame:
    """Held-out rows per relation with ``excess_bits`` = mean code length per fact - the relation's floor, and
    ``excess_over_control_bits`` = that minus the random controls' mean excess in the same run and probe.

    A predictable attribute's excess is what its rule still costs beyond the noise nothing can predict; a
    random attribute's floor is its prior (log2 V), so its excess can only fall to ~0 (calibration), never
    below. The control's excess is over-confidence, which also changes with training steps: subtracting it
    leaves what generalization adds (negative: the rule codes unseen keys better than the control is coded).
    Rows keep ``relation`` and are labelled as a split's overall rows, so ``fit_law(t.filter(relation
    == r), "power-excess")`` fits one relation alone.
    """
    floors = floors if floors is not None else corpus_floors(df)
    controls = controls if controls is not None else corpus_controls(df)
    d = df.filter((pl.col("split") == "heldout") & (pl.col("group_by") == "relation"))
    if d.height == 0:
        raise PlotError("no held-out probe rows per relation (probe.splits must include heldout)")
    unknown = sorted(set(d["group"].unique().to_list()) - set(floors))
    if unknown:
        raise PlotError(f"relations {unknown} have no known floor (floors given for {sorted(floors)})")
    t = d.with_columns(relation=pl.col("group"), floor_bits=pl.col("group").replace_strict(floors,
                                                                                          return_dtype=pl.Float64),
                          group_by=pl.lit("all"), group=pl.lit("all")
                          ).with_columns(excess_bits=pl.col("code_bits_mean") - pl.col("floor_bits"))
    control = (t.filter(pl.col("relation").is_in(controls)).group_by("run_id", "epoch")
               .agg(control_excess_bits=pl.col("excess_bits").mean()))
    t = t.join(control, on=["run_id", "epoch"], how="left")
    return t.with_columns(excess_over_control_bits=pl.col("excess_bits") - pl.col("control_excess_bits"))


def generalization_summary(df: pl.DataFrame, floors: dict[str, float] | None = None,
                           controls: list[str] | None = None) -> pl.DataFrame:
    """Per (size, training facts D), at each run's final probe, mean over seeds [t interval]: each predictable
    attribute's held-out excess over its floor, the random control's excess, and their difference (what
    generalization adds). Read the difference across D only when every D trained the same optimizer steps
    (``sweeps/generalization.yaml`` links corpus.max_facts and train.epochs): the control's over-confidence
    changes with steps."""
    if floors is None or controls is None:  # the corpus manifest, read once
        spec = _synthetic_spec(df)
        floors = floor_bits(spec) if floors is None else floors
        controls = _controls(spec) if controls is None else controls
    if not controls:
        raise PlotError("generalization summary needs a random attribute (the control: synthetic predictable: "
                        "false); the corpus has none")
    t = final_probes(generalization_table(df, floors, controls))
    per_seed = []
    for (size, params, seed, d), g in t.group_by([SIZE, PARAMS, SEED, "train_facts"]):
        unique_rows(g.iter_rows(named=True), lambda r: r["relation"], f"generalization ({size}, seed {seed}, D={d})")
        row = {SIZE: size, PARAMS: params, SEED: seed, "train_facts": d,
               "control_excess": float(g["control_excess_bits"][0])}
        for r in g.filter(~pl.col("relation").is_in(controls)).iter_rows(named=True):
            row[f"{r['relation']}_excess"] = r["excess_bits"]
            row[f"{r['relation']}_minus_control"] = r["excess_over_control_bits"]
        per_seed.append(row)
    per_seed = pl.DataFrame(per_seed)
    quantities = sorted(c for c in per_seed.columns if c.endswith(("_excess", "_minus_control")))
    out = summarise(per_seed, [SIZE, PARAMS, "train_facts"], quantities)
    return out.sort(PARAMS, "train_facts").with_columns(group=pl.format("D={}", "train_facts"))

