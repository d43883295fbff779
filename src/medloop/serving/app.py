"""The OpenAI-compatible gateway, built as vLLM builds its API server: one `build_app`, engine, settings and the
chat service on `app.state`, routes on routers (chat, admin, ops), auth as dependencies (also checked before a
body is read: `guard`), errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from medloop.config import Settings
from medloop.serving import admin, chat, ops
from medloop.serving.chat_service import ChatService
from medloop.serving.engine import Engine
from medloop.serving.errors import APIError, EngineError, as_api_error, error_response
from medloop.serving.guard import Guard

log = logging.getLogger("medloop.serving")
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
VLLM_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")  # answered in vLLM's words


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("medloop_requests", "chat requests by outcome: ok, or the HTTP status of the "
                                "failure (4xx: the request's fault, 5xx: the server's, 499: the client left)",
                                ["model", "status"], registry=self.registry)
        self.latency = Histogram("medloop_request_seconds", "chat request latency", ["model"], registry=self.registry)
        self.tokens = Counter("medloop_tokens", "tokens", ["model", "kind"], registry=self.registry)
        self.stale_answers = Counter("medloop_stale_answers", "answers that follow a superseded guideline version",
                                     registry=self.registry)
        self.retrieval = Histogram("medloop_retrieval_seconds", "retrieval time", registry=self.registry,
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.adapters = Gauge("medloop_adapter_loaded", "served adapter versions", ["name", "version"],
                              registry=self.registry)
        self.registry_live = Gauge("medloop_registry_live_serving", "the adapter registry's live version: 1 once "
                                   "the server confirmed loading it, 0 while it is promoted but not live",
                                   ["version"], registry=self.registry)


def _invalid(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", [])[1:])
    message = first.get("msg", "invalid request")
    vllm = request.url.path in VLLM_PATHS
    return error_response(APIError(400, f"{where}: {message}" if where else "invalid request body",
                                   param=where or None, type="Bad Request" if vllm else None))


def _unexpected(request: Request, exc: Exception):
    log.exception("unhandled error")
    return error_response(APIError(500, "internal error"))


def allowed_hosts(settings: Settings, api_keys: list[str]) -> list[str]:
    """The Host headers served: the configured list; by default loopback names only while no client key is set
    (a keyless API bound to loopback must not answer a DNS-rebound page), any host once keys guard it."""
    if settings.serving.allowed_hosts:
        return settings.serving.allowed_hosts
    return ["*"] if api_keys else LOOPBACK_HOSTS


def build_app(settings: Settings, engine: Engine, retriever=None, *, adapters: dict[str, str] | None = None,
              versions: dict[str, str] | None = None) -> FastAPI:
    """`engine`: a LocalEngine or VLLMEngine; `retriever`: a Retriever, or None to serve without evidence;
    `adapters`: served name -> folder, loaded at start (and allowed as hot-swap sources); `versions`: the registry
    version of those the registry serves, shown in `/v1/models`."""
    api_keys = [k.get_secret_value() for k in settings.serving.api_keys if k.get_secret_value()]
    admin_key = settings.serving.admin_key.get_secret_value() if settings.serving.admin_key else ""
    if admin_key and admin_key in api_keys:
        raise ValueError("the admin key must not also be a client API key")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            if retriever is not None:
                await asyncio.to_thread(retriever.warm)
            await engine.start(adapters or {})
            for name, version in (versions or {}).items():  # start-up adapters the registry serves: their version
                if name in engine.adapters:
                    engine.adapters.set(name, engine.adapters.internal(name), version)
            yield
        finally:  # a start that fails stops what it started too (a launched vLLM is never left behind)
            await engine.close()

    docs = settings.serving.api_docs  # off by default: the pages load Swagger's assets from a public CDN
    app = FastAPI(title="medloop", version="0.3.0", lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None)
    app.state.settings, app.state.engine, app.state.retriever = settings, engine, retriever
    app.state.configured_adapters = dict(adapters or {})
    app.state.api_keys, app.state.admin_key = api_keys, admin_key
    app.state.metrics = Metrics()
    app.state.chat = ChatService(settings, engine, retriever, app.state.metrics)
    app.state.registry_status = None  # set by the deployment: () -> (live version, server confirmed it)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, lambda r, e: error_response(APIError(e.status_code,
                                                                                           str(e.detail))))
    app.add_exception_handler(APIError, lambda r, e: error_response(e))
    app.add_exception_handler(EngineError, lambda r, e: error_response(as_api_error(e)))
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(chat.router)
    app.include_router(admin.router)
    app.include_router(ops.router)
    app.add_middleware(Guard, routers=[chat.router, admin.router, ops.router], state=app.state,
                       max_body_bytes=settings.limits.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings, api_keys))
    return app
