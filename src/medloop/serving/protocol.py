"""OpenAI chat-completions wire types of a request (the subset medloop serves), plus medloop's extras; what
medloop answers with is in `responses.py`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from medloop.serving.engine import OPTIONAL_FIELDS, GenerationRequest

INT64 = 2**63  # OpenAI's and vLLM's seed is a signed 64-bit integer
MAX_STOP_CHARS = 256  # a stop string is searched for after every token: its length is bounded
MAX_CHOICES = 8  # `n`: each choice costs a whole answer


def _encodable(text: str) -> str:
    """JSON can carry a lone surrogate ("\\ud800"); no tokenizer or UTF-8 response can: a 400, here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"invalid Unicode (a lone surrogate at character {e.start})") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
StopString = Annotated[Text, Field(max_length=MAX_STOP_CHARS)]
FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]  # OpenAI's rule for function names
TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class Response(BaseModel):
    """What medloop sends: built by medloop, so an unknown field is a bug (it would be dropped silently)."""

    model_config = ConfigDict(extra="forbid")


class FunctionCall(Response):
    name: FunctionName
    arguments: Text  # JSON, as the model wrote it


class ToolCall(Response):
    """A tool call an answer makes, and the same call sent back in a later assistant message."""

    id: Text = Field(max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    # A message the SDK hands back (`message.model_dump()`) carries null fields (refusal, audio, tool_calls...):
    # they pass. One that carries something medloop would not use is a 400 (`_nothing_ignored`).
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[dict[str, Any]] | None = ""
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)  # an assistant's earlier calls, sent back
    tool_call_id: Text | None = Field(None, max_length=200)  # a tool message answers this call
    # an earlier answer's thinking, sent back: Qwen3's template leaves it out of the prompt, as vLLM's does
    reasoning_content: Text | None = None
    reasoning: Text | None = None

    @model_validator(mode="after")
    def _nothing_ignored(self):
        for name, value in (self.model_extra or {}).items():
            if value not in (None, [], {}, ""):
                raise ValueError(f"message field '{name}' is not served by medloop yet: leave it out")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message, and only a tool message, carries the tool_call_id it answers")
        return self

    def uses_tools(self) -> bool:
        return self.role == "tool" or bool(self.tool_calls)

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


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: FunctionName
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`{"type": "text"}` (off), `{"type": "json_object"}`, or `{"type": "json_schema", "json_schema": {...}}`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is given with type 'json_schema', and only then")
        return self


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: FunctionName
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


class ChatTemplateKwargs(BaseModel):
    """The chat-template switches a client may set. Anything else (e.g. `tokenize`, `add_generation_prompt`)
    would change how the server renders prompts for the whole batch, so it is a 400."""

    model_config = ConfigDict(extra="forbid")

    enable_thinking: bool | None = None


# Chat fields of OpenAI's API and vLLM's that medloop does not serve yet, each with the values that ask for nothing
# (what a client sends to mean "off"). Any other value is a 400 that names the field: a client that asked for JSON,
# tools or log-probabilities and silently got prose would be worse off than one that was told.
NOT_SERVED: dict[str, tuple] = {
    "functions": (None, []), "function_call": (None, "none"), "reasoning_effort": (None,), "verbosity": (None,),
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
    ignore_eos: bool = False  # vLLM's extension, for fixed-length benchmarks
    # OPTIONAL_FIELDS: served where the engine honours them (`Engine.serves`), refused by name elsewhere; each
    # default is the value that asks for nothing
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)  # vLLM's extension: 1 is off
    min_tokens: int = Field(0, ge=0)  # vLLM's extension
    logit_bias: dict[TokenId, Annotated[float, Field(ge=-100, le=100)]] | None = Field(None, max_length=2048)
    stop_token_ids: list[TokenId] | None = Field(None, max_length=64)  # vLLM's extension
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    medloop: MedloopOptions | None = None
    # not served (NOT_SERVED) and annotations (ANNOTATIONS): declared so that each is checked by name
    functions: Any = None
    function_call: Any = None
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

    # OpenAI's own rules, checked here so that every engine refuses alike (each field reads one declared before it)
    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value, info):
        if value and not info.data.get("logprobs"):
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, value, info):
        names = {t.function.name for t in info.data.get("tools") or []}
        if value not in (None, "none") and not names:
            raise ValueError("'tool_choice' needs 'tools'")
        if isinstance(value, NamedToolChoice) and value.function.name not in names:
            raise ValueError(f"'tool_choice' names '{value.function.name}', which is not in 'tools'")
        return value

    def options(self) -> dict[str, Any]:
        """The OPTIONAL_FIELDS this request sets to other than their off value, in OpenAI's wire form."""
        fields = type(self).model_fields
        sent = self.model_dump(mode="json", by_alias=True, exclude_none=True, include=set(OPTIONAL_FIELDS))
        out = {name: value for name, value in sent.items() if value != fields[name].default and value not in ([], {})}
        if out.get("response_format") == {"type": "text"}:
            del out["response_format"]
        if "tools" not in out:  # without tools a tool choice means nothing (and "none" is its off value)
            out.pop("tool_choice", None)
            out.pop("parallel_tool_calls", None)
        return out

    def asked(self) -> list[str]:
        """The OPTIONAL_FIELDS this request needs its engine to serve; a tool message or an earlier tool call needs
        `tools`."""
        asked = list(self.options())
        if "tools" not in asked and any(m.uses_tools() for m in self.messages):
            asked.append("tools")
        return asked

    @property
    def structured(self) -> bool:
        """An answer a program parses (JSON, tool calls): evidence goes in its own field, never into `content`."""
        return bool(self.response_format and self.response_format.type != "text") or \
            bool(self.tools and self.tool_choice != "none")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    @property
    def max_new_tokens(self) -> int:
        """What the client asked for (`max_completion_tokens`, or the older `max_tokens`), 256 if neither."""
        return self.max_completion_tokens or self.max_tokens or 256

    def engine_messages(self) -> list[dict]:
        out = []
        for m in self.messages:
            message = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            if m.tool_calls:
                message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.tool_call_id is not None:
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        return out

    def to_generation_request(self, messages: list[dict] | None = None) -> GenerationRequest:
        """The engine's view of this request; `messages` replaces the client's (e.g. grounded with evidence)."""
        kwargs = self.chat_template_kwargs.model_dump(exclude_none=True) if self.chat_template_kwargs else {}
        return GenerationRequest(
            model=self.model, messages=messages if messages is not None else self.engine_messages(),
            max_tokens=self.max_new_tokens, temperature=self.temperature,
            top_p=self.top_p, stop=self.stop_list(), seed=self.seed, chat_template_kwargs=kwargs,
            ignore_eos=self.ignore_eos, options=self.options(),
        )
