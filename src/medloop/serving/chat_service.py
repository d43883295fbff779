"""What answering a chat request takes, apart from HTTP: `ChatService` (built once per app: settings, engine,
retriever, metrics) does it in named steps — `validate` (every check on a request, before it reaches the engine:
nothing one client sends can reach another client's batch), `ground`, `evidence`, `audit` — and `Answer` puts a
choice together from the engine's pieces (thinking, content, tool calls, log-probabilities)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass, field

from medloop.config import Settings
from medloop.retrieval import grounding
from medloop.retrieval.evidence import evidence_block, evidence_language, quote
from medloop.retrieval.staleness import stale_claims
from medloop.serving.engine import Delta, Engine
from medloop.serving.errors import APIError
from medloop.serving.protocol import ChatCompletionRequest, FunctionCall, ToolCall
from medloop.serving.reasoning import ReasoningParser
from medloop.serving.responses import ChoiceLogprobs, Evidence, TokenLogprob, Usage


@dataclass
class Grounded:
    messages: list[dict]  # what the engine sees: the evidence in the system prompt
    hits: list = field(default_factory=list)  # the cited chunks
    language: str = "en"  # of the evidence block


class ChatService:
    def __init__(self, settings: Settings, engine: Engine, retriever, metrics):
        self.settings, self.engine, self.retriever, self.metrics = settings, engine, retriever, metrics

    def validate(self, body: ChatCompletionRequest) -> None:
        s = self.settings.limits
        if len(body.messages) > s.max_messages:
            raise APIError(400, f"too many messages (at most {s.max_messages})", "messages")
        if sum(len(m.text()) for m in body.messages) > s.max_chars:
            raise APIError(400, f"messages too long (at most {s.max_chars} characters)", "messages")
        if body.max_new_tokens > s.max_tokens:
            raise APIError(400, f"max_tokens must be at most {s.max_tokens}", "max_tokens")
        if not any(m.role == "user" and m.text().strip() for m in body.messages):
            raise APIError(400, "at least one non-empty user message is required", "messages")
        self.engine.adapters.resolve(body.model)
        for name in body.asked():
            if name not in self.engine.serves:
                raise APIError(400, f"'{name}' is not served by the {self.engine.name} engine: leave it "
                               "out (tool calls and tool messages need 'tools'); docs/serving.md says which "
                               "engine serves it", name)

    async def ground(self, body: ChatCompletionRequest) -> Grounded:
        messages = body.engine_messages()
        options = body.medloop
        if self.retriever is None or (options is not None and not options.rag):
            return Grounded(messages, language=evidence_language(grounding.latest_question(messages)))
        k = (options.k if options and options.k else None) or self.settings.serving.evidence_k
        t0 = time.perf_counter()
        grounded = await asyncio.to_thread(grounding.ground, self.retriever, messages, k)
        self.metrics.retrieval.observe(time.perf_counter() - t0)
        return Grounded(*grounded)

    async def evidence(self, answers: list[str], grounded: Grounded, append: bool) -> tuple[list[str], list[Evidence]]:
        """Once the answers (one per choice) are known: the evidence block of each, and the items, with the stale
        claims the stale-answer check finds in any of them."""
        hits = grounded.hits
        if not hits:
            return [""] * len(answers), []
        found = [await asyncio.to_thread(stale_claims, answer, [h.chunk.doc_id for h in hits], self.retriever.store,
                                         self.retriever.lexicon) for answer in answers]
        for stale in found:
            if stale:
                self.metrics.stale_answers.inc()
        blocks = [evidence_block(hits, grounded.language, stale) if append else "" for stale in found]
        every = []  # each claim once, however many choices make it
        for claim in (claim for stale in found for claim in stale):
            every += [claim] if claim not in every else []
        return blocks, evidence_items(hits, every)

    def audit(self, body: ChatCompletionRequest, hits) -> None:
        """One line per answer: ids only, never text."""
        s = self.settings
        if not s.serving.audit_log:
            return
        version = next((m.get("version") for m in self.engine.adapters.models() if m["id"] == body.model), None)
        record = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "model": body.model,
                  "adapter_version": version, "evidence": [h.chunk.chunk_id for h in hits]}
        s.home.mkdir(parents=True, exist_ok=True)
        with open(s.home / "audit.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def count(self, model: str, status: str, started: float, usage: Usage | None = None) -> None:
        """`status`: "ok", or the HTTP status of the failure (4xx: the request's fault, 5xx: ours)."""
        self.metrics.requests.labels(model, status).inc()
        self.metrics.latency.labels(model).observe(time.perf_counter() - started)
        if usage is not None:
            self.metrics.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
            self.metrics.tokens.labels(model, "completion").inc(usage.completion_tokens)


def evidence_items(hits, stale=()) -> list[Evidence]:
    """The structured citations; a stale claim rides on the first citation of its guideline."""
    items, claimed = [], set()
    for i, h in enumerate(hits, 1):
        mine = [c for c in stale if c.guideline_id == h.chunk.doc_id] \
            if h.chunk.doc_id not in claimed else []
        claimed.add(h.chunk.doc_id)
        items.append(Evidence(index=i, guideline_id=h.chunk.doc_id, title=h.chunk.title, issuer=h.chunk.issuer,
                              version=h.chunk.version, published=h.chunk.published, section=h.chunk.section,
                              quote=quote(h.chunk.text), chunk_id=h.chunk.chunk_id, score=round(h.score, 6),
                              relevance=round(h.relevance, 3), stale_claims=mine))
    return items


class ToolCalls:
    """The tool calls of an answer, put together from their stream deltas (`Delta.tool_calls`)."""

    def __init__(self):
        self.calls: dict[int, dict] = {}

    def add(self, deltas: list[dict]) -> None:
        for d in deltas:
            call = self.calls.setdefault(d["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] = d.get("id") or call["id"]
            function = d.get("function") or {}
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""

    def arguments(self) -> str:
        """What the stale-answer check reads of them: the arguments the model wrote."""
        return "\n".join(c["arguments"] for c in self.calls.values())

    def finished(self) -> list[ToolCall] | None:
        return [ToolCall(id=c["id"], function=FunctionCall(name=c["name"], arguments=c["arguments"]))
                for _, c in sorted(self.calls.items())] or None


class Answer:
    """One choice as its pieces arrive: thinking split from content (`ReasoningParser`), tool calls, the tokens'
    log-probabilities, its finish reason."""

    def __init__(self):
        self.parser, self.calls = ReasoningParser(), ToolCalls()
        self.reasoning, self.content, self.scored, self.finish = "", "", [], None

    def feed(self, delta: Delta) -> tuple[str, str]:
        """The reasoning and content this piece adds."""
        r, c = self.parser.feed(delta.text)
        return self._add(delta.reasoning + r, c, delta)

    def flush(self) -> tuple[str, str]:
        return self._add(*self.parser.flush())

    def _add(self, reasoning: str, content: str, delta: Delta | None = None) -> tuple[str, str]:
        self.reasoning, self.content = self.reasoning + reasoning, self.content + content
        if delta is not None:
            self.calls.add(delta.tool_calls)
            self.scored += delta.logprobs
            self.finish = delta.finish_reason or self.finish
        return reasoning, content

    def checked(self) -> str:
        """What the stale-answer check reads: the content (a JSON answer's too) and the tool calls' arguments."""
        return self.content + self.calls.arguments()


def logprobs_of(items: list[dict]) -> ChoiceLogprobs | None:
    return ChoiceLogprobs(content=[TokenLogprob(**i) for i in items]) if items else None


def usage_of(last: Delta) -> Usage:
    return Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                 total_tokens=last.prompt_tokens + last.completion_tokens)
