"""Operations: health and Prometheus metrics (open, they carry no request text)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    index = state.retriever.index() if state.retriever is not None else None
    broken = state.engine.health()
    body = {"status": "unavailable" if broken else "ok", "model": state.engine.adapters.base_name,
            "index_version": index.version if index else None}
    if broken:
        return JSONResponse({**body, "reason": broken}, status_code=503)
    return body


@router.get("/metrics")
async def metrics(request: Request):
    state = request.app.state
    state.metrics.adapters.clear()
    for card in state.engine.adapters.models():
        if card.get("parent"):
            state.metrics.adapters.labels(card["id"], card.get("version") or "").set(1)
    state.metrics.registry_live.clear()
    if state.registry_status is not None:
        version, confirmed = state.registry_status()
        if version:
            state.metrics.registry_live.labels(version).set(1 if confirmed else 0)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
