"""Decoding in the local engine, one row at a time: a request being answered (`Job`, `Row`), its next-token choice
(`Sampler`, with vLLM's logits processing and log-probabilities), its text so far (`Detokenizer`), and the running
rows with their KV cache (`Batch`). Each row owns its sampler and text, so nothing a request asks for reaches its
neighbours in the batch."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from medloop.serving.engine import Delta, EngineError, GenerationRequest
from medloop.serving.reasoning import partial_suffix

GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS: a lower temperature is greedy decoding (1e-300 is a valid body)


class Sampler:
    """One request's next-token choice, as vLLM makes it: the logits processed in vLLM's order (`logit_bias`,
    `min_tokens` holding back the end tokens, `repetition_penalty` over the prompt and the answer, `frequency_penalty`
    and `presence_penalty` over the answer), then greedy below a temperature of 1e-5, otherwise a draw from the
    tempered distribution restricted to the top-p nucleus, which always keeps the likeliest token. Log-probabilities
    are the model's own (vLLM's default `raw_logprobs`): before any processing.

    The draw is Gumbel-max, argmax(logits / T + Gumbel noise) over the nucleus, with the request's own generator
    (seeded by its `seed`): it samples exactly from the tempered distribution and, unlike an inverse-CDF draw
    over a cumulative sum, does not move when batching perturbs the logits in their last bits, so the same
    request gives the same answer whoever shares its batch. The nucleus is looked for among the `NUCLEUS_K`
    likeliest tokens first (a real model's nucleus is small) and by a full sort only where it is larger."""

    NUCLEUS_K = 1024

    def __init__(self, request: GenerationRequest, device: str, prompt_ids: list[int] = (),
                 eos_ids: set[int] = frozenset()):
        self.greedy = request.temperature < GREEDY_BELOW
        self.temperature, self.top_p = request.temperature, request.top_p
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        self.generator = None if self.greedy else torch.Generator(device=device).manual_seed(seed % 2**64)
        options = request.options
        bias = options.get("logit_bias") or {}
        # built once: the bias and the held-back end tokens apply at every step of the answer
        self.bias_ids = torch.tensor([int(t) for t in bias], dtype=torch.long, device=device)
        self.bias_values = torch.tensor([float(b) for b in bias.values()], device=device)
        self.stop_ids = set(options.get("stop_token_ids") or ())
        self.min_tokens = options.get("min_tokens", 0)
        self.ends = torch.tensor(sorted(set(eos_ids) | self.stop_ids), dtype=torch.long, device=device)
        self.presence = options.get("presence_penalty", 0.0)
        self.frequency = options.get("frequency_penalty", 0.0)
        self.repetition = options.get("repetition_penalty", 1.0)
        self.top_logprobs = options.get("top_logprobs", 0) if options.get("logprobs") else None
        self.prompt_ids = list(prompt_ids)
        self.chosen = 0  # tokens chosen so far (min_tokens)
        self.counts: torch.Tensor | None = None  # how often each token occurs in the answer (penalties)
        self.seen: torch.Tensor | None = None  # tokens of the prompt or the answer (repetition penalty)

    def __call__(self, logits: torch.Tensor) -> int:
        token = self._choose(self.process(logits))
        self.chosen += 1
        if self.counts is not None:
            self.counts[token] += 1
            self.seen[token] = True
        return token

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits after the request's bias, minimum length and penalties (none asked: unchanged)."""
        if len(self.bias_ids):
            logits = logits.index_add(0, self.bias_ids, self.bias_values)
        if self.chosen < self.min_tokens and len(self.ends):
            logits = logits.index_fill(0, self.ends, float("-inf"))
        if self.presence or self.frequency or self.repetition != 1.0:
            if self.counts is None:
                self.counts = torch.zeros(logits.shape[-1], device=logits.device)
                self.seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
                self.seen[torch.tensor(self.prompt_ids, dtype=torch.long, device=logits.device)] = True
            if self.repetition != 1.0:
                logits = torch.where(self.seen, torch.where(logits > 0, logits / self.repetition,
                                                            logits * self.repetition), logits)
            logits = logits - self.frequency * self.counts - self.presence * (self.counts > 0)
        return logits

    def _choose(self, logits: torch.Tensor) -> int:
        if self.greedy:
            return int(logits.argmax())
        logits = logits / self.temperature
        # Noise for every token of the vocabulary, in vocabulary order: which token gets which noise never
        # depends on how near-equal logits happen to sort, and each step uses the generator the same way.
        uniform = torch.rand(logits.shape, generator=self.generator, device=logits.device).clamp_(min=1e-20)
        perturbed = logits - (-uniform.log()).log()
        if self.top_p >= 1.0:
            return int(perturbed.argmax())
        log_norm = logits.logsumexp(-1)
        k = min(self.NUCLEUS_K, logits.shape[-1])
        top, ids = logits.topk(k)
        if k < logits.shape[-1] and float((top - log_norm).exp().sum()) < self.top_p:  # a larger nucleus
            top, ids = logits.sort(descending=True)
        probs = (top - log_norm).exp()
        inside = max(1, int((probs.cumsum(-1) - probs <= self.top_p).sum()))  # smallest set reaching top_p
        nucleus = ids[:inside]
        return int(nucleus[perturbed[nucleus].argmax()])

    def logprobs(self, logits: torch.Tensor, token: int, decode) -> dict | None:
        """The chosen token's log-probability and the `top_logprobs` likeliest, in OpenAI's shape (None unless the
        request asked)."""
        if self.top_logprobs is None:
            return None
        logprobs = logits.log_softmax(-1)

        def entry(t: int) -> dict:
            text = decode([t])
            return {"token": text, "logprob": float(logprobs[t]), "bytes": list(text.encode("utf-8"))}

        top = logprobs.topk(self.top_logprobs).indices.tolist() if self.top_logprobs else []
        return {**entry(token), "top_logprobs": [entry(t) for t in top]}


class Detokenizer:
    """One answer's text, decoded incrementally as vLLM does it: a short window of tokens, not the whole answer
    again, waiting while the window ends in half a multi-byte character."""

    def __init__(self, tokenizer):
        self.decode = tokenizer.decode
        self.tokens: list[int] = []
        self.text = ""
        self.prefix = self.read = 0

    def add(self, token: int | None = None, final: bool = False) -> str:
        """The text so far. `final` (the answer was cut at max_tokens): a character whose bytes were cut off is
        dropped, never sent as U+FFFD."""
        if token is not None:
            self.tokens.append(token)
        before = self.decode(self.tokens[self.prefix:self.read], skip_special_tokens=True)
        after = self.decode(self.tokens[self.prefix:], skip_special_tokens=True)
        if final:
            after = after.rstrip("\ufffd")
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before):]
            self.prefix, self.read = self.read, len(self.tokens)
        return self.text


@dataclass
class Job:
    request: GenerationRequest
    prompt_ids: list[int]  # rendered and checked before the job joins a batch
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: bool = False

    def emit(self, item: Delta | Exception) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


@dataclass
class Row:
    """A request being decoded: its sampler, its output so far, and where it stands in the batch."""

    job: Job
    adapter: str
    sampler: Sampler
    text: Detokenizer
    position: int  # the position id of the next token fed
    last: int = -1  # the token fed at the next step
    sent: int = 0  # characters already emitted
    checked: int = 0  # characters already searched for stop strings
    done: bool = False
    scored: list[dict] = field(default_factory=list)  # log-probabilities of tokens whose text is not sent yet

    @property
    def request(self) -> GenerationRequest:
        return self.job.request

    def accept(self, token: int, eos: set[int], scored: dict | None = None) -> None:
        """Route one new token: end on eos, a stop token or string, or max_tokens; hold back a possible stop's
        start."""
        self.last = token
        if scored:
            self.scored.append(scored)
        if (token in eos and not self.request.ignore_eos) or token in self.sampler.stop_ids:
            return self._finish("stop", counted=1)
        text = self.text.add(token)
        stops = self.request.stop
        if stops:
            # Only text that arrived since the last search can complete a stop string: the search never
            # rereads the whole answer (16 long stops on a long answer would cost seconds per token).
            start = max(0, self.checked - max(map(len, stops)) + 1)
            found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
            self.checked = len(text)
            if found:
                self._emit(text[:min(found)])
                return self._finish("stop", counted=0)
        if len(self.text.tokens) >= self.request.max_tokens:
            self._emit(self.text.add(final=True))
            return self._finish("length", counted=0)
        hold = max((partial_suffix(text, s) for s in stops), default=0)
        self._emit(text[:len(text) - hold])

    def _emit(self, text: str) -> None:
        if len(text) > self.sent:
            self.job.emit(Delta(text=text[self.sent:], logprobs=self.scored))
            self.sent, self.scored = len(text), []

    def _finish(self, reason: str, counted: int) -> None:
        self.done = True
        self.job.emit(Delta(finish_reason=reason, prompt_tokens=len(self.job.prompt_ids),
                            completion_tokens=len(self.text.tokens) + counted, logprobs=self.scored))

    def fail(self, error: EngineError) -> None:
        self.done = True
        self.job.emit(error)


class Batch:
    """The running rows and their KV cache, left-padded to one width (`mask` marks real positions)."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Merge newly prefilled rows in: both caches are left-padded to the wider of the two."""
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)])
        self.mask = torch.cat([F.pad(m, (width - m.shape[1], 0)) for m in (self.mask, mask)])
        self.rows += rows

    def drop_done(self) -> None:
        """Rows that finished or whose client left leave; padding no remaining row needs goes with them."""
        keep = [i for i, r in enumerate(self.rows) if not (r.done or r.job.cancelled)]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask[index]
        used = self.mask.any(0)
        first = int(used.int().argmax())  # the first position any remaining row needs
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, 0, width - t.shape[-2], 0))
