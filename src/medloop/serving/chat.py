"""`/v1/chat/completions` and `/v1/models`: retrieve -> ground the prompt -> engine -> answer + latest evidence.

`ChatService`, built once per app, holds what answering takes (settings, engine, retriever, metrics) and does it
in named steps: `validate` (every check on a request, before it reaches the engine: nothing one client sends can
reach another client's batch), `ground`, `evidence`, `audit`. The routes only speak HTTP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from medloop.config import Settings
from medloop.retrieval import grounding
from medloop.retrieval.evidence import evidence_block, evidence_language, quote
from medloop.retrieval.staleness import stale_claims
from medloop.serving.auth import ApiKey
from medloop.serving.engine import Delta, Engine
from medloop.serving.errors import APIError
from medloop.serving.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    DeltaMessage,
    ErrorBody,
    ErrorResponse,
    Evidence,
    FunctionCall,
    ModelCard,
    ModelList,
    ResponseMessage,
    StreamChoice,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
    completion_id,
)
from medloop.serving.reasoning import ReasoningParser

router = APIRouter(dependencies=[ApiKey])
CLIENT_GONE = "499"  # nginx's status for a client that closed the connection: counted, never sent


@dataclass
class Grounded:
    messages: list[dict]  # what the engine sees: the evidence in the system prompt
    hits: list = field(default_factory=list)  # the cited chunks
    language: str = "en"  # of the evidence block


class ChatService:
    def __init__(self, settings: Settings, engine: Engine, retriever, metrics):
        self.settings, self.engine, self.retriever, self.metrics = settings, engine, retriever, metrics

    def validate(self, body: ChatCompletionRequest) -> None:
        s = self.settings
        if len(body.messages) > s.max_messages:
            raise APIError(400, f"too many messages (at most {s.max_messages})", "messages")
        if sum(len(m.text()) for m in body.messages) > s.max_chars:
            raise APIError(400, f"messages too long (at most {s.max_chars} characters)", "messages")
        if body.max_new_tokens > s.max_tokens_limit:
            raise APIError(400, f"max_tokens must be at most {s.max_tokens_limit}", "max_tokens")
        if not any(m.role == "user" and m.text().strip() for m in body.messages):
            raise APIError(400, "at least one non-empty user message is required", "messages")
        self.engine.adapters.resolve(body.model)
        for name in body.asked():
            if name not in self.engine.serves:
                raise APIError(400, f"'{name}' is not served by the {s.engine} engine: leave it out (tool calls and "
                               "tool messages need 'tools'); the vllm engine serves it", name)

    async def ground(self, body: ChatCompletionRequest) -> Grounded:
        messages = body.engine_messages()
        options = body.medloop
        if self.retriever is None or (options is not None and not options.rag):
            return Grounded(messages, language=evidence_language(grounding.latest_question(messages)))
        k = (options.k if options and options.k else None) or self.settings.evidence_k
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
        if not s.audit_log:
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


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    return ModelList(data=[ModelCard(**m) for m in request.app.state.engine.adapters.models()])


@router.post("/v1/chat/completions")
async def chat(body: ChatCompletionRequest, request: Request):
    service: ChatService = request.app.state.chat
    started = time.perf_counter()
    try:
        service.validate(body)
        grounded = await service.ground(body)
        service.audit(body, grounded.hits)
        stream = service.engine.stream(body.to_generation_request(grounded.messages))
        # a structured answer (JSON, tool calls) is parsed by a program: its evidence stays in `evidence`
        append = (body.medloop is None or body.medloop.append_evidence) and not body.structured
        if body.stream:
            try:
                first = await anext(stream)  # engine errors before any output become a proper HTTP error
            except BaseException:
                await stream.aclose()
                raise
            return StreamingResponse(_sse(service, body, first, stream, grounded, append, started),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        answer = await until_disconnected(request, _complete(service, body, stream, grounded, append))
    except APIError as e:
        service.count(body.model, str(e.status), started)
        raise
    if answer is None:  # the client left: its generation stopped at the next step
        service.count(body.model, CLIENT_GONE, started)
        return Response(status_code=204)
    service.count(body.model, "ok", started, answer.usage)
    return answer


async def until_disconnected(request: Request, work: Awaitable):
    """`work`'s result, or None once the client has disconnected (then `work` is cancelled, which frees its
    engine row at the next step: a client that hung up stops costing)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left (or this handler was cancelled): stop the work
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


async def _complete(service: ChatService, body: ChatCompletionRequest, stream: AsyncIterator[Delta],
                    grounded: Grounded, append: bool) -> ChatCompletionResponse:
    answers, usage = collections.defaultdict(Answer), Usage()
    try:
        async for delta in stream:
            answers[delta.index].feed(delta)
            usage = usage_of(delta) if delta.prompt_tokens else usage
    finally:
        await stream.aclose()  # a client gone mid-answer frees its batch row at once
    indexes = sorted(answers) or [0]
    for i in indexes:
        answers[i].flush()
    blocks, evidence = await service.evidence([answers[i].checked() for i in indexes], grounded, append)
    choices = []
    for i, block in zip(indexes, blocks, strict=True):
        a = answers[i]
        message = ResponseMessage(content=a.content + block, reasoning_content=a.reasoning or None,
                                  reasoning=a.reasoning or None, tool_calls=a.calls.finished())
        choices.append(Choice(index=i, message=message, finish_reason=a.finish or "stop",
                              logprobs=logprobs_of(a.scored)))
    return ChatCompletionResponse(model=body.model, choices=choices, usage=usage, evidence=evidence)


async def _sse(service: ChatService, body: ChatCompletionRequest, first: Delta, stream: AsyncIterator[Delta],
               grounded: Grounded, append: bool, started: float) -> AsyncIterator[str]:
    """The answer as OpenAI stream chunks, each naming its choice; the evidence block arrives as a choice's last
    content chunks, the structured list with the last finishing chunk. An error after the stream started is an
    error chunk, then [DONE] (as vLLM does): clients and `bench/load.py` count it as a failed request."""
    cid = completion_id()

    def chunk(index: int, delta: DeltaMessage, finish: str | None = None, logprobs: list[dict] = (), **extra) -> str:
        payload = ChatCompletionChunk(id=cid, model=body.model, choices=[StreamChoice(
            index=index, delta=delta, finish_reason=finish, logprobs=logprobs_of(list(logprobs)))], **extra)
        return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"

    answers: dict[int, Answer] = {}

    def pieces(index: int, delta: Delta | None = None) -> list[str]:
        """One chunk per kind of output; the tokens' log-probabilities ride on the first. A choice's first piece
        opens it with its role."""
        opening = index not in answers
        answer = answers.setdefault(index, Answer())
        reasoning, content = answer.feed(delta) if delta else answer.flush()
        calls, scored = (delta.tool_calls, delta.logprobs) if delta else ([], [])
        deltas = ([DeltaMessage(role="assistant", content="")] if opening else []) + \
            ([DeltaMessage(reasoning_content=reasoning, reasoning=reasoning)] if reasoning else []) + \
            ([DeltaMessage(content=content)] if content else []) + \
            ([DeltaMessage(tool_calls=[ToolCallDelta(**c) for c in calls])] if calls else [])
        if scored and len(deltas) == opening:
            deltas.append(DeltaMessage())
        return [chunk(index, d, logprobs=scored if i == opening else ()) for i, d in enumerate(deltas)]

    status, usage = CLIENT_GONE, Usage()  # unless the stream reaches its end
    try:
        for piece in pieces(first.index, first):
            yield piece
        usage = usage_of(first) if first.prompt_tokens else usage
        async for delta in stream:
            usage = usage_of(delta) if delta.prompt_tokens else usage
            for piece in pieces(delta.index, delta):
                yield piece
        indexes = sorted(answers)
        for i in indexes:
            for piece in pieces(i):
                yield piece
        blocks, evidence = await service.evidence([answers[i].checked() for i in indexes], grounded, append)
        for i, block in zip(indexes, blocks, strict=True):
            lines = block.split("\n") if block else []
            for j, line in enumerate(lines):
                yield chunk(i, DeltaMessage(content=line + ("\n" if j < len(lines) - 1 else "")))
            # the structured list on the last finishing chunk: there whether or not a block went into the content
            yield chunk(i, DeltaMessage(), finish=answers[i].finish or "stop",
                        evidence=(evidence or None) if i == indexes[-1] else None)
        if body.stream_options and body.stream_options.include_usage:
            payload = ChatCompletionChunk(id=cid, model=body.model, choices=[], usage=usage)
            yield f"data: {payload.model_dump_json(exclude_none=True)}\n\n"
        status = "ok"
        service.count(body.model, status, started, usage)
    except APIError as e:
        status = str(e.status)
        service.count(body.model, status, started)
        err = ErrorResponse(error=ErrorBody(message=e.message, type=e.type, code=e.status))
        yield f"data: {err.model_dump_json()}\n\n"
    finally:
        await stream.aclose()
        if status == CLIENT_GONE:
            service.count(body.model, status, started)
    yield "data: [DONE]\n\n"
