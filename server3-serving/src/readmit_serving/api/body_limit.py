"""A request body larger than ``MAX_BODY_BYTES`` is answered 413 before anything parses it.

Pure ASGI, on every route: a ``Content-Length`` above the limit is refused before a byte of the body is
read; a body without one (chunked) is counted as it streams in, and refused as soon as the count passes
the limit (nothing is buffered here: the bytes read so far are the app's, at most the limit plus one
chunk). The 413 closes the connection (``Connection: close``), so the server stops reading the rest.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passed the limit (the middleware answers 413)."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        body = json.dumps({"detail": f"the request body is larger than {max_bytes:,} bytes, the most this API "
                                     "accepts (split a batch into smaller ones)"}).encode()
        self._start = {"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]}
        self._body = {"type": "http.response.body", "body": body}

    async def _refuse(self, send: Send) -> None:
        await send(self._start)
        await send(self._body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
                break
        if length is not None:
            # the HTTP server checks it is a number and passes no more bytes than it says
            if not length.strip().isdigit() or int(length) > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return

        received = 0
        too_large = started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # whatever the app answers to the interrupted body, the caller gets the 413
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._refuse(send)
