"""The UI when the API sheds load (503 with ``reason``, ``Retry-After`` and ``retry_after_ms``).

The UI's client tells a shed 503 (busy: sent again after the wait the API asks for, a few times, then a
"busy" sentence) from a 503 without ``reason`` (no model yet); a CSV whose chunk stays shed keeps the chunks
already scored and marks every other row not scored with the reason: no row is lost.

Against one real API process with one slot per prediction route (``MAX_IN_FLIGHT=1``,
``MAX_IN_FLIGHT_BATCH=1``): a route is made full on purpose by a request whose body stops half-way
(orderings exact, no timing), or by threads hammering it (real concurrent load).
"""

from __future__ import annotations

import io
import json
import math
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import pytest
from readmit_contract import synthetic, validate

from ..support import wait_http
from .conftest import AUTH, KEYS, api_process

APP = Path(__file__).resolve().parents[2] / "server3-serving" / "ui" / "app.py"
sys.path.insert(0, str(APP.parent))  # the UI's modules live beside app.py (not an installed package)

from readmit_serving.api.admission import MESSAGES, Shedder  # noqa: E402
from readmit_serving.api.routes.predict import NO_MODEL as API_NO_MODEL  # noqa: E402
from readmit_ui.batch import NOT_ANSWERED, encounters_of, score_csv  # noqa: E402
from readmit_ui.client import (  # noqa: E402
    BUSY,
    BUSY_RETRIES,
    DEFAULT_RETRY_MS,
    MAX_RETRY_WAIT_SECONDS,
    NO_MODEL,
    ApiBusy,
    ApiClient,
    ApiUnavailable,
    json_answer,
    retry_wait,
)

from .test_ui import assert_no_internal_detail, run_app  # noqa: E402

UI_KEY = KEYS["ui"]
RETRY_MS = 100
LIMITS = {"MAX_IN_FLIGHT": "1", "MAX_IN_FLIGHT_BATCH": "1", "SHED_RETRY_AFTER_MS": str(RETRY_MS)}
CHUNK = 10


# -- the two 503s, on answers built by hand ---------------------------------------------------------------

def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=body, headers=headers or {},
                          request=httpx.Request("POST", "http://api.internal:8000/predict"))


def api_shed(reason: str) -> httpx.Response:
    """The API's own shed answer (``admission.Shedder``), as the client receives it."""
    shed = Shedder(250).response("/predict", reason)
    return answer(shed.status_code, bytes(shed.body), dict(shed.headers))


@pytest.mark.parametrize("reason", sorted(MESSAGES))
def test_a_shed_503_is_busy_with_the_wait_the_api_asks_for(reason):
    with pytest.raises(ApiBusy) as info:
        json_answer(api_shed(reason))
    assert str(info.value) == BUSY and info.value.reason == reason and info.value.retry_after_ms == 250
    for internal in (MESSAGES[reason], "250", reason, "503"):  # the page says "busy", nothing of the API's text
        assert internal not in str(info.value)


def test_a_503_without_reason_is_no_model_not_busy():
    for body in (json.dumps({"detail": API_NO_MODEL}).encode(), b"Service Unavailable", b"",
                 json.dumps({"detail": "x", "reason": None}).encode(), b"[1, 2]"):
        with pytest.raises(ApiUnavailable) as info:
            json_answer(answer(503, body, {"Retry-After": "5"}))
        assert not isinstance(info.value, ApiBusy) and str(info.value) == NO_MODEL, body


@pytest.mark.parametrize(("body", "headers", "expected_ms"), [
    ({"reason": "in_flight", "retry_after_ms": 40}, {"Retry-After": "1"}, 40),
    ({"reason": "in_flight"}, {"Retry-After": "3"}, 3000),  # no retry_after_ms: the header, in seconds
    ({"reason": "in_flight", "retry_after_ms": True}, {"Retry-After": "2"}, 2000),
    ({"reason": "in_flight", "retry_after_ms": -5}, {}, DEFAULT_RETRY_MS),
    ({"reason": "deadline"}, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, DEFAULT_RETRY_MS),
])
def test_the_wait_of_a_shed_503(body, headers, expected_ms):
    with pytest.raises(ApiBusy) as info:
        json_answer(answer(503, json.dumps(body).encode(), headers))
    assert info.value.retry_after_ms == expected_ms


def test_a_retry_waits_at_least_what_the_api_asks_and_never_long():
    waits = [retry_wait(RETRY_MS) for _ in range(200)]
    assert all(RETRY_MS / 1000 <= w <= RETRY_MS / 1000 * 1.2 for w in waits) and len(set(waits)) > 1  # jitter
    assert retry_wait(60_000) == MAX_RETRY_WAIT_SECONDS and retry_wait(60_000, max_wait=0.5) == 0.5
    assert retry_wait(0) == 0


# -- one real API, one slot per prediction route --------------------------------------------------------

@pytest.fixture(scope="module")
def busy_api(registered, tmp_path_factory):
    url, process = api_process(tmp_path_factory.mktemp("busy-api"), registered.tracking_uri,
                               registered.model_name, **LIMITS)
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield url


@pytest.fixture(scope="module")
def upload() -> tuple[pd.DataFrame, bytes]:
    """50 synthetic encounters in the raw format, then one row the contract rejects."""
    frame = synthetic.generate(50, seed=5)
    bad = frame.iloc[[0]].assign(encounter_id="999999999", time_in_hospital="abc")
    frame = pd.concat([frame, bad], ignore_index=True)
    return frame, frame.to_csv(index=False).encode()


@pytest.fixture(scope="module")
def reference(busy_api, upload) -> pd.DataFrame:
    """The API's answers for the upload's valid rows, asked while nothing else runs."""
    valid = validate(upload[0]).valid
    answers = httpx.post(f"{busy_api}/predict/batch", json={"encounters": encounters_of(valid)}, headers=AUTH,
                         timeout=60).raise_for_status().json()["predictions"]
    return pd.DataFrame(answers, index=valid.index)


def sample(api: str, series: str) -> float:
    for line in httpx.get(f"{api}/metrics", timeout=30).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def shed_count(api: str, route: str) -> float:
    return sum(sample(api, f'readmit_api_shed_total{{reason="{reason}",route="{route}"}}') for reason in MESSAGES)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait until ``condition()`` (the bound only ends a broken test; nothing here is timed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def in_progress(api: str) -> float:
    return sample(api, 'readmit_api_requests_in_progress{method="POST"}')


class Hold:
    """A request on ``path`` whose headers and half its body are sent: admitted, it keeps the route's only
    slot until ``release()`` sends the rest and reads its answer. ``others``: the requests in flight (other
    holds) when it is sent; nothing else may be."""

    def __init__(self, api: str, path: str, body: bytes, others: int = 0) -> None:
        self.api, self.body = api, body
        wait_for(lambda: in_progress(api) == others, "only the other held requests in flight")
        parts = urlsplit(api)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nX-API-Key: {KEYS['tests']}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                          + body[: len(body) // 2])
        self.released = False
        wait_for(lambda: in_progress(api) > others, f"the request holding {path} is admitted")

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            self.sock.sendall(self.body[len(self.body) // 2:])
            data = b""
            while b"\r\n\r\n" not in data:  # its answer (200, or 503 past its deadline) frees the slot
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            self.sock.close()


@contextmanager
def held(api: str, path: str, body: dict, others: int = 0) -> Iterator[Hold]:
    hold = Hold(api, path, json.dumps(body).encode(), others)
    try:
        yield hold
    finally:
        hold.release()


def assert_same_answers(result: pd.DataFrame, rows: pd.Index, reference: pd.DataFrame) -> None:
    # the API answers small calls with stacked trees, large ones with scikit-learn: equal to 1e-9
    np.testing.assert_allclose(result.loc[rows, "probability"].to_numpy(dtype=float),
                               reference.loc[rows, "probability"].to_numpy(dtype=float), rtol=0, atol=1e-9)
    assert result.loc[rows, "scored"].tolist() == reference.loc[rows, "scored"].tolist()
    assert result.loc[rows, "risk_band"].tolist() == reference.loc[rows, "risk_band"].tolist()


def assert_no_row_lost(result, frame: pd.DataFrame, reference: pd.DataFrame) -> pd.Index:
    """Every uploaded row is in the output, scored or with its reason; the answered ones as the API answers them
    unloaded. Returns the valid rows left unanswered."""
    scored = result.scored
    assert len(scored) == len(frame) and result.n_sent == len(reference)
    pd.testing.assert_frame_equal(scored[list(frame.columns)], frame)
    reasons = scored["reason"].where(scored["reason"].notna(), "")
    assert (scored["scored"] | (reasons.str.len() > 0)).all()  # scored, or not scored with a reason
    unanswered = reference.index[reasons.loc[reference.index].str.startswith(NOT_ANSWERED).to_numpy()]
    answered = reference.index.difference(unanswered)
    assert_same_answers(scored, answered, reference)
    assert (reasons.loc[unanswered] == NOT_ANSWERED + BUSY).all() and not scored.loc[unanswered, "scored"].any()
    assert scored.loc[unanswered, "probability"].isna().all()
    assert result.n_unanswered == len(unanswered) and result.interruption == (BUSY if len(unanswered) else None)
    assert list(result.rejected["row"]) == [len(frame)]  # the contract's rejection is still reported
    assert scored.loc[len(frame) - 1, "reason"].startswith("rejected by the contract: time_in_hospital")
    assert len(pd.read_csv(io.BytesIO(result.to_csv()), dtype=str)) == len(frame)
    return unanswered


@pytest.mark.slow
def test_a_shed_prediction_is_sent_again_once_there_is_room(busy_api, encounters):
    plain = httpx.post(f"{busy_api}/predict", json=encounters[0], headers=AUTH, timeout=30).raise_for_status().json()
    waits: list[float] = []
    with held(busy_api, "/predict", encounters[1]) as hold:
        before = shed_count(busy_api, "/predict")

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            hold.release()  # the slot is free before the request is sent again
            time.sleep(seconds)

        with ApiClient(busy_api, UI_KEY, sleep=sleep) as client:
            result = client.predict(encounters[0])
    assert result["scored"] and math.isclose(result["probability"], plain["probability"], rel_tol=0, abs_tol=1e-9)
    assert result["risk_band"] == plain["risk_band"]
    assert len(waits) == 1 and RETRY_MS / 1000 <= waits[0] <= MAX_RETRY_WAIT_SECONDS
    assert shed_count(busy_api, "/predict") - before == 1  # the first attempt was shed, the second scored


@pytest.mark.slow
def test_a_prediction_shed_every_time_is_a_busy_message(busy_api, encounters):
    waits: list[float] = []
    with held(busy_api, "/predict", encounters[1]):
        before = shed_count(busy_api, "/predict")
        with ApiClient(busy_api, UI_KEY, sleep=lambda s: (waits.append(s), time.sleep(s))) as client, \
                pytest.raises(ApiBusy) as info:
            client.predict(encounters[0])
        assert shed_count(busy_api, "/predict") - before == BUSY_RETRIES + 1  # bounded: then it gives up
    assert str(info.value) == BUSY and len(waits) == BUSY_RETRIES
    assert all(RETRY_MS / 1000 <= w <= MAX_RETRY_WAIT_SECONDS for w in waits)


@pytest.mark.slow
def test_a_csv_chunk_shed_to_the_end_keeps_the_chunks_already_scored(busy_api, encounters, upload, reference):
    frame, data = upload
    progress: list[tuple[int, int]] = []
    with ExitStack() as stack:
        def on_progress(done: int, total: int) -> None:
            progress.append((done, total))
            if done == 2 * CHUNK:  # the route is full from the third chunk on
                stack.enter_context(held(busy_api, "/predict/batch", {"encounters": encounters[:2]}))

        with ApiClient(busy_api, UI_KEY) as client:
            result = score_csv(data, client, chunk_size=CHUNK, progress=on_progress)
    unanswered = assert_no_row_lost(result, frame, reference)
    assert list(unanswered) == list(reference.index[2 * CHUNK:]) and result.n_answered == 2 * CHUNK
    assert progress == [(CHUNK, 50), (2 * CHUNK, 50)]
    assert result.scored.loc[reference.index[:2 * CHUNK], "model_version"].notna().all()


@pytest.mark.slow
def test_the_page_says_busy_and_keeps_every_row(busy_api, encounters, monkeypatch, upload, reference):
    frame, data = upload
    at = run_app(monkeypatch, busy_api)
    with held(busy_api, "/predict", encounters[1]), \
            held(busy_api, "/predict/batch", {"encounters": encounters[:2]}, others=1):
        at.button(key="predict").click().run()
        assert at.session_state["prediction"].down == BUSY and BUSY in [e.value for e in at.main.error]
        at.file_uploader(key="csv").set_value(("encounters.csv", data, "text/csv")).run()
        at.button(key="score").click().run()
    outcome = at.session_state["batch"][1]
    assert outcome.down is None and [e.value for e in at.error] == [BUSY]  # the single prediction's, still shown
    unanswered = assert_no_row_lost(outcome.result, frame, reference)
    assert len(unanswered) == 50
    warnings = [w.value for w in at.warning]
    assert any("50 not scored because the prediction service did not answer" in w for w in warnings)
    assert any(w.startswith("Scoring stopped after 0 of 50 valid rows: " + BUSY) for w in warnings)
    assert at.download_button(key="download")
    assert_no_internal_detail(at, busy_api)
    for internal in ("in_flight", "retry_after_ms", "at capacity"):
        assert internal not in str([w.value for w in at.warning] + [e.value for e in at.error])


# -- real concurrent load ----------------------------------------------------------------------------------

class Hammer:
    """Threads sending prediction requests back to back (no retry), counting the answers by status/reason."""

    def __init__(self, api: str, jobs: list[tuple[str, dict]]) -> None:
        self.api, self.jobs = api, jobs
        self.stop = threading.Event()
        self.answers: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=job, daemon=True) for job in jobs]

    def _run(self, path: str, body: dict) -> None:
        with httpx.Client(base_url=self.api, headers=AUTH, timeout=60) as http:
            while not self.stop.is_set():
                try:
                    response = http.post(path, json=body)
                    key = str(response.status_code)
                    if response.status_code == 503:
                        key += ":" + str(response.json().get("reason"))
                except (httpx.HTTPError, ValueError) as exc:  # counted: the test then fails on it
                    key = f"error:{type(exc).__name__}"
                with self.lock:
                    self.answers[key] += 1

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        wait_for(lambda: sum(self.answers.values()) >= 20, "the hammers are running")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


@pytest.mark.slow
def test_under_real_load_every_ui_call_is_answered_or_busy_and_no_csv_row_is_lost(busy_api, encounters, upload,
                                                                                    reference):
    frame, data = upload
    singles = encounters[:20]
    expected = httpx.post(f"{busy_api}/predict/batch", json={"encounters": singles}, headers=AUTH,
                          timeout=60).raise_for_status().json()["predictions"]
    jobs = [("/predict", encounters[30])] * 3 + [("/predict/batch", {"encounters": encounters[40:60]})] * 2
    with Hammer(busy_api, jobs) as hammer:
        # one try each: some calls are shed, each shed one is the busy sentence
        busy = 0
        with ApiClient(busy_api, UI_KEY, busy_retries=0) as client:
            for i in range(200):
                try:
                    result = client.predict(singles[i % len(singles)])
                except ApiBusy as exc:
                    assert str(exc) == BUSY
                    busy += 1
                else:
                    assert math.isclose(result["probability"], expected[i % len(singles)]["probability"],
                                        rel_tol=0, abs_tol=1e-9)
                if busy >= 3:
                    break
        assert busy >= 3

        # with retries: each call is its prediction or, after the retries, the busy sentence
        with ApiClient(busy_api, UI_KEY) as client:
            for i, encounter in enumerate(singles[:10]):
                try:
                    result = client.predict(encounter)
                except ApiBusy as exc:
                    assert str(exc) == BUSY
                else:
                    assert math.isclose(result["probability"], expected[i]["probability"], rel_tol=0, abs_tol=1e-9)

        # CSV uploads: each row scored as unloaded, or marked not scored with the reason; until one was shed
        retried = 0
        for _ in range(5):
            waits: list[float] = []
            with ApiClient(busy_api, UI_KEY, sleep=lambda s, waits=waits: (waits.append(s), time.sleep(s))) as client:
                result = score_csv(data, client, chunk_size=5)
            assert_no_row_lost(result, frame, reference)
            retried += len(waits)
            if retried:
                break
        assert retried  # the uploads met the shedding (and were sent again)
    statuses = {key.split(":")[0] for key in hammer.answers}
    assert statuses <= {"200", "503"} and any(key.startswith("503:") for key in hammer.answers), hammer.answers
    assert "503:None" not in hammer.answers  # every 503 under load names its reason
