"""What is checked before a request body is read: the route's key and the body's size.

FastAPI reads and parses a body before it runs a route's dependencies, so without this an unauthenticated
client could make the server read (and hold) a body of any size before its 401. Here the route's own key check
(`auth.CHECKS`) runs on the headers first, then the body is read up to `max_body_bytes` (a larger one is a 413
whatever its Content-Length says) and handed on.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.routing import Match

from medloop.serving.auth import CHECKS, bearer_token
from medloop.serving.errors import APIError, error_response


class Guard:
    """`routers`: the app's routers; a route of a router whose dependencies hold a key check gets that check."""

    def __init__(self, app, *, routers, state, max_body_bytes: int):
        self.app, self.state, self.max_body_bytes = app, state, max_body_bytes
        self.checks = [(route, CHECKS[d.dependency]) for router in routers for route in router.routes
                       for d in router.dependencies if d.dependency in CHECKS]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            self._check_key(scope, headers)
            body = await self._read_body(headers, receive) if scope["method"] in {"POST", "PUT", "PATCH"} else None
        except APIError as e:
            return await error_response(e)(scope, receive, send)
        if body is not None:
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _check_key(self, scope, headers: Headers) -> None:
        for route, check in self.checks:
            if route.matches(scope)[0] == Match.FULL:
                check(self.state, bearer_token(headers.get("authorization")))

    async def _read_body(self, headers: Headers, receive) -> bytes:
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise APIError(413, f"request body larger than {limit} bytes (max_body_bytes)")
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left: the app sees an empty body and the disconnect after it
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                raise APIError(413, f"request body larger than {limit} bytes (max_body_bytes)")
            if not message.get("more_body"):
                break
        return b"".join(parts)


def _replay(body: bytes, receive):
    """The body once, then the real channel: a client that leaves later is still seen leaving."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
