"""The CPU server engine: llama.cpp's `llama-server` upstream (GGUF weights, continuous batching), relayed as vLLM is.

llama-server loads its LoRA adapters at start (`--lora`, each applied per request: `"lora": [{"id", "scale"}]`)
and cannot load one at run time. So a promotion is a blue/green swap: a second server starts with the new adapter
set; once it answers, new requests go to it, while the old one finishes the requests it has and then stops. No
request fails and none is answered by a half-loaded server. A PEFT adapter the loop trains is converted to GGUF by
llama.cpp's own converter (once, beside it); a Hugging Face base model too (once, under the home's models/).
`scripts/llama-server.sh` builds the server and puts the converters beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from medloop import models
from medloop.config import Settings
from medloop.serving.engine import Delta, EngineError, GenerationRequest, ServedAdapters
from medloop.serving.relay import Upstream, body_fields
from medloop.serving.special_tokens import CONTROL_SHAPES, defuse

ADAPTER_GGUF = "adapter.gguf"  # a PEFT adapter folder's GGUF twin, written beside its weights
# llama-server drops a kept-alive connection now and then after a streamed answer: a request sent on it fails
# ("Server disconnected without sending a response"; measured, 1 of 12 streamed requests on one client). Each
# request opens its own connection (`keep_alive=False`), which costs a fraction of a millisecond on loopback.


@dataclass(eq=False)
class Server:
    """One llama-server and the adapters it was started with (internal name -> its `--lora` id)."""

    upstream: Upstream
    loras: dict[str, int] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)  # internal name -> its GGUF


class Launcher:
    """Starts llama-servers for one base model: the binary and converters of `scripts/llama-server.sh` (`folder`),
    the `[llamacpp]` settings, the base as GGUF."""

    def __init__(self, base_model: str, served_name: str, settings: Settings):
        folder = settings.llamacpp.folder
        self.binary, self.converters = folder / "bin" / "llama-server", folder / "convert"
        if not self.binary.exists():
            raise RuntimeError(f"no llama-server in {folder / 'bin'}: run scripts/llama-server.sh {folder} "
                               "(about 12 minutes on two cores), or set llamacpp.folder")
        self.base_model, self.served_name, self.settings = base_model, served_name, settings.llamacpp
        self.models_dir, self.logs = settings.models_dir, settings.home / "llamacpp"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.base_gguf = self._base_gguf()

    def _convert(self, script: str, source: str, out: Path, *args: str) -> Path:
        """`out`, written by one of llama.cpp's converters from `source` the first time (beside, then renamed:
        an interrupted conversion leaves nothing that looks done)."""
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        work = out.with_name(out.name + ".partial")
        # medloop's own python has what the converters import (torch, transformers); `gguf` is their copy beside
        done = subprocess.run([sys.executable, str(self.converters / script), source, "--outfile", str(work), *args],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineError("invalid", f"llama.cpp's {script} failed: {done.stderr.strip()[-500:]}")
        work.rename(out)
        return out

    def _base_gguf(self) -> Path:
        """The base as GGUF: a .gguf (the embedded default included) as it is; a Hugging Face folder converted
        once under models/."""
        folder, extra = models.resolve(self.base_model)
        if "gguf_file" in extra:
            return Path(folder) / extra["gguf_file"]
        return self._convert("convert_hf_to_gguf.py", folder, self.models_dir / f"{Path(folder).name}.gguf",
                             "--outtype", "f16")

    def adapter_gguf(self, path: str) -> Path:
        """An adapter as GGUF: a .gguf as it is; a PEFT folder converted once, beside its weights (against the
        base it was trained on: the Hugging Face folder, or the GGUF's dequantised twin the monthly job trains)."""
        folder = Path(path)
        if folder.suffix == ".gguf":
            return folder
        if (folder / ADAPTER_GGUF).exists():
            return folder / ADAPTER_GGUF
        return self._convert("convert_lora_to_gguf.py", str(folder), folder / ADAPTER_GGUF, "--outtype", "f32",
                             "--base", models.trainable(self.base_model, self.models_dir))

    def command(self, port: int, loras: list[Path]) -> list[str]:
        s = self.settings
        cmd = [str(self.binary), "-m", str(self.base_gguf), "--host", "127.0.0.1", "--port", str(port),
               "--alias", self.served_name, "-np", str(s.parallel), "-c", str(s.context),
               "-t", str(s.threads or os.cpu_count()),
               # Qwen3's template through jinja (tool calls), its thinking split out, adapters off until asked for
               "--jinja", "--reasoning-format", "deepseek", "--lora-init-without-apply", "--no-webui"]
        for lora in loras:
            cmd += ["--lora", str(lora)]
        return cmd + list(s.args)

    async def boot(self, paths: dict[str, Path], timeout: float) -> Server:
        """A running server with these adapters, or an EngineError (and no process left behind)."""
        port = _free_port()
        log = open(self.logs / f"llama-server-{port}.log", "w")  # noqa: SIM115 - the process writes it
        process = subprocess.Popen(self.command(port, list(paths.values())), stdout=log, stderr=subprocess.STDOUT)
        upstream = Upstream(f"http://127.0.0.1:{port}", timeout=timeout, process=process, name="llama-server",
                            keep_alive=False)
        try:
            await upstream.ready(self.settings.startup_s)
        except BaseException as e:
            await upstream.close()
            why = Path(log.name).read_text(errors="replace")[-1500:]
            raise EngineError("unavailable", f"llama-server did not start ({e}): {why}") from e
        finally:
            log.close()
        return Server(upstream, {name: i for i, name in enumerate(paths)}, dict(paths))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppEngine:
    name = "llamacpp"
    # measured against the real llama-server (tests/serving/test_llamacpp.py); the rest is refused by name.
    serves = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
                        "response_format", "tools", "tool_choice", "parallel_tool_calls"})
    # Tools are the model's to call: this llama-server neither forces a call (`required`: the suite's model answered
    # in plain text, no grammar held it) nor reads a named function (it ignores a tool_choice object).
    tool_choices = ("auto", "none")

    def __init__(self, *, launcher: Launcher | None = None, url: str = "", served_name: str = "",
                 timeout: float = 60.0):
        """A server it starts and swaps (`launcher`), or a remote llama-server at `url` (adapters fixed at its
        start)."""
        if launcher is None and not url:
            raise ValueError("a llama.cpp engine needs a launcher or the url of a running llama-server")
        self.launcher, self.url, self.timeout = launcher, url, timeout
        self.adapters = ServedAdapters(served_name or (launcher.served_name if launcher else ""))
        self.live: Server | None = None
        self.control = re.compile(CONTROL_SHAPES)  # a GGUF names no tokenizer.json here: the shapes
        self._swap = asyncio.Lock()
        self._draining: dict[Server, asyncio.Task] = {}  # old servers finishing their last requests

    async def start(self, adapters: dict[str, str]) -> None:
        if self.launcher is None:
            upstream = Upstream(self.url, timeout=self.timeout, name="llama-server", keep_alive=False)
            cards = await upstream.ready(self.timeout)
            self.adapters.base_name = self.adapters.base_name or cards[0]["id"]
            self.live = Server(upstream)
            if adapters:
                raise EngineError("invalid", "a remote llama-server serves the adapters it was started with: "
                                             "start medloop with --launch to serve adapters")
            return
        wanted = {self.adapters.next_name(name): (name, path) for name, path in adapters.items()}
        paths = {internal: await asyncio.to_thread(self.launcher.adapter_gguf, path)
                 for internal, (_, path) in wanted.items()}
        self.live = await self.launcher.boot(paths, self.timeout)
        for internal, (name, _) in wanted.items():
            self.adapters.set(name, internal, None)

    async def load_adapter(self, name: str, path: str, version: str | None = None) -> None:
        gguf = await asyncio.to_thread(self._launcher().adapter_gguf, path)
        internal = self.adapters.next_name(name)
        async with self._swap:
            await self._switch({**self._served_paths(except_name=name), internal: gguf})
            self.adapters.set(name, internal, version)
            self.adapters.retire_idle(set())  # their weights go with the old server

    async def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise EngineError("not_found", f"adapter '{name}' is not loaded", param="name")
        async with self._swap:
            await self._switch(self._served_paths(except_name=name))
            self.adapters.pop(name)
            self.adapters.retire_idle(set())

    def _launcher(self) -> Launcher:
        if self.launcher is None:
            raise EngineError("invalid", "llama-server cannot load an adapter at run time, and this gateway did "
                                         "not start it: restart it with the adapter (or start medloop with --launch)")
        return self.launcher

    def _served_paths(self, except_name: str) -> dict[str, Path]:
        return {internal: self.live.paths[internal] for name, (internal, _) in self.adapters.table.items()
                if name != except_name}

    async def _switch(self, paths: dict[str, Path]) -> None:
        """Blue/green: the new server takes new requests once it answers; the old one stops after its last."""
        green = await self._launcher().boot(paths, self.timeout)
        blue, self.live = self.live, green
        self._draining[blue] = asyncio.create_task(self._retire(blue))

    async def _retire(self, server: Server) -> None:
        """Stop an old server after its last request (or after the upstream timeout, whatever still runs)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while sum(server.upstream.in_flight.values()) and loop.time() < deadline:
            await asyncio.sleep(0.2)
        await server.upstream.close()
        self._draining.pop(server, None)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        internal = self.adapters.resolve(request.model)
        server = self.live
        if server is None:
            raise EngineError("unavailable", "the llama.cpp engine has not started")
        extra = body_fields(request, self.control)
        if extra.get("tool_choice", "auto") not in self.tool_choices:
            raise EngineError("invalid", "llama-server does not force a tool call: 'tool_choice' may be \"auto\" "
                              "or \"none\" on the llama.cpp engine (the vLLM engine serves \"required\" and a "
                              "named function)", param="tool_choice")
        # every adapter the server holds, named: the one asked for at full scale, the others off
        extra["lora"] = [{"id": i, "scale": 1.0 if name == internal else 0.0} for name, i in server.loras.items()]
        server.upstream.in_flight[internal or ""] += 1
        try:
            async for delta in server.upstream.chat(request, model=self.adapters.base_name,
                                                    messages=defuse(request.messages, self.control), extra=extra):
                yield delta
        finally:
            server.upstream.in_flight[internal or ""] -= 1

    def health(self) -> str | None:
        return self.live.upstream.exited() if self.live else None

    async def close(self) -> None:
        servers = [s for s in (self.live, *self._draining) if s]
        for task in self._draining.values():
            task.cancel()
        self.live, self._draining = None, {}
        for server in servers:
            with contextlib.suppress(Exception):  # each is stopped, whatever the others do
                await server.upstream.close()
