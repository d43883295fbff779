"""The CPU (or single-GPU) engine: transformers + peft, continuous batching, several LoRA adapters at once.

One worker thread owns the model and runs a decode loop. Between two steps, requests that arrived join the
running batch (their prompts are prefilled and their KV-cache rows merged in, left-padded) and rows that
finished, or whose client left, drop out: a short request never waits for a long one's whole answer, and a
client that hangs up stops costing at the next step. Each row carries its own temperature, top-p and random
generator (`Sampler`) and names its own adapter (peft's mixed-adapter batches), so concurrent requests never
see each other's adapter or randomness. Each request is rendered and checked (chat template, context length)
on its own before it joins; a step that raises is retried row by row, so only the row that caused it fails.
Adapter loads run between steps too: a request in flight finishes on the adapter it started with (the old
weights go once its last row is done), the next one sees the new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from medloop import models
from medloop.serving.adapters import check_adapter
from medloop.serving.decoding import Batch, Detokenizer, Job, Row, Sampler
from medloop.serving.engine import (
    OPTIONAL_FIELDS,
    Delta,
    EngineError,
    GenerationRequest,
    ServedAdapters,
    default_served_name,
)
from medloop.serving.special_tokens import prompt_ids

log = logging.getLogger("medloop.serving")
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class _Control:
    fn: object
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class LocalEngine:
    # of OPTIONAL_FIELDS, what its sampler does (`decoding.Sampler`); JSON output and tools need a grammar and a
    # tool parser it does not have, and it answers one choice per request
    name = "local"
    serves = frozenset(OPTIONAL_FIELDS) - {"response_format", "tools", "tool_choice", "parallel_tool_calls", "n"}

    def __init__(self, base_model: str, *, served_name: str = "", adapters: dict[str, str] | None = None,
                 max_batch_size: int = 16, device: str | None = None, max_lora_rank: int = 64):
        self.base_model = base_model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = models.load_tokenizer(base_model, padding_side="left")
        self.model = self._load_base()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        self.context_length = getattr(self.model.config, "max_position_embeddings", None) or 32768
        self.max_batch_size = max_batch_size
        self.max_lora_rank = max_lora_rank
        self.adapters = ServedAdapters(served_name or default_served_name(base_model))
        self.folders: dict[str, str] = {}  # internal adapter name -> its folder (to rebuild after a fault)
        self.broken: str | None = None  # why the engine cannot serve (health), None when it can
        self._special = [t for t in self.tokenizer.all_special_tokens if t]
        self._encode_lock = threading.Lock()  # a fast tokenizer must not encode on two threads at once
        self._queue: queue.Queue = queue.Queue()
        self._pending: list[Job] = []
        self._batch = Batch()
        self._closing = False
        self._thread: threading.Thread | None = None
        # how requests share the work (tests, benches): prefill groups, rows, decode steps, rows retried alone
        self.stats = {"batches": 0, "rows": 0, "steps": 0, "isolated": 0}
        for name, path in (adapters or {}).items():
            self._load(name, path, None)

    def _load_base(self):
        model = models.load_base(self.base_model, device=self.device)
        if any(t != "full_attention" for t in getattr(model.config, "layer_types", None) or []):
            raise ValueError(f"{self.base_model}: sliding-window attention is not supported by the local engine; "
                             "serve this model with --engine vllm")
        return model

    # ---- adapters (run on the worker thread, between decode steps) ----
    def _load(self, name: str, path: str, version: str | None) -> None:
        """Check the adapter against this base model before it touches the live model; a load that still fails
        is undone, so the base and every served adapter answer as before."""
        from peft import PeftModel

        check_adapter(Path(path), self.model, self.max_lora_rank)
        internal = self.adapters.next_name(name)
        wrapped = hasattr(self.model, "disable_adapter")
        try:
            if not wrapped:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=internal).eval()
            else:
                self.model.load_adapter(path, adapter_name=internal)
        except Exception as e:
            self._undo_load(internal, wrapped)
            raise EngineError("invalid", f"the adapter could not be loaded: {type(e).__name__}", param="path") from e
        self.folders[internal] = path
        self.adapters.set(name, internal, version)
        self._free_retired()

    def _undo_load(self, internal: str, wrapped: bool) -> None:
        """Remove what a failed load left behind. The first adapter's load wraps the base model and injects LoRA
        layers into it in place: a failure there leaves a model that is neither, so it is reloaded from disk."""
        if not wrapped:
            return self._rebuild()
        try:
            if internal in self.model.peft_config:
                self.model.delete_adapter(internal)
        except Exception:  # noqa: BLE001 - the model is in an unknown state: rebuild it
            self._rebuild()

    def _rebuild(self) -> None:
        """The base model from disk, with every served adapter again."""
        from peft import PeftModel

        try:
            self.model = self._load_base()
            for internal, _ in sorted(self.adapters.table.values()):
                folder = self.folders[internal]
                if not hasattr(self.model, "peft_config"):
                    self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=internal).eval()
                else:
                    self.model.load_adapter(folder, adapter_name=internal)
            self.broken = None
        except Exception as e:  # noqa: BLE001 - said by /health, refused by every request
            self.broken = f"the model could not be restored after a failed adapter load: {type(e).__name__}: {e}"

    def _unload(self, name: str) -> None:
        self.adapters.pop(name)
        self._free_retired()

    def _free_retired(self) -> None:
        for internal in self.adapters.retire_idle({r.adapter for r in self._batch.rows}):
            self.folders.pop(internal, None)
            self.model.delete_adapter(internal)

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

    def health(self) -> str | None:
        """None when the engine can serve; otherwise why not."""
        if self.broken:
            return self.broken
        if self._thread is not None and not self._thread.is_alive() and not self._closing:
            return "the engine's worker thread died"
        return None

    # ---- prompts ----
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The chat template's rendering of the messages, tokenised; special tokens a client typed stay text."""
        return prompt_ids(self.tokenizer, request.messages, self._special, **request.chat_template_kwargs)

    def _checked_prompt(self, request: GenerationRequest) -> list[int]:
        """The request's prompt, or a 400 that concerns this request alone."""
        try:
            with self._encode_lock:
                ids = self.prompt_ids(request)
        except Exception as e:  # noqa: BLE001 - the template raises whatever jinja or its author chose
            raise EngineError("invalid", f"the chat template cannot render these messages: {e}",
                              param="messages") from e
        if len(ids) + request.max_tokens > self.context_length:
            raise EngineError("invalid", f"prompt ({len(ids)} tokens) + max_tokens ({request.max_tokens}) exceeds the "
                                   f"model's context of {self.context_length} tokens", param="messages")
        return ids

    # ---- generation ----
    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.adapters.resolve(request.model)
        if self.broken:
            raise EngineError("unavailable", f"engine unavailable: {self.broken}")
        prompt = await asyncio.to_thread(self._checked_prompt, request)
        job = Job(request, prompt, asyncio.get_running_loop(), asyncio.Queue())
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
            job.cancelled = True  # client gone: the row leaves at the next step

    def _submit(self, item) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closing = False
            self._thread = threading.Thread(target=self._worker, name="medloop-engine", daemon=True)
            self._thread.start()
        self._queue.put(item)

    def _worker(self) -> None:
        while not self._closing:
            try:
                self._work()
            except Exception as e:  # noqa: BLE001 - the worker must outlive any one failure
                log.exception("engine step failed")
                self._abort(EngineError("failed", f"generation failed: {type(e).__name__}: {e}"))
        self._abort(EngineError("unavailable", "the server is shutting down"))

    def _work(self) -> None:
        """Take what arrived (waiting when there is nothing to do), let new requests join, decode one step."""
        idle = not self._batch and not self._pending
        try:
            self._take(self._queue.get() if idle else self._queue.get_nowait())
            if idle:
                time.sleep(0.002)  # let requests that arrive together share one prefill
            while True:  # everything waiting: controls run now, jobs join below
                self._take(self._queue.get_nowait())
        except queue.Empty:
            pass
        if self._closing:
            return
        self._admit()
        if self._batch:
            self._step()
        self._free_retired()

    def _take(self, item) -> None:
        if item is None:  # close()
            self._closing = True
        elif isinstance(item, _Control):
            try:
                item.fn()
                item.loop.call_soon_threadsafe(_set_result, item.future, None)
            except Exception as e:  # noqa: BLE001 - reported to the caller, the worker lives on
                item.loop.call_soon_threadsafe(_set_exception, item.future, e)
        else:
            self._pending.append(item)

    def _admit(self) -> None:
        room = self.max_batch_size - len(self._batch)
        rows = []
        while self._pending and len(rows) < room:
            job = self._pending.pop(0)
            if job.cancelled:
                continue
            try:
                adapter = self.adapters.resolve(job.request.model) or BASE  # unloaded while queued: a 404
            except EngineError as e:
                job.emit(e)
                continue
            try:
                sampler = Sampler(job.request, self.device, job.prompt_ids, self.eos_ids)
            except Exception as e:  # noqa: BLE001 - these parameters, not the server
                job.emit(EngineError("invalid", f"sampling parameters not usable: {type(e).__name__}: {e}"))
                continue
            rows.append(Row(job, adapter, sampler, Detokenizer(self.tokenizer), len(job.prompt_ids)))
        if rows:
            self.stats["batches"] += 1
            self.stats["rows"] += len(rows)
            self._prefill(rows, [r.job.prompt_ids for r in rows])

    def _prefill(self, rows: list[Row], sequences: list[list[int]]) -> None:
        """Run the rows' sequences, choose each row's next token, and add the rows to the running batch. When the
        forward raises, each row is tried alone: only a row that fails alone fails."""
        ids, mask = models.left_pad(sequences, self.tokenizer.pad_token_id, self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        try:
            logits, cache = self._forward(ids, mask, positions, None, [r.adapter for r in rows])
        except Exception as e:  # noqa: BLE001 - isolate the row that causes it
            if len(rows) == 1:
                return rows[0].fail(EngineError("failed", f"generation failed: {type(e).__name__}: {e}"))
            self.stats["isolated"] += len(rows)
            for row, sequence in zip(rows, sequences, strict=True):
                self._prefill([row], [sequence])
            return
        for row, sequence in zip(rows, sequences, strict=True):
            row.position = len(sequence)
        self._batch.add(rows, cache, mask)
        self._choose(rows, logits)
        self._batch.drop_done()

    def _step(self) -> None:
        """One token for every running row."""
        batch = self._batch
        self.stats["steps"] += 1
        ids = torch.tensor([[r.last] for r in batch.rows], device=self.device)
        mask = F.pad(batch.mask, (0, 1), value=1)
        positions = torch.tensor([[r.position] for r in batch.rows], device=self.device)
        try:
            logits, _ = self._forward(ids, mask, positions, batch.cache, [r.adapter for r in batch.rows])
        except Exception:  # noqa: BLE001 - the cache may be half-updated: rebuild each row alone
            rows = batch.rows
            self._batch = Batch()
            self.stats["isolated"] += len(rows)
            for row in rows:
                if not row.job.cancelled:
                    self._prefill([row], [row.job.prompt_ids + row.text.tokens])
            return
        batch.mask = mask
        for row in batch.rows:
            row.position += 1
        self._choose(batch.rows, logits)
        batch.drop_done()

    def _choose(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Each row's next token by its own sampler. A row whose scores are not numbers, or whose parameters
        its sampler cannot honour, fails alone."""
        bad = logits.isnan().any(-1) | logits.isposinf().any(-1) | logits.isneginf().all(-1)
        for row, scores, broken in zip(rows, logits, bad.tolist(), strict=True):
            if row.job.cancelled or row.done:
                continue
            if broken:
                row.fail(EngineError("failed", "the model produced scores that are not numbers for this request"))
                continue
            try:
                token = row.sampler(scores)
                scored = row.sampler.logprobs(scores, token, self.tokenizer.decode)
            except Exception as e:  # noqa: BLE001 - these parameters (a token id past the vocabulary), not the server
                row.fail(EngineError("invalid", f"sampling failed for these parameters: {type(e).__name__}: {e}"))
                continue
            row.accept(token, self.eos_ids, scored)

    def _forward(self, ids, mask, positions, cache, adapters: list[str]):
        """The model's next-token scores for each row (float32), and the cache."""
        extra, scope = {}, contextlib.nullcontext()
        if hasattr(self.model, "peft_config"):
            used = set(adapters)
            if len(used) > 1:  # rows on different adapters: peft's mixed-batch forward
                extra["adapter_names"] = adapters
            elif BASE in used:  # the plain forward is faster than a mixed batch of one
                scope = self.model.disable_adapter()
            else:
                self.model.set_adapter(used.pop())
        with torch.inference_mode(), scope:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                             use_cache=True, logits_to_keep=1, **extra)
        cache = out.cache
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise ValueError("the local engine batches plain (dynamic) KV caches only")
        return out.logits[:, -1].float(), cache

    def _abort(self, error: EngineError) -> None:
        for row in self._batch.rows:
            row.fail(error)
        for job in self._pending:
            job.emit(error)
        self._batch, self._pending = Batch(), []

    async def close(self) -> None:
        """Stop the worker at its next step; requests still running get a 503."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 30)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
