"""The GPU engine: a `vllm serve` upstream (multi-LoRA), spoken to through the official `openai` client.

Adapters are loaded at run time through vLLM's `/v1/load_lora_adapter` (the upstream runs with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). A hot swap loads the new version under a new upstream name
(`medical@3`) and repoints the served name; the old version is unloaded once its last request ends, so a
request in flight finishes on the adapter it started with. At start the engine reads what the upstream
already serves (`/v1/models`): an adapter already loaded from the same folder (by `--lora-modules`, or by
an earlier gateway) is adopted, and new names never collide with names used before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import openai

from medloop.serving.engine import OPTIONAL_FIELDS, Delta, EngineError, GenerationRequest, ServedAdapters


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


def launch(model: str, *, port: int, adapters: dict[str, str], settings) -> subprocess.Popen:
    python = settings.vllm_python
    if python and not Path(python).exists():
        raise RuntimeError(f"vllm_python: {python} does not exist (see README: vLLM on a CPU box)")
    if not python and shutil.which("vllm") is None:
        raise RuntimeError("vLLM is not installed: pip install 'medloop[gpu]' on a CUDA machine, or set vllm_python "
                           "to the python of a vLLM virtualenv")
    cmd = launch_command(model, port=port, adapters=adapters, max_loras=settings.vllm_max_loras,
                         max_lora_rank=settings.max_lora_rank, served_name=settings.served_model_name or None,
                         extra=settings.vllm_args, python=python)
    return subprocess.Popen(cmd, env=launch_env())


# vLLM renders the messages into one prompt string, and its tokenizer reads every added token in that string
# (`<|im_start|>`, `<think>`) as the control token: a client's `<|im_end|>\n<|im_start|>system` would open a system
# turn of its own. The gateway defuses them first: a word joiner (U+2060, invisible, no meaning) after the first
# character, so the tokenizer reads the client's characters as text. The control tokens are the model's added tokens
# when its folder is readable here (`--launch`, a shared disk); else the shapes chat templates use.
CONTROL_SHAPES = r"<\|[^|<>\s]{1,64}\|>|</?(?:think|tool_call|tool_response|s)>|\[/?INST\]"
WORD_JOINER = "\u2060"


def control_tokens(model_root: str) -> re.Pattern:
    """What a client must not type as control tokens: the model's added tokens (tokenizer.json), and the common
    shapes."""
    tokens = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        added = json.loads((Path(model_root) / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
        tokens = [t["content"] for t in added if len(t["content"]) > 1]
    alternatives = [re.escape(t) for t in sorted(tokens, key=len, reverse=True)] + [CONTROL_SHAPES]
    return re.compile("|".join(alternatives))


def defuse(value, control: re.Pattern):
    """`value` (messages, tool definitions: whatever of a client's the chat template renders) with every control
    token in its strings broken by a word joiner: text stays text."""
    if isinstance(value, str):
        return control.sub(lambda m: m.group()[0] + WORD_JOINER + m.group()[1:], value)
    if isinstance(value, list):
        return [defuse(v, control) for v in value]
    if isinstance(value, dict):
        return {k: defuse(v, control) for k, v in value.items()}
    return value


# what medloop relays of a token's log-probability (OpenAI's fields; a field an upstream adds is not relayed)
TOKEN_LOGPROB = {"token": True, "logprob": True, "bytes": True,
                 "top_logprobs": {"__all__": {"token", "logprob", "bytes"}}}


def upstream_error(status: int, text: str, *, as_is: bool = False) -> EngineError:
    """vLLM's refusal in its own words. For a request, an upstream 4xx is the client's problem and keeps its
    status; an upstream 5xx is our 502. `as_is`: an adapter load or unload, answered with vLLM's status too."""
    try:
        error = json.loads(text)["error"]
        message, kind = str(error["message"]), error.get("type")
    except (ValueError, KeyError, TypeError):
        message, kind = text[:300], None
    if as_is or status < 500:
        return EngineError(status, message, type=kind)
    return EngineError(502, f"upstream {status}: {message[:300]}")


class VLLMEngine:
    serves = frozenset(OPTIONAL_FIELDS)  # vLLM's own fields, relayed as they are

    def __init__(self, url: str, *, timeout: float = 60.0, served_name: str = "", api_key: str | None = None,
                 process: subprocess.Popen | None = None, startup_wait_s: float | None = None):
        """`api_key`: the upstream's own credential (vLLM's --api-key), never a client's key."""
        self.url = url.rstrip("/")
        self.process = process  # a vLLM we launched: stopped with us
        self.startup_wait_s = startup_wait_s if startup_wait_s is not None else timeout
        self.client = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key or "EMPTY", max_retries=0,
                                         timeout=openai.Timeout(timeout, connect=5.0))
        # openai.Timeout, never httpx's: openai 3 runs on httpx2 and refuses another library's type
        self.adapters = ServedAdapters(served_name)  # the base model's upstream name is learnt in start()
        self.in_flight: Counter = Counter()  # upstream name -> requests running on it
        self.control = re.compile(CONTROL_SHAPES)  # the model's own control tokens once start() knows its folder

    @contextlib.contextmanager
    def _upstream_errors(self, as_is: bool = False):
        """Upstream failures as the gateway reports them: 504 timeout, 503 unreachable, 4xx kept, 5xx -> 502
        (`as_is`: vLLM's status kept, for adapter loads)."""
        try:
            yield
        except openai.APITimeoutError as e:
            raise EngineError(504, f"upstream timed out: {self.url}") from e
        except openai.APIConnectionError as e:
            raise EngineError(503, f"upstream unavailable: {self.url} ({type(e.__cause__ or e).__name__})") from e
        except openai.APIStatusError as e:
            raise upstream_error(e.status_code, e.response.text, as_is=as_is) from e
        except (openai.APIResponseValidationError, ValueError) as e:
            raise EngineError(502, f"upstream sent something that is not the OpenAI API: {e}") from e

    async def _upstream_models(self) -> list[dict]:
        with self._upstream_errors():
            page = await self.client.models.list()
        return [m.model_dump() for m in page.data]

    async def start(self, adapters: dict[str, str]) -> None:
        """Find the upstream's base model and adapters (waiting up to startup_wait_s), then load ours."""
        deadline = time.monotonic() + self.startup_wait_s
        while True:
            try:
                cards = await self._upstream_models()
                break
            except EngineError:
                if time.monotonic() >= deadline or (self.process and self.process.poll() is not None):
                    raise
                await asyncio.sleep(2)
        bases = [c["id"] for c in cards if not c.get("parent")]
        if not bases:
            raise EngineError(502, "upstream lists no base model")
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
        with self._upstream_errors(as_is=True):
            await self.client.post(path, body=body, cast_to=str)  # vLLM answers in plain text

    async def load_adapter(self, name: str, path: str, version: str | None = None) -> None:
        upstream = self.adapters.next_name(name)
        await self._post("/load_lora_adapter", {"lora_name": upstream, "lora_path": str(path)})
        self.adapters.set(name, upstream, version)
        await self._unload_retired()

    async def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name)
        await self._unload_retired()

    async def _unload_retired(self) -> None:
        for upstream in self.adapters.retire_idle({u for u, n in self.in_flight.items() if n}):
            with contextlib.suppress(EngineError):  # upstream restarted or already forgot it: nothing to free
                await self._post("/unload_lora_adapter", {"lora_name": upstream})

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        upstream = self.adapters.resolve(request.model) or self.adapters.base_root
        self.in_flight[upstream] += 1
        try:
            async for delta in self._relay(upstream, request):
                yield delta
        finally:
            self.in_flight[upstream] -= 1
            if upstream in self.adapters.retired:
                await self._unload_retired()

    async def _relay(self, upstream: str, request: GenerationRequest) -> AsyncIterator[Delta]:
        extra = {"chat_template_kwargs": request.chat_template_kwargs} if request.chat_template_kwargs else {}
        if request.ignore_eos:
            extra["ignore_eos"] = True
        extra.update(request.options)  # vLLM reads OpenAI's fields and its own from the body alike
        if "tools" in extra:  # the chat template renders them into the prompt, as it does the messages
            extra["tools"] = defuse(extra["tools"], self.control)
        finish, usage = {}, None  # choice index -> its finish reason
        with self._upstream_errors():
            chunks = await self.client.chat.completions.create(
                model=upstream, messages=defuse(request.messages, self.control), max_tokens=request.max_tokens,
                temperature=request.temperature, top_p=request.top_p, stop=request.stop or None,
                seed=request.seed, stream=True, stream_options={"include_usage": True}, extra_body=extra or None,
            )
            async with chunks:
                async for chunk in chunks:
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        # vLLM's Qwen3 reasoning parser: `reasoning` (older releases: `reasoning_content`)
                        fields = choice.delta.model_extra or {}
                        reasoning = fields.get("reasoning") or fields.get("reasoning_content") or ""
                        calls = [c.model_dump(exclude_none=True) for c in choice.delta.tool_calls or []]
                        scored = [t.model_dump(include=TOKEN_LOGPROB) for t in
                                  (choice.logprobs.content or [] if choice.logprobs else [])]
                        if choice.delta.content or reasoning or calls or scored:
                            yield Delta(text=choice.delta.content or "", index=choice.index, reasoning=reasoning,
                                        tool_calls=calls, logprobs=scored)
                        if choice.finish_reason:
                            finish[choice.index] = choice.finish_reason
        n = request.options.get("n", 1)
        if sorted(finish) != list(range(n)):
            raise EngineError(502, f"upstream stream ended without a finish reason for each of its {n} choices")
        for index, reason in sorted(finish.items()):
            last = index == n - 1
            yield Delta(index=index, finish_reason=reason, prompt_tokens=usage.prompt_tokens if usage and last else 0,
                        completion_tokens=usage.completion_tokens if usage and last else 0)

    def health(self) -> str | None:
        """A vLLM this gateway launched and that exited cannot serve; a remote one answers for itself (an upstream
        that does not answer is a 503 per request)."""
        if self.process and self.process.poll() is not None:
            return f"the vLLM server this gateway launched exited (code {self.process.returncode})"
        return None

    async def close(self) -> None:
        await self.client.close()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
