"""Sentences for every relation label of the real property files, and the render() contract."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from factscale.corpus.render import prompt_template, render
from factscale.corpus.verbalize import AUXILIARIES, PREPOSITIONS, VERBS, relation_template

EXPECTED = {
    "capital": "The capital of Belgium is Brussels",
    "capital of": "Belgium is the capital of Brussels",
    "shares border with": "Belgium shares border with Brussels",
    "located in the administrative territorial entity":
        "Belgium is located in the administrative territorial entity Brussels",
    "instance of": "Belgium is an instance of Brussels",
    "part of": "Belgium is part of Brussels",
    "award received": "The award received by Belgium is Brussels",
    "different from": "Belgium is different from Brussels",
    "has part": "Belgium has part Brussels",
    "followed by": "Belgium is followed by Brussels",
    "statement is subject of": "For Belgium, statement is subject of Brussels",
    "twinned administrative body": "The twinned administrative body of Belgium is Brussels",
    "lyrics by": "Belgium has lyrics by Brussels",
    "speed": "The speed of Belgium is Brussels",
    "CITES Species+ ID": "The CITES Species+ ID of Belgium is Brussels",
}


def sentence(label: str, many: bool = False) -> str:
    return relation_template(label, many).replace("[X]", "Belgium").replace("[Y]", "Brussels")


@pytest.mark.parametrize("label", sorted(EXPECTED))
def test_known_forms(label):
    assert sentence(label) == EXPECTED[label]


@pytest.fixture(scope="module")
def all_labels(shared):
    props = shared / "properties"
    labels = {r[1] for r in json.loads((props / "wikidata-predicates.json").read_text())["rows"]}
    labels |= {v[0] for v in json.loads((props / "pid2name.json").read_text()).values()}
    assert len(labels) > 2000
    return sorted(labels)


def test_to_many_relations_take_an_indefinite_article():
    """A relation with several values per subject must not claim one: "A twinned ... of", "X is a capital of"."""
    assert sentence("twinned administrative body", many=True) == "A twinned administrative body of Belgium is Brussels"
    assert sentence("award received", many=True) == "An award received by Belgium is Brussels"
    assert sentence("capital of", many=True) == "Belgium is a capital of Brussels"
    assert sentence("shares border with", many=True) == "Belgium shares border with Brussels"
    assert sentence("part of", many=True) == "Belgium is part of Brussels"


def test_every_real_relation_label_renders_as_a_sentence(all_labels):
    forms = set()
    for label, many in [(x, m) for x in all_labels for m in (False, True)]:
        t = relation_template(label, many)
        lab = " ".join(label.split())
        assert t.count("[X]") == 1 and t.endswith(" [Y]") and t.count("[Y]") == 1, (label, t)
        assert lab in t, (label, t)  # the relation is named verbatim
        s = t.replace("[X]", "Belgium").replace("[Y]", "Brussels")
        assert not re.search(r"\b(of|by|with|in|to) (of|by)\b", s), (label, s)  # no "of of", "with of", "by by"
        first = lab.split()[0]
        if first in VERBS or first in AUXILIARIES:  # a verb label is the sentence's verb, never a noun
            assert t == f"[X] {lab} [Y]", (label, t)
        if lab.split()[-1] in PREPOSITIONS:  # "... capital of" / "shares border with" take the value right after
            assert t.endswith(f"{lab} [Y]") and not t.startswith("The "), (label, t)
        assert s[0].isupper(), (label, s)
        forms.add(t.replace(lab, "L"))
    # the rules really distinguish shapes on real labels (nouns, verbs, passives, "of" nouns, clauses)
    assert {"The L of [X] is [Y]", "A L of [X] is [Y]", "[X] L [Y]", "[X] is L [Y]", "[X] is the L [Y]", "[X] has L [Y]",
            "The L by [X] is [Y]", "For [X], L [Y]"} <= forms


def test_render_keeps_lama_templates_and_marks_the_value():
    facts = pl.DataFrame({
        "key": ["Belgium", "Belgium", "Belgium", "Berlin"],
        "relation_label": ["capital", "shares border with", "place of birth", "twinned administrative body"],
        "value": ["Brussels", "France", "Ghent", "London"],
        "template": [None, None, "[X] was born in [Y] .", "[Y] is a twin town of [X] ."],
        "cardinality": ["1-1", "N-M", "N-1", "N-M"],
    })
    out = render(facts)
    assert out["text"].to_list() == ["The capital of Belgium is Brussels", "Belgium shares border with France",
                                     "Belgium was born in Ghent", "A twinned administrative body of Berlin is London"]
    for row in out.iter_rows(named=True):
        assert row["text"] == row["prompt"] + " " + row["value"]
        assert row["text"][row["value_char_start"]:row["value_char_end"]] == row["value"]
    assert prompt_template(None) == "The [R] of [X] is"  # no label at all: the generic template
