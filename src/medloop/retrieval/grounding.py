"""Grounding: retrieve for the latest user turn and put the evidence in front of the model."""

from __future__ import annotations

from medloop.retrieval.evidence import evidence_language, prompt_context


def latest_question(messages: list[dict]) -> str:
    """The last user turn's text; "" when there is none (nothing to retrieve for)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def ground(retriever, messages: list[dict], k: int) -> tuple[list[dict], list, str]:
    """(messages with the evidence in the system prompt, the relevant hits, the answer's language)."""
    question = latest_question(messages)
    language = evidence_language(question)
    hits = [h for h in retriever.search(question, k) if h.relevant] if retriever is not None else []
    if not hits:
        return messages, [], language
    context = prompt_context(hits, language)
    if messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + context}, *messages[1:]], hits, language
    return [{"role": "system", "content": context}, *messages], hits, language
