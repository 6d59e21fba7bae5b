"""``factscale facts RUN``: which facts a run memorized, which it learned and then lost, and how two runs differ,
fact by fact, with the prompt and the value (from ``fact_probe.parquet`` and ``fact_history.parquet``)."""

from __future__ import annotations

from pathlib import Path

SHOW = ["fact_id", "split", "relation", "prompt", "value"]


def _read(run: str):
    import polars as pl

    from factscale.errors import CollectError

    d = Path(run)
    final = d / "fact_probe.parquet"
    if not final.exists():
        raise CollectError(f"{run}: no fact_probe.parquet (not a finished run directory; `factscale sweep status` "
                           "says which runs are done)")
    history = d / "fact_history.parquet"
    return pl.read_parquet(final), (pl.read_parquet(history) if history.exists() else None)


def select(run: str, which: str, split: str = "train", compare: str | None = None):
    """The facts of ``run`` that are ``memorized`` / ``not-memorized`` at its final probe, ``forgotten``
    (memorized at some probe, not at the final one; with the epoch it was last memorized), or, with
    ``compare``, the facts whose final outcome differs between the two runs (``memorized_by``: which one)."""
    import polars as pl

    from factscale.errors import CollectError

    final, history = _read(run)
    final = final.filter(pl.col("split") == split)
    if compare is not None:
        other, _ = _read(compare)
        other = other.filter(pl.col("split") == split).select("fact_id", pl.col("correct").alias("correct_b"))
        both = final.join(other, on="fact_id", how="inner")
        if both.height == 0:
            raise CollectError(f"{run} and {compare} probed no common {split} facts (different corpora?)")
        return (both.filter(pl.col("correct") != pl.col("correct_b"))
                .with_columns(memorized_by=pl.when(pl.col("correct")).then(pl.lit(Path(run).name))
                              .otherwise(pl.lit(Path(compare).name)))
                .select(*SHOW, "memorized_by").sort("memorized_by", "fact_id"))
    if which in ("memorized", "above-chance"):
        kb = [c for c in ("correct_keyblind",) if c in final.columns]  # runs before 2026-12-07 lack it
        if which == "above-chance":
            if not kb:
                raise CollectError(f"{run}: its fact_probe.parquet has no key-blind outcome (made by an older "
                                   "factscale); --memorized lists every exact match")
            final = final.filter(~pl.col("correct_keyblind").fill_null(False))
        return final.filter(pl.col("correct")).select(*SHOW, "code_bits", *kb).sort("fact_id")
    if which == "not-memorized":
        return final.filter(~pl.col("correct")).select(*SHOW, "code_bits").sort("fact_id")
    if history is None:
        raise CollectError(f"{run}: no fact_history.parquet (made by an older factscale): forgotten facts need every "
                           "probe's outcome")
    last_known = (history.filter((pl.col("split") == split) & pl.col("correct"))
                  .group_by("fact_id").agg(pl.col("epoch").max().alias("last_memorized_epoch")))
    return (final.filter(~pl.col("correct")).join(last_known, on="fact_id", how="inner")
            .select(*SHOW, "last_memorized_epoch").sort("fact_id"))


def add_parser(sub) -> None:
    f = sub.add_parser("facts", help="list a run's memorized / forgotten facts, or compare two runs fact by fact")
    f.add_argument("run", help="a finished run directory (runs/<id>)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--memorized", dest="which", action="store_const", const="memorized",
                   help="facts memorized (exact match) at the final probe (the default)")
    g.add_argument("--above-chance", dest="which", action="store_const", const="above-chance",
                   help="memorized facts whose value is not also produced after another key's prompt (the "
                   "key-blind guess, e.g. a relation's commonest value): what the key itself is worth")
    g.add_argument("--not-memorized", dest="which", action="store_const", const="not-memorized")
    g.add_argument("--forgotten", dest="which", action="store_const", const="forgotten",
                   help="memorized at some probe, not at the final one")
    g.add_argument("--compare", metavar="RUN2", help="facts whose final outcome differs between RUN and RUN2")
    f.add_argument("--split", default="train", choices=["train", "heldout"])
    f.add_argument("-n", type=int, default=20, help="rows to print (default 20; -o writes all)")
    f.add_argument("-o", "--output", help="write every selected fact to a .csv or .parquet file")
    f.set_defaults(fn=cmd_facts, which="memorized")


def cmd_facts(a) -> None:
    import polars as pl

    from factscale.fsio import write_atomic, write_parquet_atomic

    t = select(a.run, a.which, a.split, a.compare)
    what = f"differ from {a.compare}" if a.compare else a.which.replace("above-chance", "memorized above chance")
    print(f"{t.height} {a.split} facts {what} ({a.run})")
    if a.which == "memorized" and not a.compare and "correct_keyblind" in t.columns:
        n = int(t["correct_keyblind"].fill_null(False).sum())
        print(f"  of which {n} are also right after another key's prompt (correct_keyblind: the key-blind guess, "
              "chance rather than memory; --above-chance lists the others)")
    with pl.Config(tbl_rows=max(1, a.n), fmt_str_lengths=60, tbl_width_chars=160):
        print(t.head(a.n))
    if a.output:
        if a.output.endswith(".csv"):
            write_atomic(Path(a.output), t.write_csv())
        else:
            write_parquet_atomic(t, Path(a.output))
        print(f"wrote {a.output}")
