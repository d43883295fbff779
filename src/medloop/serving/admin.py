"""Adapter hot swap: medloop's `/admin/adapters` and vLLM's runtime LoRA endpoints. Admin key only."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response

from medloop.serving.auth import AdminKey
from medloop.serving.engine import EngineError
from medloop.serving.protocol import AdapterRequest, LoadLoraRequest

router = APIRouter(dependencies=[AdminKey])


def allowed_adapter_path(request: Request, path: str, param: str) -> str:
    """Adapters load only from the registry under the data home, or from folders configured at start."""
    state = request.app.state
    resolved = Path(path).resolve()
    allowed = [state.settings.adapters_dir.resolve()] + [Path(p).resolve() for p in state.configured_adapters.values()]
    if not any(resolved == a or resolved.is_relative_to(a) for a in allowed):
        raise EngineError(400, "adapter path must be inside the adapter registry", param=param)
    if not (resolved / "adapter_config.json").exists():
        raise EngineError(400, "no LoRA adapter at that path (adapter_config.json missing)", param=param)
    return str(resolved)


@router.post("/admin/adapters")
async def admin_adapters(body: AdapterRequest, request: Request):
    engine = request.app.state.engine
    if body.action == "load":
        if not body.path:
            raise EngineError(400, "'path' is required to load", param="path")
        await engine.load_adapter(body.name, allowed_adapter_path(request, body.path, "path"), body.version)
    else:
        await engine.unload_adapter(body.name)
    return {"status": "ok", "models": engine.models()}


# vLLM's runtime LoRA API, with vLLM's answers: a loaded name is refused unless load_inplace.
@router.post("/v1/load_lora_adapter")
async def load_lora(body: LoadLoraRequest, request: Request):
    engine = request.app.state.engine
    if not body.lora_path:
        raise EngineError(400, "Both 'lora_name' and 'lora_path' must be provided.", param="lora_path")
    if engine.has_model(body.lora_name) and not body.load_inplace:
        raise EngineError(400, f"The lora adapter '{body.lora_name}' has already been loaded. If you want to load "
                               "the adapter in place, set 'load_inplace' to True.", param="lora_name")
    await engine.load_adapter(body.lora_name, allowed_adapter_path(request, body.lora_path, "lora_path"))
    return Response(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora(body: LoadLoraRequest, request: Request):
    await request.app.state.engine.unload_adapter(body.lora_name)  # an unknown name is a 404, as in vLLM
    return Response(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
