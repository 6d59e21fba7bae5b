"""A relation label -> an English cloze template ``... [X] ... [Y]`` that reads as a sentence.

Used for every relation without a LAMA template (or whose LAMA template puts the value first). The
label's shape decides the sentence, by rules on its words (no model, no lookup):

=====================================  ===========================================  ===============================
label shape                            example                                       template
=====================================  ===========================================  ===============================
starts with a verb (3rd person / aux)  shares border with, has part, is a list of    [X] shares border with [Y]
passive participle + preposition       located in the administrative territorial e.  [X] is located in ... [Y]
adjective + preposition                different from, endemic to                    [X] is different from [Y]
noun + "of"                            capital of, instance of, part of              [X] is the capital of [Y]
noun + other preposition               archives at, lyrics by                        [X] has lyrics by [Y]
noun + participle                      award received, ballots cast                  The award received by [X] is [Y]
a clause (verb inside)                 statement is subject of                       For [X], statement is subject of [Y]
any other noun phrase                  capital, twinned administrative body          The capital of [X] is [Y]
=====================================  ===========================================  ===============================

The value ``[Y]`` always ends the template, so it follows the prompt after one space and starts at a
token boundary. ``the`` is the default article because a corpus keeps one value per key and relation;
relations that give most subjects several values (cardinality ``N-M``/``1-M``) take ``a``/``an``.
"""

from __future__ import annotations

import re

PREPOSITIONS = frozenset(
    "of by with in to at on from for as into after than about against between under over per via within near "
    "onto during since toward towards upon through across behind beyond".split())
AUXILIARIES = frozenset("has have had is was are were does do did can may".split())
VERBS = frozenset(
    "shares contains uses replaces depicts describes represents supports regulates carries connects interleaves "
    "develops decays applies depends offers mirrors takes follows precedes owns operates produces publishes "
    "includes consists borders belongs occupies participates plays hosts serves spans crosses flows drains affects "
    "causes treats encodes inherits influences speaks writes performs competes lives works houses holds lacks "
    "becomes comprises defines denotes expresses implies indicates interacts joins links marks measures needs "
    "obeys provides qualifies receives refers relates requires resembles shows signifies studies succeeds targets "
    "teaches translates drives cites leads appears"
    " damaged destroyed promoted relegated retrieved".split())  # one-word past-tense labels: "X damaged Y"
IRREGULAR_PARTICIPLES = frozenset(
    "born made known written held given taken shown drawn built won led sold told found brought thought kept lit "
    "worn spoken broken chosen driven seen sung run said paid laid put cast sent spent lost left met read heard "
    "taught caught bought fought sought begun done gone grown thrown flown hidden ridden risen stolen sworn torn "
    "woven struck stuck hung spun bound wound signed broadcast".split())
NOT_PARTICIPLES = frozenset("speed seed need breed feed creed steed".split())
# verbs that make a label a clause when they follow its first word ("statement is subject of")
CLAUSE_VERBS = AUXILIARIES | {"leads", "describes", "replaces"}
ADJECTIVES = frozenset(
    "different endemic indigenous dual relative opposite similar equal equivalent adjacent next close identical "
    "native parallel coextensive coincident homologous available contemporary contiguous synonymous antonymous "
    "complementary orthogonal isomorphic analogous homonymous proportional together subject".split())
# nouns after which "X is a ..." reads right (membership in a class, not a unique role)
INDEFINITE = frozenset(
    "instance subclass member student follower participant companion patient sidekick subproperty metasubclass "
    "polymer monomer exemplar facet incarnation implementation manifestation edition biological fictional "
    "enclave exclave reply forgery active by-product".split())
NO_ARTICLE = frozenset({"part of"})
# nouns + non-"of" preposition that read as "X is a <label> Y" rather than "X has <label> Y"
IS_A_NOUNS = frozenset("enclave exclave reply forgery ingredient".split())


def _words(label: str) -> list[str]:
    """Words, with capitalised ones masked: "CITES Species+ ID" and "At the ... Library ID" are names."""
    return [w if w.islower() else "<name>" for w in label.split()]


def _is_participle(w: str) -> bool:
    return (w.endswith("ed") and len(w) > 3 and w not in NOT_PARTICIPLES) or w in IRREGULAR_PARTICIPLES


def _head(words: list[str]) -> int:
    """Index of the first word that is not an adverb ("physically interacts with")."""
    i = 0
    while i < len(words) - 1 and words[i].endswith("ly") and words[i] not in ADJECTIVES:
        i += 1
    return i


def _a(word: str) -> str:
    w = word.lower()
    return "an" if w[:1] in "aeiou" and not w.startswith(("uni", "use", "usu", "eu", "one")) else "a"


def _article(label: str, head: str, many: bool = False) -> str:
    if label.lower() in NO_ARTICLE or head in ("a", "an", "the"):
        return ""
    if head in INDEFINITE or many:
        return "an " if head[0] in "aeiou" else "a "
    return "the "


def relation_template(label: str, many: bool = False) -> str:
    """A template with ``[X]`` (the key) before ``[Y]`` (the value), ``[Y]`` last. Rules in the module docstring.

    ``many``: the relation gives most subjects several values (twinned cities, awards): nouns take "a"
    instead of "the" ("A twinned administrative body of Berlin is London"), which would claim uniqueness.
    """
    label = " ".join(label.split())
    words = _words(label)
    if not words:
        return "[X] is [Y]"
    i = _head(words)
    head, last = words[i], words[-1]
    has_prep = any(w in PREPOSITIONS for w in words[i:])
    if head in AUXILIARIES or head in VERBS:
        return f"[X] {label} [Y]"
    if any(w in CLAUSE_VERBS for w in words[i + 1:]):
        return f"For [X], {label} [Y]"
    if head in PREPOSITIONS:
        return f"[X] is {label} [Y]"
    if _is_participle(head) and (has_prep or all(_is_participle(w) or w in ("or", "and") for w in words[i:])):
        return f"[X] is {label} [Y]"
    if last in PREPOSITIONS:
        if head in ADJECTIVES:
            return f"[X] is {label} [Y]"
        if last == "of":
            return f"[X] is {_article(label, head, many)}{label} [Y]"
        if any(w in IS_A_NOUNS for w in words[i:]):
            return f"[X] is {'an' if head[0] in 'aeiou' else 'a'} {label} [Y]"
        if len(words) - i == 2 and re.search(r"(ent|ant|ic|ous|ive|ible|able)$", head):
            return f"[X] is {label} [Y]"  # an adjective: "resistant to", "soluble in"
        return f"[X] has {label} [Y]"
    if len(words) > 1 and _is_participle(last) and not _is_participle(head) and words[-2] != "of":
        # "award received by X", "ballots cast by X"; "number of injured" is a noun phrase
        det = _a(label).capitalize() if many else "The"
        return f"{det} {label} {'with' if last == 'associated' else 'by'} [X] is [Y]"
    return f"{_a(label).capitalize() if many else 'The'} {label} of [X] is [Y]"
