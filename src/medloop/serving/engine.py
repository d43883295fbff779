"""What the gateway needs of an engine, and the types both engines share (no torch here: the vLLM path
never imports it).

Served names: clients ask for `medical`; the engine serves it under an internal, versioned name
(`medical@3`). A hot swap loads the new weights under the next name and repoints `medical`, so a request
in flight finishes on the adapter it started with. `ServedAdapters` keeps that table for both engines.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medloop.models import DEFAULT_CHAT_MODEL
from medloop.serving.errors import EngineError, model_not_found

# Chat fields beyond the common ones, served by some engines (`Engine.serves`): a request that sets one its engine
# does not serve is refused by name, never ignored. Each reaches the engine in OpenAI's (and vLLM's) wire form.
OPTIONAL_FIELDS = ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "logit_bias",
                   "stop_token_ids", "logprobs", "top_logprobs", "response_format", "tools", "tool_choice",
                   "parallel_tool_calls", "n")


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
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says (benchmarks)
    options: dict[str, Any] = field(default_factory=dict)  # the OPTIONAL_FIELDS a client set, as sent


@dataclass
class Delta:
    """A piece of output of one choice (`index`: several with `n`). A choice's last piece has its finish_reason;
    the stream's last piece carries the token counts of the whole request."""

    text: str = ""
    index: int = 0
    reasoning: str = ""  # only engines whose upstream already splits reasoning fill this
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # engines whose upstream parses tool calls and scores tokens (vLLM) fill these, in OpenAI's stream shapes
    tool_calls: list[dict] = field(default_factory=list)  # `choices[].delta.tool_calls` items
    logprobs: list[dict] = field(default_factory=list)  # `choices[].logprobs.content` items


class Engine(Protocol):
    adapters: ServedAdapters  # what it serves: the base model and the adapters by served name
    name: str  # what `serving.engine` calls it
    serves: frozenset[str]  # which of OPTIONAL_FIELDS it honours

    async def start(self, adapters: dict[str, str]) -> None: ...
    async def close(self) -> None: ...
    def health(self) -> str | None: ...  # None while it can serve; else why not (`/health` answers 503 with it)
    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]: ...
    async def load_adapter(self, name: str, path: str, version: str | None = None) -> None: ...
    async def unload_adapter(self, name: str) -> None: ...


def default_served_name(base_model: str) -> str:
    """What clients ask for when nothing is configured: the embedded model's name, else the model's folder or file."""
    if base_model == DEFAULT_CHAT_MODEL:
        return "smollm2-135m-instruct"
    return Path(base_model.rstrip("/")).name or base_model


_SERIAL = re.compile(r"@(\d+)$")


class ServedAdapters:
    """The models an engine serves: the base model under `base_name` (`base_root`: the name its backend knows it
    by), and each adapter as served name -> (internal versioned name, registry version)."""

    def __init__(self, base_name: str = "", base_root: str = "") -> None:
        self.base_name, self.base_root = base_name, base_root or base_name
        self.table: dict[str, tuple[str, str | None]] = {}
        self.retired: set[str] = set()  # internal names replaced or unloaded, waiting for their last request
        self.serial = 0

    def next_name(self, name: str) -> str:
        self.serial += 1
        return f"{name}@{self.serial}"

    def skip_past(self, internal_names: list[str]) -> None:
        """Never hand out a name another process (an earlier gateway) already used upstream."""
        for n in internal_names:
            if m := _SERIAL.search(n):
                self.serial = max(self.serial, int(m.group(1)))

    def set(self, name: str, internal: str, version: str | None) -> None:
        """Point `name` at `internal`; what it pointed at before retires (`retire_idle`)."""
        old = self.table.get(name)
        self.table[name] = (internal, version)
        if old and old[0] != internal:
            self.retired.add(old[0])

    def pop(self, name: str) -> None:
        """Stop serving `name`; its weights retire (`retire_idle`)."""
        if name not in self.table:
            raise EngineError("not_found", f"adapter '{name}' is not loaded", param="name")
        self.retired.add(self.table.pop(name)[0])

    def retire_idle(self, in_use: set[str]) -> list[str]:
        """The retired internal names no request uses any more (`in_use`: the engine's own count), forgotten here:
        the engine frees their weights. A request in flight finishes on the weights it started with."""
        idle = sorted(self.retired - in_use)
        self.retired -= set(idle)
        return idle

    def resolve(self, name: str) -> str | None:
        """The internal name serving `name` (None: the base model). The one check of a requested model: a name
        nobody serves is the 404 clients expect."""
        if not self.has_model(name):
            raise model_not_found(name)
        return self.internal(name)

    def internal(self, name: str) -> str | None:
        """The internal name serving `name`, or None for the base model (or an unknown name)."""
        entry = self.table.get(name)
        return entry[0] if entry else None

    def __contains__(self, name: str) -> bool:
        return name in self.table

    def has_model(self, name: str) -> bool:
        return name == self.base_name or name in self.table

    def models(self) -> list[dict]:
        """`/v1/models` cards: the base model, then each adapter with the registry version it serves."""
        return [{"id": self.base_name, "root": self.base_root}] + [
            {"id": name, "root": internal, "parent": self.base_name, "version": version}
            for name, (internal, version) in sorted(self.table.items())
        ]
