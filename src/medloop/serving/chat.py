"""`/v1/chat/completions` and `/v1/models`: retrieve -> ground the prompt -> engine -> answer + latest evidence.

Every check on a request runs here, before it reaches the engine: nothing one client sends can reach
another client's batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from medloop.retrieval import grounding
from medloop.retrieval.evidence import evidence_block, evidence_language, quote
from medloop.retrieval.staleness import stale_claims
from medloop.serving.auth import ApiKey
from medloop.serving.engine import Delta, EngineError
from medloop.serving.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    DeltaMessage,
    ErrorBody,
    ErrorResponse,
    Evidence,
    ModelCard,
    ModelList,
    ResponseMessage,
    StaleClaim,
    StreamChoice,
    Usage,
    completion_id,
)
from medloop.serving.reasoning import ReasoningParser

router = APIRouter(dependencies=[ApiKey])


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    return ModelList(data=[ModelCard(**m) for m in request.app.state.engine.models()])


def validate(body: ChatCompletionRequest, state) -> None:
    settings = state.settings
    if len(body.messages) > settings.max_messages:
        raise EngineError(400, f"too many messages (at most {settings.max_messages})", "messages")
    if sum(len(m.text()) for m in body.messages) > settings.max_chars:
        raise EngineError(400, f"messages too long (at most {settings.max_chars} characters)", "messages")
    if body.max_new_tokens > settings.max_tokens_limit:
        raise EngineError(400, f"max_tokens must be at most {settings.max_tokens_limit}", "max_tokens")
    if not any(m.role == "user" and m.text().strip() for m in body.messages):
        raise EngineError(400, "at least one non-empty user message is required", "messages")
    if not state.engine.has_model(body.model):
        raise EngineError(404, f"The model `{body.model}` does not exist.", "model")


async def ground(body: ChatCompletionRequest, state) -> tuple[list[dict], list, str]:
    """Messages for the engine (evidence in the system prompt), the cited hits, and the answer's language."""
    messages = body.engine_messages()
    options = body.medloop
    if state.retriever is None or (options is not None and not options.rag):
        return messages, [], evidence_language(grounding.latest_question(messages))
    k = (options.k if options and options.k else None) or state.settings.evidence_k
    t0 = time.perf_counter()
    grounded = await asyncio.to_thread(grounding.ground, state.retriever, messages, k)
    state.metrics.retrieval.observe(time.perf_counter() - t0)
    return grounded


def evidence_items(hits, stale=()) -> list[Evidence]:
    """The structured citations; a stale claim rides on the first citation of its guideline."""
    items, claimed = [], set()
    for i, h in enumerate(hits, 1):
        mine = [StaleClaim(**c.to_dict()) for c in stale if c.guideline_id == h.chunk.doc_id] \
            if h.chunk.doc_id not in claimed else []
        claimed.add(h.chunk.doc_id)
        items.append(Evidence(index=i, guideline_id=h.chunk.doc_id, title=h.chunk.title, issuer=h.chunk.issuer,
                              version=h.chunk.version, published=h.chunk.published, section=h.chunk.section,
                              quote=quote(h.chunk.text), chunk_id=h.chunk.chunk_id, score=round(h.score, 6),
                              relevance=round(h.relevance, 3), stale_claims=mine))
    return items


async def evidence_after(answer: str, hits, language: str, append: bool, state) -> tuple[str, list[Evidence]]:
    """The evidence block and items, once the answer is known: the stale-answer check reads the answer."""
    if not hits:
        return "", []
    stale = await asyncio.to_thread(stale_claims, answer, [h.chunk.doc_id for h in hits], state.retriever.store)
    if stale:
        state.metrics.stale_answers.inc()
    return (evidence_block(hits, language, stale) if append else ""), evidence_items(hits, stale)


def audit(body: ChatCompletionRequest, hits, state) -> None:
    """One line per answer: ids only, never text."""
    settings = state.settings
    if not settings.audit_log:
        return
    version = next((m.get("version") for m in state.engine.models() if m["id"] == body.model), None)
    record = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "model": body.model,
              "adapter_version": version, "evidence": [h.chunk.chunk_id for h in hits]}
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / "audit.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def usage_of(last: Delta) -> Usage:
    return Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                 total_tokens=last.prompt_tokens + last.completion_tokens)


@router.post("/v1/chat/completions")
async def chat(body: ChatCompletionRequest, request: Request):
    state = request.app.state
    validate(body, state)
    started = time.perf_counter()
    messages, hits, language = await ground(body, state)
    gen = body.to_generation_request(messages)
    append = body.medloop is None or body.medloop.append_evidence
    audit(body, hits, state)
    metrics = state.metrics

    def done(status: str, usage: Usage) -> None:
        metrics.requests.labels(body.model, status).inc()
        metrics.latency.labels(body.model).observe(time.perf_counter() - started)
        metrics.tokens.labels(body.model, "prompt").inc(usage.prompt_tokens)
        metrics.tokens.labels(body.model, "completion").inc(usage.completion_tokens)

    stream = state.engine.stream(gen)
    if body.stream:
        try:
            first = await anext(stream)  # engine errors before any output become a proper HTTP error
        except EngineError:
            metrics.requests.labels(body.model, "error").inc()
            raise
        evidence = functools.partial(evidence_after, hits=hits, language=language, append=append, state=state)
        return StreamingResponse(_sse(body, first, stream, evidence, done), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    parser, reasoning, content, last = ReasoningParser(), "", "", Delta()
    try:
        async for delta in stream:
            r, c = parser.feed(delta.text)
            reasoning, content, last = reasoning + delta.reasoning + r, content + c, delta
    except EngineError:
        metrics.requests.labels(body.model, "error").inc()
        raise
    finally:
        await stream.aclose()  # a client gone mid-answer frees its batch row at once
    r, c = parser.flush()
    reasoning, content = reasoning + r, content + c
    usage = usage_of(last)
    done("ok", usage)
    block, evidence = await evidence_after(content, hits, language, append, state)
    message = ResponseMessage(content=content + block, reasoning_content=reasoning or None, reasoning=reasoning or None)
    return ChatCompletionResponse(model=body.model, choices=[Choice(message=message,
                                  finish_reason=last.finish_reason or "stop")], usage=usage, evidence=evidence)


async def _sse(body: ChatCompletionRequest, first: Delta, stream: AsyncIterator[Delta],
               evidence_for: Callable[[str], Awaitable[tuple[str, list[Evidence]]]],
               done: Callable[[str, Usage], None]) -> AsyncIterator[str]:
    """The answer as OpenAI stream chunks; the evidence block arrives as the last content chunks, the
    structured list with the final one. An error after the stream started is an error chunk, then [DONE]
    (as vLLM does): clients and `bench/load.py` count it as a failed request."""
    cid = completion_id()

    def chunk(delta: DeltaMessage, finish: str | None = None, **extra) -> str:
        payload = ChatCompletionChunk(id=cid, model=body.model, choices=[StreamChoice(delta=delta,
                                      finish_reason=finish)], **extra)
        return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"

    parser, last, answer = ReasoningParser(), first, []

    def pieces(reasoning: str, content: str) -> list[str]:
        out = []
        answer.append(content)
        if reasoning:
            out.append(chunk(DeltaMessage(reasoning_content=reasoning, reasoning=reasoning)))
        if content:
            out.append(chunk(DeltaMessage(content=content)))
        return out

    def parse(delta: Delta) -> list[str]:
        r, c = parser.feed(delta.text)
        return pieces(delta.reasoning + r, c)

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
        block, evidence = await evidence_for("".join(answer))
        lines = block.split("\n") if block else []
        for i, line in enumerate(lines):
            text = line + ("\n" if i < len(lines) - 1 else "")
            yield chunk(DeltaMessage(content=text), evidence=evidence if i == len(lines) - 1 else None)
        usage = usage_of(last)
        yield chunk(DeltaMessage(), finish=last.finish_reason or "stop")
        if body.stream_options and body.stream_options.include_usage:
            payload = ChatCompletionChunk(id=cid, model=body.model, choices=[], usage=usage)
            yield f"data: {payload.model_dump_json(exclude_none=True)}\n\n"
        done("ok", usage)
    except EngineError as e:
        done("error", Usage())
        err = ErrorResponse(error=ErrorBody(message=e.message, type="server_error", code=e.status))
        yield f"data: {err.model_dump_json()}\n\n"
    finally:
        await stream.aclose()
    yield "data: [DONE]\n\n"
