"""One OpenAI-compatible upstream server (vLLM, llama.cpp's llama-server), spoken to through the official `openai`
client: its failures as engine errors, its stream read back into `Delta`s, the process when this gateway launched it.
The engines that relay (`vllm_engine.py`, `llamacpp_engine.py`) differ only in what they send and how they serve
adapters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator

import httpx2
import openai

from medloop.serving.engine import Delta, EngineError, GenerationRequest
from medloop.serving.errors import kind_of
from medloop.serving.special_tokens import defuse

# what medloop relays of a token's log-probability (OpenAI's fields; a field an upstream adds is not relayed)
TOKEN_LOGPROB = {"token": True, "logprob": True, "bytes": True,
                 "top_logprobs": {"__all__": {"token", "logprob", "bytes"}}}


def upstream_error(status: int, text: str, *, as_is: bool = False) -> EngineError:
    """The upstream's refusal in its own words. For a request, an upstream 4xx is the client's problem and keeps
    its kind; an upstream 5xx is ours (`upstream`, a 502). `as_is`: an adapter load or unload, a 5xx `failed`."""
    try:
        error = json.loads(text)["error"]
        message, kind = str(error["message"]), error.get("type")
    except (ValueError, KeyError, TypeError):
        message, kind = text[:300], None
    if as_is or status < 500:
        return EngineError(kind_of(status) if status < 500 else "failed", message, type=kind)
    return EngineError("upstream", f"upstream {status}: {message[:300]}")


def body_fields(request: GenerationRequest, control: re.Pattern) -> dict:
    """The request's fields beyond the openai client's arguments, as the upstream reads them from the body: the
    template's arguments, `ignore_eos`, the optional fields a client set (their names are OpenAI's and vLLM's),
    tool definitions defused like the messages (the chat template renders both into the prompt)."""
    extra = dict(request.options)
    if request.chat_template_kwargs:
        extra["chat_template_kwargs"] = request.chat_template_kwargs
    if request.ignore_eos:
        extra["ignore_eos"] = True
    if "tools" in extra:
        extra["tools"] = defuse(extra["tools"], control)
    return extra


class Upstream:
    def __init__(self, url: str, *, timeout: float = 60.0, api_key: str | None = None,
                 process: subprocess.Popen | None = None, name: str = "upstream", keep_alive: bool = True):
        """`api_key`: the upstream's own credential, never a client's key. `process`: a server this gateway
        launched, stopped with it. `name` says which server in errors ("the vLLM server"). `keep_alive`: whether
        a connection is used again (False: one per request, for a server that drops reused ones)."""
        self.url, self.process, self.name = url.rstrip("/"), process, name
        # openai.Timeout and httpx2's Limits, never httpx's: openai 3 runs on httpx2 and refuses another library's
        http = None if keep_alive else openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_keepalive_connections=0))
        self.client = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key or "EMPTY", max_retries=0,
                                         timeout=openai.Timeout(timeout, connect=5.0), http_client=http)
        self.in_flight: Counter = Counter()  # the model or adapter a request runs on -> requests running

    @contextlib.contextmanager
    def errors(self, as_is: bool = False):
        """Upstream failures as engine errors: timeout, unreachable, 4xx kept, 5xx upstream (`as_is`: failed)."""
        try:
            yield
        except openai.APITimeoutError as e:
            raise EngineError("timeout", f"upstream timed out: {self.url}") from e
        except openai.APIConnectionError as e:
            raise EngineError("unavailable",
                              f"upstream unavailable: {self.url} ({type(e.__cause__ or e).__name__})") from e
        except openai.APIStatusError as e:
            raise upstream_error(e.status_code, e.response.text, as_is=as_is) from e
        except (openai.APIResponseValidationError, ValueError) as e:
            raise EngineError("upstream", f"upstream sent something that is not the OpenAI API: {e}") from e

    async def models(self) -> list[dict]:
        with self.errors():
            page = await self.client.models.list()
        return [m.model_dump() for m in page.data]

    async def ready(self, wait_s: float) -> list[dict]:
        """The upstream's models once it answers, waiting up to `wait_s` (a launched server boots meanwhile)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return await self.models()
            except EngineError:
                if time.monotonic() >= deadline or self.exited():
                    raise
                await asyncio.sleep(1)

    async def chat(self, request: GenerationRequest, *, model: str, messages: list[dict], extra: dict,
                   choices: int = 1) -> AsyncIterator[Delta]:
        """The upstream's streamed answer as Deltas; the last piece of each of `choices` carries its finish reason,
        the very last the request's token counts."""
        finish, usage = {}, None  # choice index -> its finish reason
        with self.errors():
            chunks = await self.client.chat.completions.create(
                model=model, messages=messages, max_tokens=request.max_tokens, temperature=request.temperature,
                top_p=request.top_p, stop=request.stop or None, seed=request.seed, stream=True,
                stream_options={"include_usage": True}, extra_body=extra or None,
            )
            async with chunks:
                async for chunk in chunks:
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        # the Qwen3 reasoning parsers: `reasoning` (vLLM), `reasoning_content` (older vLLM, llama.cpp)
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
        if sorted(finish) != list(range(choices)):
            raise EngineError("upstream", "upstream stream ended without a finish reason for each of its "
                                          f"{choices} choices")
        for index, reason in sorted(finish.items()):
            last = index == choices - 1
            yield Delta(index=index, finish_reason=reason, prompt_tokens=usage.prompt_tokens if usage and last else 0,
                        completion_tokens=usage.completion_tokens if usage and last else 0)

    def exited(self) -> str | None:
        """Why a server this gateway launched cannot serve (it exited); None while it runs, or for a remote one
        (which answers for itself: an upstream that does not answer is a 503 per request)."""
        if self.process and self.process.poll() is not None:
            return f"the {self.name} this gateway launched exited (code {self.process.returncode})"
        return None

    async def close(self) -> None:
        await self.client.close()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
