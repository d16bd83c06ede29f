"""API keys: every request outside the open paths must carry a key from API_KEYS.

The check is a pure ASGI middleware, not a FastAPI dependency: it runs before routing, before the
body is read or parsed (a caller without a key cannot make the API read and parse a large body),
and costs one SHA-256 and one dict lookup per request. Everything that is not an open path is
protected, so a route added later is protected unless it is opened on purpose.

A key is sent as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``. The known keys are kept as
SHA-256 digests mapping to the caller's name: a presented key is hashed and looked up, so the time
taken depends on the digest of what was sent, not on how much of a real key it matches (the
constant-time property ``hmac.compare_digest`` gives, without comparing against every key). The
caller's name (never the key) is put in the request's state (``request.state.caller``) for logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from ..settings import ApiKey

log = logging.getLogger(__name__)

HEADER = "X-API-Key"
REALM = "readmit-api"
SCHEMES: dict[str, dict[str, Any]] = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": HEADER,
               "description": "The caller's key from the API's API_KEYS (ask the administrator for one)."},
    "Bearer": {"type": "http", "scheme": "bearer",
               "description": f"The same key as a bearer token (`Authorization: Bearer KEY`), for clients that "
                              f"cannot set {HEADER}."},
}
DETAILS = {
    "missing": f"an API key is required: send it in the {HEADER} header (or as Authorization: Bearer)",
    "invalid": "the API key is not valid",
}

REFUSED = Counter("readmit_api_auth_refused_total", "Requests refused for lack of a valid API key, by reason",
                  ["reason"])
CALLER_REQUESTS = Counter("readmit_api_caller_requests_total", "Requests let through, by caller (API_KEYS name)",
                          ["caller"])
_REFUSED = {reason: REFUSED.labels(reason=reason) for reason in DETAILS}  # both series exist from the start


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class KeyRing:
    """The configured keys as digest -> caller name."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._callers = {_digest(k.key.get_secret_value().encode()): k.name for k in keys}
        self._counters = {name: CALLER_REQUESTS.labels(caller=name) for name in set(self._callers.values())}
        if not self._callers:
            raise ValueError("no API key configured (API_KEYS)")

    def caller(self, key: bytes) -> str | None:
        return self._callers.get(_digest(key))

    def count(self, caller: str) -> None:
        self._counters[caller].inc()


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key of a request's raw ASGI headers: X-API-Key first, else a Bearer token; None when absent."""
    api_key = bearer = None
    for name, value in headers:
        if name == b"x-api-key":
            api_key = value.strip()
        elif name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                bearer = token.strip()
    return api_key or bearer or None


def _refusal(reason: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"detail": DETAILS[reason]}).encode()
    challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if reason == "invalid" else "")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"www-authenticate", challenge.encode())]
    return headers, body


_REFUSALS = {reason: _refusal(reason) for reason in DETAILS}


class ApiKeyMiddleware:
    """401 for a request outside ``open_paths`` without a known key; else the caller's name in the state."""

    def __init__(self, app: ASGIApp, keys: KeyRing, open_paths: Iterable[str]) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if path in self.open_paths:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope["headers"])
        caller = self.keys.caller(key) if key else None
        if caller is None:
            reason = "missing" if key is None else "invalid"
            _REFUSED[reason].inc()
            client = scope.get("client") or ("-", 0)
            log.info("refused %s %s from %s: %s API key", scope["method"], path, client[0], reason)
            headers, body = _REFUSALS[reason]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.keys.count(caller)
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def open_paths(app: FastAPI, operations: Iterable[str] = ("/health", "/ready", "/metrics")) -> frozenset[str]:
    """The paths served without a key: probes, Prometheus, and the API's documentation."""
    docs = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url)
    return frozenset([*operations, *(p for p in docs if p)])


UNAUTHORIZED = {
    "description": "Missing or invalid API key",
    "headers": {"WWW-Authenticate": {"description": f'`Bearer realm="{REALM}"`', "schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {
        "type": "object", "title": "AuthError", "required": ["detail"],
        "properties": {"detail": {"type": "string", "title": "Detail"}}}}},
}


def document_security(app: FastAPI, open_: frozenset[str]) -> None:
    """OpenAPI: the two schemes (Swagger UI's Authorize button), and on every protected operation the
    security requirement (either scheme) and its 401 answer."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SCHEMES)
            for path, operations in schema.get("paths", {}).items():
                if path in open_:
                    continue
                for operation in operations.values():
                    operation["security"] = [{name: []} for name in SCHEMES]
                    operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
