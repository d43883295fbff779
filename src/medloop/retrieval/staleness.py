"""The stale-answer check: does the answer follow a superseded version of a guideline it cites?

After generation, the answer's numeric claims (thresholds, targets, durations: "<140/90 mmHg", "7%", "48小时",
"12 months") and the drugs and classes it names (lexicon concepts: "利尿剂", "β受体阻滞剂") are looked up in
the live and the superseded versions of each cited guideline, clause by clause. A value is stale when a
superseded clause states it and the live version does not say it in that context: the value appears nowhere in
the live version, or only in a clause about something else (the 2024 hypertension guideline still says <140/90,
for patients over 80, while its general target is <130/80). A name is stale when the answer says what a
superseded clause says and the live version never names it. The live counterpart of the superseded clause
gives what the current version says instead.

The same reading of values serves the promotion gate's data check (`unsupported_values`): a training answer
should state only values that the evidence for its question states, and not a superseded version's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from medloop.knowledge.store import ChunkRecord, KnowledgeStore
from medloop.retrieval.evidence import quote
from medloop.retrieval.lexicon import lexicon
from medloop.retrieval.tokenize import tokenize

UNITS = {
    "mmhg": "mmHg", "%": "%", "mmol/l": "mmol/L", "小时": "h", "h": "h", "hour": "h", "hours": "h",
    "个月": "mo", "month": "mo", "months": "mo", "天": "d", "day": "d", "days": "d", "分钟": "min",
    "minute": "min", "minutes": "min", "min": "min", "岁": "y", "years": "y", "year": "y",
}
CLAIM = re.compile(
    r"(?P<cmp>[<>≤≥＜＞]=?\s*)?(?P<num>\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?)\s*"
    r"(?P<unit>mmHg|%|mmol/L|小时|个月|天|分钟|岁|hours?|months?|days?|minutes?|min|years?|h\b)?",
    re.IGNORECASE,
)
CLAUSE = re.compile(r"[。；;！？!?\n]|\.(?=\s|$)")
MARGIN = 0.05  # how much closer to the superseded clause than to any live one the answer must be
NAME_CONTAINMENT = 0.5  # a name is checked only in an answer clause that says what the superseded clause says


@dataclass(frozen=True)
class Value:
    key: tuple[str, str]  # (number, unit kind): "140/90" and a bare "<140/90 mmHg" are the same claim, as are
    # "7.0%" and "7%"
    text: str  # as written


def values(text: str) -> list[Value]:
    out = []
    for m in CLAIM.finditer(text):
        number = "/".join(n.rstrip("0").rstrip(".") if "." in n else n for n in re.sub(r"\s+", "", m["num"]).split("/"))
        unit = UNITS.get((m["unit"] or "").lower(), "")
        if "/" in number:
            unit = "mmHg"  # a systolic/diastolic pair
        if not unit:
            continue  # a bare number ("2型", "12-lead") is not a claim
        out.append(Value((number, unit), m.group().strip()))
    return out


def clauses(text: str) -> list[str]:
    return [c.strip() for c in CLAUSE.split(text) if c.strip()]


@dataclass(frozen=True)
class Clause:
    """A clause read once: its values and its tokens (numbers left out of `topic`: what it is about)."""

    text: str
    values: tuple[Value, ...]
    tokens: frozenset[str]
    topic: frozenset[str]
    chunk: ChunkRecord | None = None

    @classmethod
    def of(cls, text: str, chunk: ChunkRecord | None = None) -> Clause:
        tokens = frozenset(tokenize(text))
        return cls(text, tuple(values(text)), tokens, frozenset(t for t in tokens if not t.isdigit()), chunk)


def similarity(a: Clause, b: Clause) -> float:
    """Jaccard similarity of what the two clauses are about."""
    union = a.topic | b.topic
    return len(a.topic & b.topic) / len(union) if union else 0.0


def containment(a: Clause, b: Clause) -> float:
    """The share of what clause `a` is about that clause `b` also says."""
    return len(a.topic & b.topic) / len(a.topic) if a.topic else 0.0


@dataclass(frozen=True)
class Name:
    text: str  # as written in the answer
    forms: tuple[tuple[str, ...], ...]  # the lexicon concept's forms, either language


@dataclass
class StaleClaim:
    claim: str  # as the answer states it
    guideline_id: str
    stale_version: str  # the superseded version that says it
    live_version: str
    live_says: str  # what the live version says on the same point ("" when it says nothing there)
    section: str  # the live section
    kind: str = "value"  # a threshold/target/duration, or a "name" (a drug or class) only the old version names

    def note(self, language: str) -> str:
        if self.kind == "name":
            if language == "zh":
                return (f"注意：回答中的“{self.claim}”见于{self.stale_version}版，{self.live_version}版已不再提及"
                        f"（{self.section}：“{self.live_says}”）。")
            return (f"Note: “{self.claim}” in this answer comes from the {self.stale_version} version; the "
                    f"{self.live_version} version no longer names it ({self.section}: “{self.live_says}”).")
        if language == "zh":
            now = f"已更新为{self.live_says}" if self.live_says else "已不再采用此值"
            return (f"注意：回答中的“{self.claim}”与{self.stale_version}版一致；"
                    f"{self.live_version}版{now}（{self.section}）。")
        now = f"recommends {self.live_says}" if self.live_says else "no longer states it"
        return (f"Note: “{self.claim}” in this answer matches the {self.stale_version} version; the "
                f"{self.live_version} version {now} ({self.section}).")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def names(text: str) -> list[Name]:
    """The lexicon concepts a clause names (drugs, classes, tests...), as written."""
    lex = lexicon()
    out = []
    for line_ids, written in lex.find(text)[0]:
        forms = tuple(dict.fromkeys(f for g in line_ids for f in lex.groups[g]))
        out.append(Name(written, forms))
    return out


def _states(claim: Value | Name, clause: Clause) -> bool:
    if isinstance(claim, Value):
        return any(v.key == claim.key for v in clause.values)
    return any(all(t in clause.tokens for t in form) for form in claim.forms)


@lru_cache(maxsize=64)
def _guideline_clauses(store: KnowledgeStore, doc_id: str, revision: int) -> tuple[list[Clause], list[Clause]]:
    """(live clauses, superseded clauses) of one guideline, read once per store revision; nothing is loaded for
    a guideline without a superseded version, which is most of them."""
    if not any(v["superseded"] for v in store.versions(doc_id)):
        return [], []
    chunks = store.guideline_chunks(doc_id)
    live = [Clause.of(text, c) for c in chunks if not c.superseded for text in clauses(c.text)]
    old = [Clause.of(text, c) for c in chunks if c.superseded for text in clauses(c.text)]
    return live, old


def stale_claims(answer: str, cited_guidelines: list[str], store: KnowledgeStore) -> list[StaleClaim]:
    found: list[StaleClaim] = []
    answer_clauses = [(c, [*c.values, *names(c.text)]) for c in map(Clause.of, clauses(answer))]
    if not any(claims for _, claims in answer_clauses):
        return found
    revision = store.revision()
    for doc_id in dict.fromkeys(cited_guidelines):
        live, old = _guideline_clauses(store, doc_id, revision)
        if not old or not live:
            continue
        for sentence, claims in answer_clauses:
            for claim in claims:
                stale = _check(sentence, claim, live, old, doc_id)
                if stale and all(stale.claim != f.claim or stale.guideline_id != f.guideline_id for f in found):
                    found.append(stale)
    return found


def _check(sentence: Clause, claim: Value | Name, live: list[Clause], old: list[Clause],
           doc_id: str) -> StaleClaim | None:
    old_with = [c for c in old if _states(claim, c)]
    if not old_with:
        return None
    old_clause = max(old_with, key=lambda c: similarity(sentence, c))
    sim_old = similarity(sentence, old_clause)
    live_with = [c for c in live if _states(claim, c)]
    if isinstance(claim, Name):
        # A name is stale only where the live version never names it, and the answer says what the old did.
        if live_with or containment(sentence, old_clause) < NAME_CONTAINMENT:
            return None
        counterpart = max(live, key=lambda c: similarity(old_clause, c))
        return StaleClaim(claim.text, doc_id, old_clause.chunk.version, counterpart.chunk.version,
                          quote(counterpart.text, 60), counterpart.chunk.section, kind="name")
    sim_live = max((similarity(sentence, c) for c in live_with), default=None)
    if sim_live is not None and sim_old <= sim_live + MARGIN:
        return None  # the live version says it too, in a clause at least as close to the answer
    # What the live version says instead: its clause closest to the superseded one, same kind of value.
    unit = claim.key[1]
    same_kind = [c for c in live if any(v.key[1] == unit for v in c.values)]
    if same_kind:
        counterpart = max(same_kind, key=lambda c: similarity(old_clause, c))
        says = [v for v in counterpart.values if v.key[1] == unit]
        if any(v.key == claim.key for v in says) and similarity(old_clause, counterpart) > 0.5:
            return None  # the same point, the same value: unchanged
        live_chunk, live_says = counterpart.chunk, " / ".join(dict.fromkeys(v.text for v in says))
    else:
        live_chunk, live_says = live[0].chunk, ""
    return StaleClaim(claim.text, doc_id, old_clause.chunk.version, live_chunk.version, live_says,
                      live_chunk.section)


def unsupported_values(answer: str, hits: list, store: KnowledgeStore) -> list[str]:
    """The answer's values (thresholds, targets, durations) that none of the evidence `hits` states, and the ones
    only a superseded version of a cited guideline states: what an answer grounded in that evidence cannot say."""
    claims = values(answer)
    if not claims:
        return []
    evidence = [v.key for h in hits for v in values(h.chunk.text)]
    missing = [v.text for v in claims if v.key not in evidence]
    stale = [s.claim for s in stale_claims(answer, [h.chunk.doc_id for h in hits], store)]
    return list(dict.fromkeys(missing + stale))
