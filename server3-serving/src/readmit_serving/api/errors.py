"""What a caller sees when a request fails: never a stack trace, a path, a host or a library's text.

- An unexpected exception: 500 ``{"detail": "internal error", "request_id": ...}``; the exception
  is logged with that id (and the caller's name), so a report quoting the id finds the traceback.
- Invalid input: FastAPI's 422 shape (``detail``: a list of ``type``, ``loc``, ``msg``, ``input``)
  with ``input`` kept only when it is a short scalar. FastAPI echoes each error's input, which for a
  missing field is the whole encounter and for an over-long batch the whole list: the caller sent
  it, but echoing patient records back (into clients' logs) helps nobody, while the offending
  scalar ("three" for a number) does. ``ctx`` is dropped (it repeats ``msg``, sometimes as a
  library's exception), and at most ``MAX_ERRORS`` errors are listed.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

MAX_ERRORS = 100
MAX_INPUT_CHARS = 100
MAX_MESSAGE_CHARS = 1000
_ABSENT = object()


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the JSON encoder of the answer would fail on it
        return False
    return True


def _short(value: Any) -> bool:
    """Whether an input is echoed: a short scalar the answer's JSON encoder takes (no NaN, no lone surrogate)."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 10**MAX_INPUT_CHARS
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= MAX_INPUT_CHARS and _encodable(value)


def _text(value: Any, limit: int) -> str:
    """``value`` as text the answer can carry: at most ``limit`` characters, lone surrogates escaped."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return text if _encodable(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def brief_error(error: dict[str, Any]) -> dict[str, Any]:
    """One pydantic error as FastAPI shows it, without a long input or the context. Parts of ``loc`` are
    the caller's keys: long ones are cut too."""
    brief: dict[str, Any] = {
        "type": _text(error.get("type", "value_error"), MAX_INPUT_CHARS),
        "loc": [part if isinstance(part, int) else _text(part, MAX_INPUT_CHARS) for part in error.get("loc", ())],
        "msg": _text(error.get("msg", ""), MAX_MESSAGE_CHARS),
    }
    value = error.get("input", _ABSENT)
    if value is not _ABSENT and _short(value):
        brief["input"] = value
    return brief


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    detail = [brief_error(e) for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"type": "too_many_errors", "loc": ["body"],
                       "msg": f"{len(errors) - MAX_ERRORS} more errors not listed"})
    return JSONResponse(status_code=422, content={"detail": detail})


class InternalErrorMiddleware:
    """An exception escaping the app becomes the generic 500 (pure ASGI: no per-request task or copy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            request_id = uuid.uuid4().hex
            caller = (scope.get("state") or {}).get("caller", "-")
            log.exception("request %s failed: %s %s (caller %s)", request_id, scope.get("method"),
                          scope.get("path"), caller)
            if started:  # the answer is already on its way: nothing else can be sent
                return
            body = json.dumps({"detail": "internal error", "request_id": request_id}).encode()
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode())]})
            await send({"type": "http.response.body", "body": body})
