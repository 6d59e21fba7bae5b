"""Hugging Face datasets: export a real corpus and reload it exactly; import facts from local datasets sources."""

from __future__ import annotations

import json

import polars as pl
import pytest

from factscale.corpus import build_from_datasets, build_from_triples
from factscale.corpus.tables.hf import export_corpus, parse_columns, read_datasets
from factscale.errors import CorpusError


@pytest.fixture(scope="module")
def bear_corpus(shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("bear") / "c"
    files = [shared / "bear" / "BEAR-big" / f"{r}.jsonl" for r in ("P36", "P19", "P30")]
    build_from_triples(out, files, label_files=[shared / "properties" / "pid2name.json"])
    return out


def test_export_reloads_the_same_rows_with_the_manifest(bear_corpus, tmp_path, capsys):
    import datasets

    from factscale.cli.main import main

    main(["corpus", "export", str(bear_corpus), "-o", str(tmp_path / "ds")])
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    facts = pl.read_parquet(bear_corpus / "facts.parquet")
    assert ds.num_rows == facts.height > 1000 and ds.column_names == facts.columns
    assert ds.to_polars().equals(facts)  # same rows, same order, same values
    assert ds[0]["input_ids"] == facts["input_ids"][0].to_list()
    manifest = json.loads((bear_corpus / "manifest.json").read_text())
    assert json.loads(ds.info.description) == manifest
    assert manifest["corpus_hash"] in (tmp_path / "ds" / "README.md").read_text()
    with pytest.raises(SystemExit):  # never over an existing export
        main(["corpus", "export", str(bear_corpus), "-o", str(tmp_path / "ds")])
    assert "exists and is not empty" in capsys.readouterr().err
    with pytest.raises(CorpusError, match="not a corpus directory"):
        export_corpus(tmp_path, tmp_path / "other")


def test_reimport_of_an_export_gives_the_same_facts(bear_corpus, tmp_path):
    export_corpus(bear_corpus, tmp_path / "ds")
    cols = parse_columns("subject=key")  # keys are already disambiguated; the rest by name
    raw, counts, _, files = read_datasets(tmp_path / "ds", cols)
    facts = pl.read_parquet(bear_corpus / "facts.parquet")
    assert counts["rows_read"] == facts.height and counts["rows_missing_field"] == 0
    key = ["subject_id", "relation", "value_id", "value", "relation_label"]
    assert raw.select(key).sort(key).equals(facts.select(key).sort(key))
    assert any(f.name == "dataset_info.json" for f in files)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_import_bear_rows_from_files_with_a_column_mapping(shared, tmp_path, fmt):
    rows = [json.loads(line) | {"rel": "P36"} for line in open(shared / "bear" / "BEAR-big" / "P36.jsonl")]
    df = pl.DataFrame(rows).drop("sub_aliases")
    path = tmp_path / f"p36.{fmt}"
    {"parquet": df.write_parquet, "csv": df.write_csv, "jsonl": df.write_ndjson}[fmt](path)
    cols = "subject=sub_label,subject_id=sub_id,relation=rel,value=obj_label,value_id=obj_id"
    m = build_from_datasets(tmp_path / "c", [path], parse_columns(cols),
                            label_files=[shared / "properties" / "pid2name.json"], heldout_frac=0.0)
    ref = build_from_triples(tmp_path / "r", [shared / "bear" / "BEAR-big" / "P36.jsonl"],
                             label_files=[shared / "properties" / "pid2name.json"], heldout_frac=0.0)
    assert m["counts"]["rows_read"] == len(rows) and m["counts"]["kept_facts"] == ref["counts"]["kept_facts"]
    a = pl.read_parquet(tmp_path / "c" / "facts.parquet").select("subject_id", "text").sort("subject_id")
    b = pl.read_parquet(tmp_path / "r" / "facts.parquet").select("subject_id", "text").sort("subject_id")
    assert a.equals(b)


def test_bad_datasets_sources_are_clear_errors(tmp_path):
    pl.DataFrame({"a": ["x"], "b": ["y"]}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(CorpusError, match=r"no column for 'subject_label'; the dataset has columns \['a', 'b'\]"):
        read_datasets(tmp_path / "t.parquet")
    with pytest.raises(CorpusError, match="no column 'nope'"):
        read_datasets(tmp_path / "t.parquet", parse_columns("subject=a,relation=b,value=nope"))
    with pytest.raises(CorpusError, match="--hf-columns: 'subj=a'"):
        parse_columns("subj=a")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(CorpusError, match="expected files of one kind"):
        read_datasets(tmp_path / "x.txt")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match=r"bad.parquet: cannot be read as parquet"):
        read_datasets(tmp_path / "bad.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="not a saved datasets directory"):
        read_datasets(tmp_path / "empty")
