"""Bearer keys as FastAPI dependencies: client keys for the chat API, one admin key for adapter changes.

Admin is closed by default: with no (or an empty) admin key configured, the admin endpoints answer 403 to
everyone. A client API key never opens them. The same checks run in `guard` before a request body is read, so
an unauthenticated client cannot make the server read (or hold) its body.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medloop.serving.errors import APIError

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _matches(given: str, keys: list[str]) -> bool:
    # compare against every key, always: the time taken does not reveal which one (or whether any) matched
    return any([hmac.compare_digest(given.encode(), k.encode()) for k in keys])


def check_api_key(keys: list[str], token: str | None) -> None:
    if keys and (token is None or not _matches(token, keys)):
        raise APIError(401, "invalid or missing API key (Authorization: Bearer <key>)")


def check_admin_key(admin_key: str, token: str | None) -> None:
    if not admin_key:
        raise APIError(403, "admin endpoints are closed: set MEDLOOP_SERVING__ADMIN_KEY and send it as the Bearer "
                       "token")
    if token is None:
        raise APIError(401, "admin key required (Authorization: Bearer <admin key>)")
    if not _matches(token, [admin_key]):
        raise APIError(403, "admin key required")


def require_api_key(request: Request, credentials: Credentials) -> None:
    check_api_key(request.app.state.api_keys, credentials.credentials if credentials else None)


def require_admin(request: Request, credentials: Credentials) -> None:
    check_admin_key(request.app.state.admin_key, credentials.credentials if credentials else None)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, as HTTPBearer reads it."""
    scheme, _, token = (authorization or "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


ApiKey = Depends(require_api_key)
AdminKey = Depends(require_admin)
# what `guard` runs for a route that declares one of these dependencies, before its body is read
CHECKS = {require_api_key: lambda state, token: check_api_key(state.api_keys, token),
          require_admin: lambda state, token: check_admin_key(state.admin_key, token)}
