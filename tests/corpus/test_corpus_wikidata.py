"""The dump parser on the real samples in ../shared/data/wikidata/dump-sample/."""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys

import polars as pl
import pytest

from factscale.corpus import DumpOptions, build_from_dump
from factscale.corpus.wikidata.dump import format_time
from factscale.errors import CorpusError
from factscale.testing import stream_dump


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


def test_to_many_relations_render_with_a(dump_corpus):
    """Human Development Index has a value per year for most countries: its facts must not say "The"."""
    df, _ = dump_corpus
    hdi = df.filter(pl.col("relation") == "P1081")
    assert hdi.height > 0 and set(hdi["cardinality"]) == {"N-M"}
    assert all(t.startswith("A Human Development Index of ") for t in hdi["text"])
    pop = df.filter(pl.col("relation") == "P1082")  # one preferred population per country: "The"
    assert pop.height > 0 and "N-M" not in set(pop["cardinality"])
    assert all(t.startswith("The population of ") for t in pop["text"])


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


def test_cli_missing_dump_is_a_clear_error(tmp_path, capsys):
    assert "dump file not found" in _cli_error(capsys, "--dump", tmp_path / "nope.json", "-o", tmp_path / "o")


# --- datatypes, subject presets, labels from the dump, broken streams (issue 12) ---

def _cli_error(capsys, *args) -> str:
    """Run the CLI in this process (a subprocess costs ~10 s of imports); return stderr, asserting exit 2."""
    from factscale.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["corpus", "build", *map(str, args)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _entities(path):
    opener = bz2.open if str(path).endswith(".bz2") else open
    with opener(path, "rt") as fh:
        return [json.loads(s) for s in (ln.strip().rstrip(",") for ln in fh) if s not in ("[", "]", "")]


def _live_statements(ent):
    """The rank rules, the slow obvious way: no deprecated; only preferred where a property has one."""
    for sts in ent["claims"].values():
        live = [s for s in sts if s["rank"] != "deprecated"]
        pref = [s for s in live if s["rank"] == "preferred"]
        yield from (pref or live)


def test_dropped_datatypes_match_a_hand_recount(shared, dump_corpus):
    df, m = dump_corpus
    by_type: dict = {}
    for f in ("latest-all.head50.json", "items100.json.bz2"):
        for ent in _entities(shared / "dump-sample" / f):
            for st in _live_statements(ent):
                dt = st["mainsnak"]["datatype"]
                by_type[dt] = by_type.get(dt, 0) + 1
    dropped = {"external-id", "commonsMedia", "url", "globe-coordinate", "math", "geo-shape"}
    assert dropped <= set(by_type)  # the real samples have every one of them
    for dt in dropped:
        assert m["counts"][f"dropped_datatype:{dt}"] == by_type[dt], dt
    assert set(df["value_type"].unique()) <= {"item", "time", "quantity", "monolingualtext", "string"}
    # Belgium keeps its knowledge, none of its identifiers, file names or website
    bel = df.filter(pl.col("subject_id") == "Q31")
    assert bel.height > 0
    for pid in ("P227", "P214", "P646", "P268", "P41", "P94", "P856", "P373", "P474"):  # GND VIAF Freebase BnF flag ...
        assert pid not in bel["relation"].to_list()
    assert not df["value"].str.contains(r"(?i)\.(svg|png|jpe?g)$").any()


def test_datatypes_option_and_string_identifiers(shared):
    from factscale.corpus.wikidata.datatypes import parse_datatypes

    src = shared / "dump-sample" / "latest-all.head50.json"
    base = {f[:3] + (f[6],) for f in stream_dump(src, DumpOptions())[0]}
    more = {f[:3] + (f[6],) for f in stream_dump(src, DumpOptions(datatypes=parse_datatypes("default,external-id")))[0]}
    assert base < more and {f[3] for f in more - base} == {"external-id"}
    assert ("Q31", "Belgium", "P214", "external-id") in more  # VIAF ID, only when asked for
    items = {f[:3] for f in stream_dump(src, DumpOptions(datatypes=parse_datatypes("wikibase-item")))[0]}
    assert items and all(f[3] == "wikibase-item" for f in base if f[:3] in items)
    with pytest.raises(CorpusError, match="unknown or unrenderable datatype 'bogus'"):
        parse_datatypes("default,bogus")
    assert parse_datatypes("default,-quantity") == parse_datatypes("wikibase-item,time,monolingualtext,string")
    # identifier-like strings: by their value ("LEM201014753") or their property's label ("postal code")
    from factscale.corpus.wikidata.datatypes import string_label_is_identifier, string_value_is_identifier

    assert string_value_is_identifier("LEM201014753") and string_value_is_identifier("2--411")
    assert not string_value_is_identifier("20, place des Terreaux") and not string_value_is_identifier("C₂H₆O")
    assert string_label_is_identifier("postal code") and string_label_is_identifier("Commons category")
    assert not string_label_is_identifier("chemical formula")


def test_scholarly_article_preset_skips_papers(shared, tmp_path):
    from factscale.corpus.wikidata.datatypes import parse_subject_exclude

    ents = _entities(shared / "dump-sample" / "latest-all.head50.json")
    paper = json.loads(json.dumps(ents[1]))  # a real entity turned into a paper: P31 = scholarly article
    paper["id"] = "Q99999999"
    paper["claims"]["P31"] = [{**paper["claims"]["P31"][0], "mainsnak": {
        **paper["claims"]["P31"][0]["mainsnak"],
        "datavalue": {"type": "wikibase-entityid", "value": {"entity-type": "item", "numeric-id": 13442814,
                                                             "id": "Q13442814"}}}}]
    path = tmp_path / "with-paper.json"
    path.write_text("\n".join(json.dumps(e) for e in [*ents, paper]) + "\n")
    opts = DumpOptions(subject_exclude=parse_subject_exclude(["scholarly-articles"]))
    facts, _, c, _ = stream_dump(path, opts)
    assert c["entities_excluded_subject:P31=Q13442814"] == 1
    assert "Q99999999" not in {f[0] for f in facts}
    assert "Q99999999" in {f[0] for f in stream_dump(path, DumpOptions())[0]}
    with pytest.raises(CorpusError, match="neither a preset"):
        parse_subject_exclude(["papers"])
    from factscale.cli.main import main  # the CLI flags reach the options and the manifest

    main(["corpus", "build", "--dump", str(path), "-o", str(tmp_path / "c"), "--workers", "1", "--labels",
          str(shared / "properties" / "pid2name.json"), "--exclude-subjects", "scholarly-articles",
          "--datatypes", "default,external-id", "--heldout-frac", "0", "--vocab-size", "600"])
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["options"]["subject_exclude"] == [["P31", "Q13442814"]] and "external-id" in m["options"]["datatypes"]
    assert m["counts"]["entities_excluded_subject:P31=Q13442814"] == 1
    assert "dropped_datatype:external-id" not in m["counts"] and m["counts"]["dropped_datatype:commonsMedia"] > 0


def _ndjson(shared, tmp_path, with_properties: bool):
    """The head50 sample as newline-delimited entities, optionally with property entities (real JSON model)."""
    ents = _entities(shared / "dump-sample" / "latest-all.head50.json")
    lines = [json.dumps(e) for e in ents]
    if with_properties:
        names = json.loads((shared / "properties" / "pid2name.json").read_text())
        used = sorted({p for e in ents for p in e["claims"]} & set(names))
        lines += [json.dumps({"type": "property", "datatype": "wikibase-item", "id": p, "claims": {},
                              "labels": {"en": {"language": "en", "value": names[p][0]}}}) for p in used]
    path = tmp_path / ("props.ndjson" if with_properties else "plain.ndjson")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_property_labels_come_from_the_dump(shared, tmp_path):
    m = build_from_dump(tmp_path / "c", [_ndjson(shared, tmp_path, True)], DumpOptions(), heldout_frac=0.0)
    assert m["relation_labels"]["P36"] == "capital" and m["counts"]["kept_facts"] > 0
    assert m["source"]["label_files"] == []


def test_missing_property_labels_name_the_flag(shared, tmp_path, capsys):
    path = _ndjson(shared, tmp_path, False)
    with pytest.raises(CorpusError, match=r"no 'en' labels for \d+ properties \(P.*pass --labels FILE"):
        build_from_dump(tmp_path / "c", [path], DumpOptions())
    assert "--labels" in _cli_error(capsys, "--dump", path, "-o", tmp_path / "o", "--workers", 1)


def test_unnamed_value_does_not_make_a_pair_single_valued(shared, tmp_path):
    """Belgium borders 4 countries; only France is in the sample: the pair must not become 'borders France'."""
    path = _ndjson(shared, tmp_path, True)
    m = build_from_dump(tmp_path / "c", [path], DumpOptions(), heldout_frac=0.0)
    df = pl.read_parquet(tmp_path / "c" / "facts.parquet")
    assert df.filter((pl.col("subject_id") == "Q31") & (pl.col("relation") == "P47")).height == 0
    assert m["counts"]["dropped_multi_valued_with_unnamed_value"] > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_broken_bz2_keeps_what_it_read_and_says_where(shared, tmp_path, workers, capsys):
    data = (shared / "dump-sample" / "items100.json.bz2").read_bytes()
    broken = tmp_path / "broken.json.bz2"
    broken.write_bytes(data[: len(data) // 2])  # a truncated download
    facts, _, c, errors = stream_dump(broken, DumpOptions(), workers=workers)
    assert 0 < c["entities_seen"] < 100 and len(facts) > 0
    assert c["malformed_compressed_stream"] == 1
    path, line, msg = errors[-1]
    assert path == str(broken) and line == c["entities_seen"] + 2 and "compressed stream broken" in msg
    bad = tmp_path / "bad.json.bz2"
    bad.write_bytes(data[:4] + bytes(200) + data[204:])  # the first block's header destroyed
    # the standard library's reader stops there; indexed_bzip2 (the fast extra, with workers > 1) reads the blocks
    # after it and says so
    import importlib.util

    parallel = workers > 1 and importlib.util.find_spec("indexed_bzip2") is not None
    try:
        facts, _, c, errors = stream_dump(bad, DumpOptions(), workers=workers)
        assert parallel and c["malformed_compressed_stream"] == 1 and errors[-1][1] == 1
        assert "first bz2 block is unreadable" in errors[-1][2]
    except CorpusError as e:
        assert not parallel and "bad.json.bz2: cannot decompress at line 1" in str(e)
    cut = tmp_path / "cut.json.bz2"
    cut.write_bytes(data[:3000])  # nothing complete to read: one clear line from the CLI
    assert "cut.json.bz2" in _cli_error(capsys, "--dump", cut, "-o", tmp_path / "o", "--workers", workers)


def test_not_a_dump_is_one_clear_error(tmp_path):
    fake = tmp_path / "fake.json.bz2"
    fake.write_bytes(b"hello\n" * 10)
    with pytest.raises(CorpusError, match="fake.json.bz2: line 1: not bz2 data"):
        stream_dump(fake, DumpOptions(), workers=2)
    binary = tmp_path / "image.json"
    binary.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(CorpusError, match=r"image.json: line 1: invalid JSON.*expected a Wikidata JSON dump"):
        stream_dump(binary, DumpOptions())


@pytest.mark.parametrize("suffix", [".bz2", ".gz"])
def test_parallel_decompression_gives_the_same_facts(shared, tmp_path, suffix):
    pytest.importorskip("indexed_bzip2" if suffix == ".bz2" else "rapidgzip")
    src = shared / "dump-sample" / "items100.json.bz2"
    path = src if suffix == ".bz2" else tmp_path / "items100.json.gz"
    if suffix == ".gz":
        path.write_bytes(gzip.compress(bz2.decompress(src.read_bytes())))
    one = stream_dump(path, DumpOptions(), workers=1)[0]
    many = stream_dump(path, DumpOptions(), workers=2, threads=2)[0]
    assert one == many and len(one) > 5000


@pytest.mark.slow  # the fast tier stays under 2 minutes (the full suite runs it)
def test_decoding_backends_give_identical_results(shared, tmp_path):
    """msgspec's typed decoding (skips unused fields, counts sitelinks by key) against plain json.loads."""
    pytest.importorskip("msgspec")
    odd = tmp_path / "odd.json"  # empty maps written as [] (older Wikibase dumps), a property, a lexeme
    odd.write_text("\n".join([
        '{"type": "item", "id": "Q1", "labels": [], "claims": [], "sitelinks": []}',
        '{"type": "item", "id": "Q2", "labels": {"en": {"language": "en", "value": "two"}}, "claims": [],'
        ' "sitelinks": {"enwiki": {"site": "enwiki", "title": "site", "badges": []}}}',
        '{"type": "property", "datatype": "string", "id": "P9", "labels": {"en": {"language": "en", "value": "p"}}}',
        '{"type": "lexeme", "id": "L1", "lemmas": {"en": {"language": "en", "value": "x"}}}',
        '{"type": "item", "labels": {}}',
    ]) + "\n" + (shared / "dump-sample" / "latest-all.head50.json").read_text())
    for path in (odd, shared / "dump-sample" / "items100.json.bz2"):
        ref = stream_dump(path, DumpOptions(json_backend="json"))
        for backend in ("msgspec", "orjson"):
            got = stream_dump(path, DumpOptions(json_backend=backend))
            assert got[0] == ref[0] and got[1] == ref[1] and got[2] == ref[2], backend
            assert [e[1] for e in got[3]] == [e[1] for e in ref[3]]  # the same lines are malformed
    assert len({f[7] for f in ref[0]}) > 10  # sitelink counts really vary


def test_progress_bar_reports_entities_per_second(shared, capsys):
    stream_dump(shared / "dump-sample" / "items100.json.bz2", DumpOptions(), progress=True)
    err = capsys.readouterr().err
    assert "parsing items100.json.bz2" in err and "100 entities" in err and "entities/s" in err


# --- pass 1 spilled to disk, labels resolved by bucketed joins (memory bounded by batch and bucket sizes) ---

@pytest.mark.slow  # over 4 s: the fast tier stays under 2 minutes
def test_tiny_spill_batches_and_label_buckets_give_the_one_batch_result(shared, tmp_path):
    """Parts of 97 rows and buckets of 300 label rows (dozens of part files, many buckets) give the default
    sizes' frame, counts and error lines, over two files with a max_facts cut and a label table."""
    from factscale.corpus.wikidata.dump import dump_to_raw, pass1, raw_from_passes
    from factscale.corpus.wikidata.labels import Spill

    files = [shared / "dump-sample" / "latest-all.head50.json", shared / "dump-sample" / "items100.json.bz2"]
    labels = [shared / "properties" / "wikidata-predicates.json"]
    for opts in (DumpOptions(), DumpOptions(max_facts=2000)):
        want = dump_to_raw(files, opts, label_files=labels)
        spill = Spill(tmp_path / f"s{opts.max_facts}", batch_rows=97, bucket_rows=300)
        got = raw_from_passes([pass1(p, opts, spill, f) for f, p in enumerate(files)], opts, spill, labels)
        assert spill.parts["facts"] > 20 and spill.parts["labels"] >= 3
        assert len(list((spill.root / "kept").glob("part-*.parquet"))) >= 3
        assert got[0].equals(want[0]) and got[1] == want[1] and got[2] == want[2]
        assert want[0].height > 100 and want[1]["value_labels_unresolved"] > 0


def _item(qid, label, claims=()):
    return json.dumps({"type": "item", "id": qid, "labels": {"en": {"language": "en", "value": label}}, "claims": {
        p: [{"rank": "normal", "mainsnak": {"snaktype": "value", "property": p, "datatype": "wikibase-item",
                                            "datavalue": {"type": "wikibase-entityid", "value": {
                                                "entity-type": "item", "numeric-id": int(v[1:]), "id": v}}}}]
        for p, v in claims}, "sitelinks": {}})


@pytest.mark.parametrize("sizes", [{}, {"batch_rows": 1, "bucket_rows": 1}])
def test_value_labels_come_from_the_referring_file_then_the_tables_then_anywhere_in_the_dump(tmp_path, sizes):
    """Q10 is read before anything refers to it (the old second pass); Q40 and Q50 are in a.json but referred to
    only from b.json: the label table names Q40, so its label wins (as the in-memory code had it), Q50 keeps the
    dump's; Q60 is nowhere."""
    from factscale.corpus.wikidata.dump import dump_to_raw

    a, b, table = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "labels.tsv"
    a.write_text("\n".join([_item("Q10", "early"), _item("Q1", "one", [("P17", "Q10"), ("P36", "Q20")]),
                            _item("Q20", "twenty"), _item("Q40", "forty in the dump"), _item("Q50", "fifty")]) + "\n")
    b.write_text(_item("Q2", "two", [("P17", "Q40"), ("P36", "Q50"), ("P19", "Q10")]) + "\n"
                 + _item("Q3", "three", [("P19", "Q60")]) + "\n")
    table.write_text("P17\tcountry\nP36\tcapital\nP19\tplace of birth\nQ40\tforty in the table\n")
    raw, counts, _ = dump_to_raw([a, b], DumpOptions(), label_files=[table], **sizes)
    got = {(r["subject_id"], r["relation"]): r["value"] for r in raw.iter_rows(named=True)}
    assert got == {("Q1", "P17"): "early", ("Q1", "P36"): "twenty", ("Q2", "P17"): "forty in the table",
                   ("Q2", "P36"): "fifty", ("Q2", "P19"): "early"}
    assert counts["value_labels_unresolved"] == 1 and counts["dropped_value_label_unresolved"] == 1


def test_bucket_runs_merge_back_in_fact_order(tmp_path):
    """The grace join's plumbing: rows partitioned by id hash keep their order within each bucket, and reading
    the buckets as runs chunk by chunk (ranges that cut stored batches anywhere) gives every row once, in order."""
    from factscale.corpus.spillio import _SEED, Buckets, Run, merged

    n = 5_000
    rows = pl.DataFrame({"pos": pl.Series(range(n), dtype=pl.UInt64),
                         "id": [f"Q{(i * 7919) % 613}" for i in range(n)]})
    buckets = Buckets(tmp_path / "b", 7, "id", {"pos": pl.UInt64, "id": pl.String}, batch_rows=301)
    for off in range(0, n, 97):
        buckets.add(rows.slice(off, 97))
    buckets.close()
    back = [buckets.read(k) for k in range(7)]
    assert sum(b.height for b in back) == n and sum(b.height > 0 for b in back) == 7
    assert all(b["pos"].is_sorted() and (b["id"].hash(_SEED) % 7 == k).all() for k, b in enumerate(back))
    runs = Buckets(tmp_path / "r", 7, "pos", {"pos": pl.UInt64, "id": pl.String}, 1)
    for k, b in enumerate(back):
        runs.write(k, b, max_chunk=53)
    runs.close()
    readers = [Run(runs.path(k)) for k in range(7)]
    got = [merged(readers, hi, {"pos": pl.UInt64, "id": pl.String}).sort("pos") for hi in (0, 1, 250, 251, 4999, 9999)]
    assert [g.height for g in got] == [0, 1, 249, 1, 4748, 1]
    assert pl.concat(got).equals(rows)


@pytest.mark.slow  # the fast tier stays under 2 minutes (the full suite runs it)
def test_label_resolution_under_a_low_open_file_limit_lowers_the_buckets_and_says_so(tmp_path):
    """With the hard limit on open files at 300 and one label row per bucket asked for, the buckets are fewer
    (a warning line says so) and the result is the default sizes' - not 'Too many open files'."""
    dump = tmp_path / "d.json"
    lines = [_item("Q1", "Alpha"), _item("Q2", "Beta")]
    lines += [_item(f"Q{i}", f"Item {i}", [("P17", "Q1" if i % 2 else "Q2")]) for i in range(10, 1510)]
    dump.write_text("\n".join(lines) + "\n")
    labels = tmp_path / "p.tsv"
    labels.write_text("P17\tcountry\n")
    script = f"""
import json, resource, sys
sys.path[:0] = {sys.path!r}
resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))
from factscale.corpus.wikidata.labels import Spill
from factscale.corpus.wikidata.dump import DumpOptions, dump_to_raw, pass1, raw_from_passes
opts = DumpOptions()
spill = Spill({str(tmp_path / "s")!r}, batch_rows=50, bucket_rows=1)
got = raw_from_passes([pass1({str(dump)!r}, opts, spill, 0)], opts, spill, [{str(labels)!r}])
want = dump_to_raw([{str(dump)!r}], opts, label_files=[{str(labels)!r}])
print(json.dumps([got[0].equals(want[0]), got[0].height, got[1] == want[1]]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [True, 1500, True]
    assert "buckets instead of" in r.stderr and "open-file limit 300" in r.stderr
