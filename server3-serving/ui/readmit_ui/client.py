"""The few calls the UI makes to the inference API, with its failures as exceptions whose text is fit
for the page: what happened and what to do, never a host, a path or a library's exception text.

``ApiUnavailable``: the API cannot answer (unreachable, no model yet, server error, request too large);
``ApiBusy`` (an ``ApiUnavailable``): the API shed the request to keep its latency bounded (503 with a reason), or
something in front of it limits the rate of requests (429);
``ApiRefused`` (an ``ApiUnavailable``): the API refused the UI's key (401/403);
``ApiRejected``: the API refused the input (422), with one message per field;
``NotExplainable`` (an ``ApiUnavailable``): asked for an explanation, the API said its model cannot be explained (409);
``CardUnavailable``: the API has no model card to show for its model (404 on ``/model/card``).

The API answers 503 for two reasons: no model loaded yet (a body without ``reason``), or at capacity
(a *shed* request: ``Retry-After`` and a body ``{"detail", "reason", "retry_after_ms"}``, never scored).
A shed prediction is sent again, at most ``busy_retries`` times, each after the wait the API asks for
(``retry_after_ms``, capped at ``max_retry_wait`` seconds, with a little jitter so callers shed together do
not come back together); then ``ApiBusy``. Retrying is safe: a shed request was never scored.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
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
BUSY = "The prediction service is busy right now. Try again in a moment."
TOO_LARGE = ("The prediction service refused the request as too large. Ask the administrator: the page sends more "
             "encounters at a time (API_BATCH_SIZE) than the service accepts (MAX_BODY_BYTES).")
NOT_FOUND = ("The prediction service does not answer at the address this page is configured with: ask the "
             "administrator to check API_URL.")
GATEWAY = ("The prediction service cannot be reached right now. Try again in a minute; if it persists, ask the "
           "administrator.")
NOT_EXPLAINABLE = "This model version cannot explain its predictions: the risk is shown without its reasons."
NO_CARD = "No model card is available for the model being served."

PLAIN_MESSAGES = {404: NOT_FOUND, 413: TOO_LARGE, 502: GATEWAY, 504: GATEWAY}
"""Answers that need only a sentence (502, 504: a proxy in front of the API found it down or too slow)."""

BUSY_RETRIES = 3
"""Times a shed prediction request is sent again before the page says the service is busy."""
MAX_RETRY_WAIT_SECONDS = 2.0
"""Longest wait before sending a shed request again, whatever the API asks for."""
DEFAULT_RETRY_MS = 1000
"""The wait when a shed 503 names none (neither ``retry_after_ms`` nor a ``Retry-After`` in seconds)."""
JITTER = 0.2
"""Each wait is lengthened by up to this share of itself (never shortened: the API asked for at least it)."""


def failed_message(status: int, request_id: str | None = None) -> str:
    reference = f", reference {request_id}" if request_id else ""
    return (f"The prediction service failed (HTTP {status}{reference}). "
            "Try again; if it persists, ask the administrator.")


class ApiUnavailable(Exception):
    """The API is down, has no model yet, or failed."""


class ApiRefused(ApiUnavailable):
    """The API refused the UI's API key."""


class NotExplainable(ApiUnavailable):
    """The API's model cannot explain its predictions (409 to explain=true): ask without explain."""


class CardUnavailable(Exception):
    """The API has no model card to show for the model it serves (404 on /model/card)."""


class ApiBusy(ApiUnavailable):
    """The API shed the request (503 with a ``reason``): it was not scored; try again after ``retry_after_ms``."""

    def __init__(self, reason: str, retry_after_ms: int) -> None:
        super().__init__(BUSY)
        self.reason = reason
        self.retry_after_ms = retry_after_ms


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def shed(response: httpx.Response) -> ApiBusy | None:
    """A shed 503 (its JSON body names a ``reason``) as ``ApiBusy``; None for any other answer (a 503 without
    ``reason`` means no model is loaded yet)."""
    if response.status_code != 503:
        return None
    body = _json_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("reason"), str):
        return None
    return ApiBusy(body["reason"], _wait_ms(response, body.get("retry_after_ms")))


def _wait_ms(response: httpx.Response, retry_after_ms: Any = None) -> int:
    """The wait an answer asks for: ``retry_after_ms`` of its body, else its ``Retry-After`` in seconds, else the
    default."""
    if isinstance(retry_after_ms, int) and not isinstance(retry_after_ms, bool) and retry_after_ms >= 0:
        return retry_after_ms
    seconds = response.headers.get("retry-after", "").strip()
    return int(seconds) * 1000 if seconds.isdigit() else DEFAULT_RETRY_MS


def retry_wait(retry_after_ms: int, max_wait: float = MAX_RETRY_WAIT_SECONDS) -> float:
    """Seconds to wait before sending a shed request again: what the API asked for, plus jitter, capped."""
    return min(max_wait, retry_after_ms / 1000 * (1 + random.uniform(0, JITTER)))  # noqa: S311 - jitter, not a secret


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


def json_answer(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; any other answer raised as the exception whose text the page shows
    (``ApiRejected``, ``ApiRefused``, ``ApiBusy``, ``ApiUnavailable``)."""
    if response.status_code == 422:
        body = _json_body(response)
        raise ApiRejected(field_errors(body.get("detail") if isinstance(body, dict) else None))
    if response.status_code in (401, 403):
        raise ApiRefused(REFUSED)
    if response.status_code == 409:
        raise NotExplainable(NOT_EXPLAINABLE)
    if response.status_code == 503:
        raise shed(response) or ApiUnavailable(NO_MODEL)
    if response.status_code == 429:  # a rate limit in front of the API: not scored, safe to send again
        raise ApiBusy("rate_limited", _wait_ms(response))
    if response.status_code in PLAIN_MESSAGES:
        log.warning("%s %s answered HTTP %s", response.request.method, response.request.url.path,
                    response.status_code)
        raise ApiUnavailable(PLAIN_MESSAGES[response.status_code])
    if not response.is_success:
        body = _json_body(response)
        request_id = body.get("request_id") if isinstance(body, dict) else None
        log.warning("%s %s answered HTTP %s", response.request.method, response.request.url.path,
                    response.status_code)
        raise ApiUnavailable(failed_message(response.status_code, request_id if isinstance(request_id, str)
                                            else None))
    body = _json_body(response)
    if body is None:
        raise ApiUnavailable(UNEXPECTED)
    return body


@dataclass(frozen=True)
class Readiness:
    reachable: bool
    ready: bool
    body: dict[str, Any]
    error: str | None = None


class ApiClient:
    """A thin httpx client of the API at ``base_url``, sending ``api_key`` (use as a context manager).

    A shed prediction is sent again up to ``busy_retries`` times, after ``retry_wait`` seconds (``sleep``)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0,
                 busy_retries: int = BUSY_RETRIES, max_retry_wait: float = MAX_RETRY_WAIT_SECONDS,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.busy_retries = max(0, busy_retries)
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
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

    _body = staticmethod(_json_body)
    _json = staticmethod(json_answer)

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

    def model_card(self) -> dict[str, Any]:
        """GET /model/card: the served version's model card (``CardUnavailable`` when it has none to show)."""
        response = self._request("GET", "/model/card")
        if response.status_code == 404:
            log.info("GET /model/card: 404 (%s)", self._body(response))
            raise CardUnavailable(NO_CARD)
        return self._json(response)

    def _prediction(self, path: str, body: dict[str, Any], params: dict[str, str] | None = None) -> Any:
        """POST a prediction request, sent again while the API sheds it (``ApiBusy`` once retries run out)."""
        retries = 0
        while True:
            try:
                return self._json(self._request("POST", path, json=body, params=params))
            except ApiBusy as exc:
                if retries >= self.busy_retries:
                    log.warning("POST %s shed (%s) %d time(s): giving up", path, exc.reason, retries + 1)
                    raise
                retries += 1
                wait = retry_wait(exc.retry_after_ms, self.max_retry_wait)
                log.info("POST %s shed (%s): sending it again in %.2f s", path, exc.reason, wait)
                self._sleep(wait)

    def predict(self, encounter: dict[str, Any], explain_top: int | None = None) -> dict[str, Any]:
        """POST /predict: one encounter (contract names) -> its prediction; with ``explain_top``, explained by that
        many factors (``explanation``; ``NotExplainable`` when the model cannot be explained)."""
        params = None if explain_top is None else {"explain": "true", "explain_top": str(explain_top)}
        return self._prediction("/predict", encounter, params)

    def predict_batch(self, encounters: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /predict/batch: encounters (at most the API's MAX_BATCH_SIZE) -> predictions in order."""
        return self._prediction("/predict/batch", {"encounters": encounters})
