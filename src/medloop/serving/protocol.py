"""OpenAI chat-completions wire types (the subset medloop serves), plus medloop's extras."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from medloop.retrieval.staleness import StaleClaim
from medloop.serving.engine import GenerationRequest

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
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[dict[str, Any]] | None = ""
    reasoning_content: Text | None = None

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


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

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
    stream: bool = False
    stream_options: StreamOptions | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    medloop: MedloopOptions | None = None

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
            ignore_eos=self.ignore_eos,
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
