"""The CPU (or single-GPU) engine: transformers + peft, dynamic batching, several LoRA adapters at once.

One worker thread owns the model. Each request is rendered and checked (chat template, context length)
on its own, before it joins a batch, so a bad request fails alone. Waiting requests share one `generate`
call whatever their sampling settings: each row carries its own temperature, top-p and random generator
(`_RowSampler`), and names its own adapter (peft's mixed-adapter batches), so concurrent requests never
see each other's adapter or randomness. A job carries its own prompt: rows and prompts cannot get out of
step when clients leave. Adapter loads and swaps run on the worker between batches: a request in flight
finishes on the adapter it started with, the next one sees the new.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from medloop.config import DEFAULT_CHAT_MODEL, resolve_model
from medloop.serving.engine import Delta, EngineError, GenerationRequest, ServedAdapters

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


def default_served_name(base_model: str) -> str:
    if base_model == DEFAULT_CHAT_MODEL:
        return "smollm2-135m-instruct"
    return Path(base_model.rstrip("/")).name or base_model


@dataclass
class _Job:
    request: GenerationRequest
    prompt_ids: list[int]  # rendered and checked before the job joins a batch
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    adapter: str = BASE  # internal peft adapter name, resolved when the batch starts
    cancelled: bool = False

    def emit(self, delta: Delta) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, delta)


@dataclass
class _Control:
    fn: object
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class _BatchStreamer(BaseStreamer):
    """Receives each new token of every row from `generate`; decodes and routes it to its job."""

    def __init__(self, engine: LocalEngine, jobs: list[_Job]):
        self.engine, self.jobs = engine, jobs
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
        self.jobs[row].emit(Delta(finish_reason=reason, prompt_tokens=len(self.jobs[row].prompt_ids),
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


class _RowsDone(StoppingCriteria):
    """A row is finished once the streamer says so (eos, stop string, max_tokens, client gone)."""

    def __init__(self, streamer: _BatchStreamer):
        self.streamer = streamer

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor(self.streamer.done, device=input_ids.device)


class _RowSampler(LogitsProcessor):
    """Per-row sampling, so one batch serves requests with different temperatures, top-p and seeds.

    Each sampled row draws its token with its own generator (seeded by the request's `seed`) by the
    Gumbel-max trick, argmax(logits / T + Gumbel noise) over the top-p nucleus. That samples exactly from
    the tempered distribution and, unlike an inverse-CDF draw over a cumulative sum, does not move when
    batching perturbs the logits in their last bits: the same request gives the same answer whoever shares
    its batch. The drawn token is then made the row's only candidate, so `generate`'s greedy step picks it;
    greedy rows (temperature 0) pass through untouched. The nucleus is looked for among the `NUCLEUS_K`
    likeliest tokens first (a real model's nucleus is small) and by a full sort only where it is larger.
    """

    NUCLEUS_K = 1024

    def __init__(self, jobs: list[_Job], device: str):
        self.rows = [i for i, j in enumerate(jobs) if j.request.temperature > 0]
        self.temperature = torch.tensor([[jobs[i].request.temperature] for i in self.rows], device=device)
        self.top_p = [jobs[i].request.top_p for i in self.rows]
        self.generators = []
        for i in self.rows:
            seed = jobs[i].request.seed
            self.generators.append(torch.Generator(device=device).manual_seed(
                seed if seed is not None else secrets.randbits(63)))

    def _draw(self, logits: torch.Tensor, log_norm: torch.Tensor, top_p: float, gen: torch.Generator) -> int:
        # Noise for every token of the vocabulary, in vocabulary order: which token gets which noise never
        # depends on how near-equal logits happen to sort, and each step uses the generator the same way.
        uniform = torch.rand(logits.shape, generator=gen, device=logits.device).clamp_(min=1e-20)
        perturbed = logits - (-uniform.log()).log()
        if top_p >= 1.0:
            return int(perturbed.argmax())
        k = min(self.NUCLEUS_K, logits.shape[-1])
        top, ids = logits.topk(k)
        if k < logits.shape[-1] and float((top - log_norm).exp().sum()) < top_p:  # a larger nucleus: sort all
            top, ids = logits.sort(descending=True)
        probs = (top - log_norm).exp()
        inside = int((probs.cumsum(-1) - probs <= top_p).sum())  # the smallest set whose mass reaches top_p
        nucleus = ids[:inside]
        return int(nucleus[perturbed[nucleus].argmax()])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.rows:
            return scores
        logits = scores[self.rows].float() / self.temperature
        log_norm = logits.logsumexp(-1)
        forced = torch.full_like(scores, float("-inf"))
        keep = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
        for k, row in enumerate(self.rows):
            forced[row, self._draw(logits[k], log_norm[k], self.top_p[k], self.generators[k])] = 0.0
            keep[row] = False
        return torch.where(keep.unsqueeze(1), scores, forced)


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
        # The engine samples itself (_RowSampler): the checkpoint's sampling defaults must not apply on top.
        self.model.generation_config = GenerationConfig(do_sample=False, eos_token_id=sorted(self.eos_ids),
                                                        pad_token_id=self.tokenizer.pad_token_id)
        self.context_length = getattr(self.model.config, "max_position_embeddings", None) or 32768
        self.base_name = served_name or default_served_name(base_model)
        self.max_batch_size = max_batch_size
        self.adapters = ServedAdapters()
        self._encode_lock = threading.Lock()  # a fast tokenizer must not encode on two threads at once
        self._queue: queue.Queue = queue.Queue()
        self._held: list = []
        self._thread: threading.Thread | None = None
        self.stats = {"batches": 0, "rows": 0}  # how well requests share batches (tests, benches)
        for name, path in (adapters or {}).items():
            self._load(name, path, None)

    # ---- adapters (run on the worker thread) ----
    def _load(self, name: str, path: str, version: str | None) -> None:
        from peft import PeftModel

        if not (Path(path) / "adapter_config.json").exists():
            raise EngineError(400, f"no LoRA adapter at '{path}' (adapter_config.json missing)", param="path")
        internal = self.adapters.next_name(name)
        if not hasattr(self.model, "peft_config"):
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=internal).eval()
        else:
            self.model.load_adapter(path, adapter_name=internal)
        old = self.adapters.set(name, internal, version)
        if old:  # no batch is running now: the old weights can go
            self.model.delete_adapter(old)

    def _unload(self, name: str) -> None:
        self.model.delete_adapter(self.adapters.pop(name))

    async def _control(self, fn) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._submit(_Control(fn, loop, future))
        await future

    async def start(self, adapters: dict[str, str]) -> None:
        """Load the adapters configured for this app that the engine does not serve yet."""
        for name, path in adapters.items():
            if name not in self.adapters:
                await self.load_adapter(name, path)

    async def load_adapter(self, name: str, path: str, version: str | None = None) -> None:
        await self._control(lambda: self._load(name, path, version))

    async def unload_adapter(self, name: str) -> None:
        await self._control(lambda: self._unload(name))

    def models(self) -> list[dict]:
        return self.adapters.cards(self.base_name, self.base_name)

    def has_model(self, name: str) -> bool:
        return name == self.base_name or name in self.adapters

    # ---- generation ----
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True,
                                                  **request.chat_template_kwargs)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _checked_prompt(self, request: GenerationRequest) -> list[int]:
        """The request's prompt, or a 400 that concerns this request alone."""
        try:
            with self._encode_lock:
                ids = self.prompt_ids(request)
        except Exception as e:  # noqa: BLE001 - the template raises whatever jinja or its author chose
            raise EngineError(400, f"the chat template cannot render these messages: {e}", param="messages") from e
        if len(ids) + request.max_tokens > self.context_length:
            raise EngineError(400, f"prompt ({len(ids)} tokens) + max_tokens ({request.max_tokens}) exceeds the "
                                   f"model's context of {self.context_length} tokens", param="messages")
        return ids

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if not self.has_model(request.model):
            raise EngineError(404, f"The model `{request.model}` does not exist.", param="model")
        prompt = await asyncio.to_thread(self._checked_prompt, request)
        job = _Job(request, prompt, asyncio.get_running_loop(), asyncio.Queue())
        self._submit(job)
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

    def _submit(self, item) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._worker, name="medloop-engine", daemon=True)
            self._thread.start()
        self._queue.put(item)

    def _worker(self) -> None:
        while True:
            item = self._held.pop(0) if self._held else self._queue.get()
            if item is None:  # close()
                return
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
                if isinstance(nxt, _Job):
                    batch.append(nxt)
                else:  # an adapter change (or close) waits only for the batch in hand
                    self._held.append(nxt)
                    break
            self._generate(batch)

    def _run_control(self, item: _Control) -> None:
        try:
            item.fn()
            item.loop.call_soon_threadsafe(_set_result, item.future, None)
        except Exception as e:  # noqa: BLE001 - reported to the caller, the worker lives on
            item.loop.call_soon_threadsafe(_set_exception, item.future, e)

    def _generate(self, batch: list[_Job]) -> None:
        rows = []
        for job in batch:
            if job.cancelled:
                continue
            if not self.has_model(job.request.model):  # unloaded while queued
                job.emit(EngineError(404, f"The model `{job.request.model}` does not exist.", param="model"))
                continue
            job.adapter = self.adapters.internal(job.request.model) or BASE
            rows.append(job)
        if not rows:
            return
        try:
            self._run_batch(rows)
        except Exception as e:  # noqa: BLE001 - one bad batch must not kill the engine
            for job in rows:
                job.emit(EngineError(500, f"generation failed: {type(e).__name__}: {e}"))

    def _run_batch(self, rows: list[_Job]) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        width = max(len(j.prompt_ids) for j in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in rows],
                                 device=self.device)
        attention = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in rows],
                                 device=self.device)
        streamer = _BatchStreamer(self, rows)
        extra, adapter_scope = {}, contextlib.nullcontext()
        if hasattr(self.model, "peft_config"):
            used = {j.adapter for j in rows}
            if len(used) > 1:  # rows on different adapters: peft's mixed-batch forward
                extra["adapter_names"] = [j.adapter for j in rows]
            elif BASE in used:  # the plain forward is faster than a mixed batch of one
                adapter_scope = self.model.disable_adapter()
            else:
                self.model.set_adapter(used.pop())
        with torch.inference_mode(), adapter_scope:
            self.model.generate(
                input_ids=input_ids, attention_mask=attention, do_sample=False,
                max_new_tokens=max(j.request.max_tokens for j in rows),
                logits_processor=LogitsProcessorList([_RowSampler(rows, self.device)]),
                streamer=streamer, stopping_criteria=StoppingCriteriaList([_RowsDone(streamer)]), **extra,
            )
        streamer.end()

    async def close(self) -> None:
        """Stop the worker once the work in hand is done; a later request starts a new one."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 30)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
