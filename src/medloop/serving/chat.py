"""`/v1/chat/completions` and `/v1/models`: retrieve -> ground the prompt -> engine -> answer + latest evidence.

`ChatService`, built once per app, holds what answering takes (settings, engine, retriever, metrics) and does it
in named steps: `validate` (every check on a request, before it reaches the engine: nothing one client sends can
reach another client's batch), `ground`, `evidence`, `audit`. The routes only speak HTTP.
"""

from __future__ import annotations

import asyncio
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
from medloop.serving.errors import APIError, model_not_found
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
        if not self.engine.adapters.has_model(body.model):
            raise model_not_found(body.model)
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

    async def evidence(self, answer: str, grounded: Grounded, append: bool) -> tuple[str, list[Evidence]]:
        """The evidence block and items, once the answer is known: the stale-answer check reads the answer."""
        hits = grounded.hits
        if not hits:
            return "", []
        stale = await asyncio.to_thread(stale_claims, answer, [h.chunk.doc_id for h in hits], self.retriever.store,
                                        self.retriever.lexicon)
        if stale:
            self.metrics.stale_answers.inc()
        return (evidence_block(hits, grounded.language, stale) if append else ""), evidence_items(hits, stale)

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
    parser, reasoning, content, last = ReasoningParser(), "", "", Delta()
    calls, scored = ToolCalls(), []
    try:
        async for delta in stream:
            r, c = parser.feed(delta.text)
            reasoning, content, last = reasoning + delta.reasoning + r, content + c, delta
            calls.add(delta.tool_calls)
            scored += delta.logprobs
    finally:
        await stream.aclose()  # a client gone mid-answer frees its batch row at once
    r, c = parser.flush()
    reasoning, content = reasoning + r, content + c
    block, evidence = await service.evidence(content + calls.arguments(), grounded, append)
    message = ResponseMessage(content=content + block, reasoning_content=reasoning or None, reasoning=reasoning or None,
                              tool_calls=calls.finished())
    choice = Choice(message=message, finish_reason=last.finish_reason or "stop", logprobs=logprobs_of(scored))
    return ChatCompletionResponse(model=body.model, choices=[choice], usage=usage_of(last), evidence=evidence)


async def _sse(service: ChatService, body: ChatCompletionRequest, first: Delta, stream: AsyncIterator[Delta],
               grounded: Grounded, append: bool, started: float) -> AsyncIterator[str]:
    """The answer as OpenAI stream chunks; the evidence block arrives as the last content chunks, the
    structured list with the finishing one. An error after the stream started is an error chunk, then [DONE]
    (as vLLM does): clients and `bench/load.py` count it as a failed request."""
    cid = completion_id()

    def chunk(delta: DeltaMessage, finish: str | None = None, logprobs: list[dict] = (), **extra) -> str:
        payload = ChatCompletionChunk(id=cid, model=body.model, choices=[StreamChoice(
            delta=delta, finish_reason=finish, logprobs=logprobs_of(list(logprobs)))], **extra)
        return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"

    parser, last, answer, calls = ReasoningParser(), first, [], ToolCalls()

    def pieces(reasoning: str, content: str, tool_calls: list[dict] = (), logprobs: list[dict] = ()) -> list[str]:
        """One chunk per kind of output; the tokens' log-probabilities ride on the first."""
        answer.append(content)
        calls.add(list(tool_calls))
        deltas = ([DeltaMessage(reasoning_content=reasoning, reasoning=reasoning)] if reasoning else []) + \
            ([DeltaMessage(content=content)] if content else []) + \
            ([DeltaMessage(tool_calls=[ToolCallDelta(**c) for c in tool_calls])] if tool_calls else [])
        if logprobs and not deltas:
            deltas = [DeltaMessage()]
        return [chunk(d, logprobs=logprobs if i == 0 else ()) for i, d in enumerate(deltas)]

    def parse(delta: Delta) -> list[str]:
        r, c = parser.feed(delta.text)
        return pieces(delta.reasoning + r, c, delta.tool_calls, delta.logprobs)

    status = CLIENT_GONE  # unless the stream reaches its end
    yield chunk(DeltaMessage(role="assistant", content=""))
    try:
        for piece in parse(first):
            yield piece
        if not first.finish_reason:
            async for delta in stream:
                last = delta
                for piece in parse(delta):
                    yield piece
        for piece in pieces(*parser.flush()):
            yield piece
        block, evidence = await service.evidence("".join(answer) + calls.arguments(), grounded, append)
        lines = block.split("\n") if block else []
        for i, line in enumerate(lines):
            yield chunk(DeltaMessage(content=line + ("\n" if i < len(lines) - 1 else "")))
        usage = usage_of(last)
        # the structured list on the finishing chunk: there whether or not a block went into the content
        yield chunk(DeltaMessage(), finish=last.finish_reason or "stop", evidence=evidence or None)
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
