"""Corpus variants for the behaviour studies (Lu et al. 2024, sections on compatibility, preference and
overwriting). Each variant adds columns to every fact row and is recorded in the manifest.

- ``compatibility``: redundant facts beside matched controls. From base facts whose value names one
  subject only (so the inverse is one fact, not a contradiction), six disjoint groups of n are drawn:

  ==================  =====================================================  ==================
  group (``variant``)  facts in the corpus                                  what it tests
  ==================  =====================================================  ==================
  inverse             fact (s, r, o) + its inverse (o, r^-1, s)             other direction
  paraphrase          fact + the same fact in other words (same direction)  same direction/structure
  control-forward     fact only                                              -
  control-inverse     an inverse fact whose forward fact is absent           -
  control-paraphrase  a paraphrase whose original is absent                  -
  twice               fact, shown twice per epoch in the same words           more exposure only
                      (``repeats`` = 2; train with ``train.repeat_by: repeats``)
  ==================  =====================================================  ==================

  A redundant group holds 2n facts with n facts' information; its control holds the same 2n fact
  shapes (n forward + n inverse/paraphrase) with 2n facts' information. If a model stored redundant
  facts for free, the redundant group would be memorized better than its control at equal budget. A
  paraphrase also shows its fact's information twice per epoch: ``twice`` separates that exposure effect
  from cheaper storage (paraphrase forward MR - twice forward MR). ``part`` = ``variant/role`` names the
  probe groups (e.g. ``paraphrase/forward``).
  Known Wikidata inverse pairs (capital <-> capital of, part of <-> has part, symmetric relations)
  keep their property ids; other relations get a generic inverse ``r~inv`` ("o is the r of s").

- ``frequency``: per-fact exposure counts per epoch (``repeats``), either ``assigned`` uniformly at
  random from ``levels``, from the ``signal`` (popularity: T-REx count, sitelinks) by quantile, or drawn
  from a truncated Zipf law (``mode: zipf``, ``alpha``, ``max``: skewed exposures).
- ``phases``: a ``phase`` per fact (by relation, or random) for blocked-vs-interleaved training.
- ``junk``: a pool of ``n`` junk pieces (``split`` = ``junk``) that runs mix into their training with
  ``train.junk_ratio`` and never probe: ``kind: facts`` takes ``n`` facts of the corpus out of its training
  split (the last ones in its seeded order, so every ``corpus.max_facts`` prefix is untouched): facts of the
  same format, each seen rarely; ``kind: random``: ``<bos>`` + uniformly random non-special tokens +
  ``<eos>``, lengths drawn from the training facts' (noise with nothing to store). The tokenizer of a junk
  corpus also holds a ``<domain>`` token that ``train.domain_tag`` prefixes to every useful fact.

Difficulty columns (``rarity_bucket``: quartile of the value's surprisal ranked within its relation, ties
at random,
``value_len`` in tokens) are added to every corpus by the builder.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from factscale.corpus.rules import stable_unit

G = 6  # compatibility groups drawn from the base facts (module docstring)

# Wikidata inverse property pairs present in T-REx/BEAR (symmetric ones map to themselves)
INVERSE_PROPERTIES = {
    "P36": ("P1376", "capital of", "[X] is the capital of [Y]"),
    "P1376": ("P36", "capital", "The capital of [X] is [Y]"),
    "P361": ("P527", "has part", "[X] has the part [Y]"),
    "P527": ("P361", "part of", "[X] is part of [Y]"),
    "P47": ("P47", "shares border with", "[X] shares a border with [Y]"),
    "P190": ("P190", "twinned administrative body", "[X] is twinned with [Y]"),
    "P530": ("P530", "diplomatic relation", "[X] maintains diplomatic relations with [Y]"),
    "P26": ("P26", "spouse", "[X] is married to [Y]"),
    "P3373": ("P3373", "sibling", "[X] is a sibling of [Y]"),
}
PARAPHRASE_TEMPLATE = "As for [X], the [R] is [Y]"
GENERIC_INVERSE_TEMPLATE = "[X] is the [R] of [Y]"


def _invert(df: pl.DataFrame) -> pl.DataFrame:
    known = {r: v for r, v in INVERSE_PROPERTIES.items()}
    rel = df["relation"].to_list()
    new_rel = [known[r][0] if r in known else f"{r}~inv" for r in rel]
    new_label = [known[r][1] if r in known else lab for r, lab in zip(rel, df["relation_label"].to_list())]
    new_tpl = [known[r][2] if r in known else GENERIC_INVERSE_TEMPLATE for r in rel]
    return df.with_columns(
        subject_id=pl.col("value_id").fill_null(pl.col("value")),
        subject_label=pl.col("value"),
        key=pl.col("value"),
        value=pl.col("key"),  # the forward key, disambiguated if it had to be
        value_id=pl.col("subject_id"),
        value_type=pl.lit("item"),
        relation=pl.Series(new_rel),
        relation_label=pl.Series(new_label),
        template=pl.Series(new_tpl),
        cardinality=pl.lit("1-1"),
        prior_bits=pl.lit(None, dtype=pl.Float64),
    )


def _paraphrase(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(relation=pl.col("relation") + "~para", template=pl.lit(PARAPHRASE_TEMPLATE))


def compatibility(df: pl.DataFrame, n: int, seed: int, counts: dict) -> pl.DataFrame:
    """Six disjoint groups of ``n`` base facts -> the compatibility corpus (see module docstring)."""
    one_subject = pl.col("subject_id").n_unique().over(["relation", "value"]) == 1
    cand = df.filter(one_subject & (pl.col("value") != pl.col("key")))
    # a value may name one subject in one relation but appear in another: keep each value once overall
    cand = cand.unique(subset=["value"], keep="first", maintain_order=True)
    cand = cand.unique(subset=["subject_id"], keep="first", maintain_order=True)  # one base fact per subject
    # keys and values must not collide either (an inverse key equal to a forward key would be ambiguous)
    cand = cand.filter(~pl.col("value").is_in(cand["key"].implode()))
    counts["compatibility_candidates"] = cand.height
    # stratify by relation so the six groups have the same size and the same relation mix
    cand = cand.sample(fraction=1.0, shuffle=True, seed=seed)
    per_rel = cand.group_by("relation").len()
    usable = {r: c // G for r, c in per_rel.iter_rows()}
    total = sum(usable.values())
    if total < n:
        raise ValueError(f"compatibility variant n={n}: needs {G} x {n} invertible base facts (one value, one "
                         f"subject), the corpus has {G * total}: lower n to at most {total}")
    take = {r: k * n // total for r, k in usable.items()}
    cand = cand.with_columns(_i=pl.int_range(pl.len()).over("relation"))
    g = [cand.filter(pl.col("_i") // pl.col("relation").replace_strict(take, return_dtype=pl.Int64) == i)
         .filter(pl.col("_i") < G * pl.col("relation").replace_strict(take, return_dtype=pl.Int64)).drop("_i")
         for i in range(G)]
    counts["compatibility_group_size"] = g[0].height
    parts = [
        g[0].with_columns(variant=pl.lit("inverse"), role=pl.lit("forward")),
        _invert(g[0]).with_columns(variant=pl.lit("inverse"), role=pl.lit("inverse")),
        g[1].with_columns(variant=pl.lit("paraphrase"), role=pl.lit("forward")),
        _paraphrase(g[1]).with_columns(variant=pl.lit("paraphrase"), role=pl.lit("paraphrase")),
        g[2].with_columns(variant=pl.lit("control-forward"), role=pl.lit("forward")),
        _invert(g[3]).with_columns(variant=pl.lit("control-inverse"), role=pl.lit("inverse")),
        _paraphrase(g[4]).with_columns(variant=pl.lit("control-paraphrase"), role=pl.lit("paraphrase")),
        g[5].with_columns(variant=pl.lit("twice"), role=pl.lit("forward"), repeats=pl.lit(2, dtype=pl.Int64)),
    ]
    out = pl.concat(parts, how="diagonal_relaxed").with_columns(
        repeats=pl.col("repeats").fill_null(1), part=pl.format("{}/{}", "variant", "role"))
    counts["compatibility_facts"] = out.height
    return out


def zipf_repeats(n: int, alpha: float, kmax: int, seed: int) -> np.ndarray:
    """``n`` exposure counts per epoch drawn independently from a Zipf law truncated to 1..kmax:
    P(k) = k^-alpha / sum_j j^-alpha (skewed exposures: once is the commonest count, many times the rarest)."""
    if not (isinstance(kmax, int) and kmax >= 1) or not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"frequency variant mode=zipf needs alpha >= 0 and max >= 1 (an integer), got "
                         f"alpha={alpha!r}, max={kmax!r}")
    k = np.arange(1, kmax + 1)
    p = k ** -float(alpha)
    return np.random.default_rng(seed).choice(k, size=n, p=p / p.sum())


def frequency(df: pl.DataFrame, mode: str, levels: list[int], seed: int, signal: str = "popularity",
              alpha: float = 1.0, kmax: int = 16) -> pl.DataFrame:
    """Per-fact repeats per epoch: ``assigned`` (uniform over levels), from a ``signal`` by quantile, or
    ``zipf`` (a Zipf law with exponent ``alpha`` over 1..``kmax``: ``zipf_repeats``)."""
    if "repeats" in df.columns:
        raise ValueError("variants compatibility and frequency both set per-fact repeats; use one of them")
    levels = sorted(int(x) for x in levels)
    if mode == "zipf":
        reps = zipf_repeats(df.height, alpha, kmax, seed)
    elif mode == "assigned":
        rng = np.random.default_rng(seed)
        reps = np.asarray(levels)[rng.integers(len(levels), size=df.height)]
    elif mode == "signal":
        if signal not in df.columns or df[signal].null_count() == df.height:
            raise ValueError(f"frequency variant mode=signal: column {signal!r} is missing or empty")
        ranks = (df[signal].rank("average") / df[signal].drop_nulls().len()).fill_null(0.0).to_numpy()
        idx = np.clip(np.ceil(ranks * len(levels)).astype(int) - 1, 0, len(levels) - 1)
        reps = np.asarray(levels)[idx]
    else:
        raise ValueError(f"frequency variant mode={mode!r}; allowed values: ['assigned', 'signal', 'zipf']")
    return df.with_columns(repeats=pl.Series(reps, dtype=pl.Int64)).with_columns(
        freq_level=pl.format("x{}", pl.col("repeats")))


def phases(df: pl.DataFrame, n: int, by: str, seed) -> pl.DataFrame:
    """Assign each fact a phase p1..pn: whole relations per phase (``relation``) or at random."""
    if n < 2:
        raise ValueError(f"phases variant needs n >= 2, got {n}")
    if by == "relation":
        rels = sorted(df["relation"].unique().to_list())
        if len(rels) < n:
            raise ValueError(f"phases by relation: {len(rels)} relations for {n} phases")
        rng = np.random.default_rng(seed)
        order = [rels[i] for i in rng.permutation(len(rels))]
        phase_of = {r: f"p{i * n // len(order) + 1}" for i, r in enumerate(order)}
        return df.with_columns(phase=pl.col("relation").replace_strict(phase_of, return_dtype=pl.String))
    if by == "random":
        rng = np.random.default_rng(seed)
        return df.with_columns(phase=pl.Series([f"p{i + 1}" for i in rng.integers(n, size=df.height)]))
    raise ValueError(f"phases variant by={by!r}; allowed values: ['random', 'relation']")


JUNK_KINDS = ("facts", "random")


def junk_options(variants: dict | None) -> tuple[str, int] | None:
    """(kind, n) of a ``junk`` variant, checked; None without one."""
    if not variants or "junk" not in variants:
        return None
    v = variants["junk"] or {}
    if set(variants) != {"junk"}:
        raise ValueError(f"the junk variant combines with no other variant (its pool would inherit their columns); "
                         f"got {sorted(variants)}")
    unknown = set(v) - {"kind", "n"}
    if unknown:
        raise ValueError(f"junk variant: unknown option(s) {sorted(unknown)}; allowed: kind, n")
    kind, n = v.get("kind", "random"), v.get("n")
    if kind not in JUNK_KINDS:
        raise ValueError(f"junk variant kind={kind!r}; allowed values: {list(JUNK_KINDS)}")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"junk variant needs n, the pool size, an integer >= 1; got n={n!r}")
    return kind, n


def junk_facts(df: pl.DataFrame, n: int, counts: dict) -> pl.DataFrame:
    """``kind: facts``: the last ``n`` training facts in the seeded order become the junk pool."""
    train = df["split"] == "train"
    if int(train.sum()) <= n:
        raise ValueError(f"junk variant kind=facts n={n}: the corpus has {int(train.sum())} training facts; "
                         "n must leave some to learn: lower n or build more facts")
    cut = df.filter(train)["order"].sort(descending=True)[n - 1]
    counts["junk_pieces"] = n
    return df.with_columns(split=pl.when(train & (pl.col("order") >= cut)).then(pl.lit("junk"))
                           .otherwise(pl.col("split")))


def random_junk(lengths: np.ndarray, n: int, vocab_size: int, first_id: int, bos: int, eos: int,
                seed: int) -> pl.DataFrame:
    """``kind: random``: ``n`` pieces ``<bos>`` + uniform tokens in [first_id, vocab_size) + ``<eos>``, their
    lengths drawn from ``lengths`` (the training facts'); every token after ``<bos>`` is a target."""
    rng = np.random.default_rng([seed, 13])
    ln = rng.choice(np.asarray(lengths), size=n)
    ids = [[bos, *rng.integers(first_id, vocab_size, size=k - 2).tolist(), eos] for k in ln]
    return pl.DataFrame({"input_ids": pl.Series(ids, dtype=pl.List(pl.Int32)),
                         "value_start": pl.Series([1] * n, dtype=pl.Int32),
                         "n_value_tokens": pl.Series(ln - 1, dtype=pl.Int32),
                         "split": ["junk"] * n, "relation": ["junk"] * n})


def apply_variants(df: pl.DataFrame, variants: dict | None, seed: int, counts: dict) -> pl.DataFrame:
    """Apply the requested variants in a fixed order: compatibility, frequency, phases (``junk`` is applied
    by the builder: after the split, or after tokenization)."""
    variants = variants or {}
    unknown = set(variants) - {"compatibility", "frequency", "phases", "junk"}
    if unknown:
        raise ValueError(f"unknown corpus variant(s) {sorted(unknown)}; allowed: compatibility, frequency, junk, "
                         "phases")
    junk_options(variants)
    if "compatibility" in variants:
        df = compatibility(df, int(variants["compatibility"].get("n", 200)), seed, counts)
    if "frequency" in variants:
        v = variants["frequency"]
        df = frequency(df, v.get("mode", "assigned"), v.get("levels", [1, 2, 4, 8]), seed, v.get("signal", "popularity"),
                       float(v.get("alpha", 1.0)), v.get("max", 16))
    if "phases" in variants:
        v = variants["phases"]
        # random phases drawn from the seed alone would repeat an assigned frequency's draws (same generator,
        # same integers: phase p1 <=> level x1); beside a frequency variant they get their own stream (alone,
        # the plain seed as before, so corpora built earlier keep their phases)
        phase_seed = [seed, 3] if "frequency" in variants else seed
        df = phases(df, int(v.get("n", 2)), v.get("by", "relation"), phase_seed)
    return df


RARITY_SEED = 104_729  # salts the per-fact tie-break of rarity_bucket (independent of the split's and order's)


def rarity_table(df: pl.DataFrame) -> pl.DataFrame:
    """Facts per (relation, prior_bits): what ``difficulty_columns`` ranks against. A bucketed build sums the
    tables of its parts (``merge_rarity``)."""
    return df.filter(pl.col("prior_bits").is_not_null()).group_by("relation", "prior_bits").agg(n=pl.len())


def merge_rarity(tables: list[pl.DataFrame]) -> pl.DataFrame:
    """Facts below and at each prior within its relation, and the relation's total."""
    t = pl.concat(tables).group_by("relation", "prior_bits").agg(pl.col("n").sum()).sort("relation", "prior_bits")
    return t.with_columns(below=(pl.col("n").cum_sum() - pl.col("n")).over("relation"),
                          total=pl.col("n").sum().over("relation"))


def difficulty_columns(df: pl.DataFrame, ranks: pl.DataFrame | None = None) -> pl.DataFrame:
    """rarity_bucket: quartile of the value's surprisal within its relation (q1 common .. q4 rare), ties broken
    at random per fact: the fact's rank fraction is (facts of its relation with a lower prior + u x facts with
    the same prior) / the relation's facts, u a seeded uniform of the fact (format /3; /2 ranked ties by row
    position). ``ranks``: ``merge_rarity`` of the whole corpus (a bucketed build passes it; default: ``df``'s).
    value_len: value length in tokens (1, 2, 3, 4+), the end-of-fact token not counted."""
    # ranked within each relation, so every bucket holds about a quarter of every relation: "difficulty" is then
    # not a proxy for which relation a fact belongs to (a corpus-wide rank was mostly that), and a relation whose
    # values are all equally rare (every capital unique) is split at random
    ranks = merge_rarity([rarity_table(df)]) if ranks is None else ranks
    u = stable_unit(df.select(pl.concat_str("subject_id", "relation", "text", separator="|", ignore_nulls=True))
                    .to_series(), RARITY_SEED)
    r = df.select("relation", "prior_bits").with_columns(u=u).join(
        ranks, on=["relation", "prior_bits"], how="left", maintain_order="left").select(
        (pl.col("below") + pl.col("u") * pl.col("n")) / pl.col("total")).to_series()
    q = np.clip(np.ceil(r.fill_null(0.5).to_numpy() * 4).astype(int), 1, 4)
    vlen = (df["n_value_tokens"] - 1).clip(upper_bound=4).cast(pl.String).replace({"4": "4+"})
    return df.with_columns(rarity_bucket=pl.Series([f"q{x}" for x in q]), value_len=vlen)
