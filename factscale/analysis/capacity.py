"""One capacity table across three papers: measured bits per parameter beside published anchors.

``capacity_table(frames)`` takes results tables (``factscale collect``) and/or quantization-probe tables
(``factscale quantize-probe``) and returns one row per (run, weights) at its final, annealed probe of the
training split: corpus kind, architecture, size, parameter counts, exposures, MR, capacity in facts and in
bits with standard errors, bits per non-embedding and per total parameter. Below them come the published
anchors as *reference* rows (``source`` = the paper and section, ``measured`` = False): numbers quoted
from the papers, never computed here.

Exposures = epochs x times each fact is seen per epoch (1 unless the run repeats facts with
``train.repeat_by``, when it varies by fact and is left empty). bits_per_param_se = capacity_bits_se /
parameters (the sampling error of a probe on a sample of the training facts; 0 for a full probe - it
says nothing about seed-to-seed spread).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from factscale.analysis.vocab import PRECISION_WEIGHTS, overall
from factscale.errors import CollectError
from factscale.fsio import write_atomic, write_parquet_atomic

NEEDED = ["run_id", "epoch", "split", "group_by", "mr", "capacity", "capacity_bits", "capacity_bits_se",
          "non_embedding_params", "total_params", "corpus_kind", "cfg.model.size", "cfg.model.arch",
          "cfg.train.epochs"]

AZL = "Allen-Zhu & Li 2024, Physics of LMs 3.3 (arXiv 2404.05405)"
MORRIS = "Morris et al. 2025, How much do language models memorize? (arXiv 2505.24832)"
LU = "Lu et al. 2024, Scaling Laws for Fact Memorization of LLMs (arXiv 2406.15720)"
# (corpus, weights, exposures, bits per parameter as published, which parameter count, source, note)
REFERENCES = [
    ("bios", "fp16 mixed", 1000, 2.0, "total", AZL, "bioS(N), GPT-2 models: >= 2 bits/param at 1000 exposures"),
    ("bios", "fp16 mixed", 100, 1.0, "total", AZL, "bioS(N), GPT-2 models: >= 1 bit/param at 100 exposures"),
    ("bios", "int8", None, 2.0, "total", AZL, "abstract: 2 bits/param 'even when quantized to int8'"),
    ("bios", "int4", None, 0.7, "total", AZL, "quantization result: int4 drops to ~0.7 bits/param"),
    ("random-sequences", "bf16", None, 3.51, "total", MORRIS, "precision experiment: bf16 models"),
    ("random-sequences", "fp32", None, 3.83, "total", MORRIS, "precision experiment: fp32 models"),
    ("random-sequences", "bf16/fp32", None, 3.6, "total", MORRIS, "abstract: GPT-style models ~3.6 bits/param"),
    ("facts", "-", None, None, "non-embedding", LU,
     "abstract: capacity linear in model size (non-embedding params) at fixed epochs, negative-exponential in "
     "epochs; all Wikidata facts would need ~1000B non-embedding params at 100 epochs; no bits/param "
     "published: the slope is fitted per study (factscale fit --law linear-size)"),
]
# why a bios row's bits are not Allen-Zhu & Li's bioS bits (their count, as we read it, includes each name,
# N log2 N0, and a gender bit, and derives the employer's city from the employer; ours has neither)
BIOS_NOT_COMPARABLE = ("bits not comparable to Allen-Zhu & Li's bioS count: theirs includes the names and a gender "
                       "bit, and the employer's city follows from the employer; here every attribute is drawn "
                       "independently and names are not counted")
COLUMNS = ["measured", "source", "corpus", "weights", "arch", "size", "experts", "non_embedding_params",
           "params_per_token", "active_params", "total_params", "epochs", "exposures", "mr", "capacity", "capacity_bits",
           "capacity_bits_se", "bits_per_param", "bits_per_param_se", "bits_per_param_per_token",
           "bits_per_active_param", "bits_per_total_param",
           "bits_per_total_param_se", "prior_bits", "eos_bits",
           "run_id", "note"]


def corpus_name(corpus_kind: str) -> str:
    """``synthetic-bios`` -> ``bios`` (the synthetic registry's kind), ``dump`` -> ``facts (dump)``."""
    from factscale.corpus.synthetic import kind_of

    return kind_of(corpus_kind) or f"facts ({corpus_kind})"


def _measured(df: pl.DataFrame, where: str) -> pl.DataFrame:
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise CollectError(f"{where}: missing column(s) {missing} needed by capacity-table; give results tables "
                           "from `factscale collect` or `factscale quantize-probe` (needed columns: "
                           f"{', '.join(NEEDED)})")
    rows = overall(df, "train").filter(pl.col("epoch") == pl.col("cfg.train.epochs"))
    if rows.height == 0:
        raise CollectError(f"{where}: no final (annealed) probe of a training split; capacity-table reads the "
                           "overall train row at epoch == cfg.train.epochs")
    opt = lambda c, dt=pl.Float64: pl.col(c) if c in rows.columns else pl.lit(None, dtype=dt)  # noqa: E731
    repeat = opt("cfg.train.repeat_by", pl.String)
    names = {k: corpus_name(k) for k in rows["corpus_kind"].unique().to_list()}
    return rows.select(
        measured=pl.lit(True),
        source=pl.lit("measured here"),
        # the published rows' corpus names: a synthetic kind by its registry name, real facts by their source
        corpus=pl.col("corpus_kind").replace_strict(names, return_dtype=pl.String),
        # a quantize-probe's weights, else the training precision (the published rows' vocabulary)
        weights=opt("weights", pl.String).fill_null(
            opt("precision", pl.String).replace_strict(PRECISION_WEIGHTS, default="fp32", return_dtype=pl.String)),
        arch=pl.col("cfg.model.arch").cast(pl.String),
        size=pl.col("cfg.model.size").cast(pl.String),
        experts=opt("experts", pl.Int64).cast(pl.Int64).fill_null(0),  # 0: dense (and older results)
        non_embedding_params=pl.col("non_embedding_params").cast(pl.Int64),
        # a dense model's every parameter serves every token; older results lack the column
        params_per_token=opt("params_per_token", pl.Int64).cast(pl.Int64).fill_null(pl.col("non_embedding_params")),
        total_params=pl.col("total_params").cast(pl.Int64),
        epochs=pl.col("epoch").cast(pl.Int64),
        exposures=pl.when(repeat.is_null()).then(pl.col("epoch")).otherwise(None).cast(pl.Int64),
        mr=pl.col("mr").cast(pl.Float64),
        capacity=pl.col("capacity").cast(pl.Float64),
        capacity_bits=pl.col("capacity_bits").cast(pl.Float64),
        capacity_bits_se=pl.col("capacity_bits_se").cast(pl.Float64),
        bits_per_param=pl.col("capacity_bits") / pl.col("non_embedding_params"),
        bits_per_param_se=pl.col("capacity_bits_se") / pl.col("non_embedding_params"),
        bits_per_param_per_token=pl.col("capacity_bits") / opt("params_per_token", pl.Int64).cast(pl.Float64)
        .fill_null(pl.col("non_embedding_params").cast(pl.Float64)),
        active_params=opt("active_params", pl.Int64).cast(pl.Int64),  # null for results of older versions
        bits_per_active_param=pl.col("capacity_bits") / opt("active_params"),
        bits_per_total_param=pl.col("capacity_bits") / pl.col("total_params"),
        bits_per_total_param_se=pl.col("capacity_bits_se") / pl.col("total_params"),
        prior_bits=opt("prior_bits"),
        eos_bits=opt("eos_bits"),
        run_id=pl.col("run_id").cast(pl.String),
        note=pl.concat_str([
            pl.when(repeat.is_null()).then(pl.lit("")).otherwise(pl.lit("repeats vary by fact; ")),
            pl.when(pl.col("corpus_kind").replace_strict(names) == "bios").then(pl.lit(BIOS_NOT_COMPARABLE))
            .otherwise(pl.lit(""))
        ]).str.strip_chars_end("; "),
    )


def reference_rows() -> pl.DataFrame:
    rows = []
    for corpus, weights, exposures, bpp, count, source, note in REFERENCES:
        rows.append({"measured": False, "source": f"published: {source}", "corpus": corpus, "weights": weights,
                     "exposures": exposures,
                     "bits_per_param": bpp if count == "non-embedding" else None,
                     "bits_per_total_param": bpp if count == "total" else None,
                     "note": f"{note} (per {count} parameter, our reading)"})
    return pl.DataFrame(rows, schema_overrides={"exposures": pl.Int64, "bits_per_param": pl.Float64,
                                                 "bits_per_total_param": pl.Float64})


def capacity_table(frames: list[tuple[str, pl.DataFrame]], references: bool = True) -> pl.DataFrame:
    """``frames``: (name for messages, table) pairs. Measured rows sorted by corpus, weights and size, one per
    (run, weights) (the first table wins a duplicate, e.g. a quantize-probe's fp32 row of a collected run)."""
    measured = pl.concat([_measured(df, name) for name, df in frames], how="vertical_relaxed")
    measured = measured.unique(subset=["run_id", "weights"], keep="first", maintain_order=True)
    order = {"fp32": 0, "int8": 1, "int4": 2}
    measured = measured.sort(["corpus", pl.col("weights").replace_strict(order, default=9, return_dtype=pl.Int64),
                              "exposures", "total_params"], nulls_last=True)
    out = pl.concat([measured, reference_rows()] if references else [measured], how="diagonal_relaxed")
    return out.select([c for c in COLUMNS if c in out.columns])


def read_tables(paths: list[str | Path]) -> list[tuple[str, pl.DataFrame]]:
    out = []
    for p in map(Path, paths):
        if not p.is_file():
            raise CollectError(f"results table not found: {p} (make one with `factscale collect RUNS_DIR -o {p}` "
                               f"or `factscale quantize-probe RUN_DIR -o {p}`)")
        try:
            df = pl.read_parquet(p)
        except Exception as e:  # polars raises several types for a non-parquet file
            raise CollectError(f"{p}: not a parquet results table ({type(e).__name__})") from None
        out.append((str(p), df))
    return out


def write_table(df: pl.DataFrame, out: str | Path) -> list[Path]:
    """``out``.parquet and ``out``.csv (same stem), each written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq, csv = out.with_suffix(".parquet"), out.with_suffix(".csv")
    write_parquet_atomic(df, pq)
    write_atomic(csv, df.write_csv())
    return [pq, csv]


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(df: pl.DataFrame) -> str:
    head = (f"{'corpus':<17} {'weights':<10} {'size':>13} {'non-emb':>8} {'per tok':>8} {'total':>8} {'expos.':>6} "
            f"{'MR':>6} {'capacity bits (se)':>19} {'bits/non-emb':>12} {'bits/tok':>8} {'bits/total':>10}  source")
    lines = [head]
    for r in df.iter_rows(named=True):
        if r["measured"]:
            bits = f"{r['capacity_bits']:,.0f} ({r['capacity_bits_se']:,.0f})"
            src = r["run_id"]
        else:
            bits, src = "-", r["source"]
        lines.append(f"{r['corpus']:<17} {r['weights']:<10} {r.get('size') or '-':>13} "
                     f"{_f(r.get('non_embedding_params'), ','):>8} {_f(r.get('params_per_token'), ','):>8} "
                     f"{_f(r.get('total_params'), ','):>8} "
                     f"{_f(r['exposures'], 'd'):>6} {_f(r.get('mr'), '.3f'):>6} {bits:>19} "
                     f"{_f(r['bits_per_param'], '.3f'):>12} {_f(r.get('bits_per_param_per_token'), '.3f'):>8} "
                     f"{_f(r['bits_per_total_param'], '.3f'):>10}  {src}")
        if not r["measured"]:
            lines.append(f"{'':<17}   ({r['note']})")
    return "\n".join(lines)
