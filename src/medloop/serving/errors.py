"""Errors the gateway answers with, in OpenAI's (and vLLM's) error shape.

`APIError` is any refusal or failure with its HTTP status (4xx: the request's fault; 5xx: ours); `type` is the
error type the body carries, OpenAI's by default, vLLM's own on the endpoints that imitate vLLM.
"""

from __future__ import annotations

OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type = type or OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def model_not_found(name: str) -> APIError:
    """vLLM's and OpenAI's answer to a `model` nobody serves."""
    return APIError(404, f"The model `{name}` does not exist.", param="model")


def error_response(error: APIError):
    """The JSON error body (OpenAI's shape) with its status."""
    from fastapi.responses import JSONResponse

    body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.status}}
    return JSONResponse(body, status_code=error.status)
