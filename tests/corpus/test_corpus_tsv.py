"""ID-triple TSV fact sets with label/alias tables, written from the real T-REx sample; unreadable input."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest

from factscale.corpus import build_from_triples
from factscale.corpus.tables.triples import read_triples
from factscale.corpus.tables.tsv import load_label_table
from factscale.errors import CorpusError

RELATIONS = ("P36", "P17", "P19")


@pytest.fixture(scope="module")
def tsv_set(shared, tmp_path_factory):
    """Wikidata5M-style files from T-REx rows: triples.tsv(.gz), entity2alias.tsv.gz, relation2alias.tsv."""
    d = tmp_path_factory.mktemp("tsv")
    rows = [json.loads(line) for r in RELATIONS for line in open(shared / "trex" / "mTREx" / f"{r}.jsonl")]
    aliases = {}
    for line in open(shared / "trex" / "aliases-en.txt", encoding="utf-8"):
        qid, *names = line.rstrip("\n").split("\t")
        aliases[qid] = names
    labels: dict = {}
    for r in rows:
        labels.setdefault(r["sub_uri"], r["sub_label"])
        labels.setdefault(r["obj_uri"], r["obj_label"])
    (d / "triples.tsv").write_text("".join(f"{r['sub_uri']}\t{r['predicate_id']}\t{r['obj_uri']}\n" for r in rows[:1500]))
    with gzip.open(d / "more.tsv.gz", "wt") as fh:  # gzip named .gz; the rest of the rows
        fh.writelines(f"{r['sub_uri']}\t{r['predicate_id']}\t{r['obj_uri']}\n" for r in rows[1500:])
    with gzip.open(d / "entity2alias.tsv.gz", "wt", encoding="utf-8") as fh:
        fh.writelines("\t".join([q, lab, *aliases.get(q, [])]) + "\n" for q, lab in labels.items())
    rel = {json.loads(x)["relation"]: json.loads(x)["label"] for x in open(shared / "trex" / "relations.jsonl")}
    (d / "relation2alias.tsv").write_text("".join(f"{r}\t{rel[r]}\n" for r in RELATIONS))
    return d, rows, labels


def test_tsv_reads_the_same_triples_as_the_jsonl(shared, tsv_set):
    d, rows, labels = tsv_set
    table = {**load_label_table(d / "entity2alias.tsv.gz"), **load_label_table(d / "relation2alias.tsv")}
    assert table["Q10544"] == labels["Q10544"] and table["P36"] == "capital"
    tsv, c, errors, files = read_triples([d / "triples.tsv", d / "more.tsv.gz"], labels=table)
    jsonl, c2, _, _ = read_triples([shared / "trex" / "mTREx" / f"{r}.jsonl" for r in RELATIONS], labels=table)
    assert c["rows_read"] == c2["rows_read"] == len(rows) and c.get("lines_malformed", 0) == 0 and not errors
    key = ["subject_id", "relation", "value_id"]
    assert tsv.select(key).sort(key).equals(jsonl.select(key).sort(key))
    assert set(tsv["value_type"]) == {"item"} and set(tsv["source"]) == {"tsv"}


def test_tsv_corpus_renders_with_lama_templates(shared, tsv_set, tmp_path):
    d, _, labels = tsv_set
    m = build_from_triples(tmp_path / "c", [d / "triples.tsv", d / "more.tsv.gz"],
                           label_files=[d / "entity2alias.tsv.gz", d / "relation2alias.tsv"],
                           templates_path=shared / "trex" / "relations.jsonl", heldout_frac=0.0, copyable="keep")
    df = pl.read_parquet(tmp_path / "c" / "facts.parquet")
    row = df.filter(pl.col("subject_id") == "Q10544").row(0, named=True)  # Landkreis München, capital München
    assert row["text"] == f"The capital of {labels['Q10544']} is {labels['Q1726']}"
    assert row["copyable"]  # the value is in its prompt: dropped by default (copyable=drop)
    assert m["counts"]["dropped_value_not_token_aligned"] == 0
    assert {f["path"].rsplit("/", 1)[-1] for f in m["source"]["files"]} >= {"triples.tsv", "more.tsv.gz"}


def test_literals_missing_labels_and_bad_lines(tmp_path):
    (tmp_path / "t.tsv").write_text("Q1\tP1449\tthe Big One\nQ1\tP31\tQ2\nonly two\tfields\n\nQ3\tP31\tQ2\n")
    (tmp_path / "e.tsv").write_text("Q1\tthing one\talias\nQ2\tclass\nP1449\tnickname\nP31\tinstance of\n")
    raw, c, errors, _ = read_triples([tmp_path / "t.tsv"], labels=load_label_table(tmp_path / "e.tsv"))
    assert c["lines_malformed"] == 1 and errors[0][1] == 3 and "3 tab-separated fields" in errors[0][2]
    assert c["dropped_subject_no_label"] == 1  # Q3 has no label
    lit = raw.filter(pl.col("relation") == "P1449").row(0, named=True)
    assert lit["value"] == "the Big One" and lit["value_id"] is None and lit["value_type"] == "string"
    with pytest.raises(CorpusError, match=r"no entity labels .* pass --labels FILE"):
        read_triples([tmp_path / "t.tsv"], labels={})
    with pytest.raises(CorpusError, match=r"no labels for the 2 relations \(P1449, P31\).*--labels"):
        read_triples([tmp_path / "t.tsv"], labels={"Q1": "a", "Q2": "b", "Q3": "c"})


@pytest.mark.parametrize("content, match", [
    (bytes(range(256)) * 8, r"data.bin: line 1: binary data, not text; expected ID-triple TSV"),
    (b"Q1\tP31\tQ2\n" + b"Q1\tP31\t\xff\xfe\n", r"data.bin: line 2: unreadable \(UnicodeDecodeError"),
    (b"Q1 P31 Q2\nQ3 P31 Q2\n", r"data.bin: line 1: .*no fact could be read; expected ID-triple TSV"),
    (b"Q1\tP31\n", r"data.bin: line 1: expected 3 tab-separated fields"),
    (gzip.compress(bytes(range(256)) * 8), r"data.bin: line 1: binary data"),
])
def test_unreadable_triples_are_one_clear_error(tmp_path, capsys, content, match):
    bad = tmp_path / "data.bin"
    bad.write_bytes(content)
    with pytest.raises(CorpusError, match=match):
        read_triples([bad], labels={"Q1": "a", "Q2": "b", "P31": "instance of"})
    from factscale.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["corpus", "build", "--triples", str(bad), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "data.bin" in err


def test_unreadable_label_tables(tmp_path):
    (tmp_path / "img.tsv").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CorpusError, match=r"img.tsv: line 1: binary data.*expected label table"):
        load_label_table(tmp_path / "img.tsv")
    (tmp_path / "one.tsv").write_text("just one column\n")
    with pytest.raises(CorpusError, match=r"one.tsv: line 1: no 'ID<TAB>label' line"):
        load_label_table(tmp_path / "one.tsv")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CorpusError, match=r"bad.json: not valid JSON"):
        load_label_table(tmp_path / "bad.json")
