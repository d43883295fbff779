"""The GPU engine: a `vllm serve` upstream (multi-LoRA), spoken to through the official `openai` client.

Adapters are loaded at run time through vLLM's `/v1/load_lora_adapter` (the upstream runs with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). A hot swap loads the new version under a new upstream name
(`medical@3`) and repoints the served name; the old version is unloaded once its last request ends, so a
request in flight finishes on the adapter it started with. At start the engine reads what the upstream
already serves (`/v1/models`): an adapter already loaded from the same folder (by `--lora-modules`, or by
an earlier gateway) is adopted, and new names never collide with names used before.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from medloop.serving.engine import (
    OPTIONAL_FIELDS,
    Delta,
    EngineError,
    GenerationRequest,
    ServedAdapters,
)
from medloop.serving.relay import Upstream, body_fields
from medloop.serving.special_tokens import CONTROL_SHAPES, control_tokens, defuse


def launch_command(model: str, *, port: int, adapters: dict[str, str], max_loras: int = 4, max_lora_rank: int = 64,
                   served_name: str | None = None, extra: list[str] | None = None, python: str = "") -> list[str]:
    """The vLLM server command line medloop needs: LoRA on, room for hot-swapped versions, Qwen3 reasoning and tool
    calls.
    `python`: the interpreter of a virtualenv with vLLM (the CPU build's `vllm` console script cannot find its
    own package metadata, so the server is started through its module); empty: the `vllm` command."""
    entry = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model] if python \
        else ["vllm", "serve", model]
    cmd = entry + ["--host", "127.0.0.1", "--port", str(port), "--enable-lora", "--max-loras", str(max_loras),
                   "--max-lora-rank", str(max_lora_rank), "--reasoning-parser", "qwen3",
                   "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]  # Qwen3 writes hermes tool calls
    if served_name:
        cmd += ["--served-model-name", served_name]
    if adapters:
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return cmd + (extra or [])


def launch_env() -> dict[str, str]:
    return {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def launch_vllm(model: str, *, port: int, adapters: dict[str, str], settings) -> subprocess.Popen:
    python = settings.vllm.python
    if python and not Path(python).exists():
        raise RuntimeError(f"vllm_python: {python} does not exist (see README: vLLM on a CPU box)")
    if not python and shutil.which("vllm") is None:
        raise RuntimeError("vLLM is not installed: pip install 'medloop[gpu]' on a CUDA machine, or set vllm_python "
                           "to the python of a vLLM virtualenv")
    cmd = launch_command(model, port=port, adapters=adapters, max_loras=settings.vllm.max_loras,
                         max_lora_rank=settings.serving.max_lora_rank,
                         served_name=settings.serving.served_model_name or None,
                         extra=settings.vllm.args, python=python)
    return subprocess.Popen(cmd, env=launch_env())


class VLLMEngine:
    name = "vllm"
    serves = frozenset(OPTIONAL_FIELDS)  # vLLM's own fields, relayed as they are

    def __init__(self, url: str, *, timeout: float = 60.0, served_name: str = "", api_key: str | None = None,
                 process: subprocess.Popen | None = None, startup_wait_s: float | None = None):
        """`api_key`: the upstream's own credential (vLLM's --api-key), never a client's key."""
        self.upstream = Upstream(url, timeout=timeout, api_key=api_key, process=process, name="vLLM server")
        self.startup_wait_s = startup_wait_s if startup_wait_s is not None else timeout
        self.adapters = ServedAdapters(served_name)  # the base model's upstream name is learnt in start()
        self.control = re.compile(CONTROL_SHAPES)  # the model's own control tokens once start() knows its folder

    async def start(self, adapters: dict[str, str]) -> None:
        """Find the upstream's base model and adapters (waiting up to startup_wait_s), then load ours."""
        cards = await self.upstream.ready(self.startup_wait_s)
        bases = [c["id"] for c in cards if not c.get("parent")]
        if not bases:
            raise EngineError("upstream", "upstream lists no base model")
        self.control = control_tokens(next(c.get("root") or c["id"] for c in cards if not c.get("parent")))
        self.adapters.base_root = bases[0]
        self.adapters.base_name = self.adapters.base_name or bases[0]
        loras = {c["id"]: c.get("root") for c in cards if c.get("parent")}
        self.adapters.skip_past(list(loras))
        for name, path in adapters.items():
            folder = str(Path(path).resolve())
            adopted = next((lora for lora, root in loras.items()
                            if root and str(Path(root).resolve()) == folder and lora.split("@")[0] == name), None)
            if adopted:
                self.adapters.set(name, adopted, None)
            else:
                await self.load_adapter(name, folder)

    async def _post(self, path: str, body: dict) -> None:
        with self.upstream.errors(as_is=True):
            await self.upstream.client.post(path, body=body, cast_to=str)  # vLLM answers in plain text

    async def load_adapter(self, name: str, path: str, version: str | None = None) -> None:
        upstream = self.adapters.next_name(name)
        await self._post("/load_lora_adapter", {"lora_name": upstream, "lora_path": str(path)})
        self.adapters.set(name, upstream, version)
        await self._unload_retired()

    async def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name)
        await self._unload_retired()

    async def _unload_retired(self) -> None:
        in_flight = self.upstream.in_flight
        for upstream in self.adapters.retire_idle({u for u, n in in_flight.items() if n}):
            with contextlib.suppress(EngineError):  # upstream restarted or already forgot it: nothing to free
                await self._post("/unload_lora_adapter", {"lora_name": upstream})

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        model = self.adapters.resolve(request.model) or self.adapters.base_root
        extra = body_fields(request, self.control)
        self.upstream.in_flight[model] += 1
        try:
            async for delta in self.upstream.chat(request, model=model, messages=defuse(request.messages, self.control),
                                                  extra=extra, choices=request.options.get("n", 1)):
                yield delta
        finally:
            self.upstream.in_flight[model] -= 1
            if model in self.adapters.retired:
                await self._unload_retired()

    def health(self) -> str | None:
        return self.upstream.exited()

    async def close(self) -> None:
        await self.upstream.close()
