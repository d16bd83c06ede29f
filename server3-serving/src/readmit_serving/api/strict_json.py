"""Request bodies of the prediction routes are read as strict JSON (RFC 8259); anything else is a clear 4xx.

Python's ``json`` module, which Starlette uses, accepts more than JSON, and some of it became a 500
further on (the value echoed in a validation error could not be encoded):

- ``NaN``, ``Infinity``, ``-Infinity`` and numbers beyond float range (``1e999`` reads as infinity) are
  not JSON numbers; Starlette's encoder refuses non-finite floats;
- a lone surrogate escape (``"\\ud800"``) reads as a string that cannot be encoded as UTF-8;
- a duplicate key silently keeps the last value (a proxy in front may have read the first);
- UTF-16 and UTF-32 bodies are decoded by guess: JSON between systems is UTF-8 (a UTF-8 byte order mark
  is ignored, as RFC 8259 allows);
- integers of more than 4,300 digits (Python's limit on int conversion) and nesting deeper than the
  interpreter's recursion limit fail with ValueError / RecursionError.

Each is answered 422 ``{"detail": [{"type": "json_invalid", "loc": ["body"], "msg": ...}]}`` (FastAPI's shape)
with a message naming the problem, never the library's text. A body that is not JSON at all is a 415: a
Content-Type other than ``application/json`` (or ``+json``, charset UTF-8), or any Content-Encoding (the API
does not decompress bodies).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

UNSUPPORTED_TYPE = "send the body as JSON, with the header Content-Type: application/json"
UNSUPPORTED_ENCODING = "compressed request bodies are not accepted: send the JSON body without Content-Encoding"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _NotJson(ValueError):
    """A value Python's json accepts but JSON does not (raised from the parser's hooks)."""


def _invalid(message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=[{"type": "json_invalid", "loc": ["body"], "msg": message}])


def _constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number: numbers must be finite")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson("a number is too large: numbers must be finite")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if len(key) <= 60 and key.isprintable() else key[:60].encode("ascii", "replace").decode()
                raise _NotJson(f"the key {shown!r} appears twice in one object")
            seen.add(key)
    return obj


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) in a parsed document cannot be encoded as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads(body: bytes) -> Any:
    """``body`` as strict JSON; raises a 422 HTTPException naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("the request body is not UTF-8 text (JSON must be encoded in UTF-8)") from None
    try:
        value = json.loads(text.removeprefix("\ufeff"), parse_constant=_constant, parse_float=_finite,
                           object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise _invalid(f"the request body is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except _NotJson as exc:
        raise _invalid(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid("the request body is nested too deeply") from None
    except ValueError:  # int(): more digits than Python converts (sys.get_int_max_str_digits)
        raise _invalid("the request body is not valid JSON: a number has too many digits") from None
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(value):
        raise _invalid("the request body is not valid JSON: a \\u escape is half of a surrogate pair "
                       "(not a character)")
    return value


def _json_content_type(value: str) -> bool:
    media_type, _, parameters = value.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not (media_type.startswith("application/")
                                                 and media_type.endswith("+json")):
        return False
    for parameter in parameters.split(";"):
        name, _, charset = parameter.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """A route whose JSON body is parsed by ``loads``, after the Content-Type and Content-Encoding checks."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            headers = request.headers
            encoding = headers.get("content-encoding")
            if encoding is not None and encoding.strip().lower() not in ("", "identity"):
                raise HTTPException(status_code=415, detail=UNSUPPORTED_ENCODING,
                                    headers={"Accept-Encoding": "identity"})
            content_type = headers.get("content-type")
            if content_type is None:
                if headers.get("content-length", "0").strip() != "0" or "transfer-encoding" in headers:
                    raise HTTPException(status_code=415, detail=UNSUPPORTED_TYPE)
            elif not _json_content_type(content_type):
                raise HTTPException(status_code=415, detail=UNSUPPORTED_TYPE)
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_handler
