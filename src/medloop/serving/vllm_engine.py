"""The GPU engine: a `vllm serve` upstream (multi-LoRA), spoken to over its OpenAI API.

Adapters are loaded at run time through vLLM's `/v1/load_lora_adapter` (the upstream must run with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). A hot swap loads the new version under a new upstream name
(`medical@3`) and repoints the served name; the old version is unloaded once its last request ends,
so a request in flight finishes on the adapter it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator

import httpx

from medloop.serving.local_engine import Delta, EngineError, GenerationRequest


def launch_command(model: str, *, port: int, adapters: dict[str, str], max_loras: int = 4, max_lora_rank: int = 64,
                   served_name: str | None = None, extra: list[str] | None = None) -> list[str]:
    """The `vllm serve` command line medloop needs: LoRA on, room for hot-swapped versions, Qwen3 reasoning."""
    cmd = ["vllm", "serve", model, "--host", "127.0.0.1", "--port", str(port), "--enable-lora",
           "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank), "--reasoning-parser", "qwen3"]
    if served_name:
        cmd += ["--served-model-name", served_name]
    if adapters:
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return cmd + (extra or [])


def launch(model: str, *, port: int, adapters: dict[str, str], **kwargs) -> subprocess.Popen:
    if shutil.which("vllm") is None:
        raise RuntimeError("vLLM is not installed: pip install 'medloop[gpu]' (needs a CUDA GPU)")
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    return subprocess.Popen(launch_command(model, port=port, adapters=adapters, **kwargs), env=env)


def upstream_error(status: int, text: str) -> EngineError:
    """An upstream 4xx is the client's problem and keeps its status; an upstream 5xx is our 502."""
    return EngineError(502 if status >= 500 else status, f"upstream {status}: {text[:300]}")


class VLLMEngine:
    def __init__(self, url: str, *, timeout: float = 60.0, served_name: str = "", api_key: str | None = None,
                 process: subprocess.Popen | None = None, startup_wait_s: float | None = None):
        self.url = url.rstrip("/")
        self.process = process  # a vLLM we launched: stopped with us
        self.startup_wait_s = startup_wait_s if startup_wait_s is not None else timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(timeout, connect=5.0),
                                        headers=headers)
        self.base_name = served_name
        self.upstream_base = ""
        self.served: dict[str, tuple[str, str | None]] = {}  # served name -> (upstream lora name, version)
        self.in_flight: Counter = Counter()  # upstream name -> requests running on it
        self.retired: set[str] = set()  # replaced versions waiting for their last request
        self._serial = 0

    async def start(self, adapters: dict[str, str] | None = None) -> None:
        """Find the upstream's base model (waiting up to startup_wait_s for it to come up), then load adapters."""
        deadline = time.monotonic() + self.startup_wait_s
        while True:
            try:
                data = await self._get_json("/v1/models")
                break
            except EngineError:
                if time.monotonic() >= deadline or (self.process and self.process.poll() is not None):
                    raise
                await asyncio.sleep(2)
        bases = [m["id"] for m in data["data"] if not m.get("parent")]
        if not bases:
            raise EngineError(502, "upstream lists no base model")
        self.upstream_base = bases[0]
        self.base_name = self.base_name or self.upstream_base
        for name, path in (adapters or {}).items():
            await self.load_adapter(name, path)

    @contextlib.contextmanager
    def _transport_errors(self):
        """Network failures as the gateway reports them: 504 for a timeout, 503 for anything else."""
        try:
            yield
        except httpx.TimeoutException as e:
            raise EngineError(504, f"upstream timed out: {self.url}") from e
        except httpx.HTTPError as e:
            raise EngineError(503, f"upstream unavailable: {self.url} ({type(e).__name__})") from e

    async def _request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        with self._transport_errors():
            r = await self.client.request(method, path, json=body)
        if r.status_code >= 400:
            raise upstream_error(r.status_code, r.text)
        return r

    async def _get_json(self, path: str) -> dict:
        r = await self._request("GET", path)
        try:
            return r.json()
        except ValueError as e:
            raise EngineError(502, "upstream returned something that is not JSON") from e

    async def _post(self, path: str, body: dict) -> httpx.Response:
        return await self._request("POST", path, body)

    async def load_adapter(self, name: str, path: str, version: str | None = None) -> None:
        self._serial += 1
        upstream = f"{name}@{self._serial}"
        await self._post("/v1/load_lora_adapter", {"lora_name": upstream, "lora_path": str(path)})
        old = self.served.get(name)
        self.served[name] = (upstream, version)
        if old:
            self.retired.add(old[0])
            await self._unload_retired()

    async def unload_adapter(self, name: str) -> None:
        if name not in self.served:
            raise EngineError(404, f"adapter '{name}' is not loaded")
        upstream, _ = self.served.pop(name)
        self.retired.add(upstream)
        await self._unload_retired()

    async def _unload_retired(self) -> None:
        for upstream in [u for u in self.retired if self.in_flight[u] == 0]:
            self.retired.discard(upstream)
            try:
                await self._post("/v1/unload_lora_adapter", {"lora_name": upstream})
            except EngineError:
                pass  # upstream restarted or already forgot it: nothing left to free

    def models(self) -> list[dict]:
        return [{"id": self.base_name, "root": self.upstream_base}] + [
            {"id": name, "root": upstream, "parent": self.base_name, "version": version}
            for name, (upstream, version) in sorted(self.served.items())
        ]

    def has_model(self, name: str) -> bool:
        return name == self.base_name or name in self.served

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if not self.has_model(request.model):
            raise EngineError(404, f"The model `{request.model}` does not exist.")
        upstream = self.served[request.model][0] if request.model in self.served else self.upstream_base
        body = {
            "model": upstream, "messages": request.messages, "max_tokens": request.max_tokens,
            "temperature": request.temperature, "top_p": request.top_p, "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if request.chat_template_kwargs:
            body["chat_template_kwargs"] = request.chat_template_kwargs
        self.in_flight[upstream] += 1
        try:
            async for delta in self._relay(body):
                yield delta
        finally:
            self.in_flight[upstream] -= 1
            if upstream in self.retired:
                await self._unload_retired()

    async def _relay(self, body: dict) -> AsyncIterator[Delta]:
        finish, usage = None, {}
        with self._transport_errors():
            async with self.client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    raise upstream_error(r.status_code, (await r.aread()).decode(errors="replace"))
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as e:
                        raise EngineError(502, "upstream sent a malformed stream chunk") from e
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        reasoning = delta.get("reasoning") or delta.get("reasoning_content") or ""
                        if delta.get("content") or reasoning:
                            yield Delta(text=delta.get("content") or "", reasoning=reasoning)
                        finish = choice.get("finish_reason") or finish
        if finish is None:
            raise EngineError(502, "upstream stream ended without a finish reason")
        yield Delta(finish_reason=finish, prompt_tokens=usage.get("prompt_tokens", 0),
                    completion_tokens=usage.get("completion_tokens", 0))

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
