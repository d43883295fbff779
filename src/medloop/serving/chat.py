"""`/v1/chat/completions` and `/v1/models`: retrieve -> ground the prompt -> engine -> answer + latest evidence.

The routes speak HTTP (plain answers, server-sent events, clients that leave); what answering takes is
`chat_service.ChatService`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from medloop.serving.auth import ApiKey
from medloop.serving.chat_service import Answer, ChatService, Grounded, logprobs_of, usage_of
from medloop.serving.engine import Delta
from medloop.serving.errors import APIError, EngineError, as_api_error
from medloop.serving.protocol import ChatCompletionRequest
from medloop.serving.responses import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    Choice,
    DeltaMessage,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    ResponseMessage,
    StreamChoice,
    ToolCallDelta,
    Usage,
    completion_id,
)

router = APIRouter(dependencies=[ApiKey])
CLIENT_GONE = "499"  # nginx's status for a client that closed the connection: counted, never sent


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
    except (APIError, EngineError) as e:
        service.count(body.model, str(as_api_error(e).status), started)
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
    except (APIError, EngineError) as failure:
        e = as_api_error(failure)
        status = str(e.status)
        service.count(body.model, status, started)
        err = ErrorResponse(error=ErrorBody(message=e.message, type=e.type, code=e.status))
        yield f"data: {err.model_dump_json()}\n\n"
    finally:
        await stream.aclose()
        if status == CLIENT_GONE:
            service.count(body.model, status, started)
    yield "data: [DONE]\n\n"
