"""What a probe's per-fact results mean: priors, the probed sample, and the per-group summary.

Bits: code length = sum over value tokens (and <eos>) of -log2 p(token). Memorized bits are an
aggregate over a set of facts: sum(prior_bits - code length), clipped at zero only for the whole set -
clipping per fact would count noise on unknown facts as knowledge. prior_bits is the value's known
entropy (synthetic facts) or, for real facts, its code length under a leave-one-out model of the run's
own training facts (``empirical_prior``). Probing a uniform sample of the training facts estimates the
population: capacity = MR x facts, with a binomial standard error (``summarize``). Pure functions of
tables: no model, no torch.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from factscale.probing import keyblind


def empirical_prior(train: pl.DataFrame, facts: pl.DataFrame, vocab_size: int) -> pl.DataFrame:
    """Prior bits of each of ``facts`` from the run's training facts ``train``, never from the fact itself.

    A model that knows the relation but not the key: Witten-Bell interpolation of the relation's value
    counts with a back-off, p(v | r) = (c + u*q(v)) / (n + u), where n = other training facts of relation
    r, c = how many of them have value v, u = distinct values among them. The back-off q(v) is the value's
    tokens (and <eos>) under an add-one unigram model of the other training facts' value tokens over the
    ``vocab_size`` tokens. A training fact is left out of every count it would enter (leave-one-out), so
    a value seen only in this fact costs exactly its back-off: log2((n+u)/u) + unigram bits. Returns
    ``fact_id``, ``prior_bits`` and ``backoff_bits`` in the order of ``facts``.
    """
    own = facts["fact_id"].is_in(train["fact_id"].implode()).cast(pl.Int64).to_numpy()
    tok = lambda d: d.select("fact_id", pl.col("input_ids").list.slice(pl.col("value_start")).alias("t"))  # noqa: E731
    train_tok = tok(train).explode("t")
    cnt = train_tok.group_by("t").agg(pl.len().alias("cnt"))
    total = train_tok.height
    f = tok(facts).with_row_index("i").with_columns(own=pl.Series(own), n_tok=pl.col("t").list.len())
    occ = (f.explode("t").join(cnt, on="t", how="left").with_columns(pl.col("cnt").fill_null(0))
           .with_columns(mine=pl.len().over("i", "t") * pl.col("own")))
    # each occurrence: -log2((count elsewhere + 1) / (tokens elsewhere + V))
    occ = occ.with_columns(b=-((pl.col("cnt") - pl.col("mine") + 1).cast(pl.Float64)
                               / (total - pl.col("n_tok") * pl.col("own") + vocab_size)).log(2))
    uni = f.select("i").join(occ.group_by("i").agg(pl.col("b").sum()), on="i", how="left")["b"].fill_null(0.0)

    rel = train.group_by("relation").agg(pl.len().alias("n_r"), pl.col("value").n_unique().alias("u_r"))
    val = train.group_by("relation", "value").agg(pl.len().alias("c_rv"))
    g = (facts.select("relation", "value").join(rel, on="relation", how="left")
         .join(val, on=["relation", "value"], how="left").fill_null(0))
    n = g["n_r"].to_numpy() - own
    c = g["c_rv"].to_numpy() - own
    u = g["u_r"].to_numpy() - own * (g["c_rv"].to_numpy() == 1)  # its value was distinct only through itself
    q_bits = uni.to_numpy()
    with np.errstate(divide="ignore"):
        log_escape = np.where(n > 0, np.log2(np.maximum(u, 1)) - np.log2(np.maximum(n + u, 1)), 0.0)
        backoff = q_bits - log_escape
        seen = np.where(c > 0, np.log2(np.maximum(c, 1)) - np.log2(np.maximum(n + u, 1)), -np.inf)
    prior = -np.logaddexp2(seen, -backoff)
    return pl.DataFrame({"fact_id": facts["fact_id"], "prior_bits": prior, "backoff_bits": backoff})


PROBE_SEED = 0  # one sample per corpus: every run and every epoch probes the same facts


def probe_sample(train: pl.DataFrame, n: int | None, by: str = "relation") -> pl.DataFrame:
    """The training facts a run probes: all of them, or a fixed sample of ``n``.

    A systematic sample (every (N/n)-th fact from a start in [0, N/n)) over the facts ordered by ``by``
    (relation) and then by a stable hash of the fact id. Over the start - uniform in design, fixed here by
    hashing ``PROBE_SEED``, like any seeded sample - every fact is included with probability n/N, so
    MR x N is design-unbiased; each relation gets its share of the sample to within one fact (implicit
    proportional stratification, which only lowers the variance: the binomial standard error of
    ``summarize`` is conservative for it). For the one sample a corpus gets, a relation with fewer than
    N/n facts may have none probed (its per-relation row is then absent). Deterministic and independent
    of row order and machine, so runs on one corpus are compared on the same facts.
    """
    N = train.height
    if n is None or N <= n:
        return train
    from factscale.corpus.rules import stable_unit

    key = train["fact_id"].cast(pl.String) if "fact_id" in train.columns else pl.Series(range(N)).cast(pl.String)
    cols = [by] if by in train.columns else []
    order = train.with_columns(_u=stable_unit(key, PROBE_SEED)).with_row_index("_row").sort([*cols, "_u", "_row"])
    step = N / n
    start = float(stable_unit(pl.Series(["start"]), PROBE_SEED)[0]) * step
    picks = np.floor(start + step * np.arange(n)).astype(np.int64)
    rows = order["_row"].to_numpy()[picks]
    return train[np.sort(rows)]


def with_prior(train: pl.DataFrame, facts: pl.DataFrame, vocab_size: int) -> pl.DataFrame:
    """``facts`` with ``prior_bits`` that never saw the fact: synthetic facts keep their exact entropy."""
    emp = empirical_prior(train, facts, vocab_size)["prior_bits"]
    exact = (pl.col("value_type") == "synthetic") if "value_type" in facts.columns else pl.lit(False)
    if "prior_bits" not in facts.columns:
        facts = facts.with_columns(prior_bits=pl.lit(None, dtype=pl.Float64))
    return facts.with_columns(prior_bits=pl.when(exact & pl.col("prior_bits").is_not_null())
                              .then(pl.col("prior_bits")).otherwise(emp))


def fact_table(facts: pl.DataFrame, correct: np.ndarray, bits: np.ndarray, keyblind: pl.DataFrame | None = None
               ) -> pl.DataFrame:
    """Per fact: exact match, code length and net bits (prior - code; unclipped: only sets are clipped); with
    ``keyblind`` (fact_id, correct_keyblind, code_bits_keyblind), the same after a donor's prompt."""
    t = facts.with_columns(
        pl.Series("correct", correct),
        pl.Series("code_bits", bits),
    ).with_columns(memorized_bits=pl.col("prior_bits") - pl.col("code_bits"))
    if keyblind is not None:
        t = t.join(keyblind, on="fact_id", how="left", maintain_order="left")
    return t


def summarize(table: pl.DataFrame, by: str | None, non_embedding: int, total_params: int | None = None,
              population: pl.DataFrame | None = None) -> pl.DataFrame:
    """Metrics per group of the probed ``table``, scaled to the ``population`` it was sampled from.

    ``population`` (default: the table itself) holds every fact the table stands for, with the same
    group columns and ``prior_bits``. Per group: n_facts (population), n_probed, MR, capacity =
    MR x n_facts with its binomial standard error (finite-population corrected: 0 when every fact was
    probed), net_bits = n_facts x mean(prior - code) over the probed facts, capacity_bits =
    max(0, net_bits) (the one clip, at the set level) with its standard error, prior_bits (population
    sum), value loss (nats per value token) and bits per non-embedding / total parameter.
    """
    keys = [by] if by is not None else []
    pop = population if population is not None else table
    net = pl.col("prior_bits") - pl.col("code_bits")
    probed = [
        pl.len().alias("n_probed"),
        pl.col("correct").mean().alias("mr"),
        pl.col("code_bits").mean().alias("code_bits_mean"),
        (pl.col("code_bits").sum() * math.log(2) / pl.col("n_value_tokens").sum()).alias("value_loss"),
        net.mean().alias("_net_mean"),
        net.var(ddof=1).fill_null(0.0).alias("_net_var"),
    ]
    blind = "correct_keyblind" in table.columns and table["correct_keyblind"].null_count() < table.height
    if blind:
        probed += keyblind.summary_exprs()
    popu = [pl.len().alias("n_facts"), pl.col("prior_bits").sum().alias("prior_bits")]
    if keys:
        out = table.group_by(keys).agg(probed).join(pop.group_by(keys).agg(popu), on=keys, how="left",
                                                    nulls_equal=True)  # facts without a group value are a group
    else:
        out = pl.concat([table.select(probed), pop.select(popu)], how="horizontal")
    N, n = pl.col("n_facts").cast(pl.Float64), pl.col("n_probed").cast(pl.Float64)
    fpc = pl.when(N > 1).then(((N - n) / (N - 1)).clip(lower_bound=0.0)).otherwise(0.0)
    out = out.with_columns(
        capacity=pl.col("mr").cast(pl.Float64) * N,
        capacity_se=N * (pl.col("mr") * (1 - pl.col("mr")) / n * fpc).sqrt(),
        net_bits=pl.col("_net_mean") * N,
        capacity_bits_se=N * (pl.col("_net_var") / n * fpc).sqrt(),
    ).with_columns(capacity_bits=pl.col("net_bits").clip(lower_bound=0.0)).drop("_net_mean", "_net_var")
    if blind:
        out = keyblind.finish(out)
    if by is None:
        out = out.with_columns(group_by=pl.lit("all"), group=pl.lit("all"))
    else:
        out = out.with_columns(group_by=pl.lit(by), group=pl.col(by).cast(pl.String)).drop(by).sort("group")
    return out.with_columns(bits_per_param=pl.col("capacity_bits") / non_embedding,
                            bits_per_total_param=pl.col("capacity_bits") / (total_params or float("nan")))


def frequency_buckets(values: pl.Series, n: int = 4) -> pl.Series:
    """Quantile buckets q1 (rarest) .. qn of a frequency signal; null where the signal is missing."""
    if values.null_count() == len(values):
        return pl.Series("freq_bucket", [None] * len(values), dtype=pl.String)
    ranks = values.rank("average") / values.drop_nulls().len()
    b = (ranks * n).ceil().clip(1, n).cast(pl.Int64)
    return pl.Series("freq_bucket", ["q" + str(x) if x is not None else None for x in b.to_list()], dtype=pl.String)


