"""A finished run's result rows: one per (probe step, split, breakdown group), with the full resolved config
flattened into ``cfg.*`` columns and the library versions into ``version.*`` (the results vocabulary:
``analysis.vocab``)."""

from __future__ import annotations

import polars as pl

from factscale.configio import flatten, to_dict
from factscale.errors import CollectError
from factscale.provenance import versions


def build_rows(probe_rows: list[dict], cfg, meta: dict) -> pl.DataFrame:
    if not probe_rows:
        raise CollectError("no probe rows: the run produced no measurement")
    cfg_cols = {f"cfg.{k}": v for k, v in flatten(to_dict(cfg)).items()}
    ver_cols = {f"version.{k}": v for k, v in versions().items()}
    rows = [{**meta, **r, **cfg_cols, **ver_cols} for r in probe_rows]
    return pl.DataFrame(rows, infer_schema_length=None)


def summary_fields(df: pl.DataFrame) -> dict:
    """What a run summary prints from its rows: capacity with its standard error, bits per parameter,
    and the calibration check - memorized bits on held-out facts (unseen keys), which for random
    attributes must be ~0 (a fraction of the prior well under 1%)."""
    last = df.filter((pl.col("epoch") == df["epoch"].max()) & (pl.col("group_by") == "all"))
    out = {}
    for r in last.iter_rows(named=True):
        s = r["split"]
        out[f"{s}_capacity_se"] = r.get("capacity_se")
        out[f"{s}_bits"] = r.get("capacity_bits")
        out[f"{s}_net_bits"] = r.get("net_bits")
        out[f"{s}_net_bits_per_fact"] = (r["net_bits"] / r["n_facts"]) if r.get("n_facts") else None  # signed
        out[f"{s}_bits_frac_of_prior"] = (r["capacity_bits"] / r["prior_bits"]) if r.get("prior_bits") else None
        if s == "train":
            out["bits_per_param"] = r.get("bits_per_param")
            out["bits_per_total_param"] = r.get("bits_per_total_param")
    return out
