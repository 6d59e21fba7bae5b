"""The preference study's numbers (Lu et al.: do models prefer frequent or difficult facts?): a competition
design. Each group trained alone and the groups mixed, at equal exposures per fact; a group's loss = MR alone
- MR mixed; preference for A over B = loss(B) - loss(A) (> 0: A keeps more of what it stores alone).

Two designs, told apart by the results' group column:

- plain (``freq_level``): alone = ``corpus.where: freq_level=x1`` (that group only: fewer facts and fewer
  optimizer steps than the mixed run, a confound), mixed = every group (no ``corpus.where``);
- partnered (``freq_level*phase``, the corpus also split in halves p1/p2 by ``--variant phases:n=2,by=random``):
  the target facts are one half's (p1); alone = ``corpus.where: freq_level=x1`` (the target half with a
  disjoint partner half of the *same* group), mixed = ``corpus.where: phase=p1`` or
  ``freq_level*phase=x1*p1,x4*p1`` (the target halves of the compared groups together). Alone and mixed
  runs then hold the same number of facts; with groups of one frequency (difficulty) the same batches per
  epoch, and with frequency groups the partner differs only in frequency. MR is read on the target
  facts (group ``x1*p1``) in both.
"""

from __future__ import annotations

import polars as pl

from factscale.analysis.studies import PARAMS, SEED, SIZE, WHERE, rows_by, summarise
from factscale.analysis.vocab import PREFERENCE_COLUMNS
from factscale.configio import parse_where
from factscale.errors import PlotError

CROSS = "*"


def preference_column(df: pl.DataFrame) -> str:
    """The grouping column of a preference study's results: frequency level, else difficulty bucket; the
    crossed column (``freq_level*phase``) of a partnered design first."""
    present = set(df["group_by"].unique().to_list())
    for c in PREFERENCE_COLUMNS[:2]:
        crossed = sorted(g for g in present if g.startswith(c + CROSS))
        if crossed:
            return crossed[0]
    for c in PREFERENCE_COLUMNS[:2]:
        if c in present:
            return c
    raise PlotError("no frequency/difficulty breakdown: set probe.group_columns: [freq_level] or [rarity_bucket]")




def _alone_group(where: str | None, column: str) -> str | None:
    """The one group a ``corpus.where`` run trained alone, or None for a mixed run."""
    if where is None:
        return None
    col, vals = parse_where(where)
    return vals[0] if col == column and len(vals) == 1 else None


def _partnered(d: pl.DataFrame, column: str) -> tuple[pl.DataFrame, str]:
    """The partnered design's final rows relabelled to the compared factor: each run's rows of the target
    half (``x1*p1`` -> group ``x1``), with ``corpus.where`` rewritten to the plain design's reading (alone
    runs keep theirs, mixed runs become None). Returns (rows, the factor column)."""
    factor, half_col = column.split(CROSS, 1)
    mixed_halves, alone = set(), []
    for w in d[WHERE].unique().to_list():
        if w is None:
            raise PlotError(f"preference by {column!r}: a run without corpus.where trains both halves; the mixed "
                            f"run of a partnered design selects one half ({half_col}=p1 or {column}=...)")
        col, vals = parse_where(w)
        if col == factor:
            alone.append(w)
        elif col == half_col:
            mixed_halves |= set(vals)
        elif col == column:
            mixed_halves |= {v.split(CROSS, 1)[1] for v in vals}
        else:
            raise PlotError(f"preference by {column!r}: run with corpus.where={w!r}; a partnered design has alone "
                            f"runs on {factor} and mixed runs on {half_col} or {column}")
    if len(mixed_halves) != 1:
        raise PlotError(f"preference by {column!r}: the mixed runs must select one target half, got "
                        f"{sorted(mixed_halves) or 'none'}")
    half = mixed_halves.pop()
    d = d.filter(pl.col("group").str.ends_with(CROSS + half)).with_columns(
        group=pl.col("group").str.split(CROSS).list.first(),
        **{WHERE: pl.when(pl.col(WHERE).is_in(alone)).then(pl.col(WHERE)).otherwise(pl.lit(None, dtype=pl.String))})
    return d, factor


def preference_per_seed(df: pl.DataFrame, column: str) -> pl.DataFrame:
    """Per (size, seed, group) at the final probe: MR trained alone, MR mixed with the other groups, and
    the loss from competing (alone - mixed). Groups without both runs are left out. A crossed ``column``
    (``freq_level*phase``) reads the partnered design (module docstring)."""
    d = rows_by(df, column)
    d = d.filter(pl.col("epoch") == pl.col("cfg.train.epochs"))
    if WHERE not in d.columns:
        d = d.with_columns(pl.lit(None, dtype=pl.String).alias(WHERE))
    if CROSS in column:
        d, column = _partnered(d, column)
    rows = []
    for (size, params, seed), g in d.group_by([SIZE, PARAMS, SEED]):
        alone, mixed = {}, {}
        for r in g.iter_rows(named=True):
            a = _alone_group(r[WHERE], column)
            if r[WHERE] is not None and a is None and parse_where(r[WHERE])[0] != column:
                raise PlotError(f"preference by {column!r}: run {r.get('run_id')} has corpus.where={r[WHERE]!r}, "
                                f"on another column; summarise runs grouped by {column!r} only")
            into = mixed if a is None else alone if r["group"] == a else None
            if into is not None:
                if r["group"] in into:
                    raise PlotError(f"preference: two {'mixed' if a is None else 'alone'} rows for group "
                                    f"{r['group']} ({size}, seed {seed}); collect one run per design point")
                # above chance on the same facts: capacity_above_chance / n_facts pairs each fact with its own
                # key-blind guess (mr_keyblind averages only the facts that have a donor)
                above = r.get("capacity_above_chance")
                into[r["group"]] = (r["mr"], None if above is None or not r.get("n_facts") else above / r["n_facts"])
        for grp in sorted(alone.keys() & mixed.keys()):
            (a, a_above), (m, m_above) = alone[grp], mixed[grp]
            rows.append({SIZE: size, PARAMS: params, SEED: seed, "group": grp, "mr_alone": a, "mr_mixed": m,
                         "loss": a - m, "retention": m / a if a > 0 else None,
                         "mr_alone_above_chance": a_above, "mr_mixed_above_chance": m_above})
    if not rows:
        raise PlotError(f"preference by {column!r} needs, per seed, a run of each group alone (corpus.where: "
                        f"{column}=G) and a mixed run (no corpus.where, or several groups)")
    return pl.DataFrame(rows).sort(PARAMS, SEED, "group")


def preference_summary(df: pl.DataFrame, column: str) -> pl.DataFrame:
    """Per size and group: MR alone, mixed, loss and retention (mixed / alone), MR alone and mixed above the
    key-blind guess rate (a group whose values are common is partly guessed); and for each pair (A, B) of
    groups, paired within seeds, the preference for A over B in absolute terms, loss(B) - loss(A), and in
    relative terms, retention(A) - retention(B). Both > 0: A keeps more of what it stores alone. They can
    disagree: a group that stores more alone has more to lose."""
    p = preference_per_seed(df, column)
    out = [summarise(p.rename({"group": "group_"}), [SIZE, PARAMS, "group_"],
                      ["mr_alone", "mr_mixed", "loss", "retention", "mr_alone_above_chance",
                       "mr_mixed_above_chance"]).rename({"group_": "group"})]
    loss = p.pivot(on="group", index=[SIZE, PARAMS, SEED], values="loss")
    kept = p.pivot(on="group", index=[SIZE, PARAMS, SEED], values="retention")
    groups = sorted(p["group"].unique().to_list())
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            for wide, name, expr in ((loss, f"pref_{a}_over_{b}", pl.col(b) - pl.col(a)),
                                     (kept, f"pref_{a}_over_{b}_relative", pl.col(a) - pl.col(b))):
                s = summarise(wide.with_columns(expr.alias(name)), [SIZE, PARAMS], [name])
                out.append(s.with_columns(group=pl.lit(None, dtype=pl.String)).select(out[0].columns))
    return pl.concat(out).sort(PARAMS)


