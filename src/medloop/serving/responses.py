"""OpenAI chat-completions wire types of what medloop answers with (plain, streamed, models, errors), plus the
evidence it cites."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import Field

from medloop.retrieval.staleness import StaleClaim
from medloop.serving.protocol import Response, ToolCall


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
    tool_calls: list[ToolCall] | None = None


class TopLogprob(Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(Response):
    content: list[TokenLogprob] | None = None


class Choice(Response):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = "stop"
    logprobs: ChoiceLogprobs | None = None


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


class FunctionCallDelta(Response):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Response):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class DeltaMessage(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class StreamChoice(Response):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


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
