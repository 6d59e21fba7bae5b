"""``factscale corpus build|export``: flags -> one CorpusSpec -> a corpus directory (or a datasets export).

Split from ``factscale.cli.main`` (which owns the entry point and the error policy) so each file stays short.
"""

from __future__ import annotations

import sys
from pathlib import Path

from factscale.configio import from_dict, key_values


def _variants(items: list[str] | None) -> dict | None:
    """``compatibility:n=200`` / ``frequency:mode=signal,levels=1/2/4/8`` / ``phases:n=2,by=relation``."""
    from factscale.errors import CorpusError

    out = {}
    for item in items or []:
        name, _, rest = item.partition(":")
        opts = {}
        for k, v in key_values(rest).items():
            try:
                opts[k] = ([int(x) for x in v.split("/")] if k == "levels" else float(v) if k == "alpha"
                           else int(v) if v.isdigit() else v)
            except ValueError:
                raise CorpusError(f"--variant {item!r}: levels are integers separated by '/', e.g. levels=1/2/4/8; "
                                  "alpha is a number") from None
        out[name] = opts
    return out or None


def _synthetic_kind_options(opts: dict) -> dict:
    """--kind, --pools k=N,..., --seq-len, --symbols -> fields of the synthetic kind's spec."""
    from factscale.errors import CorpusError

    out = {"kind": opts["kind"]} if "kind" in opts else {}
    for k, v in key_values(opts.get("pools")).items():
        try:
            out[k] = int(v)
        except ValueError:
            raise CorpusError(f"--pools {k}={v!r}: pool sizes are integers, e.g. birth_city=200,university=300") \
                from None
    if "seq_len" in opts:
        out["length"] = opts["seq_len"]
    if "symbols" in opts:
        out["symbols"] = opts["symbols"]
    return out


def _recipe(items: list[str]) -> dict:
    """``RECIPE.yaml`` (a corpus recipe: the fields of ``CorpusSpec``, as in a sweep's ``corpus_build``) and
    ``key=value`` overrides (``synthetic.n_keys=500``), merged in that order; flags given beside them win."""
    from factscale.configio import parse_override, read_yaml_mapping, set_dotted

    data: dict = {}
    for item in items or []:
        if "=" in item:
            set_dotted(data, *parse_override(item))
        else:
            data = {**read_yaml_mapping(item, "corpus recipe"), **data}
    return data


def cmd_corpus_build(a):
    """Flags -> one CorpusSpec (the same recipe a sweep's corpus_build gives) -> corpus.build."""
    from factscale import corpus
    from factscale.errors import CorpusError

    recipe = _recipe(a.recipe)
    given = {k: v for k, v in vars(a).items()
             if v is not None and k not in ("fn", "cmd", "corpus_cmd", "out", "recipe")}
    synthetic = given.pop("synthetic", False) or recipe.get("synthetic") is not None
    n_keys, value_vocab = given.pop("n_keys", None), given.pop("value_vocab", None)
    kind_opts = {k: given.pop(k) for k in ("kind", "pools", "seq_len", "symbols") if k in given}
    if kind_opts and not synthetic:
        raise CorpusError(f"--{next(iter(kind_opts)).replace('_', '-')} is an option of --synthetic corpora")
    if synthetic:
        syn = dict(recipe.get("synthetic") or {})  # the recipe's, then the flags'
        syn.update({} if n_keys is None else {"n_keys": n_keys})
        syn.update(_synthetic_kind_options(kind_opts))
        if value_vocab is not None:
            try:
                syn["vocab_sizes"] = [int(x) for x in value_vocab.split(",")]
            except ValueError:
                raise CorpusError(f"--value-vocab {value_vocab!r}: expected comma-separated integers, e.g. 16,64,256") \
                    from None
        given["synthetic"] = syn
    given["variants"] = _variants(given.pop("variant", None)) or {}
    sharding = {k: given.pop(k) for k in ("cluster", "shards") if k in given}
    res = {k[len("shard_"):]: given.pop(k) for k in list(given) if k.startswith("shard_")}
    if res and not sharding:
        raise CorpusError(f"--shard-{next(iter(res)).replace('_', '-')} is an option of sharded builds (--cluster, "
                          "--shards)")
    spec = from_dict(corpus.CorpusSpec, {**recipe, **{k: v for k, v in given.items() if k != "variants" or v}})
    if sharding:  # the same corpus, parsed as a job array (factscale/corpus/shards.py)
        from factscale.corpus.wikidata.shards import build_sharded, shard_resources

        m = build_sharded(spec, a.out, sharding.get("cluster", "local"), sharding.get("shards"), shard_resources(**res))
    else:
        m = corpus.build_from_spec(spec, a.out, progress=sys.stderr.isatty())
    c = m["counts"]
    print(f"corpus {a.out}: {c['kept_facts']} facts ({c.get('kept_train', 0)} train, {c.get('kept_heldout', 0)} "
          f"held-out), {len(m['facts_per_relation'])} relations, {m['entropy_bits']['all']:.0f} bits "
          f"({m['entropy_bits']['kind']}), vocab {m['tokens']['vocab_size']}"
          + (f", + a junk pool of {c['kept_junk']} pieces ({m['tokens']['junk_tokens']:,} tokens; <domain> token "
             f"id {m['tokens']['domain_tag_id']})" if c.get("kept_junk") else ""))
    dropped = {k: v for k, v in c.items() if (k.startswith("dropped") or "malformed" in k) and v}
    if dropped:
        print("  dropped/skipped: " + ", ".join(f"{k}={v}" for k, v in dropped.items()))
    print(f"  manifest: {Path(a.out) / 'manifest.json'}")


def cmd_corpus_export(a):
    from factscale.corpus.tables.hf import export_corpus

    out = export_corpus(a.corpus, a.out)
    print(f"exported {a.corpus} -> {out} (datasets.load_from_disk; manifest in info.description and README.md)")


def add_corpus_parser(sub) -> None:
    """The ``corpus`` command group, on the top-level subparsers."""
    c = sub.add_parser("corpus", help="build fact corpora").add_subparsers(dest="corpus_cmd", required=True)
    b = c.add_parser("build", help="dump / triples / synthetic -> corpus directory",
                     description="Build a corpus from a recipe file and/or flags: `factscale corpus build RECIPE.yaml "
                     "[key=value ...] -o DIR` (the fields of `factscale config show corpus`), or flags alone.")
    b.add_argument("recipe", nargs="*", metavar="RECIPE.yaml|key=value",
                   help="a corpus recipe (YAML, the fields of a sweep's corpus_build) and dotted overrides")
    b.add_argument("--dump", nargs="+", help="Wikidata JSON dump(s): .json, .json.gz, .json.bz2")
    b.add_argument("--triples", nargs="+", help="T-REx/LAMA or BEAR jsonl, or ID-triple TSV (Q1<TAB>P17<TAB>Q2, "
                   "plain or .gz, labels via --labels), files or directories")
    b.add_argument("--synthetic", action="store_true", help="generate facts with exactly known entropy")
    b.add_argument("--hf", nargs="+", metavar="PATH", help="local Hugging Face datasets source: a save_to_disk "
                   "directory, or parquet/json/jsonl/csv files")
    b.add_argument("--hf-columns", help="--hf column mapping, e.g. subject=sub_label,relation=predicate_id,"
                   "value=obj_label[,subject_id=..,value_id=..,relation_label=..]")
    b.add_argument("--hf-split", help="--hf: the split of a DatasetDict (default: all splits)")
    b.add_argument("-o", "--out", required=True)
    b.add_argument("--labels", nargs="+", help="label tables (TSV or JSON) for values/properties not in the data")
    b.add_argument("--templates", help="LAMA relations.jsonl with [X]/[Y] templates")
    b.add_argument("--properties", help="allow-list, e.g. P36,P569")
    b.add_argument("--deny-properties", help="deny-list, e.g. P18,P373")
    b.add_argument("--subject-filter", help="e.g. P31=Q5 (instance of human)")
    b.add_argument("--exclude-subjects", action="append", metavar="PRESET|P=Q",
                   help="skip subjects with this claim: scholarly-articles (P31=Q13442814) or e.g. P31=Q4167836")
    b.add_argument("--datatypes", help="dump: mainsnak datatypes to keep (default: wikibase-item,time,quantity,"
                   "monolingualtext,string without identifiers); e.g. default,external-id | all | default,-quantity")
    b.add_argument("--language", help="label language (default en)")
    b.add_argument("--max-facts", type=int)
    # no defaults here: unset flags take CorpusSpec's (factscale/corpus/spec.py), shared with sweeps' corpus_build
    b.add_argument("--multi-value", choices=["drop", "first"], help="default drop")
    b.add_argument("--ambiguous-keys", choices=["disambiguate", "drop"], help="default disambiguate")
    b.add_argument("--copyable", choices=["drop", "keep"], help="facts whose value is the key or inside the prompt "
                   "(a model copies them): drop (default) or keep, marked in a copyable column; real sources only")
    b.add_argument("--heldout-frac", type=float, help="default 0.1")
    b.add_argument("--vocab-size", type=int, help="BPE vocabulary (default 2048)")
    b.add_argument("--workers", type=int, help="dump parser processes (default: all cores)")
    b.add_argument("--cluster", help="--dump: parse the input in shards as a submitit job array, then merge (the "
                   "same corpus, same hash): slurm | local (shard processes on this machine) | debug (in-process)")
    b.add_argument("--shards", help="shard jobs (default: one per file): uncompressed .json files are cut into byte "
                   "ranges at line boundaries; a compressed .json.bz2/.gz file is one shard")
    b.add_argument("--shard-time-min", type=int, help="SLURM time limit per shard job, minutes (default 120; "
                   "on expiry the shard is requeued, up to 3 times)")
    b.add_argument("--shard-cpus", type=int, help="CPUs per shard job = its parser processes (default 4)")
    b.add_argument("--shard-mem-gb", type=float, help="memory per shard job, GB (default 8)")
    b.add_argument("--shard-partition", help="SLURM partition of the shard jobs")
    b.add_argument("--shard-account", help="SLURM account of the shard jobs")
    b.add_argument("--n-keys", type=int, help="synthetic: keys (default 1000)")
    b.add_argument("--value-vocab", help="synthetic: values per attribute (default 16,64,256,1024)")
    b.add_argument("--kind", help="--synthetic: facts (default; --n-keys, --value-vocab), bios (six-attribute biographies; "
                   "--n-keys people, --pools) or random-sequences (--n-keys sequences, --seq-len, --symbols)")
    b.add_argument("--pools", metavar="NAME=N,...", help="bios pool sizes: birth_years (dates = 12 x 28 x years), "
                   "birth_city, university, major, employer, employer_city (default 200,200,300,100,263,200)")
    b.add_argument("--seq-len", type=int, help="random-sequences: symbols per sequence (default 32)")
    b.add_argument("--symbols", type=int, help="random-sequences: alphabet size, at most 2704 (default 256)")
    b.add_argument("--seed", type=int, help="default 0")
    b.add_argument("--variant", action="append", metavar="NAME:k=v,...",
                   help="compatibility:n=200 | frequency:mode=assigned|signal,levels=1/2/4/8 | "
                   "frequency:mode=zipf,alpha=1,max=16 | phases:n=2,by=relation | junk:kind=random|facts,n=N "
                   "(a pool runs mix in with train.junk_ratio)")
    b.set_defaults(fn=cmd_corpus_build)
    ex = c.add_parser("export", help="corpus directory -> Hugging Face datasets directory (load_from_disk)")
    ex.add_argument("corpus")
    ex.add_argument("-o", "--out", required=True)
    ex.set_defaults(fn=cmd_corpus_export)
