"""The dump parser on the real samples in ../shared/data/wikidata/dump-sample/."""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys

import polars as pl
import pytest

from factscale.corpus import CorpusError, DumpOptions, build_from_dump
from factscale.corpus.wikidata import format_time, stream_dump


@pytest.fixture(scope="module")
def dump_corpus(shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("dump") / "wd"
    files = [shared / "dump-sample" / "latest-all.head50.json", shared / "dump-sample" / "items100.json.bz2"]
    m = build_from_dump(out, files, DumpOptions(), label_files=[shared / "properties" / "wikidata-predicates.json"],
                        workers=2)
    return pl.read_parquet(out / "facts.parquet"), m


def fact(df, sid, pid):
    rows = df.filter((pl.col("subject_id") == sid) & (pl.col("relation") == pid))
    assert rows.height == 1, f"{sid} {pid}: {rows.height} rows"
    return rows.row(0, named=True)


def test_exact_facts_of_known_entities(dump_corpus):
    df, _ = dump_corpus
    assert fact(df, "Q145", "P36")["value"] == "London"  # United Kingdom's capital
    assert fact(df, "Q183", "P36")["value"] == "Berlin"
    assert fact(df, "Q45", "P36")["value"] == "Lisbon"
    # dates rendered at their precision: day (11) and year (9)
    assert fact(df, "Q23", "P569")["value"] == "22 February 1732"
    assert fact(df, "Q23", "P570")["value"] == "14 December 1799"
    assert fact(df, "Q35", "P571")["value"] == "1814"
    row = fact(df, "Q145", "P36")
    assert row["text"] == "The capital of United Kingdom is London"
    assert row["prompt"] == "The capital of United Kingdom is"
    assert row["text"][row["value_char_start"]:row["value_char_end"]] == "London"
    assert row["value_type"] == "item" and row["value_id"] == "Q84"
    assert row["popularity"] == 304  # sitelink count of the subject


def test_time_precisions():
    assert format_time({"time": "+1952-03-11T00:00:00Z", "precision": 11}) == ("11 March 1952", "")
    assert format_time({"time": "+1952-03-00T00:00:00Z", "precision": 10}) == ("March 1952", "")
    assert format_time({"time": "+1952-00-00T00:00:00Z", "precision": 9}) == ("1952", "")
    assert format_time({"time": "+1957-00-00T00:00:00Z", "precision": 8}) == ("1950s", "")
    assert format_time({"time": "-0500-00-00T00:00:00Z", "precision": 9}) == ("500 BC", "")
    assert format_time({"time": "+1900-00-00T00:00:00Z", "precision": 7})[0] is None


def _plain_counts(path):
    """The slow obvious recount a reviewer would do: json.loads per line."""
    opener = bz2.open if str(path).endswith(".bz2") else open
    ents = dep = 0
    with opener(path, "rt") as fh:
        for line in fh:
            s = line.strip().rstrip(",")
            if s in ("[", "]", ""):
                continue
            e = json.loads(s)
            ents += 1
            dep += sum(st["rank"] == "deprecated" for sts in e["claims"].values() for st in sts)
    return ents, dep


def test_counts_match_a_hand_recount(shared, dump_corpus):
    _, m = dump_corpus
    c = m["counts"]
    e1, d1 = _plain_counts(shared / "dump-sample" / "latest-all.head50.json")
    e2, d2 = _plain_counts(shared / "dump-sample" / "items100.json.bz2")
    assert (e1, e2) == (49, 100)
    assert c["entities_seen"] == e1 + e2
    assert c["statements_deprecated"] == d1 + d2
    assert c.get("lines_malformed", 0) == 0
    assert c["kept_facts"] == c["kept_train"] + c["kept_heldout"]
    assert c["dropped_value_not_token_aligned"] == 0
    assert m["entropy_bits"]["kind"] == "empirical_prior"
    assert len(m["source"]["files"]) == 2 and all(len(f["sha256"]) == 64 for f in m["source"]["files"])


def test_no_contradictory_facts(dump_corpus):
    df, m = dump_corpus
    assert df.select(["key", "relation"]).is_duplicated().sum() == 0  # a key + attribute has one value
    assert m["counts"]["dropped_multi_valued"] > 0  # and the rule really did something on real data


def test_ndjson_gz_layout_gives_same_facts(shared, tmp_path):
    src = shared / "dump-sample" / "latest-all.head50.json"
    nd = tmp_path / "sample.ndjson.gz"
    with open(src) as fh, gzip.open(nd, "wt") as out:
        for line in fh:
            s = line.strip().rstrip(",")
            if s not in ("[", "]", ""):
                out.write(s + "\n")
    opts = DumpOptions()
    a = stream_dump(src, opts)[0]
    b = stream_dump(nd, opts, workers=2)[0]
    assert a == b and len(a) > 1000


def test_corrupted_dump_builds_and_counts_bad_lines(shared, tmp_path):
    lines = (shared / "dump-sample" / "latest-all.head50.json").read_text().splitlines(keepends=True)
    bad = tmp_path / "corrupt.json"
    corrupted = lines[:10] + ["this is not json,\n", "{\"truncated\": \n"] + [lines[10][: len(lines[10]) // 2] + "\n"]
    corrupted += lines[11:30] + ["[1, 2, 3],\n"] + lines[30:]  # no closing ']' either: a truncated dump
    bad.write_text("".join(corrupted))
    m = build_from_dump(tmp_path / "c", [bad], DumpOptions(),
                        label_files=[shared / "properties" / "pid2name.json"])
    assert m["counts"]["lines_malformed"] == 4
    assert m["counts"]["entities_seen"] == 49 - 1  # one real entity line was truncated
    lines_reported = sorted(e[1] for e in m["source"]["parse_errors"])
    assert lines_reported == [11, 12, 13, 33]
    assert m["counts"]["kept_facts"] > 0


def test_filters_and_empty_result(shared, tmp_path):
    src = shared / "dump-sample" / "latest-all.head50.json"  # items100 has no humans; head50 has Q23
    labels = [shared / "properties" / "wikidata-predicates.json"]
    build_from_dump(tmp_path / "h", [src], DumpOptions(subject_filter=[("P31", "Q5")],
                                                          allow_properties={"P569", "P570", "P19"}),
                        label_files=labels, heldout_frac=0.0)
    df = pl.read_parquet(tmp_path / "h" / "facts.parquet")
    assert set(df["relation"].unique()) <= {"P569", "P570", "P19"}
    assert "Q23" in df["subject_id"].to_list()  # George Washington is a human
    assert "Q145" not in df["subject_id"].to_list()
    with pytest.raises(CorpusError, match="no facts left"):
        build_from_dump(tmp_path / "e", [src], DumpOptions(allow_properties={"P999999"}), label_files=labels)


def test_cli_missing_dump_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "factscale.cli", "corpus", "build", "--dump", str(tmp_path / "nope.json"),
                        "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "dump file not found" in r.stderr and "Traceback" not in r.stderr
