"""The stale-answer check: does the answer follow a superseded version of a guideline it cites?

The answer and the live and superseded versions of each cited guideline are read clause by clause for their claims
(`claims.read`: values with unit and direction, drug and class names, qualifiers, as lexicon concepts), so an
English answer is checked against a Chinese guideline and paraphrase does not hide a value. A value is stale when
a superseded clause states it (for what the answer is about) and no live clause does: "<140/90 mmHg" as the general
target is stale against the 2024 hypertension guideline, "<140/90 mmHg" for patients over 80 and "≥140/90 mmHg" to
diagnose are not (the live version states both). A name is stale when a superseded clause names it and the live
version never does. What the live version says instead is its clause on the same point.

`disagreements` serves the promotion gate's data check: a training answer should state only values and names that
the evidence for its question states, clause for clause, and none that only a superseded version states.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from medloop.knowledge.parsing import one_line
from medloop.knowledge.store import KnowledgeStore
from medloop.retrieval.claims import Reading, Value, read_all, vocabulary
from medloop.retrieval.dictionary import Bridge, dictionary
from medloop.retrieval.lexicon import Lexicon, lexicon
from medloop.retrieval.relevance import analyse, concept_weights, relevance
from medloop.retrieval.tokenize import tokenize


@dataclass
class StaleClaim:
    """One claim of an answer that follows a superseded version; the API sends it as is (`evidence[].stale_claims`)."""

    claim: str  # as the answer states it
    guideline_id: str
    stale_version: str  # the superseded version that says it
    live_version: str
    live_says: str  # what the live version says on the same point ("" when it says nothing there)
    section: str  # the live section
    kind: Literal["value", "name"] = "value"  # a threshold/target/duration, or a drug or class only the old one names


@dataclass(frozen=True, eq=False)
class Versions:
    """One guideline's clauses, live and superseded, with each chunk's tokens for asking what a passage covers."""

    live: list[Reading]
    old: list[Reading]
    tokens: dict[int, set[str]]  # chunk id -> its tokens
    df: Counter  # token -> how many of this guideline's chunks hold it

    def covering(self, clause: str, lex: Lexicon, bridge: Bridge) -> Callable[[Reading], float]:
        """How much of what an answer's clause is about a guideline clause's passage covers (retrieval's
        relevance, in either language, weighted by rarity within this guideline: "类风湿关节炎" is in every
        passage and tells none apart)."""
        query = analyse(clause, lex, bridge)
        weights = concept_weights(query, lambda t: self.df[t], len(self.tokens))
        return lambda reading: relevance(query, self.tokens[reading.chunk.chunk_id], weights)


@lru_cache(maxsize=64)
def _guideline(store: KnowledgeStore, doc_id: str, revision: int, lex: Lexicon) -> Versions:
    """One guideline's clauses, read once per store revision; nothing is read for a guideline without a superseded
    version, which is most of them."""
    if not any(v["superseded"] for v in store.versions(doc_id)):
        return Versions([], [], {}, Counter())
    vocab = vocabulary(lex)
    live, old, tokens = [], [], {}
    for chunk in store.guideline_chunks(doc_id):
        (old if chunk.superseded else live).extend(read_all(chunk.text, vocab, chunk))
        tokens[chunk.chunk_id] = set(tokenize(f"{chunk.section} {chunk.text}"))
    return Versions(live, old, tokens, Counter(t for chunk_tokens in tokens.values() for t in chunk_tokens))


@lru_cache(maxsize=4)
def _bridge(store: KnowledgeStore, revision: int) -> Bridge:
    return Bridge(dictionary(), store.bilingual_terms())


def _overlap(a: Reading, b: Reading) -> float:
    union = a.concepts | b.concepts
    return len(a.concepts & b.concepts) / len(union) if union else 0.0


def stale_claims(answer: str, cited_guidelines: list[str], store: KnowledgeStore,
                 lex: Lexicon | None = None) -> list[StaleClaim]:
    lex = lex or lexicon()
    readings = read_all(answer, vocabulary(lex))
    if not any(r.values or r.names for r in readings):
        return []
    found: list[StaleClaim] = []
    revision = store.revision()
    for doc_id in dict.fromkeys(cited_guidelines):
        versions = _guideline(store, doc_id, revision, lex)
        live, old = versions.live, versions.old
        if not old or not live:
            continue
        for clause in readings:
            covers = versions.covering(clause.text, lex, _bridge(store, revision)) if clause.values else None
            claims = [_stale_value(clause, v, q, live, old, doc_id, covers) for v, q in clause.values]
            claims += [_stale_name(clause, concept, written, live, old, doc_id)
                       for concept, written in clause.names.items()]
            for stale in claims:
                if stale and all((stale.claim, stale.guideline_id) != (f.claim, f.guideline_id) for f in found):
                    found.append(stale)
    return found


def _stale_value(clause: Reading, value: Value, about: frozenset[int], live: list[Reading], old: list[Reading],
                 doc_id: str, covers: Callable[[Reading], float]) -> StaleClaim | None:
    """`about`: the qualifiers of the value's own part of the clause ("目标<140/90，老年人可放宽到150/90": the
    140/90 is everyone's). The live version still says the value when it states it in the section of the same
    title as a superseded clause that did, or in a passage that covers what the answer's clause is about at least as
    well as the superseded one: the old "每1～3个月评估" is not kept by the live "3个月内减停" of glucocorticoids, and
    an answer about tapering them within 3 months follows the live version."""
    said_before = [c for c in old if c.states(value, about)]
    if not said_before:
        return None
    sections = {c.chunk.section for c in said_before}
    said_now = [c for c in live if c.states(value, about)]
    if any(c.chunk.section in sections for c in said_now) or \
            (said_now and max(map(covers, said_now)) >= max(map(covers, said_before))):
        return None
    before = max(said_before, key=lambda c: _overlap(clause, c))
    # What the live version says instead: its clause closest to the superseded one with a value of the same kind.
    kind = [c for c in live if any(v.unit == value.unit and v.direction == value.direction for v, _ in c.values)]
    if not kind:
        return StaleClaim(value.text, doc_id, before.chunk.version, live[0].chunk.version, "", live[0].chunk.section)
    instead = max(kind, key=lambda c: (_overlap(before, c), -len(c.qualifiers ^ before.qualifiers)))
    says = " / ".join(dict.fromkeys(v.text for v, q in instead.values
                                    if v.unit == value.unit and v.direction == value.direction))
    return StaleClaim(value.text, doc_id, before.chunk.version, instead.chunk.version, says, instead.chunk.section)


def _stale_name(clause: Reading, concept: frozenset[int], written: str, live: list[Reading], old: list[Reading],
                doc_id: str) -> StaleClaim | None:
    said_before = [c for c in old if c.names_concept(concept)]
    if not said_before or any(c.names_concept(concept) for c in live):
        return None
    before = max(said_before, key=lambda c: _overlap(clause, c))
    instead = max(live, key=lambda c: _overlap(before, c))
    return StaleClaim(written, doc_id, before.chunk.version, instead.chunk.version, one_line(instead.text, 60),
                      instead.chunk.section, kind="name")


def disagreements(answer: str, hits: list, store: KnowledgeStore, lex: Lexicon | None = None) -> tuple[int, list[str]]:
    """(how many claims the answer makes, the ones its evidence `hits` does not support). A value is supported when
    a clause of the evidence states it for what the answer's clause is about (a general target is not supported by
    the elderly's, a diagnostic threshold not by a target); a name when a clause of the evidence about the same
    concept names it; and neither when only a superseded version of a cited guideline says it."""
    lex = lex or lexicon()
    vocab = vocabulary(lex)
    readings = read_all(answer, vocab)
    evidence = [c for h in hits for c in read_all(h.chunk.text, vocab, h.chunk)]
    claims, unsupported = 0, []
    for clause in readings:
        for value, _ in clause.values:
            claims += 1
            if not any(e.states(value, clause.qualifiers) for e in evidence):
                unsupported.append(value.text)
        for concept, written in clause.names.items():
            claims += 1
            about = [e for e in evidence if e.concepts & (clause.concepts - concept)] or evidence
            if not any(e.names_concept(concept) for e in about):
                unsupported.append(written)
    stale = [s.claim for s in stale_claims(answer, [h.chunk.doc_id for h in hits], store, lex)]
    return claims, list(dict.fromkeys(unsupported + stale))
