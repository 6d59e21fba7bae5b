"""``factscale probe`` (any local causal LM on a corpus) and ``factscale quantize-probe`` (saved runs after
weight quantization): the commands that probe saved models rather than train them."""

from __future__ import annotations


def cmd_probe(a):
    import polars as pl

    from factscale.analysis.external import probe_model
    from factscale.errors import CollectError
    from factscale.fsio import write_parquet_atomic

    if a.max_train_facts is not None and a.max_train_facts < 1:
        raise CollectError(f"--max-train-facts must be >= 1, got {a.max_train_facts}")
    if a.batch_size < 1:
        raise CollectError(f"--batch-size must be >= 1, got {a.batch_size}")
    rows, info = probe_model(a.model, a.corpus, eos=not a.no_eos, max_train_facts=a.max_train_facts,
                             batch_size=a.batch_size)
    print(f"{info['model']} on {info['corpus']}: {info['non_embedding_params']:,} non-emb / {info['total_params']:,} "
          f"total params; {info['facts']:,} facts, {info['realigned']:,} re-aligned to the model's token boundaries; "
          f"exact match {'value + <eos>' if info['eos'] else 'value only (--no-eos)'}")
    for r in rows.filter(pl.col("group_by") == "all").iter_rows(named=True):
        kb = f", key-blind MR {r['mr_keyblind']:.3f}" if r.get("mr_keyblind") is not None else ""
        print(f"  {r['split']:<8} MR {r['mr']:.3f}{kb}: {r['capacity']:,.0f} of {r['n_facts']:,} facts memorized; "
              f"memorized bits {r['capacity_bits']:,.0f} of {r['prior_bits']:,.0f} prior bits (net {r['net_bits']:+,.0f})")
    if a.output:
        write_parquet_atomic(rows, a.output)
        print(f"wrote {a.output}")


def cmd_quantize_probe(a):
    from factscale.analysis.quantize import probe_run, rtn_quantizer, run_dirs
    from factscale.errors import CollectError

    try:
        bits = [int(b) for b in a.bits.split(",")]
        for b in bits:
            rtn_quantizer(b)
    except ValueError:
        raise CollectError(f"--bits {a.bits!r}: comma-separated integers in [2, 16], e.g. 8,4") from None
    import polars as pl

    from factscale.analysis.capacity import write_table

    frames = []
    for d in run_dirs(a.runs):
        df = probe_run(d, bits, embeddings=a.embeddings)
        frames.append(df)
        for r in df.iter_rows(named=True):
            print(f"{r['run_id']}  {r['weights']:>5}: MR {r['mr']:.3f}, capacity {r['capacity']:.0f} facts, "
                  f"{r['capacity_bits']:.0f} bits ({r['bits_per_param']:.3f}/non-emb, {r['bits_per_total_param']:.3f}"
                  f"/total param), eos {r['eos_bits']:.0f} bits")
    if a.output:
        print("wrote " + ", ".join(map(str, write_table(pl.concat(frames, how="diagonal_relaxed"), a.output))))


def add_parsers(sub) -> None:
    pb = sub.add_parser("probe", help="probe any local causal LM (a from_pretrained directory) on a corpus")
    pb.add_argument("model", help="a from_pretrained directory with its tokenizer (a run's model/ folder too)")
    pb.add_argument("corpus", help="a corpus directory (factscale corpus build)")
    pb.add_argument("--no-eos", action="store_true", help="exact match and code length over the value only (a "
                    "released model has no reason to end a sentence after a value)")
    pb.add_argument("--max-train-facts", type=int, help="probe a fixed sample of this many training facts")
    pb.add_argument("--batch-size", type=int, default=256)
    pb.add_argument("-o", "--output", help="write the result rows as parquet (atomically)")
    pb.set_defaults(fn=cmd_probe)

    qp = sub.add_parser("quantize-probe", help="capacity of saved runs after int8/int4 weight quantization")
    qp.add_argument("runs", nargs="+", help="run directories, or runs directories holding finished runs")
    qp.add_argument("--bits", default="8,4", help="weight bits, comma-separated (default 8,4; fp32 is always probed)")
    qp.add_argument("--embeddings", action="store_true", help="also quantize the token embeddings / output head")
    qp.add_argument("-o", "--output", help="write OUTPUT.parquet and OUTPUT.csv (atomically)")
    qp.set_defaults(fn=cmd_quantize_probe)
