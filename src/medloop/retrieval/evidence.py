"""Evidence for the prompt (grounding) and for the reader (the citations block after the answer)."""

from __future__ import annotations

from medloop.knowledge.language import language_of
from medloop.knowledge.parsing import one_line
from medloop.retrieval.retriever import Hit
from medloop.retrieval.staleness import StaleClaim

HEADINGS = {"zh": "最新临床依据", "en": "Latest clinical evidence"}


def evidence_language(question: str) -> str:
    return language_of(question)


def quote(text: str, limit: int = 120) -> str:
    return one_line(text, limit)


def citation(hit: Hit) -> str:
    """One line per citation, whatever a stored title holds (an index built before titles were cleaned)."""
    c = hit.chunk
    parts = [c.title, c.issuer, c.version, c.published, c.section]
    return one_line(", ".join(p for p in parts if p), 400)


def prompt_context(hits: list[Hit], language: str) -> str:
    """A system-prompt addition that puts the evidence in front of the model."""
    if language == "zh":
        head = "请依据以下最新临床指南内容回答（如相关），不要编造指南中没有的内容："
    else:
        head = "Answer using the following current clinical guideline excerpts where relevant; do not invent facts:"
    body = "\n\n".join(f"[{i}] {citation(h)}\n{h.chunk.text}" for i, h in enumerate(hits, 1))
    return f"{head}\n\n{body}"


def evidence_block(hits: list[Hit], language: str, stale: list[StaleClaim] = ()) -> str:
    """The block appended after the answer; empty when there is nothing to cite. A claim of the answer that
    follows a superseded version is said plainly under the citations."""
    if not hits:
        return ""
    lines = [f"\n\n---\n**{HEADINGS[language]}**"]
    for i, h in enumerate(hits, 1):
        lines.append(f"[{i}] {citation(h)}: “{quote(h.chunk.text)}”")
    lines += [f"⚠️ {stale_note(claim, language)}" for claim in stale]
    return "\n".join(lines)


def stale_note(claim: StaleClaim, language: str) -> str:
    """What the reader is told about a claim of the answer that follows a superseded version."""
    c = claim
    if c.kind == "name":
        if language == "zh":
            return (f"注意：回答中的“{c.claim}”见于{c.stale_version}版，{c.live_version}版已不再提及"
                    f"（{c.section}：“{c.live_says}”）。")
        return (f"Note: “{c.claim}” in this answer comes from the {c.stale_version} version; the {c.live_version} "
                f"version no longer names it ({c.section}: “{c.live_says}”).")
    if language == "zh":
        now = f"已更新为{c.live_says}" if c.live_says else "已不再采用此值"
        return f"注意：回答中的“{c.claim}”与{c.stale_version}版一致；{c.live_version}版{now}（{c.section}）。"
    now = f"recommends {c.live_says}" if c.live_says else "no longer states it"
    return (f"Note: “{c.claim}” in this answer matches the {c.stale_version} version; the {c.live_version} version "
            f"{now} ({c.section}).")
