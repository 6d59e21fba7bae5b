"""T-REx/LAMA and BEAR fact sets from ../shared/data/wikidata: counts kept and dropped per reason."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
from transformers import AutoTokenizer

from factscale.corpus import build_from_triples


@pytest.fixture(scope="module")
def trex(shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("trex") / "c"
    m = build_from_triples(out, [shared / "trex" / "mTRExf", shared / "trex" / "mTREx"], copyable="keep")
    return out, m


@pytest.mark.slow  # the fast tier stays under 2 minutes (the full suite runs it)
def test_trex_counts(shared, trex):
    _, m = trex
    c = m["counts"]
    # README: 92,000 rows, 86,928 unique (subject, relation, object)
    assert c["rows_read"] == 92_000
    assert c["raw_facts"] == 86_928
    assert c["rows_read"] - c["merged_duplicate_rows"] == 86_928
    # recount the slow way, in the order the files were given: one label per (subject, relation, object id)
    # (the first seen), then a (subject, relation) is multi-valued when its objects carry several labels
    first_label: dict = {}
    for d in ("mTRExf", "mTREx"):
        for f in sorted((shared / "trex" / d).glob("P*.jsonl")):
            for line in open(f):
                r = json.loads(line)
                first_label.setdefault((r["sub_uri"], r["predicate_id"], r["obj_uri"]), r["obj_label"])
    pairs: dict = {}
    for (s, p, _), label in first_label.items():
        pairs.setdefault((s, p), set()).add(label)
    assert c["multi_valued_pairs"] == sum(len(v) > 1 for v in pairs.values())
    assert c["kept_facts"] == sum(len(v) == 1 for v in pairs.values()) - c["dropped_ambiguous_key"]  # copyable kept
    assert m["source"]["templates"].endswith("relations.jsonl")
    assert len(m["facts_per_relation"]) == 46


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def copyable_by_hand(row: dict) -> str | None:
    """The slow obvious rule: the value's words equal the label's, or occur as a contiguous run of the prompt's."""
    v, p = words(row["value"]), words(row["prompt"])
    if v == words(row["subject_label"]):
        return "key"
    if v and any(p[i:i + len(v)] == v for i in range(len(p) - len(v) + 1)):
        return "prompt"
    return None


@pytest.mark.slow  # the fast tier stays under 2 minutes (the full suite runs it)
def test_copyable_facts_are_counted_exactly_and_marked_when_kept(trex):
    """Facts a model can copy from its prompt ("The country of Latvia is Latvia"): the rule's counts and the
    copyable column equal a word-by-word recount of every real T-REx fact."""
    out, m = trex
    df = pl.read_parquet(out / "facts.parquet")
    by_hand = [copyable_by_hand(r) for r in df.select("value", "prompt", "subject_label").iter_rows(named=True)]
    c = m["counts"]
    assert c["copyable_value_is_key"] == by_hand.count("key") > 0
    assert c["copyable_value_in_prompt"] == by_hand.count("prompt") > 0
    assert df["copyable"].to_list() == [h is not None for h in by_hand]
    assert c["dropped_value_is_key"] == c["dropped_value_in_prompt"] == 0 and m["options"]["copyable"] == "keep"


@pytest.mark.slow  # a second build of all 86,928 T-REx facts
def test_copyable_facts_are_dropped_by_default(shared, tmp_path, trex):
    _, kept = trex
    files = [shared / "trex" / "mTRExf", shared / "trex" / "mTREx"]
    m = build_from_triples(tmp_path / "c", files, heldout_frac=0.0, vocab_size=256)
    df = pl.read_parquet(tmp_path / "c" / "facts.parquet")
    c, k = m["counts"], kept["counts"]
    assert c["dropped_value_is_key"] == k["copyable_value_is_key"]
    assert c["dropped_value_in_prompt"] == k["copyable_value_in_prompt"]
    assert c["kept_facts"] == k["kept_facts"] - k["copyable_value_is_key"] - k["copyable_value_in_prompt"]
    assert "copyable" not in df.columns and m["options"]["copyable"] == "drop"
    assert not any(copyable_by_hand(r) for r in df.select("value", "prompt", "subject_label").iter_rows(named=True))


@pytest.mark.slow  # the fast tier stays under 2 minutes (the full suite runs it)
def test_trex_rendering_uses_lama_templates_and_counts(trex):
    out, _ = trex
    df = pl.read_parquet(out / "facts.parquet")
    row = df.filter(pl.col("relation") == "P19").row(0, named=True)
    assert row["text"] == f"{row['key']} was born in {row['value']}"
    assert row["cardinality"] == "N-1"
    assert df["popularity"].max() == 40205  # T-REx alignment count kept from mTRExf
    assert df.filter(pl.col("popularity").is_not_null()).height > 0


@pytest.mark.slow  # ~10 s: three tokenizations of every T-REx fact (the fast tier checks Wikidata and TSV builds)
def test_value_is_token_aligned_for_every_real_fact(trex):
    """Tokenizing the full text and tokenizing prompt + value separately agree, fact by fact."""
    out, m = trex
    assert m["counts"]["dropped_value_not_token_aligned"] == 0
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    df = pl.read_parquet(out / "facts.parquet")
    full = tok(df["text"].to_list(), add_special_tokens=False)["input_ids"]
    pre = tok(df["prompt"].to_list(), add_special_tokens=False)["input_ids"]
    val = tok((" " + df["value"]).to_list(), add_special_tokens=False)["input_ids"]
    ids = df["input_ids"].to_list()
    starts = df["value_start"].to_list()
    for f, p, v, i, s in zip(full, pre, val, ids, starts):
        assert f == p + v
        assert i == [tok.bos_token_id] + f + [tok.eos_token_id]
        assert i[s:-1] == v


@pytest.mark.slow  # over 4 s: the fast tier stays under 2 minutes
def test_bear_counts(shared, tmp_path):
    labels = [shared / "properties" / "wikidata-predicates.json", shared / "properties" / "pid2name.json"]
    m = build_from_triples(tmp_path / "bear", [shared / "bear" / "BEAR-big"], label_files=labels)
    c = m["counts"]
    n_lines = sum(1 for f in (shared / "bear" / "BEAR-big").glob("*.jsonl") for _ in open(f))
    assert n_lines == 40_916
    assert c["rows_read"] + c["lines_malformed"] == n_lines
    assert c["lines_malformed"] == 1  # P291.jsonl line 41 has an empty object label
    assert m["source"]["parse_errors"][0][1:] == [41, "ValueError: empty id or label"]
    # relations newer than both label files (P6886, P7937, P7959) have no label: their facts are dropped
    known = set(json.loads((shared / "properties" / "pid2name.json").read_text()))
    known |= {r[0] for r in json.loads((shared / "properties" / "wikidata-predicates.json").read_text())["rows"]}
    unlabeled = [f for f in (shared / "bear" / "BEAR-big").glob("*.jsonl") if f.stem not in known]
    assert sorted(f.stem for f in unlabeled) == ["P6886", "P7937", "P7959"]
    assert c["dropped_property_no_label"] == sum(1 for f in unlabeled for _ in open(f)) == 1842
    assert c["kept_facts"] + c["dropped_ambiguous_key"] + c["dropped_multi_valued"] + c["dropped_exact_duplicate"] \
        + c["dropped_property_no_label"] + c["dropped_value_is_key"] + c["dropped_value_in_prompt"] \
        == c["rows_read"] - c["merged_duplicate_rows"]


@pytest.mark.slow  # over 4 s: the fast tier stays under 2 minutes
def test_ambiguous_keys_rules(shared, tmp_path):
    path = [shared / "bear" / "BEAR-big"]
    labels = [shared / "properties" / "pid2name.json"]
    m1 = build_from_triples(tmp_path / "a", path, label_files=labels, ambiguous_keys="disambiguate")
    m2 = build_from_triples(tmp_path / "b", path, label_files=labels, ambiguous_keys="drop")
    amb = m1["counts"]["ambiguous_key_subjects"]
    assert amb > 0
    assert m2["counts"]["dropped_ambiguous_key"] >= amb
    df = pl.read_parquet(tmp_path / "a" / "facts.parquet")
    assert df.group_by("key").agg(pl.col("subject_id").n_unique())["subject_id"].max() == 1  # a key names one subject
    assert df.filter(pl.col("key").str.ends_with(")")).height >= amb
