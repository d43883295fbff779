"""The OpenAI-compatible gateway: retrieve -> ground the prompt -> engine -> answer + latest evidence."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from medloop.config import Settings
from medloop.retrieval.evidence import evidence_block, evidence_language, quote
from medloop.serving import rag
from medloop.serving.local_engine import Delta, EngineError, GenerationRequest
from medloop.serving.protocol import (
    AdapterRequest,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    DeltaMessage,
    ErrorBody,
    ErrorResponse,
    Evidence,
    LoadLoraRequest,
    ModelCard,
    ModelList,
    ResponseMessage,
    StreamChoice,
    Usage,
    completion_id,
)
from medloop.serving.reasoning import ReasoningParser

log = logging.getLogger("medloop.serving")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("medloop_requests", "chat requests", ["model", "status"], registry=self.registry)
        self.latency = Histogram("medloop_request_seconds", "chat request latency", ["model"], registry=self.registry)
        self.tokens = Counter("medloop_tokens", "tokens", ["model", "kind"], registry=self.registry)
        self.retrieval = Histogram("medloop_retrieval_seconds", "retrieval time", registry=self.registry,
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


def error(status: int, message: str, type_: str | None = None, param: str | None = None) -> JSONResponse:
    kind = type_ or {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                     404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
                     429: "rate_limit_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=status))
    return JSONResponse(body.model_dump(), status_code=status)


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        self.status, self.message, self.param = status, message, param


def _key_ok(header: str | None, keys: list[str]) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    given = header[7:].encode()
    # compare against every key, always: the time taken does not reveal which one (or whether any) matched
    return any([hmac.compare_digest(given, k.encode()) for k in keys])


def create_app(settings: Settings, engine, retriever=None, *, adapters: dict[str, str] | None = None) -> FastAPI:
    """`engine`: a LocalEngine or VLLMEngine. `retriever`: a Retriever, or None to serve without evidence."""
    metrics = Metrics()
    api_keys = [k.get_secret_value() for k in settings.api_keys]
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if hasattr(engine, "start"):
            await engine.start(adapters or {})
        yield
        engine.close()

    app = FastAPI(title="medloop", version="0.1.0", lifespan=lifespan)
    app.state.engine, app.state.retriever, app.state.settings = engine, retriever, settings

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", [])[1:])
        return error(400, f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request body",
                     param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return error(exc.status, exc.message, param=exc.param)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError):
        return error(exc.status, exc.message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error")
        return error(500, "internal error")

    def require_api_key(request: Request) -> None:
        if api_keys and not _key_ok(request.headers.get("authorization"), api_keys):
            raise RequestError(401, "invalid or missing API key (Authorization: Bearer <key>)")

    def require_admin(request: Request) -> None:
        if admin_key and not _key_ok(request.headers.get("authorization"), [admin_key]):
            raise RequestError(403, "admin key required")

    def adapter_path(path: str) -> str:
        """Adapters load only from the registry under the data home, or as configured at start."""
        resolved = Path(path).resolve()
        allowed = [settings.adapters_dir.resolve()] + [Path(p).resolve() for p in (adapters or {}).values()]
        if not any(resolved == a or resolved.is_relative_to(a) for a in allowed):
            raise RequestError(400, "adapter path must be inside the adapter registry", param="path")
        if not (resolved / "adapter_config.json").exists():
            raise RequestError(400, "no LoRA adapter at that path (adapter_config.json missing)", param="path")
        return str(resolved)

    @app.get("/health")
    async def health():
        index = retriever.index() if retriever is not None else None
        return {"status": "ok", "model": engine.base_name, "index_version": index.version if index else None}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> ModelList:
        require_api_key(request)
        return ModelList(data=[ModelCard(**m) for m in engine.models()])

    @app.post("/admin/adapters")
    async def admin_adapters(body: AdapterRequest, request: Request):
        require_admin(request)
        if body.action == "load":
            if not body.path:
                raise RequestError(400, "'path' is required to load", param="path")
            await engine.load_adapter(body.name, adapter_path(body.path), body.version)
        else:
            await engine.unload_adapter(body.name)
        return {"status": "ok", "models": engine.models()}

    # vLLM's runtime LoRA API, so that this server can stand in for a vLLM upstream.
    @app.post("/v1/load_lora_adapter")
    async def load_lora(body: LoadLoraRequest, request: Request):
        require_admin(request)
        if not body.lora_path:
            raise RequestError(400, "lora_path is required", param="lora_path")
        await engine.load_adapter(body.lora_name, adapter_path(body.lora_path))
        return Response(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(body: LoadLoraRequest, request: Request):
        require_admin(request)
        await engine.unload_adapter(body.lora_name)
        return Response(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    def validate(body: ChatCompletionRequest) -> None:
        if len(body.messages) > settings.max_messages:
            raise RequestError(400, f"too many messages (at most {settings.max_messages})", "messages")
        if sum(len(m.text()) for m in body.messages) > settings.max_chars:
            raise RequestError(400, f"messages too long (at most {settings.max_chars} characters)", "messages")
        max_tokens = body.max_completion_tokens or body.max_tokens or 256
        if max_tokens > settings.max_tokens_limit:
            raise RequestError(400, f"max_tokens must be at most {settings.max_tokens_limit}", "max_tokens")
        if not any(m.role == "user" and m.text().strip() for m in body.messages):
            raise RequestError(400, "at least one non-empty user message is required", "messages")
        if not engine.has_model(body.model):
            raise RequestError(404, f"The model `{body.model}` does not exist.", "model")

    async def ground(body: ChatCompletionRequest) -> tuple[list[dict], list, str]:
        """Messages for the engine (evidence in the system prompt), the cited hits, and the language."""
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        options = body.medloop
        if retriever is None or (options is not None and not options.rag):
            return messages, [], evidence_language(rag.latest_question(messages))
        k = (options.k if options and options.k else None) or settings.evidence_k
        t0 = time.perf_counter()
        grounded = await asyncio.to_thread(rag.ground, retriever, messages, k)
        metrics.retrieval.observe(time.perf_counter() - t0)
        return grounded

    def evidence_items(hits) -> list[Evidence]:
        return [Evidence(index=i, guideline_id=h.chunk.doc_id, title=h.chunk.title, issuer=h.chunk.issuer,
                         version=h.chunk.version, published=h.chunk.published, section=h.chunk.section,
                         quote=quote(h.chunk.text), chunk_id=h.chunk.chunk_id, score=round(h.score, 6))
                for i, h in enumerate(hits, 1)]

    def audit(body: ChatCompletionRequest, hits) -> None:
        if not settings.audit_log:
            return
        version = next((m.get("version") for m in engine.models() if m["id"] == body.model), None)
        record = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "model": body.model,
                  "adapter_version": version, "evidence": [h.chunk.chunk_id for h in hits]}
        settings.home.mkdir(parents=True, exist_ok=True)
        with open(settings.home / "audit.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        require_api_key(request)
        validate(body)
        started = time.perf_counter()
        messages, hits, language = await ground(body)
        gen = GenerationRequest(
            model=body.model, messages=messages, max_tokens=body.max_completion_tokens or body.max_tokens or 256,
            temperature=body.temperature, top_p=body.top_p, stop=body.stop_list(), seed=body.seed,
            chat_template_kwargs=body.chat_template_kwargs or {},
        )
        append = body.medloop is None or body.medloop.append_evidence
        block = evidence_block(hits, language) if append else ""
        evidence = evidence_items(hits)
        audit(body, hits)

        def done(status: str, usage: Usage) -> None:
            metrics.requests.labels(body.model, status).inc()
            metrics.latency.labels(body.model).observe(time.perf_counter() - started)
            metrics.tokens.labels(body.model, "prompt").inc(usage.prompt_tokens)
            metrics.tokens.labels(body.model, "completion").inc(usage.completion_tokens)

        if body.stream:
            stream = engine.stream(gen)
            try:
                first = await anext(stream)  # engine errors before any output become a proper HTTP error
            except EngineError:
                metrics.requests.labels(body.model, "error").inc()
                raise
            return StreamingResponse(_sse(body, first, stream, block, evidence, done), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        parser, reasoning, content, last = ReasoningParser(), "", "", Delta()
        try:
            async for delta in engine.stream(gen):
                r, c = parser.feed(delta.text)
                reasoning, content, last = reasoning + delta.reasoning + r, content + c, delta
        except EngineError:
            metrics.requests.labels(body.model, "error").inc()
            raise
        r, c = parser.flush()
        reasoning, content = reasoning + r, content + c
        usage = Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                      total_tokens=last.prompt_tokens + last.completion_tokens)
        done("ok", usage)
        message = ResponseMessage(content=content + block, reasoning_content=reasoning or None,
                                  reasoning=reasoning or None)
        return ChatCompletionResponse(model=body.model, choices=[Choice(message=message,
                                      finish_reason=last.finish_reason or "stop")], usage=usage, evidence=evidence)

    return app


async def _sse(body: ChatCompletionRequest, first: Delta, stream: AsyncIterator[Delta], block: str,
               evidence: list[Evidence], done) -> AsyncIterator[str]:
    cid = completion_id()

    def chunk(delta: DeltaMessage, finish: str | None = None, **extra) -> str:
        payload = ChatCompletionChunk(id=cid, model=body.model, choices=[StreamChoice(delta=delta,
                                      finish_reason=finish)], **extra)
        return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"

    parser, last = ReasoningParser(), first
    yield chunk(DeltaMessage(role="assistant", content=""))

    def pieces(delta: Delta) -> list[str]:
        r, c = parser.feed(delta.text)
        r = delta.reasoning + r
        out = []
        if r:
            out.append(chunk(DeltaMessage(reasoning_content=r, reasoning=r)))
        if c:
            out.append(chunk(DeltaMessage(content=c)))
        return out

    try:
        for piece in pieces(first):
            yield piece
        if not first.finish_reason:
            async for delta in stream:
                last = delta
                for piece in pieces(delta):
                    yield piece
        r, c = parser.flush()
        if r:
            yield chunk(DeltaMessage(reasoning_content=r, reasoning=r))
        if c:
            yield chunk(DeltaMessage(content=c))
        # The evidence block arrives as the last content chunks, the structured list with the final one.
        lines = block.split("\n") if block else []
        for i, line in enumerate(lines):
            text = line + ("\n" if i < len(lines) - 1 else "")
            yield chunk(DeltaMessage(content=text), evidence=evidence if i == len(lines) - 1 else None)
        usage = Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                      total_tokens=last.prompt_tokens + last.completion_tokens)
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
