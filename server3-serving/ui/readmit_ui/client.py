"""The few calls the UI makes to the inference API, with its failures as two exceptions.

``ApiUnavailable``: the API cannot answer (unreachable, no model yet, server error);
``ApiRejected``: the API refused the input (422), with one message per field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class ApiUnavailable(Exception):
    """The API is down, has no model yet, or failed."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ApiRejected(Exception):
    """The API answered 422: the input breaks the contract."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


def field_errors(detail: Any) -> list[FieldError]:
    """FastAPI's 422 ``detail`` as (field, message) pairs; loc ``["body", "encounters", 3, "age"]`` names
    ``encounters.3.age``."""
    if not isinstance(detail, list):
        return [FieldError("request", str(detail))]
    errors = []
    for item in detail:
        loc = [str(part) for part in item.get("loc", []) if part != "body"]
        errors.append(FieldError(".".join(loc) or "request", str(item.get("msg", item))))
    return errors


@dataclass(frozen=True)
class Readiness:
    reachable: bool
    ready: bool
    body: dict[str, Any]
    error: str | None = None


class ApiClient:
    """A thin httpx client of the API at ``base_url`` (use as a context manager)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def down_message(self, why: str) -> str:
        return f"The prediction API at {self.base_url} is down: {why.rstrip('.')}."

    def no_model_message(self, why: str = "waiting for the champion model in MLflow") -> str:
        return f"The prediction API at {self.base_url} has no model yet: {why.rstrip('.')}."

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiUnavailable(self.down_message(f"no answer to {method} {path} ({type(exc).__name__})")) from exc
        except httpx.TransportError as exc:
            raise ApiUnavailable(self.down_message(f"cannot connect ({exc or type(exc).__name__})")) from exc

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code == 422:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiRejected(field_errors(detail))
        if response.status_code == 503:
            raise ApiUnavailable(self.no_model_message())
        if not response.is_success:
            raise ApiUnavailable(self.down_message(f"HTTP {response.status_code} on {response.request.url.path}"))
        return response.json()

    def readiness(self) -> Readiness:
        """GET /ready: never raises (an unreachable API is ``reachable=False``)."""
        try:
            response = self._request("GET", "/ready")
        except ApiUnavailable as exc:
            return Readiness(reachable=False, ready=False, body={}, error=str(exc))
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 200:
            return Readiness(reachable=True, ready=True, body=body)
        if response.status_code == 503:
            error = self.no_model_message(body.get("last_error") or "waiting for the champion model in MLflow")
        else:
            error = self.down_message(f"/ready answered HTTP {response.status_code}")
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
