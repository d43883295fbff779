"""Bearer keys as FastAPI dependencies: client keys for the chat API, one admin key for adapter changes.

Admin is closed by default: with no (or an empty) admin key configured, the admin endpoints answer 403 to
everyone. A client API key never opens them.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medloop.serving.engine import EngineError

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _matches(given: str, keys: list[str]) -> bool:
    # compare against every key, always: the time taken does not reveal which one (or whether any) matched
    return any([hmac.compare_digest(given.encode(), k.encode()) for k in keys])


def require_api_key(request: Request, credentials: Credentials) -> None:
    keys = request.app.state.api_keys
    if keys and (credentials is None or not _matches(credentials.credentials, keys)):
        raise EngineError(401, "invalid or missing API key (Authorization: Bearer <key>)")


def require_admin(request: Request, credentials: Credentials) -> None:
    admin_key = request.app.state.admin_key
    if not admin_key:
        raise EngineError(403, "admin endpoints are closed: set MEDLOOP_ADMIN_KEY and send it as the Bearer token")
    if credentials is None:
        raise EngineError(401, "admin key required (Authorization: Bearer <admin key>)")
    if not _matches(credentials.credentials, [admin_key]):
        raise EngineError(403, "admin key required")


ApiKey = Depends(require_api_key)
AdminKey = Depends(require_admin)
