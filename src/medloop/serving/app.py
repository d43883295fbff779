"""The OpenAI-compatible gateway, built as vLLM builds its API server: one `build_app`, engine and settings
on `app.state`, routes on routers (chat, admin, ops), auth as dependencies, errors in OpenAI's shape."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from medloop.config import Settings
from medloop.serving import admin, chat, ops
from medloop.serving.engine import Engine, EngineError
from medloop.serving.protocol import ErrorBody, ErrorResponse

log = logging.getLogger("medloop.serving")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("medloop_requests", "chat requests", ["model", "status"], registry=self.registry)
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


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=status))
    return JSONResponse(body.model_dump(), status_code=status)


def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", [])[1:])
    message = first.get("msg", "invalid request")
    return error_response(400, f"{where}: {message}" if where else "invalid request body", param=where or None)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return error_response(500, "internal error")


def build_app(settings: Settings, engine: Engine, retriever=None, *, adapters: dict[str, str] | None = None) -> FastAPI:
    """`engine`: a LocalEngine or VLLMEngine; `retriever`: a Retriever, or None to serve without evidence;
    `adapters`: served name -> folder, loaded at start (and allowed as hot-swap sources)."""
    api_keys = [k.get_secret_value() for k in settings.api_keys if k.get_secret_value()]
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key else ""
    if admin_key and admin_key in api_keys:
        raise ValueError("the admin key must not also be a client API key")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start(adapters or {})
        yield
        await engine.close()

    app = FastAPI(title="medloop", version="0.2.0", lifespan=lifespan)
    app.state.settings, app.state.engine, app.state.retriever = settings, engine, retriever
    app.state.configured_adapters = dict(adapters or {})
    app.state.api_keys, app.state.admin_key = api_keys, admin_key
    app.state.metrics = Metrics()
    app.state.registry_status = None  # set by the deployment: () -> (live version, server confirmed it)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, lambda r, e: error_response(e.status_code, str(e.detail)))
    app.add_exception_handler(EngineError, lambda r, e: error_response(e.status, e.message, e.param))
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(chat.router)
    app.include_router(admin.router)
    app.include_router(ops.router)
    return app
