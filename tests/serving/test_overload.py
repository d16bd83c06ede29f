"""Serving under overload: bounded admission (503 + Retry-After, counted), deadlines, the body-size limit,
batch requests that cannot starve single ones, one failing record failing only its own request, and a stuck
inference worker noticed by /health.

Two set-ups, each once per module:
- the app in process (httpx's ASGI transport) with a model double whose calls the test holds and releases
  (a stand-in for the model, not for the server): orderings and failures are then exact, without timing;
- a real uvicorn API with small limits in front of the registered champion: shedding, deadlines and 413
  over real sockets (a request is held "in flight" by sending its body in two parts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from readmit_contract import example_encounter

from ..support import wait_http
from .conftest import API_KEYS, AUTH, KEYS, api_process

# -- the app in process, with a model double ------------------------------------------------------------

FAILS = 13  # time_in_hospital of an encounter the double raises on
NOT_FINITE = 12  # ... of one it answers NaN for


@dataclass
class DoubleModel:
    """Quacks like ``LoadedModel``: answers 0.25 per record, raises on a marked record, NaN on another; with
    ``turnstile`` set, each call waits for a permit (the test decides when each call ends)."""

    turnstile: threading.Semaphore | None = None
    calls: list[list[dict[str, Any]]] = field(default_factory=list)
    name: str = "double"
    version: str = "7"
    threshold: float = 0.5
    base_rate: float = 0.1
    uses_history: bool = False

    def predict(self, records):
        self.calls.append(list(records))
        if self.turnstile is not None and not self.turnstile.acquire(timeout=60):
            raise TimeoutError("the test never released this call")
        stays = [r["time_in_hospital"] for r in records]
        if FAILS in stays:
            raise RuntimeError("cannot read /srv/models/secret.bin on db.internal:3306")
        return np.array([np.nan if s == NOT_FINITE else 0.25 for s in stays])

    def band(self, probability: float) -> str:
        return "high" if probability >= self.threshold else "low"


def encounter(stay: int = 3) -> dict[str, Any]:
    return example_encounter() | {"time_in_hospital": stay}


@asynccontextmanager
async def in_process(model: DoubleModel, **settings: Any):
    """The app (lifespan run) with ``model`` served; yields (client, services)."""
    from readmit_serving.api.main import create_app
    from readmit_serving.settings import ServingSettings

    app = create_app(ServingSettings(API_KEYS=API_KEYS, MLFLOW_TRACKING_URI="http://127.0.0.1:9",
                                     MODEL_POLL_SECONDS=3600, **settings))
    async with app.router.lifespan_context(app):
        services = app.state.services
        services.holder.swap(model)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=AUTH, timeout=60) as client:
            try:
                yield client, services
            finally:
                if model.turnstile is not None:
                    model.turnstile.release(1000)  # nothing stays blocked in the inference thread


async def until(condition, what: str, timeout: float = 30.0) -> None:
    """Wait (not a timing assertion: the bound only ends a broken test) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.005)


def counter(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def no_internals(response: httpx.Response) -> None:
    for needle in ("Traceback", "secret.bin", "db.internal", "RuntimeError", "/srv/", "File \""):
        assert needle not in response.text, needle


def test_a_batch_cannot_starve_a_single_request():
    """While a batch is being scored slice by slice, a single request sent after it is answered first."""

    async def scenario():
        model = DoubleModel(turnstile=threading.Semaphore(0))
        async with in_process(model, BATCH_SLICE_ROWS=2) as (client, services):
            finished: list[str] = []

            async def send(label: str, path: str, body: dict) -> httpx.Response:
                response = await client.post(path, json=body)
                finished.append(label)
                return response

            batch = asyncio.create_task(send("batch", "/predict/batch", {"encounters": [encounter()] * 6}))
            await until(lambda: len(model.calls) == 1, "the batch's first slice is being scored")
            single = asyncio.create_task(send("single", "/predict", encounter(4)))
            await until(lambda: len(services.scheduler._singles) == 1, "the single request is queued")
            for _ in range(4):
                model.turnstile.release()
            batch_response, single_response = await batch, await single
        return finished, model.calls, batch_response, single_response

    finished, calls, batch_response, single_response = asyncio.run(scenario())
    assert finished == ["single", "batch"]
    # slice 1 (2 rows, running when the single came), the single, then the batch's slices 2 and 3
    assert [len(c) for c in calls] == [2, 1, 2, 2] and calls[1][0]["time_in_hospital"] == 4
    assert batch_response.status_code == 200 and len(batch_response.json()["predictions"]) == 6
    assert single_response.status_code == 200 and single_response.json()["probability"] == 0.25


def test_one_failing_record_fails_only_its_own_request(caplog):
    """A micro-batch of 8 with one record the model raises on and one it answers NaN for: 6 answers, 2 generic
    500s (no exception text), both counted and logged; the failure is isolated by re-scoring halves."""

    async def scenario():
        model = DoubleModel(turnstile=threading.Semaphore(0))
        async with in_process(model) as (client, services):
            blocker = asyncio.create_task(client.post("/predict", json=encounter(1)))
            await until(lambda: len(model.calls) == 1, "the first call holds the worker")
            stays = [2, 3, FAILS, 4, 5, NOT_FINITE, 6, 7]
            requests = [asyncio.create_task(client.post("/predict", json=encounter(s))) for s in stays]
            await until(lambda: len(services.scheduler._singles) == len(stays), "the 8 requests are queued")
            model.turnstile.release(1000)
            responses = await asyncio.gather(blocker, *requests)
        return stays, responses[1:], model.calls

    failures = {reason: counter("readmit_api_record_failures_total", reason=reason)
                for reason in ("exception", "non_finite")}
    with caplog.at_level(logging.WARNING, logger="readmit_serving"):
        stays, responses, calls = asyncio.run(scenario())
    for stay, response in zip(stays, responses, strict=True):
        if stay in (FAILS, NOT_FINITE):
            assert response.status_code == 500, response.text
            assert set(response.json()) == {"detail", "request_id"} and response.json()["detail"] == "internal error"
            no_internals(response)
            assert any(response.json()["request_id"] in r.getMessage() for r in caplog.records)
        else:
            assert response.status_code == 200 and response.json()["probability"] == 0.25, response.text
    assert len(calls[1]) == 8  # the 8 were one micro-batch, then re-scored apart
    assert any(len(c) == 1 and c[0]["time_in_hospital"] == FAILS for c in calls)
    for reason in failures:
        assert counter("readmit_api_record_failures_total", reason=reason) - failures[reason] == 1, reason


def test_a_failing_batch_fails_alone():
    async def scenario():
        model = DoubleModel()
        async with in_process(model, BATCH_SLICE_ROWS=2) as (client, _):
            failing = await client.post("/predict/batch", json={"encounters": [encounter(), encounter(FAILS)]})
            fine = await client.post("/predict", json=encounter())
        return failing, fine

    failing, fine = asyncio.run(scenario())
    assert failing.status_code == 500 and failing.json()["detail"] == "internal error"
    no_internals(failing)
    assert fine.status_code == 200


def test_a_queued_request_past_its_deadline_is_refused_and_never_scored():
    async def scenario():
        model = DoubleModel(turnstile=threading.Semaphore(0))
        async with in_process(model, REQUEST_DEADLINE_MS=1500, SHED_RETRY_AFTER_MS=2500) as (client, services):
            first = asyncio.create_task(client.post("/predict", json=encounter(1)))
            await until(lambda: len(model.calls) == 1, "the first call holds the worker")
            late = asyncio.create_task(client.post("/predict", json=encounter(9)))
            await until(lambda: services.scheduler._singles or late.done(), "the second request is queued")
            await asyncio.sleep(2.0)  # its deadline passes while it waits (1.5 s after its arrival)
            model.turnstile.release(1000)
            return await first, await late, model.calls

    shed = counter("readmit_api_shed_total", route="/predict", reason="deadline")
    first, late, calls = asyncio.run(scenario())
    assert first.status_code == 200
    assert late.status_code == 503 and late.json()["reason"] == "deadline"
    assert late.json()["retry_after_ms"] == 2500 and late.headers["retry-after"] == "3"
    assert all(r["time_in_hospital"] != 9 for c in calls for r in c)  # dropped before any model call
    assert counter("readmit_api_shed_total", route="/predict", reason="deadline") - shed == 1


def test_queued_batch_rows_are_bounded():
    async def scenario():
        model = DoubleModel(turnstile=threading.Semaphore(0))
        async with in_process(model, BATCH_SLICE_ROWS=2, MAX_QUEUED_BATCH_ROWS=4) as (client, services):
            first = asyncio.create_task(client.post("/predict/batch", json={"encounters": [encounter()] * 4}))
            await until(lambda: len(model.calls) == 1, "the first batch is being scored")
            refused = await client.post("/predict/batch", json={"encounters": [encounter()] * 2})
            single = asyncio.create_task(client.post("/predict", json=encounter()))  # singles are not bounded by it
            await until(lambda: services.scheduler._singles, "the single is queued")
            model.turnstile.release(1000)
            return await first, refused, await single

    first, refused, single = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.json()["reason"] == "batch_queue"
    assert refused.headers["retry-after"] == "1" and refused.json()["retry_after_ms"] == 1000
    assert first.status_code == 200 and single.status_code == 200


def test_a_stuck_inference_worker_fails_liveness():
    async def scenario():
        model = DoubleModel(turnstile=threading.Semaphore(0))
        async with in_process(model, INFERENCE_STUCK_SECONDS=0.3) as (client, _):
            assert (await client.get("/health")).json() == {"status": "ok"}
            waiting = asyncio.create_task(client.post("/predict", json=encounter()))
            await until(lambda: model.calls, "the call started")
            stuck = await client.get("/health")
            while stuck.status_code == 200:  # until the call has run INFERENCE_STUCK_SECONDS
                await asyncio.sleep(0.05)
                stuck = await client.get("/health")
            model.turnstile.release()
            answered = await waiting
            return stuck, answered, await client.get("/health")

    stuck, answered, healthy = asyncio.run(scenario())
    assert stuck.status_code == 503 and stuck.json()["status"] == "stuck"
    assert "model call" in stuck.json()["detail"] and len(stuck.text) < 200
    assert answered.status_code == 200 and healthy.status_code == 200


# -- a real API with small limits ---------------------------------------------------------------------------

LIMITS = {"MAX_IN_FLIGHT": "2", "MAX_IN_FLIGHT_BATCH": "1", "MAX_BODY_BYTES": "65536",
          "REQUEST_DEADLINE_MS": "1500"}


@pytest.fixture(scope="module")
def small_api(registered, tmp_path_factory):
    url, process = api_process(tmp_path_factory.mktemp("overload-api"), registered.tracking_uri,
                               registered.model_name, **LIMITS)
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield url


def sample(api: str, series: str) -> float:
    for line in httpx.get(f"{api}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


@contextmanager
def held_requests(api: str, path: str, body: bytes, count: int) -> Iterator[list[socket.socket]]:
    """``count`` requests whose headers and first half of the body are sent: in flight until the rest comes."""
    host, port = urlsplit(api).hostname, urlsplit(api).port
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=60)
            sockets.append(sock)
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEYS['tests']}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body[: len(body) // 2])
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def finish(sockets: list[socket.socket], body: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    for sock in sockets:
        sock.sendall(body[len(body) // 2:])
    return [read_response(sock) for sock in sockets]


def in_flight(api: str) -> float:
    return sample(api, 'readmit_api_requests_in_progress{method="POST"}')


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_beyond_max_in_flight_requests_are_shed_at_once(small_api):
    body = json.dumps(encounter()).encode()
    shed = 'readmit_api_shed_total{reason="in_flight",route="/predict"}'
    before = sample(small_api, shed)
    with held_requests(small_api, "/predict", body, 2) as held:
        wait_for(lambda: in_flight(small_api) >= 2, "two requests in flight")
        refused = httpx.post(f"{small_api}/predict", json=encounter(), headers=AUTH)
        other_route = httpx.post(f"{small_api}/predict/batch", json={"encounters": [encounter()]}, headers=AUTH)
        answers = finish(held, body)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"detail": "the prediction service is at capacity: retry in 1000 ms",
                              "reason": "in_flight", "retry_after_ms": 1000}
    assert other_route.status_code == 200  # each prediction route has its own limit
    assert [status for status, _, _ in answers] == [200, 200]
    assert sample(small_api, shed) - before == 1
    assert httpx.post(f"{small_api}/predict", json=encounter(), headers=AUTH).status_code == 200
    metrics = httpx.get(f"{small_api}/metrics").text
    assert 'readmit_api_requests_total{method="POST",route="/predict",status="503"}' in metrics


@pytest.mark.slow
def test_a_request_past_its_deadline_is_not_scored(small_api):
    body = json.dumps(encounter()).encode()
    rows = "readmit_api_inference_batch_rows_sum"
    shed = 'readmit_api_shed_total{reason="deadline",route="/predict"}'
    scored, before = sample(small_api, rows), sample(small_api, shed)
    with held_requests(small_api, "/predict", body, 1) as held:
        wait_for(lambda: in_flight(small_api) >= 1, "the request is admitted")
        time.sleep(2.0)  # REQUEST_DEADLINE_MS is 1.5 s
        ((status, headers, answer),) = finish(held, body)
    assert status == 503 and headers["retry-after"] == "1" and json.loads(answer)["reason"] == "deadline"
    assert sample(small_api, shed) - before == 1
    assert sample(small_api, rows) == scored  # no model call for it


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_a_body_over_the_limit_is_refused_before_it_is_read(small_api, path):
    host, port = urlsplit(small_api).hostname, urlsplit(small_api).port
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEYS['tests']}\r\nContent-Type: application/json\r\n"
    # declared too large: refused on the headers alone (not a byte of the body is sent)
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(f"{head}Content-Length: {100 * 2**20}\r\n\r\n".encode())
        status, headers, body = read_response(sock)
    assert status == 413 and headers["connection"] == "close" and "65,536 bytes" in json.loads(body)["detail"]
    # chunked, no length: counted as it streams, refused once past the limit
    sent = 0
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"[" * 8192
        try:
            while sent < 100 * 2**20 and not select.select([sock], [], [], 0)[0]:  # until the server answers
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, _ = read_response(sock)
    assert status == 413 and sent < 100 * 2**20
    # within the limit: served
    fits = {"encounters": [encounter()] * 20} if path == "/predict/batch" else encounter()
    assert httpx.post(f"{small_api}{path}", json=fits, headers=AUTH).status_code == 200
