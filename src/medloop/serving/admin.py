"""Adapter hot swap: medloop's `/admin/adapters` and vLLM's runtime LoRA endpoints. Admin key only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from medloop.serving.adapters import checked_path
from medloop.serving.auth import AdminKey
from medloop.serving.errors import APIError, EngineError, as_api_error
from medloop.serving.protocol import Text

router = APIRouter(dependencies=[AdminKey])


class AdapterRequest(BaseModel):
    """POST /admin/adapters: load (or replace) or unload an adapter under a served name."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["load", "unload"]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
    path: str | None = None
    version: str | None = None


class LoadLoraRequest(BaseModel):
    """vLLM's runtime LoRA endpoints, so that a medloop server can stand in for a vLLM upstream."""

    lora_name: Text = Field(max_length=200)
    lora_path: Text
    load_inplace: bool = False


class UnloadLoraRequest(BaseModel):
    lora_name: Text = Field(max_length=200)


def allowed_adapter_path(request: Request, path: str) -> str:
    """Adapters load only from the registry under the data home, or from folders configured at start."""
    state = request.app.state
    allowed = [state.settings.adapters_dir] + [Path(p) for p in state.configured_adapters.values()]
    return str(checked_path(path, allowed))


@router.post("/admin/adapters")
async def admin_adapters(body: AdapterRequest, request: Request):
    engine = request.app.state.engine
    if body.action == "load":
        if not body.path:
            raise APIError(400, "'path' is required to load", param="path")
        await engine.load_adapter(body.name, allowed_adapter_path(request, body.path), body.version)
    else:
        await engine.unload_adapter(body.name)
    return {"status": "ok", "models": engine.adapters.models()}


# vLLM's runtime LoRA API, answered as vLLM 0.32 answers (statuses, types, messages: recorded from the real server
# in tests/fixtures/vllm_admin.json), so that a medloop server can stand in for a vLLM upstream.
def _vllm_error(failure: EngineError, lora_name: str) -> APIError:
    """A refusal in vLLM's words: a folder without an adapter is vLLM's LoRAAdapterNotFoundError (404)."""
    error = as_api_error(failure)
    if error.status == 404:  # vLLM never echoes a path
        return APIError(404, f"Loading lora {lora_name} failed: No adapter found for <path>", type="NotFoundError")
    return APIError(error.status, error.message, type="BadRequestError" if error.status < 500 else
                    "InternalServerError")


@router.post("/v1/load_lora_adapter")
async def load_lora(body: LoadLoraRequest, request: Request):
    engine = request.app.state.engine
    if not body.lora_name or not body.lora_path:
        raise APIError(400, "Both 'lora_name' and 'lora_path' must be provided.", type="InvalidUserInput")
    if body.lora_name == engine.adapters.base_name:
        raise APIError(400, f"The lora adapter '{body.lora_name}' conflicts with a served base model.",
                       type="InvalidUserInput")
    if body.lora_name in engine.adapters and not body.load_inplace:
        raise APIError(400, f"The lora adapter '{body.lora_name}' has already been loaded. If you want to load "
                            "the adapter in place, set 'load_inplace' to True.", type="InvalidUserInput")
    try:
        await engine.load_adapter(body.lora_name, allowed_adapter_path(request, body.lora_path))
    except EngineError as e:
        raise _vllm_error(e, body.lora_name) from e
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora(body: UnloadLoraRequest, request: Request):
    engine = request.app.state.engine
    if not body.lora_name:
        raise APIError(400, "'lora_name' needs to be provided to unload a LoRA adapter.", type="InvalidUserInput")
    if body.lora_name not in engine.adapters:
        raise APIError(404, f"The lora adapter '{body.lora_name}' cannot be found.", type="NotFoundError")
    await engine.unload_adapter(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
