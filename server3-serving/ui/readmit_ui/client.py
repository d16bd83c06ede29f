"""The few calls the UI makes to the inference API, with its failures as exceptions whose text is fit
for the page: what happened and what to do, never a host, a path or a library's exception text.

``ApiUnavailable``: the API cannot answer (unreachable, no model yet, server error);
``ApiRefused`` (an ``ApiUnavailable``): the API refused the UI's key (401/403);
``ApiRejected``: the API refused the input (422), with one message per field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

UNREACHABLE = "The prediction service cannot be reached. Try again in a minute; if it persists, ask the administrator."
TIMEOUT = "The prediction service did not answer in time. Try again; if it persists, ask the administrator."
NO_MODEL = "No model is loaded yet: the prediction service is waiting for its model. Try again in a minute."
REFUSED = "The UI's API key was refused: ask the administrator."
UNEXPECTED = "The prediction service gave an unexpected answer. Try again; if it persists, ask the administrator."
REJECTED = "These fields are not valid:"


def failed_message(status: int, request_id: str | None = None) -> str:
    reference = f", reference {request_id}" if request_id else ""
    return (f"The prediction service failed (HTTP {status}{reference}). "
            "Try again; if it persists, ask the administrator.")


class ApiUnavailable(Exception):
    """The API is down, has no model yet, or failed."""


class ApiRefused(ApiUnavailable):
    """The API refused the UI's API key."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ApiRejected(Exception):
    """The API answered 422: the input breaks the contract."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__(f"{REJECTED} " + "; ".join(f"{e.field}: {e.message}" for e in errors))


def field_errors(detail: Any) -> list[FieldError]:
    """FastAPI's 422 ``detail`` as (field, message) pairs; loc ``["body", "encounters", 3, "age"]`` names
    ``encounters.3.age``."""
    if isinstance(detail, str) and detail:
        return [FieldError("request", detail)]
    if not isinstance(detail, list) or not detail:
        return [FieldError("request", "the service refused the input")]
    errors = []
    for item in detail:
        item = item if isinstance(item, dict) else {}
        loc = [str(part) for part in item.get("loc", []) if part != "body"]
        errors.append(FieldError(".".join(loc) or "request", str(item.get("msg") or "not valid")))
    return errors


@dataclass(frozen=True)
class Readiness:
    reachable: bool
    ready: bool
    body: dict[str, Any]
    error: str | None = None


class ApiClient:
    """A thin httpx client of the API at ``base_url``, sending ``api_key`` (use as a context manager)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers,
                                  timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            log.warning("%s %s: no answer in time (%s)", method, path, type(exc).__name__)
            raise ApiUnavailable(TIMEOUT) from exc
        except httpx.HTTPError as exc:
            log.warning("%s %s: %s", method, path, exc or type(exc).__name__)
            raise ApiUnavailable(UNREACHABLE) from exc

    @staticmethod
    def _body(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code == 422:
            body = self._body(response)
            raise ApiRejected(field_errors(body.get("detail") if isinstance(body, dict) else None))
        if response.status_code in (401, 403):
            raise ApiRefused(REFUSED)
        if response.status_code == 503:
            raise ApiUnavailable(NO_MODEL)
        if not response.is_success:
            body = self._body(response)
            request_id = body.get("request_id") if isinstance(body, dict) else None
            log.warning("%s %s answered HTTP %s", response.request.method, response.request.url.path,
                        response.status_code)
            raise ApiUnavailable(failed_message(response.status_code, request_id if isinstance(request_id, str)
                                                else None))
        body = self._body(response)
        if body is None:
            raise ApiUnavailable(UNEXPECTED)
        return body

    def readiness(self) -> Readiness:
        """GET /ready (open, no key): never raises (an unreachable API is ``reachable=False``)."""
        try:
            response = self._request("GET", "/ready")
        except ApiUnavailable as exc:
            return Readiness(reachable=False, ready=False, body={}, error=str(exc))
        body = self._body(response)
        body = body if isinstance(body, dict) else {}
        if response.status_code == 200:
            return Readiness(reachable=True, ready=True, body=body)
        error = NO_MODEL if response.status_code == 503 else failed_message(response.status_code)
        return Readiness(reachable=True, ready=False, body=body, error=error)

    def model(self) -> dict[str, Any]:
        """GET /model: the model served and its metrics."""
        return self._json(self._request("GET", "/model"))

    def predict(self, encounter: dict[str, Any]) -> dict[str, Any]:
        """POST /predict: one encounter (contract names) -> its prediction."""
        return self._json(self._request("POST", "/predict", json=encounter))

    def predict_batch(self, encounters: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /predict/batch: encounters (at most the API's MAX_BATCH_SIZE) -> predictions in order."""
        return self._json(self._request("POST", "/predict/batch", json={"encounters": encounters}))
