from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from transformers import AutoTokenizer

from factscale.corpus import SyntheticSpec, build_synthetic
from factscale.corpus.synthetic import generate


def test_exact_entropy_and_uniqueness(tmp_path):
    spec = SyntheticSpec(n_keys=300, vocab_sizes=[16, 64, 256], seed=3)
    m = build_synthetic(tmp_path / "s", spec, vocab_size=512)
    assert m["entropy_bits"]["kind"] == "exact"
    assert m["entropy_bits"]["all"] == pytest.approx(300 * (4 + 6 + 8))
    df = pl.read_parquet(tmp_path / "s" / "facts.parquet")
    assert df.height == 900 and m["counts"]["kept_facts"] == 900
    assert df["key"].n_unique() == 300
    assert df.select("key", "relation").is_duplicated().sum() == 0
    # the train entropy is the per-fact log2 V summed over training facts
    train = df.filter(pl.col("split") == "train")
    assert m["entropy_bits"]["train"] == pytest.approx(sum(math.log2({"S1": 16, "S2": 64, "S3": 256}[r])
                                                           for r in train["relation"]))
    # held-out facts have unseen keys: no key is in both splits
    assert not set(train["key"]) & set(df.filter(pl.col("split") == "heldout")["key"])
    assert 0 < m["counts"]["kept_heldout"] < 200
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "s" / "tokenizer"))
    assert tok.decode(df["input_ids"][0][df["value_start"][0]:-1]).strip() == df["value"][0]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["corpus_hash"] == m["corpus_hash"]


def test_values_uniform_and_seeded():
    a, _ = generate(SyntheticSpec(n_keys=4000, vocab_sizes=[16], seed=1))
    b, _ = generate(SyntheticSpec(n_keys=4000, vocab_sizes=[16], seed=1))
    c, _ = generate(SyntheticSpec(n_keys=4000, vocab_sizes=[16], seed=2))
    assert a.equals(b) and not a.equals(c)
    counts = a["value"].value_counts()["count"].to_numpy()
    assert counts.min() > 4000 / 16 * 0.7 and counts.max() < 4000 / 16 * 1.3  # uniform over 16 values


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="vocab_sizes"):
        SyntheticSpec(vocab_sizes=[1])
    with pytest.raises(ValueError, match="n_keys"):
        SyntheticSpec(n_keys=0)


# ---------------------------------------------------------------- kinds: bios and random sequences


def test_bios_manifest_entropy_is_the_exact_entropy(tmp_path):
    from factscale.corpus import CorpusSpec, build_from_spec

    pools = {"birth_years": 10, "birth_city": 5, "university": 7, "major": 3, "employer": 11, "employer_city": 4}
    spec = CorpusSpec(synthetic={"kind": "bios", "n_keys": 150, "templates": 3, **pools}, vocab_size=512, seed=2)
    m = build_from_spec(spec, tmp_path / "b")
    sizes = {"birth_date": 12 * 28 * 10, "birth_city": 5, "university": 7, "major": 3, "employer": 11,
             "employer_city": 4}
    exact = 150 * sum(math.log2(v) for v in sizes.values())  # N x sum(log2 pool size), computed here
    assert m["entropy_bits"]["kind"] == "exact" and m["entropy_bits"]["all"] == pytest.approx(exact, rel=1e-12)
    assert m["source"]["kind"] == "synthetic-bios"
    df = pl.read_parquet(tmp_path / "b" / "facts.parquet")
    assert df.height == 900 and df["key"].n_unique() == 150  # six facts per person, unique names
    for rel, size in sizes.items():
        r = df.filter(pl.col("relation") == rel)
        assert r.height == 150 and (r["prior_bits"] == math.log2(size)).all()
        assert r["value"].n_unique() <= size
    train = df.filter(pl.col("split") == "train")
    assert m["entropy_bits"]["train"] == pytest.approx(sum(math.log2(sizes[r]) for r in train["relation"]))
    assert df.filter(pl.col("relation") == "birth_date")["value"].str.contains(r"^[A-Z][a-z]+ \d{1,2}, 19\d\d$").all()
    assert df["prompt"].n_unique() > 150 * 2  # several templates per attribute


def test_bios_values_are_uniform_independent_draws_from_distinct_pools():
    from factscale.corpus.synthetic.bios import BiosSpec, generate_bios, pools

    spec = BiosSpec(n_keys=3000, birth_city=8, major=5, seed=4)
    raw, bits = generate_bios(spec)
    assert bits == pytest.approx(3000 * sum(math.log2(v) for v in spec.pool_sizes().values()))
    every = pools(spec, np.random.default_rng(0), set())
    assert all(len(set(v)) == len(v) == spec.pool_sizes()[k] for k, v in every.items())  # distinct strings
    city = raw.filter(pl.col("relation") == "birth_city")["value"].value_counts()["count"].to_numpy()
    assert len(city) == 8 and city.min() > 3000 / 8 * 0.75 and city.max() < 3000 / 8 * 1.25
    # independence: the joint of two attributes is close to the product of the marginals
    wide = raw.pivot(on="relation", index="subject_id", values="value")
    joint = wide.group_by("birth_city", "major").len()["len"].to_numpy()
    assert len(joint) == 40 and joint.min() > 3000 / 40 * 0.5
    b, _ = generate_bios(BiosSpec(n_keys=3000, birth_city=8, major=5, seed=4))
    assert raw.equals(b)


def test_random_sequences_are_one_token_per_symbol_with_exact_entropy(tmp_path):
    from transformers import AutoTokenizer

    from factscale.corpus import CorpusSpec, build_from_spec
    from factscale.corpus.synthetic.sequences import alphabet

    n, L, V = 300, 12, 100
    m = build_from_spec(CorpusSpec(synthetic={"kind": "random-sequences", "n_keys": n, "length": L, "symbols": V},
                                   vocab_size=512), tmp_path / "q")
    assert m["entropy_bits"]["all"] == pytest.approx(n * L * math.log2(V), rel=1e-12)
    assert m["source"]["kind"] == "synthetic-random-sequences"
    df = pl.read_parquet(tmp_path / "q" / "facts.parquet")
    assert df.height == n and (df["prior_bits"] == L * math.log2(V)).all()
    assert m["entropy_bits"]["train"] == pytest.approx(df.filter(pl.col("split") == "train").height * L * math.log2(V))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "q" / "tokenizer"))
    assert all(len(tok(" " + s, add_special_tokens=False)["input_ids"]) == 1 for s in alphabet(V))
    for value, ids, vs in zip(df["value"], df["input_ids"], df["value_start"]):
        assert len(value.split(" ")) == L
        assert len(tok(" " + value, add_special_tokens=False)["input_ids"]) == L  # never merged across symbols
        assert len(ids) - vs == L + 1 and ids[-1] == tok.eos_token_id
    # symbols uniform over the alphabet
    counts = np.unique(np.concatenate([v.split(" ") for v in df["value"]]), return_counts=True)[1]
    assert len(counts) == V and counts.max() < 3 * n * L / V


def test_a_vocabulary_too_small_for_the_symbols_is_refused_and_leaves_the_old_corpus(tmp_path):
    from factscale.corpus import CorpusSpec, build_from_spec
    from factscale.errors import CorpusError

    out = tmp_path / "q"
    ok = build_from_spec(CorpusSpec(synthetic={"kind": "random-sequences", "n_keys": 50, "length": 4, "symbols": 8},
                                    vocab_size=300), out)
    with pytest.raises(CorpusError, match="vocab_size"):
        build_from_spec(CorpusSpec(synthetic={"kind": "random-sequences", "symbols": 2000}, vocab_size=2048), out)
    # passes the lower bound, but BPE cannot give 700 two-letter symbols a token each in 1,000 entries:
    with pytest.raises(CorpusError, match="not 6 tokens"):
        build_from_spec(CorpusSpec(synthetic={"kind": "random-sequences", "n_keys": 400, "length": 6,
                                              "symbols": 700}, vocab_size=1040), out)
    assert json.loads((out / "manifest.json").read_text())["corpus_hash"] == ok["corpus_hash"]


def test_the_facts_kind_is_the_old_recipe_and_corpus(tmp_path):
    from factscale.corpus import CorpusSpec, build_from_spec

    old = CorpusSpec(synthetic={"n_keys": 80, "vocab_sizes": [16]}, vocab_size=256)
    named = CorpusSpec(synthetic={"kind": "facts", "n_keys": 80, "vocab_sizes": [16]}, vocab_size=256)
    assert named.recipe() == old.recipe() and "kind" not in old.recipe()["synthetic"]
    m = build_from_spec(named, tmp_path / "a")
    direct = build_synthetic(tmp_path / "b", SyntheticSpec(n_keys=80, vocab_sizes=[16]), vocab_size=256)
    assert m["corpus_hash"] == direct["corpus_hash"] and m["source"]["kind"] == "synthetic"
    assert CorpusSpec(synthetic={}).source == "synthetic"  # a bare --synthetic: all defaults


@pytest.mark.parametrize("args, message", [
    (["--kind", "stories"], "synthetic kind (--kind) 'stories' is unknown; allowed values: ['facts', 'bios', "
                            "'random-sequences']"),
    (["--kind", "bios", "--pools", "major=1"], "bios pool size major (--pools major=N) must be an integer >= 2"),
    (["--kind", "bios", "--pools", "town=9"], "unknown config key 'synthetic.town'; allowed keys here"),
    (["--kind", "bios", "--pools", "major=many"], "--pools major='many': pool sizes are integers"),
    (["--kind", "random-sequences", "--symbols", "5000"], "symbols (--symbols) must be in [2, 2704]"),
    (["--kind", "random-sequences", "--seq-len", "0"], "length (--seq-len) must be >= 1"),
])
def test_bad_kind_options_are_one_error_line(args, message, tmp_path, capsys):
    from factscale.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["corpus", "build", "--synthetic", *args, "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "x").exists()


def test_a_recipe_file_with_overrides_builds_the_corpus_its_flags_build(tmp_path, monkeypatch, capsys):
    """`factscale corpus build RECIPE.yaml key=value -o DIR` is the flags' corpus (the same recipe, the same hash);
    flags beside a recipe win; a mistyped recipe key is one error naming it."""
    import json

    from factscale.cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text("synthetic: {n_keys: 40, vocab_sizes: [16, 64]}\nvocab_size: 400\n")
    main(["corpus", "build", "recipe.yaml", "synthetic.n_keys=50", "-o", "a"])
    main(["corpus", "build", "--synthetic", "--n-keys", "50", "--value-vocab", "16,64", "--vocab-size", "400", "-o", "b"])
    main(["corpus", "build", "recipe.yaml", "--n-keys", "50", "-o", "c"])
    m = {d: json.loads((tmp_path / d / "manifest.json").read_text()) for d in "abc"}
    assert m["a"]["corpus_hash"] == m["b"]["corpus_hash"] == m["c"]["corpus_hash"]
    assert m["a"]["recipe"] == m["b"]["recipe"] and m["a"]["recipe"]["synthetic"]["n_keys"] == 50
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["corpus", "build", "recipe.yaml", "synthetic.n_kees=5", "-o", "d"])
    assert e.value.code == 2 and "unknown config key 'synthetic.n_kees'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.unit
def test_every_recipe_field_has_a_flag_generated_from_the_dataclass():
    """`corpus build`'s flags come from CorpusSpec: each field (nested sharding fields by their metadata name)
    has one, its help is the field's docstring, and a flag sets exactly its field."""
    import dataclasses

    from factscale.cli.corpus import GENERATED
    from factscale.cli.main import build_parser
    from factscale.configio import describe
    from factscale.corpus.spec import CorpusSpec

    build = next(a for a in build_parser()._subparsers._group_actions[0].choices["corpus"]._subparsers
                 ._group_actions[0].choices.values() if a.prog.endswith("build"))
    flags = {a.dest[len(GENERATED):]: a for a in build._actions if a.dest.startswith(GENERATED)}
    fields = {d["key"] for d in describe(CorpusSpec)} - {"synthetic", "variants"}
    assert set(flags) == fields
    assert flags["max_facts"].option_strings == ["--max-facts"] and flags["sharding.cpus"].option_strings == ["--shard-cpus"]
    assert flags["multi_value"].choices == ["drop", "first"] and "several values" in flags["multi_value"].help
    a = build_parser().parse_args(["corpus", "build", "--dump", "a.json", "b.json", "--exclude-subjects", "x",
                                   "--exclude-subjects", "P31=Q5", "--max-facts", "7", "--shards", "2", "-o", "o"])
    got = {k[len(GENERATED):]: v for k, v in vars(a).items() if k.startswith(GENERATED) and v is not None}
    assert got == {"dump": ["a.json", "b.json"], "exclude_subjects": ["x", "P31=Q5"], "max_facts": 7,
                   "sharding.shards": 2}
    assert not dataclasses.asdict(CorpusSpec(synthetic={}))["sharding"]["cluster"]


@pytest.mark.unit
def test_recipe_lists_and_mappings_are_the_same_recipe_as_their_strings():
    """Typed recipe fields (a list of properties, a mapping of subject filters or hf columns) are stored in the
    manifest in their string form, so both spellings are one recipe (a sweep reuses the corpus)."""
    from factscale.configio import from_dict
    from factscale.corpus.spec import CorpusSpec

    typed = from_dict(CorpusSpec, {"dump": ["d.json"], "properties": ["P36", "P569"], "deny_properties": ["P18"],
                                   "subject_filter": {"P31": "Q5"}, "datatypes": ["default", "-quantity"]})
    text = from_dict(CorpusSpec, {"dump": ["d.json"], "properties": "P36,P569", "deny_properties": "P18",
                                  "subject_filter": "P31=Q5", "datatypes": "default,-quantity"})
    assert typed.recipe() == text.recipe() and typed.properties == "P36,P569"
    hf = from_dict(CorpusSpec, {"hf": ["x.parquet"], "hf_columns": {"subject": "sub_label", "value": "obj_label"}})
    assert hf.hf_columns == "subject=sub_label,value=obj_label"
    with pytest.raises(Exception, match=r"properties: expected str or list of str, got \{'P31': 'Q5'\}"):
        from_dict(CorpusSpec, {"dump": ["d.json"], "properties": {"P31": "Q5"}})


@pytest.mark.unit
def test_a_recipe_file_after_a_repeatable_flag_stays_a_recipe():
    from factscale.cli.corpus import GENERATED
    from factscale.cli.main import build_parser

    a = build_parser().parse_args(["corpus", "build", "--exclude-subjects", "scholarly-articles", "wd.yaml", "-o", "o"])
    assert a.recipe == ["wd.yaml"] and getattr(a, GENERATED + "exclude_subjects") == ["scholarly-articles"]


@pytest.mark.parametrize("args, message", [
    (["--dump", "d.json", "--deny-properties", "[P31, P17]"], "YAML lists and mappings belong in a recipe file"),
    (["--dump", "d.json", "--deny-properties", "P31, P17"], "' P17' is not a property id"),
    (["--dump", "d.json", "--properties", "31"], "'31' is not a property id"),
    (["--synthetic", "--deny-properties", "P31"], "deny_properties (--deny-properties) applies to a dump source; "
                                                  "this recipe's source is synthetic"),
    (["--synthetic", "--language", "de"], "language (--language) applies to a dump source"),
    (["--dump", "d.json", "--hf-split", "train"], "hf_split (--hf-split) applies to a hf source"),
    (["--dump", "d.json", "--subject-filter", "P31=Q5=Q6"], "each item reads PROPERTY=ITEM"),
    (["--dump", "d.json", "--subject-filter", "p31=q5"], "'p31=q5' does not"),
])
def test_recipe_values_that_would_do_nothing_are_one_error_line(args, message, tmp_path, capsys):
    from factscale.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["corpus", "build", *args, "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.unit
def test_sharding_null_is_no_sharding():
    from factscale.configio import from_dict
    from factscale.corpus.spec import CorpusSpec

    spec = from_dict(CorpusSpec, {"dump": ["d.json"], "sharding": None})
    assert not spec.sharding.enabled and spec.recipe() == CorpusSpec(dump=["d.json"]).recipe()


@pytest.mark.unit
def test_one_naming_of_synthetic_kinds_with_its_inverse():
    """A manifest's ``source.kind`` names a synthetic kind in one place (``source_kind``); the capacity
    table reads it back through the inverse, not a hand-kept mapping."""
    from factscale.analysis.capacity import corpus_name
    from factscale.corpus.synthetic import KINDS, kind_of, source_kind

    assert all(kind_of(source_kind(k)) == k for k in KINDS)
    assert source_kind("facts") == "synthetic" and source_kind("bios") == "synthetic-bios"
    assert kind_of("dump") is None and corpus_name("dump") == "facts (dump)" and corpus_name("synthetic") == "facts"


@pytest.mark.unit
def test_exclude_subjects_may_be_one_string_in_a_recipe():
    from factscale.configio import from_dict
    from factscale.corpus.spec import CorpusSpec

    one = from_dict(CorpusSpec, {"dump": ["d.json"], "exclude_subjects": "scholarly-articles"})
    assert one.recipe() == CorpusSpec(dump=["d.json"], exclude_subjects=["scholarly-articles"]).recipe()


def test_a_build_without_held_out_facts_says_so(tmp_path, capsys):
    from factscale.cli.main import main

    main(["corpus", "build", "--synthetic", "--n-keys", "3", "--value-vocab", "4", "--heldout-frac", "0.01",
          "--vocab-size", "128", "-o", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert "(3 train, 0 held-out)" in out and "warning: no held-out facts" in out
