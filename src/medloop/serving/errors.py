"""Errors the gateway answers with, in OpenAI's (and vLLM's) error shape.

`APIError` is any refusal or failure with its HTTP status (4xx: the request's fault; 5xx: ours); `type` is the
error type the body carries, OpenAI's by default, vLLM's own on the endpoints that imitate vLLM. An engine knows
no HTTP: it raises an `EngineError` of a kind, which the gateway answers with that kind's status (`as_api_error`).
"""

from __future__ import annotations

from typing import Literal

EngineFailure = Literal["invalid", "not_found", "too_large", "failed", "upstream", "unavailable", "timeout"]
STATUS: dict[str, int] = {"invalid": 400, "not_found": 404, "too_large": 413, "failed": 500, "upstream": 502,
                          "unavailable": 503, "timeout": 504}

OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type = type or OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class EngineError(Exception):
    """An engine's refusal or failure, by kind: `invalid` (the request cannot be served as asked), `not_found`,
    `too_large`, `failed` (the engine broke on it), `upstream` (an upstream answered nonsense), `unavailable`,
    `timeout`. `type`: an upstream's own error type, relayed."""

    def __init__(self, kind: EngineFailure, message: str, param: str | None = None, type: str | None = None):
        super().__init__(message)
        self.kind, self.message, self.param, self.type = kind, message, param, type


def as_api_error(error: APIError | EngineError) -> APIError:
    """What the gateway answers an engine's error with: its kind's HTTP status."""
    if isinstance(error, APIError):
        return error
    return APIError(STATUS[error.kind], error.message, error.param, error.type)


def kind_of(status: int) -> EngineFailure:
    """An upstream's HTTP refusal as an engine failure (an upstream 5xx is answered with `upstream`, 502)."""
    return next((kind for kind, s in STATUS.items() if s == status), "invalid" if status < 500 else "upstream")


def model_not_found(name: str) -> EngineError:
    """vLLM's and OpenAI's answer to a `model` nobody serves."""
    return EngineError("not_found", f"The model `{name}` does not exist.", param="model")


def error_response(error: APIError):
    """The JSON error body (OpenAI's shape) with its status."""
    from fastapi.responses import JSONResponse

    body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.status}}
    return JSONResponse(body, status_code=error.status)
