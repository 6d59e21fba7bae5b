"""``factscale corpus build|export``: flags -> one CorpusSpec -> a corpus directory (or a datasets export).

Split from ``factscale.cli.main`` (which owns the entry point and the error policy) so each file stays short.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

from factscale.configio import from_dict, key_values
from factscale.errors import Terminated


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


GENERATED = "recipe:"  # argparse dest prefix of the flags generated from CorpusSpec's fields
CONVENIENCE = ("synthetic", "n_keys", "value_vocab", "kind", "pools", "seq_len", "symbols", "variant")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a build runs, SIGTERM (``kill``, a job scheduler) unwinds it like Ctrl-C: a ``--cluster local`` or
    ``slurm`` build cancels its shard jobs instead of leaving them running, and the private directory goes."""
    def terminated(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def cmd_corpus_build(a):
    """RECIPE.yaml, key=value overrides and flags -> one CorpusSpec (the recipe a sweep's corpus_build gives) ->
    corpus.build_from_spec (in one process, or parsed as a job array when the recipe has ``sharding``)."""
    from factscale import corpus
    from factscale.configio import set_dotted
    from factscale.errors import CorpusError

    recipe = _recipe(a.recipe)
    for dest, v in vars(a).items():  # flags generated from the recipe's fields: dotted keys, flags win
        if dest.startswith(GENERATED) and v is not None:
            set_dotted(recipe, dest[len(GENERATED):], v)
    given = {k: v for k, v in vars(a).items() if k in CONVENIENCE and v is not None and v is not False}
    synthetic = given.pop("synthetic", False) or recipe.get("synthetic") is not None
    n_keys, value_vocab = given.pop("n_keys", None), given.pop("value_vocab", None)
    kind_opts = {k: given.pop(k) for k in ("kind", "pools", "seq_len", "symbols") if k in given}
    if (kind_opts or n_keys is not None or value_vocab is not None) and not synthetic:
        flag = next(iter(kind_opts), "n_keys" if n_keys is not None else "value_vocab")
        raise CorpusError(f"--{flag.replace('_', '-')} is an option of --synthetic corpora")
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
        recipe["synthetic"] = syn
    variants = _variants(given.pop("variant", None))
    if variants:
        recipe["variants"] = variants
    spec = from_dict(corpus.CorpusSpec, recipe)
    with _sigterm_as_interrupt():
        m = corpus.build_from_spec(spec, a.out, progress=sys.stderr.isatty())
    c, n_rel = m["counts"], len(m["facts_per_relation"])
    print(f"corpus {a.out}: {c['kept_facts']} facts ({c.get('kept_train', 0)} train, {c.get('kept_heldout', 0)} "
          f"held-out), {n_rel} relation{'s' * (n_rel != 1)}, {m['entropy_bits']['all']:.0f} bits "
          f"({m['entropy_bits']['kind']}), vocab {m['tokens']['vocab_size']}"
          + (f", + a junk pool of {c['kept_junk']} pieces ({m['tokens']['junk_tokens']:,} tokens; <domain> token "
             f"id {m['tokens']['domain_tag_id']})" if c.get("kept_junk") else ""))
    if spec.heldout_frac > 0 and not c.get("kept_heldout"):
        print(f"  warning: no held-out facts (heldout_frac {spec.heldout_frac} of {c['kept_facts']} facts' subjects "
              "drew none): nothing can be probed on unseen keys, and the key-blind baseline's donors are other "
              "training facts")
    dropped = {k: v for k, v in c.items() if (k.startswith("dropped") or "malformed" in k or "max_facts" in k) and v}
    if dropped:
        print("  dropped/skipped: " + ", ".join(f"{k}={v}" for k, v in dropped.items()))
    print(f"  manifest: {Path(a.out) / 'manifest.json'}")


def cmd_corpus_export(a):
    from factscale.corpus.tables.hf import export_corpus

    out = export_corpus(a.corpus, a.out)
    print(f"exported {a.corpus} -> {out} (datasets.load_from_disk; manifest in info.description and README.md)")


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def add_recipe_flags(parser, cls=None, prefix: str = "") -> None:
    """One flag per field of the corpus recipe (``CorpusSpec``, nested dataclasses dotted), generated from the
    field's type, default and docstring, so the flags and the recipe cannot drift apart: ``max_facts`` ->
    ``--max-facts``; a field's ``metadata["flag"]`` names it otherwise (``sharding.cluster`` -> ``--cluster``).
    Unset flags stay None: the recipe file's value, else the dataclass default, applies."""
    import dataclasses
    import typing

    from factscale.configio import field_docs, yaml_value
    from factscale.corpus.spec import CorpusSpec

    cls = cls or CorpusSpec
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name in ("synthetic", "variants"):  # nested mappings of their own: the shortcut flags
            continue
        if dataclasses.is_dataclass(tp):
            add_recipe_flags(parser, tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        doc = " ".join(docs.get(f.name, "").split()).replace("``", "").replace("%", "%%")
        kw: dict = {"dest": f"{GENERATED}{prefix}{f.name}", "default": None, "metavar": f.name.upper(),
                    "help": doc + (f" (default {yaml_value(default)})" if default is not None else "")}
        args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is typing.Union else [tp]
        base = args[0]
        if typing.get_origin(base) is list and f.metadata.get("repeat"):
            kw["action"] = "append"  # --exclude-subjects x --exclude-subjects y: one value each, so a recipe file
        elif typing.get_origin(base) is list:  # after it stays a positional
            kw.update(nargs="+", action="extend")  # --dump a b
        elif typing.get_origin(base) is typing.Literal:
            kw["choices"] = list(typing.get_args(base))
            del kw["metavar"]
        elif base in (int, float):
            kw["type"] = _number  # a bad value is then one error line from the recipe's check, naming the field
        parser.add_argument(f.metadata.get("flag", "--" + f.name.replace("_", "-")), **kw)


def add_corpus_parser(sub) -> None:
    """The ``corpus`` command group, on the top-level subparsers."""
    c = sub.add_parser("corpus", help="build fact corpora").add_subparsers(dest="corpus_cmd", required=True)
    b = c.add_parser("build", help="dump / triples / synthetic -> corpus directory",
                     description="Build a corpus from a recipe file and/or flags: `factscale corpus build RECIPE.yaml "
                     "[key=value ...] -o DIR` (the fields of `factscale config show corpus`), or flags alone.")
    b.add_argument("recipe", nargs="*", metavar="RECIPE.yaml|key=value",
                   help="a corpus recipe (YAML, the fields of a sweep's corpus_build) and dotted overrides")
    b.add_argument("-o", "--out", required=True)
    add_recipe_flags(b)
    # shortcuts for the nested mappings (synthetic kinds, variants), written out by hand
    b.add_argument("--synthetic", action="store_true", help="generate facts with exactly known entropy (the recipe's "
                   "synthetic mapping; `factscale config show synthetic-facts|bios|random-sequences`)")
    b.add_argument("--n-keys", type=int, help="synthetic: keys (default 1000)")
    b.add_argument("--value-vocab", help="synthetic: values per attribute (default 16,64,256,1024)")
    b.add_argument("--kind", help="--synthetic: facts (default; --n-keys, --value-vocab), bios (six-attribute biographies; "
                   "--n-keys people, --pools) or random-sequences (--n-keys sequences, --seq-len, --symbols)")
    b.add_argument("--pools", metavar="NAME=N,...", help="bios pool sizes: birth_years (dates = 12 x 28 x years), "
                   "birth_city, university, major, employer, employer_city (default 200,200,300,100,263,200)")
    b.add_argument("--seq-len", type=int, help="random-sequences: symbols per sequence (default 32)")
    b.add_argument("--symbols", type=int, help="random-sequences: alphabet size, at most 2704 (default 256)")
    b.add_argument("--variant", action="append", metavar="NAME:k=v,...",
                   help="compatibility:n=200 | frequency:mode=assigned|signal,levels=1/2/4/8 | "
                   "frequency:mode=zipf,alpha=1,max=16 | phases:n=2,by=relation | junk:kind=random|facts,n=N "
                   "(a pool runs mix in with train.junk_ratio)")
    b.set_defaults(fn=cmd_corpus_build)
    ex = c.add_parser("export", help="corpus directory -> Hugging Face datasets directory (load_from_disk)")
    ex.add_argument("corpus")
    ex.add_argument("-o", "--out", required=True)
    ex.set_defaults(fn=cmd_corpus_export)
