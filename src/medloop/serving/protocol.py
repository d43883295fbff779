"""OpenAI chat-completions wire types (the subset medloop serves), plus medloop's extras."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from medloop.retrieval.staleness import StaleClaim
from medloop.serving.engine import PENALTIES, GenerationRequest

INT64 = 2**63  # OpenAI's and vLLM's seed is a signed 64-bit integer
MAX_STOP_CHARS = 256  # a stop string is searched for after every token: its length is bounded


def _encodable(text: str) -> str:
    """JSON can carry a lone surrogate ("\\ud800"); no tokenizer or UTF-8 response can: a 400, here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"invalid Unicode (a lone surrogate at character {e.start})") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
StopString = Annotated[Text, Field(max_length=MAX_STOP_CHARS)]


class ChatMessage(BaseModel):
    # A message the SDK hands back (`message.model_dump()`) carries null fields (refusal, audio, tool_calls...):
    # they pass. One that carries something medloop would not use is a 400 (`_nothing_ignored`).
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[dict[str, Any]] | None = ""
    # an earlier answer's thinking, sent back: Qwen3's template leaves it out of the prompt, as vLLM's does
    reasoning_content: Text | None = None
    reasoning: Text | None = None

    @model_validator(mode="after")
    def _nothing_ignored(self):
        for name, value in (self.model_extra or {}).items():
            if value not in (None, [], {}, ""):
                raise ValueError(f"message field '{name}' is not served by medloop yet: leave it out")
        return self

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content):
        """OpenAI content parts: medloop serves text; anything else is refused here, not deep in a batch."""
        if isinstance(content, list):
            for i, part in enumerate(content):
                if part.get("type") != "text":
                    raise ValueError(f"content part {i}: only parts of type 'text' are supported")
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"content part {i}: 'text' must be a string")
                _encodable(part["text"])
        return content

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p["text"] for p in self.content)
        return self.content or ""


class MedloopOptions(BaseModel):
    """Per-request control, sent as an extra body field: {"medloop": {"rag": false, "k": 3}}."""

    model_config = ConfigDict(extra="forbid")

    rag: bool = True
    k: int | None = Field(None, ge=1, le=20)
    append_evidence: bool = True


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatTemplateKwargs(BaseModel):
    """The chat-template switches a client may set. Anything else (e.g. `tokenize`, `add_generation_prompt`)
    would change how the server renders prompts for the whole batch, so it is a 400."""

    model_config = ConfigDict(extra="forbid")

    enable_thinking: bool | None = None


# Chat fields of OpenAI's API and vLLM's that medloop does not serve yet, each with the values that ask for nothing
# (what a client sends to mean "off"). Any other value is a 400 that names the field: a client that asked for JSON,
# tools or log-probabilities and silently got prose would be worse off than one that was told.
NOT_SERVED: dict[str, tuple] = {
    "response_format": (None, {"type": "text"}), "tools": (None, []), "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, True, False), "functions": (None, []), "function_call": (None, "none"),
    "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
    "stop_token_ids": (None, []), "reasoning_effort": (None,), "verbosity": (None,),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,), "web_search_options": (None,),
    "moderation": (None,), "prompt_cache_options": (None,), "prompt_cache_retention": (None,),
}
# Fields that label a request for the caller's own bookkeeping and change nothing in the answer: accepted, unused.
ANNOTATIONS = ("user", "metadata", "safety_identifier", "prompt_cache_key", "store", "service_tier")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a field medloop does not know is a 400, never ignored

    model: Text
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: StopString | list[StopString] | None = Field(None, max_length=16)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    n: int = Field(1, ge=1, le=1)
    ignore_eos: bool = False  # vLLM's extension, for fixed-length benchmarks
    # PENALTIES: served where the engine honours them (`Engine.sampling`), refused by name elsewhere
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)  # vLLM's extension: 1 is off
    min_tokens: int = Field(0, ge=0)  # vLLM's extension
    stream: bool = False
    stream_options: StreamOptions | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    medloop: MedloopOptions | None = None
    # not served yet (NOT_SERVED) and annotations (ANNOTATIONS): declared so that each is checked by name
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    stop_token_ids: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    moderation: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None
    user: Text | None = None
    metadata: dict[str, Text] | None = None
    safety_identifier: Text | None = None
    prompt_cache_key: Text | None = None
    store: bool | None = None
    service_tier: Text | None = None

    @field_validator(*NOT_SERVED)
    @classmethod
    def _not_served(cls, value, info):
        if value not in NOT_SERVED[info.field_name]:
            raise ValueError(f"'{info.field_name}' is not served by medloop yet: leave it out (or send "
                             f"{NOT_SERVED[info.field_name][-1]!r})")
        return value

    def sampling(self) -> dict[str, float]:
        """The PENALTIES this request sets to other than their off value."""
        off = {name: type(self).model_fields[name].default for name in PENALTIES}
        return {name: getattr(self, name) for name in PENALTIES if getattr(self, name) != off[name]}

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    @property
    def max_new_tokens(self) -> int:
        """What the client asked for (`max_completion_tokens`, or the older `max_tokens`), 256 if neither."""
        return self.max_completion_tokens or self.max_tokens or 256

    def engine_messages(self) -> list[dict]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def to_generation_request(self, messages: list[dict] | None = None) -> GenerationRequest:
        """The engine's view of this request; `messages` replaces the client's (e.g. grounded with evidence)."""
        kwargs = self.chat_template_kwargs.model_dump(exclude_none=True) if self.chat_template_kwargs else {}
        return GenerationRequest(
            model=self.model, messages=messages if messages is not None else self.engine_messages(),
            max_tokens=self.max_new_tokens, temperature=self.temperature,
            top_p=self.top_p, stop=self.stop_list(), seed=self.seed, chat_template_kwargs=kwargs,
            ignore_eos=self.ignore_eos, sampling=self.sampling(),
        )


class Response(BaseModel):
    """What medloop sends: built by medloop, so an unknown field is a bug (it would be dropped silently)."""

    model_config = ConfigDict(extra="forbid")


class Usage(Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Evidence(Response):
    index: int
    guideline_id: str
    title: str
    issuer: str
    version: str
    published: str
    section: str
    quote: str
    chunk_id: int
    score: float
    relevance: float
    stale_claims: list[StaleClaim] = []


class ResponseMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    # vLLM's field for Qwen3 thinking is `reasoning` (older releases: `reasoning_content`): send both.
    reasoning_content: str | None = None
    reasoning: str | None = None


class Choice(Response):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = "stop"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


class ChatCompletionResponse(Response):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    evidence: list[Evidence] = []


class DeltaMessage(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class StreamChoice(Response):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None


class ChatCompletionChunk(Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = None
    evidence: list[Evidence] | None = None


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "medloop"
    root: str | None = None
    parent: str | None = None
    version: str | None = None  # the adapter version being served under this name


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(Response):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(Response):
    error: ErrorBody


class AdapterRequest(BaseModel):
    """POST /admin/adapters: load (or replace) or unload an adapter under a served name."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["load", "unload"]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
    path: str | None = None
    version: str | None = None


class LoadLoraRequest(BaseModel):
    """vLLM's runtime LoRA endpoints, so that a medloop server can stand in for a vLLM upstream."""

    lora_name: Text = Field(max_length=200)
    lora_path: Text
    load_inplace: bool = False


class UnloadLoraRequest(BaseModel):
    lora_name: Text = Field(max_length=200)
