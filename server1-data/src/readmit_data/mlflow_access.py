"""Talking to MLflow from training: bounded HTTP, and failures turned into one clear error.

MLflow's client retries a failed request 7 times with exponential backoff and waits 120 s for an
answer by default: a dead tracking server then holds a task for minutes. Training bounds both with
MLflow's own variables (``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``; defaults in ``DataSettings``), applied around each call
(``bounded_http``) rather than for the whole process.

A registry or tracking failure (unreachable, timeout, 5xx, 401, 403, ...) becomes ``RegistryError``:
it names what was being done and how it failed, never a credential (the tracking URI is shown
without any user information; the MLflow exception is chained for the log).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from .settings import DataSettings


class RegistryError(RuntimeError):
    """MLflow (tracking server, model registry or its artifact store) failed: the task stops and nothing
    is promoted. Never means "no champion yet"."""


def _http_limits(settings: DataSettings) -> dict[str, str]:
    return {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(settings.mlflow_http_request_timeout),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.mlflow_http_request_max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(settings.mlflow_http_request_backoff_factor),
    }


@contextmanager
def bounded_http(settings: DataSettings) -> Iterator[None]:
    """MLflow's HTTP timeout and retries as ``settings`` say, for the calls made inside (MLflow reads these
    variables at each request); the process' previous values are restored afterwards."""
    limits = _http_limits(settings)
    previous = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def safe_uri(uri: str) -> str:
    """``uri`` without user information (``http://user:password@host`` -> ``http://host``)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


_STATUS = re.compile(r"error code (\d{3})|too many (\d{3}) error responses|status code (\d{3})")
_UNREACHABLE = ("connection refused", "failed to establish a new connection", "connection aborted",
                "remotedisconnected", "connection reset", "name or service not known", "max retries exceeded")


def failure_kind(exc: BaseException, settings: DataSettings) -> str:
    """How an MLflow call failed, in words a person can act on (no response body, no credential)."""
    text = str(exc)
    lowered = text.lower()
    code = str(getattr(exc, "error_code", "") or "")
    found = _STATUS.search(text)
    status = int(next(g for g in found.groups() if g)) if found else None
    response = getattr(exc, "response", None)  # requests' HTTPError (artifact uploads through the server)
    if status is None and isinstance(getattr(response, "status_code", None), int):
        status = response.status_code
    retries = settings.mlflow_http_request_max_retries
    if code == "UNAUTHENTICATED" or status == 401:
        return ("authentication refused (HTTP 401): check the training identity "
                "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
    if code == "PERMISSION_DENIED" or status == 403:
        return "permission denied (HTTP 403) to the training identity"
    if "timeout" in lowered or "timed out" in lowered:
        return f"no answer within MLFLOW_HTTP_REQUEST_TIMEOUT={settings.mlflow_http_request_timeout} s"
    if status is not None and "too many" in lowered:
        return f"the server answered HTTP {status} to every attempt ({retries} retries)"
    if any(marker in lowered for marker in _UNREACHABLE):
        return f"the server cannot be reached (connection refused or dropped, {retries} retries)"
    if status is not None:
        return f"HTTP {status} ({code or 'error'})"
    return f"{code or type(exc).__name__}"


@contextmanager
def registry_call(settings: DataSettings, action: str, consequence: str = "nothing was promoted") -> Iterator[None]:
    """Run MLflow calls for ``action``; any MLflow or HTTP failure becomes a ``RegistryError`` saying what
    failed, how, and ``consequence`` (what it leaves behind)."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        with bounded_http(settings):
            yield
    except (MlflowException, requests.RequestException) as exc:
        raise RegistryError(
            f"MLflow at {safe_uri(settings.mlflow_tracking_uri)} failed while {action}: "
            f"{failure_kind(exc, settings)}; {consequence}"
        ) from exc


def is_not_found(exc: BaseException) -> bool:
    """The registry said the thing does not exist (RESOURCE_DOES_NOT_EXIST / HTTP 404), and only that."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"
