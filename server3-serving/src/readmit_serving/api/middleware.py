"""Request metrics as a pure ASGI middleware (no per-request task or body copy)."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics


class PrometheusMiddleware:
    """Counts and times every answer by route template. A request answered before routing (401, 413, a shed
    503) is labelled with its path when that is one of the app's fixed paths (``known_paths``), else
    ``unmatched`` (the label's values stay bounded whatever paths callers send)."""

    def __init__(self, app: ASGIApp, known_paths: Collection[str] = ()) -> None:
        self.app = app
        self.known_paths = known_paths
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        """(route, method, status) -> its counter and histogram (``labels()`` costs more than the update)."""
        self._in_progress: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = self._in_progress.get(method)
        if in_progress is None:
            in_progress = self._in_progress.setdefault(method, metrics.IN_PROGRESS.labels(method=method))
        in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            in_progress.dec()
            route = scope.get("route")
            template = getattr(route, "path", None)
            if template is None:
                template = scope["path"] if scope["path"] in self.known_paths else "unmatched"
            key = (template, method, status)
            children = self._children.get(key)
            if children is None:  # bounded: templates of the app's routes (or "unmatched") x methods x statuses
                children = self._children.setdefault(key, (
                    metrics.REQUESTS.labels(route=template, method=method, status=str(status)),
                    metrics.REQUEST_DURATION.labels(route=template, method=method)))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
