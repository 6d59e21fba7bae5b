"""The key-blind baseline: what a model gets right about a fact without knowing its key.

Exact match counts a fact as memorized when greedy decoding yields its value; a model that knows nothing
about any key still gets the facts whose value is its default guess (the commonest value of a relation),
and code length likewise mixes what the model knows per key with what it knows of the value
distribution. So every training fact is also probed after another key's prompt: a *donor* fact of the
same relation, a held-out fact (an unseen key) where the relation has one, else another training fact of
the relation (a derangement). The donor's prompt tokens (its key, the same relation template) are
followed by the fact's own value tokens - values start at a token boundary, so this is exactly the
tokenization of the donor's prompt with this value. The pairs are a deterministic function of the corpus
(a stable hash of fact ids), so every run and epoch on one corpus uses the same ones.

Per set (``summarize``): ``mr_keyblind``; ``capacity_above_chance`` = n_facts x mean(correct - correct
after the donor's prompt), with its standard error; ``keyed_bits`` = n_facts x mean(code length after
the donor's prompt - code length after the own prompt): what the key itself is worth, unclipped.
"""

from __future__ import annotations

import polars as pl

KEYBLIND_SEED = 1  # fixes the pairs; a corpus property, like the probe sample's seed


def _ranked(df: pl.DataFrame, id_col: str) -> pl.DataFrame:
    from factscale.corpus.rules import stable_unit

    return (df.with_columns(_u=stable_unit(df[id_col].cast(pl.String), KEYBLIND_SEED))
            .sort("relation", "_u", id_col)
            .with_columns(_i=pl.int_range(pl.len()).over("relation"), _n=pl.len().over("relation")).drop("_u"))


def keyblind_pairs(facts: pl.DataFrame, donors: pl.DataFrame | None) -> pl.DataFrame:
    """(fact_id, donor_id) for the facts that get a donor: the i-th fact of a relation (in stable-hash order)
    takes the (i mod n)-th of the relation's n ``donors`` (held-out facts); in a relation without donors, the
    next fact of ``facts`` (cyclically; a relation with one fact gets none)."""
    f = _ranked(facts.select("fact_id", "relation"), "fact_id")
    out = []
    if donors is not None and donors.height:
        d = _ranked(donors.select(pl.col("fact_id").alias("donor_id"), "relation"), "donor_id")
        counts = d.group_by("relation").agg(pl.len().alias("_nd"))
        g = f.join(counts, on="relation", how="inner").with_columns(_j=pl.col("_i") % pl.col("_nd"))
        out.append(g.join(d.select("relation", pl.col("_i").alias("_j"), "donor_id"), on=["relation", "_j"])
                   .select("fact_id", "donor_id"))
        f = f.join(counts, on="relation", how="anti")
    rest = f.filter(pl.col("_n") >= 2).with_columns(_j=(pl.col("_i") + 1) % pl.col("_n"))
    out.append(rest.join(f.select("relation", pl.col("_i").alias("_j"), pl.col("fact_id").alias("donor_id")),
                         on=["relation", "_j"]).select("fact_id", "donor_id"))
    return pl.concat(out).sort("fact_id")


def keyblind_inputs(facts: pl.DataFrame, donors: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.Series, pl.Series]:
    """For the facts that get a donor: (their fact_id frame in ``facts`` order, token ids = the donor's prompt
    and the fact's value tokens, value starts)."""
    pairs = keyblind_pairs(facts, donors)
    pool = pl.concat([facts.select("fact_id", "input_ids", "value_start"),
                      *([donors.select("fact_id", "input_ids", "value_start")] if donors is not None else [])]
                     ).unique("fact_id", keep="first")
    donor = pool.select(pl.col("fact_id").alias("donor_id"),
                        pl.col("input_ids").list.slice(0, pl.col("value_start")).alias("prompt_ids"))
    t = (facts.select("fact_id", "input_ids", "value_start").with_row_index("_row")
         .join(pairs, on="fact_id").join(donor, on="donor_id").sort("_row"))
    ids = t.select(pl.concat_list("prompt_ids", pl.col("input_ids").list.slice(pl.col("value_start")))
                   .alias("ids"))["ids"]
    return t.select("fact_id"), ids, t["prompt_ids"].list.len()


def summary_exprs() -> list[pl.Expr]:
    """Per-group aggregates of a table with ``correct_keyblind`` / ``code_bits_keyblind`` (null where a fact
    has no donor); ``finish`` scales them to the population."""
    d = pl.col("correct").cast(pl.Float64) - pl.col("correct_keyblind").cast(pl.Float64)
    k = pl.col("code_bits_keyblind") - pl.col("code_bits")
    return [pl.col("correct_keyblind").count().alias("n_keyblind"),
            pl.col("correct_keyblind").mean().alias("mr_keyblind"),
            d.mean().alias("_d_mean"), d.var(ddof=1).fill_null(0.0).alias("_d_var"),
            k.mean().alias("_k_mean"), k.var(ddof=1).fill_null(0.0).alias("_k_var")]


def finish(out: pl.DataFrame) -> pl.DataFrame:
    """capacity_above_chance(_se) and keyed_bits(_se) from the aggregates, scaled to n_facts (finite-population
    corrected like capacity_se)."""
    N, n = pl.col("n_facts").cast(pl.Float64), pl.col("n_keyblind").cast(pl.Float64)
    fpc = pl.when(N > 1).then(((N - n) / (N - 1)).clip(lower_bound=0.0)).otherwise(0.0)
    return out.with_columns(
        capacity_above_chance=N * pl.col("_d_mean"),
        capacity_above_chance_se=N * (pl.col("_d_var") / n * fpc).sqrt(),
        keyed_bits=N * pl.col("_k_mean"),
        keyed_bits_se=N * (pl.col("_k_var") / n * fpc).sqrt(),
    ).drop("_d_mean", "_d_var", "_k_mean", "_k_var")
