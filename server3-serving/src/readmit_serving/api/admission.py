"""Bounded admission: beyond a limit, a prediction request is answered 503 at once, never queued.

Unbounded admission lets latency grow with the load (every request waits behind all the others, and
callers time out on answers the server still computes). Here:

- ``AdmissionMiddleware`` (pure ASGI, before the body is read or parsed) counts the requests being
  served on each prediction route; one more than ``MAX_IN_FLIGHT`` (``/predict``) or
  ``MAX_IN_FLIGHT_BATCH`` (``/predict/batch``) is answered 503 (reason ``in_flight``). It gives each
  admitted request its deadline (``REQUEST_DEADLINE_MS`` after arrival) in ``scope["state"]``.
- The inference scheduler raises ``Overloaded`` for a batch that would pass ``MAX_QUEUED_BATCH_ROWS``
  (``batch_queue``) and for a request whose deadline passed before it was scored (``deadline``);
  ``overloaded_handler`` turns it into the same 503.

A refusal is a 503 with ``Retry-After`` (whole seconds, RFC 9110, at least 1) and a JSON body
``{"detail": ..., "reason": ..., "retry_after_ms": ...}``; ``readmit_api_shed_total{route,reason}``
counts them.
"""

from __future__ import annotations

import json
import math
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import metrics

MESSAGES = {
    "in_flight": "the prediction service is at capacity",
    "batch_queue": "too many batch encounters are waiting to be scored",
    "deadline": "the request could not be scored within its deadline",
}


class Overloaded(Exception):
    """A prediction request refused (never scored) to keep latency bounded; ``reason`` is a key of MESSAGES."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Shedder:
    """Builds (and counts) the 503 answers of refused requests."""

    def __init__(self, retry_after_ms: int) -> None:
        self.retry_after_ms = retry_after_ms
        seconds = str(max(1, math.ceil(retry_after_ms / 1000)))
        self._bodies = {reason: json.dumps({"detail": f"{message}: retry in {retry_after_ms} ms",
                                            "reason": reason, "retry_after_ms": retry_after_ms}).encode()
                        for reason, message in MESSAGES.items()}
        self._headers = {reason: [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(body)).encode()),
                                  (b"retry-after", seconds.encode())]
                         for reason, body in self._bodies.items()}

    def count(self, route: str, reason: str) -> None:
        metrics.SHED.labels(route=route, reason=reason).inc()

    async def send(self, send: Send, route: str, reason: str) -> None:
        self.count(route, reason)
        await send({"type": "http.response.start", "status": 503, "headers": self._headers[reason]})
        await send({"type": "http.response.body", "body": self._bodies[reason]})

    def response(self, route: str, reason: str) -> Response:
        self.count(route, reason)
        headers = {k.decode(): v.decode() for k, v in self._headers[reason] if k != b"content-length"}
        return Response(self._bodies[reason], status_code=503, headers=headers)


class AdmissionMiddleware:
    """In-flight limits per prediction route, checked before the body is read; sets each admitted request's
    deadline (``time.monotonic()`` seconds) as ``scope["state"]["deadline"]``."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], deadline_ms: int, shedder: Shedder) -> None:
        self.app = app
        self.limits = dict(limits)
        self.in_flight = dict.fromkeys(limits, 0)
        self.deadline = deadline_ms / 1000
        self.shedder = shedder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in self.limits or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight[path] >= self.limits[path]:
            await self.shedder.send(send, path, "in_flight")
            return
        scope.setdefault("state", {})["deadline"] = time.monotonic() + self.deadline
        self.in_flight[path] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[path] -= 1


def overloaded_handler(shedder: Shedder):
    """The exception handler answering ``Overloaded`` raised by a route with the shed 503."""

    async def handler(request: Request, exc: Exception) -> Response:
        route = getattr(request.scope.get("route"), "path", request.url.path)
        return shedder.response(route, exc.reason if isinstance(exc, Overloaded) else "in_flight")

    return handler
