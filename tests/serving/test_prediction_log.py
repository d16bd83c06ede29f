"""The prediction log (issue 16): every answer of the API written to the Predictions store, without adding latency.

Real components only: the API as a uvicorn process serving the registered champion, writing to a fresh database
on the test MariaDB, to a private MariaDB that the test kills, freezes and restarts (the shared one is never
touched), and to the SQLite file of the embedded default; MySQL identities with only INSERT and CREATE on the
table; the writer itself against real stores (a closed port is a real refusal).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import signal
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy
from prometheus_client import REGISTRY
from readmit_contract import Encounter
from readmit_contract.prediction_log import ENCOUNTER_NAMES, encounter_json, metadata, prediction_log
from readmit_contract.target import EXCLUDED_DISCHARGE_DISPOSITIONS
from readmit_serving.api.prediction_log import ROW_COLUMNS, PredictionLog
from readmit_serving.api.schemas import Prediction
from sqlalchemy import create_engine, inspect, select

from ..conftest import MYSQL_URL
from ..data.private_mariadb import PrivateMariaDB
from ..support import free_port, wait_http
from .conftest import AUTH, api_process
from .test_history_lookup import _metric

REQUEST_ID = "x-request-id"
DROP_REASONS = ("buffer_full", "store_error", "shutdown")


# -- helpers -------------------------------------------------------------------------------------------------


def _log_metrics(api: str) -> dict[str, float]:
    figures = {"written": _metric(api, "readmit_api_prediction_log_written_total"),
               "buffered": _metric(api, "readmit_api_prediction_log_buffered_rows")}
    for reason in DROP_REASONS:
        figures[reason] = _metric(api, "readmit_api_prediction_log_dropped_total", reason=reason)
    return figures


def _wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(interval)


def _rows(url: str) -> list[dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(prediction_log.name):
                return []
            return [dict(row._mapping) for row in conn.execute(select(prediction_log).order_by(prediction_log.c.id))]
    finally:
        engine.dispose()


def _out_of_scope(body: dict) -> dict:
    return {**body, "discharge_disposition_id": sorted(EXCLUDED_DISCHARGE_DISPOSITIONS)[0]}


def _as_received(body: dict) -> dict:
    """The ``encounter`` column of a request body: the contract's input columns of the validated encounter."""
    return json.loads(encounter_json(Encounter.model_validate(body).to_record()))


def _assert_row_is_the_answer(row: dict, endpoint: str, body: dict, answer: dict) -> None:
    """A logged row holds what was received and what was answered."""
    assert row["endpoint"] == endpoint and row["caller"] == "tests"
    assert (row["model_name"], row["model_version"]) == (answer["model_name"], answer["model_version"])
    assert bool(row["scored"]) is answer["scored"]
    assert (row["risk_band"], row["reason"], row["history"]) == (answer["risk_band"], answer["reason"],
                                                                answer["history"])
    if answer["probability"] is None:
        assert row["probability"] is None
    else:  # the contract's Float is MySQL's FLOAT: single precision, which MariaDB sends with 6 digits
        assert row["probability"] == pytest.approx(answer["probability"], rel=1e-5, abs=1e-7)
    assert (row["encounter_id"], row["patient_nbr"]) == (body.get("encounter_id"), body.get("patient_nbr"))
    assert json.loads(row["encounter"]) == _as_received(body)
    assert set(json.loads(row["encounter"])) == set(ENCOUNTER_NAMES)  # no history the API attached


# -- 1. under load, on MariaDB: nothing lost ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mariadb_log(registered, mysql_databases, tmp_path_factory):
    """The API logging to a fresh database of the test MariaDB (defaults otherwise); yields (API URL, DB URL)."""
    database = mysql_databases.create("predlog")
    url, process = api_process(tmp_path_factory.mktemp("predlog-api"), registered.tracking_uri,
                               registered.model_name, PREDICTIONS_DB_URL=database)
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield url, database


async def _load(api: str, encounters: list[dict], singles: int, batches: int) -> list[dict]:
    """``singles`` POST /predict (1 in 20 out of scope, 1 in 50 with explain=true, 1 in 100 invalid) from 12
    concurrent clients, and ``batches`` POST /predict/batch of 40 (some out of scope) from 2 more."""
    rng = random.Random(16)  # noqa: S311 - a reproducible sample, not a secret
    work: asyncio.Queue = asyncio.Queue()
    for i in range(singles):
        body = dict(rng.choice(encounters))
        if i % 20 == 7:
            body = _out_of_scope(body)
        if i % 100 == 42:
            work.put_nowait(("invalid", "/predict", {**body, "age": "[200-300)"}, None))
        elif i % 50 == 11:
            work.put_nowait(("predict", "/predict", body, {"explain": "true"}))
        else:
            work.put_nowait(("predict", "/predict", body, None))
    batch_work: asyncio.Queue = asyncio.Queue()
    for i in range(batches):
        bodies = [dict(b) for b in rng.sample(encounters, 40)]
        for j in range(i % 4):
            bodies[j * 7] = _out_of_scope(bodies[j * 7])
        batch_work.put_nowait(("batch", "/predict/batch", {"encounters": bodies}, None))
    results: list[dict] = []

    async def client(queue: asyncio.Queue) -> None:
        async with httpx.AsyncClient(base_url=api, headers=AUTH, timeout=60) as http:
            while not queue.empty():
                kind, path, body, params = queue.get_nowait()
                answer = await http.post(path, json=body, params=params)
                results.append({"kind": kind, "body": body, "status": answer.status_code,
                                "request_id": answer.headers.get(REQUEST_ID),
                                "json": answer.json() if answer.status_code == 200 else None})

    await asyncio.gather(*(client(work) for _ in range(12)), *(client(batch_work) for _ in range(2)))
    return results


@pytest.mark.slow
def test_under_load_every_answer_is_logged_once_as_answered(mariadb_log, encounters):
    api, database = mariadb_log
    before = _log_metrics(api)
    started = datetime.now(UTC).replace(tzinfo=None)
    results = asyncio.run(_load(api, encounters, singles=3000, batches=30))
    ended = datetime.now(UTC).replace(tzinfo=None)

    answered = [r for r in results if r["status"] == 200]
    statuses = {r["status"] for r in results}
    assert statuses <= {200, 422, 503}, statuses
    assert {r["status"] for r in results if r["kind"] == "invalid"} == {422}
    assert all(r["request_id"] is None for r in results if r["status"] != 200)  # refused: no id, no row
    assert len(answered) >= 0.95 * len(results) - 30
    ids = [r["request_id"] for r in answered]
    assert all(i and len(i) == 32 and int(i, 16) >= 0 for i in ids) and len(set(ids)) == len(ids)
    expected: dict[tuple[str, int], tuple[str, dict, dict]] = {}
    for r in answered:
        if r["kind"] == "batch":
            for position, (body, answer) in enumerate(zip(r["body"]["encounters"], r["json"]["predictions"],
                                                          strict=True)):
                expected[(r["request_id"], position)] = ("batch", body, answer)
        else:
            expected[(r["request_id"], 0)] = ("predict", r["body"], r["json"])
    assert sum(1 for e in expected.values() if not e[2]["scored"]) > 150  # out-of-scope answers among them
    assert sum(1 for r in answered if r["body"] is not None and "explanation" in (r["json"] or {})) >= 50

    # the writer catches up within its flush interval; nothing is lost, nothing written twice
    _wait_for(lambda: _log_metrics(api)["written"] - before["written"] >= len(expected), 30, "every row written")
    rows = _rows(database)
    after = _log_metrics(api)
    assert after["written"] - before["written"] == len(expected)
    assert all(after[reason] == before[reason] == 0 for reason in DROP_REASONS), after
    assert after["buffered"] == 0
    mine = [row for row in rows if row["request_id"] in {key[0] for key in expected}]
    assert len(mine) == len(expected) == len({(row["request_id"], row["position"]) for row in mine})
    assert {r["request_id"] for r in answered} <= {row["request_id"] for row in rows}
    for row in mine:
        endpoint, body, answer = expected[(row["request_id"], row["position"])]
        _assert_row_is_the_answer(row, endpoint, body, answer)
        assert started - timedelta(seconds=1) <= row["predicted_at"] <= ended + timedelta(seconds=1)
    # the write duration of each batch INSERT is observed
    assert _metric(api, "readmit_api_prediction_log_write_duration_seconds_count") >= 1


@pytest.mark.slow
def test_refused_requests_are_not_logged(mariadb_log, encounters):
    """401, 413 and 422 answers carry no request id and add no row."""
    api, database = mariadb_log
    before = len(_rows(database))
    written = _log_metrics(api)["written"]
    with httpx.Client(base_url=api, timeout=30) as client:
        assert client.post("/predict", json=encounters[0]).status_code == 401
        assert client.post("/predict", json={"age": "old"}, headers=AUTH).status_code == 422
        assert client.post("/predict/batch", json={"encounters": []}, headers=AUTH).status_code == 422
        too_long = client.post("/predict/batch", content=b"x" * 5_000_000,
                               headers={**AUTH, "content-type": "application/json"})
        assert too_long.status_code == 413
        answer = client.post("/predict", json=encounters[1], headers=AUTH)
    assert answer.status_code == 200
    _wait_for(lambda: _log_metrics(api)["written"] >= written + 1, 10, "the one answer written")
    rows = _rows(database)
    assert len(rows) == before + 1 and rows[-1]["request_id"] == answer.headers[REQUEST_ID]


# -- 2. the store down, frozen, back -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_store(tmp_path_factory):
    server = PrivateMariaDB(tmp_path_factory.mktemp("predlog-mariadb"))
    server.start()
    try:
        server.predictions_url = server.database("predictions")
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


BUFFER = 300


@pytest.fixture(scope="module")
def fragile_log(registered, private_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("predlog-fragile-api")
    url, process = api_process(folder, registered.tracking_uri, registered.model_name,
                               PREDICTIONS_DB_URL=private_store.predictions_url,
                               PREDICTION_LOG_BUFFER_ROWS=str(BUFFER), PREDICTION_LOG_BATCH_ROWS="50",
                               PREDICTION_LOG_FLUSH_MS="100")
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield url, folder


def _timed(client: httpx.Client, encounters: list[dict], count: int, offset: int = 0) -> tuple[list[str], list[float]]:
    ids, seconds = [], []
    for i in range(count):
        started = time.perf_counter()
        answer = client.post("/predict", json=encounters[(offset + i) % len(encounters)])
        seconds.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
        ids.append(answer.headers[REQUEST_ID])
    return ids, seconds


@pytest.mark.slow
def test_a_store_down_or_frozen_costs_no_latency_and_writing_resumes(fragile_log, private_store, encounters):
    api, folder = fragile_log
    store = private_store.predictions_url
    with httpx.Client(base_url=api, headers=AUTH, timeout=30) as client:
        # up: written within the flush interval
        up_ids, up_seconds = _timed(client, encounters, 100)
        _wait_for(lambda: _log_metrics(api)["written"] == 100, 10, "the first 100 rows written")
        assert _log_metrics(api)["buffered"] == 0

        # down (SIGKILL): answered as fast as before; the buffer fills to its bound, the rest is dropped
        private_store.kill()
        down_ids, down_seconds = _timed(client, encounters, 2 * BUFFER, offset=100)
        assert max(down_seconds) < 0.5, max(down_seconds)
        assert statistics.median(down_seconds) < 2 * statistics.median(up_seconds) + 0.005, \
            (statistics.median(down_seconds), statistics.median(up_seconds))
        figures = _log_metrics(api)
        assert figures["written"] == 100  # writing stopped
        assert figures["buffered"] == BUFFER
        assert figures["buffer_full"] == BUFFER  # 2 x BUFFER answered, BUFFER kept
        assert figures["store_error"] == figures["shutdown"] == 0

        # back: the buffered rows are written (the writer retries at most 10 s apart), the dropped ones never
        private_store.start()
        _wait_for(lambda: _log_metrics(api)["written"] == 100 + BUFFER, 40, "the buffered rows written")
        assert _log_metrics(api)["buffered"] == 0
        logged = [row["request_id"] for row in _rows(store)]
        assert logged == up_ids + down_ids[:BUFFER]  # in answer order: the first BUFFER answers were kept
        after_ids, _ = _timed(client, encounters, 20)
        _wait_for(lambda: _log_metrics(api)["written"] == 120 + BUFFER, 10, "new rows written again")

        # frozen (SIGSTOP: connections hang): still answered at once; written once it thaws
        os.kill(private_store.process.pid, signal.SIGSTOP)
        try:
            frozen_ids, frozen_seconds = _timed(client, encounters, 100)
            time.sleep(1.0)  # the writer is now stuck in its write, not the API
            more_ids, more_seconds = _timed(client, encounters, 50)
            assert max(frozen_seconds + more_seconds) < 0.5, max(frozen_seconds + more_seconds)
            assert _log_metrics(api)["written"] == 120 + BUFFER
        finally:
            os.kill(private_store.process.pid, signal.SIGCONT)
        _wait_for(lambda: _log_metrics(api)["written"] == 270 + BUFFER, 40, "the rows of the freeze written")
    assert _log_metrics(api)["buffer_full"] == BUFFER
    assert [row["request_id"] for row in _rows(store)] == (up_ids + down_ids[:BUFFER] + after_ids + frozen_ids
                                                            + more_ids)
    # the API's log says so in one line, without the URL, the SQL or the encounters
    log = "\n".join(p.read_text() for p in folder.glob("api-*.log"))
    assert "prediction log: the store is unavailable (OperationalError: (2003" in log, log[-3000:]
    assert "prediction log: writing again" in log
    assert "INSERT" not in log and "mysql+pymysql" not in log and '"encounter_id"' not in log


# -- 3. SQLite (the embedded default), and the flush at shutdown -------------------------------------------------


@pytest.mark.slow
def test_the_embedded_sqlite_file_gets_the_rows_flushed_at_shutdown(registered, encounters, tmp_path):
    """A flush interval longer than the test: the rows stay buffered while the API runs, and stopping it
    (SIGTERM) writes them to the SQLite file."""
    path = tmp_path / "predictions.db"
    url, process = api_process(tmp_path, registered.tracking_uri, registered.model_name,
                               PREDICTIONS_DB_URL=f"sqlite:///{path}", PREDICTION_LOG_FLUSH_MS="600000")
    expected = {}
    with process:
        wait_http(f"{url}/ready", timeout=120)
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
            for body in encounters[:20] + [_out_of_scope(encounters[20])]:
                answer = client.post("/predict", json=body)
                expected[(answer.headers[REQUEST_ID], 0)] = ("predict", body, answer.json())
            answer = client.post("/predict", json=encounters[21], params={"explain": "true"})
            assert answer.json()["explanation"]
            expected[(answer.headers[REQUEST_ID], 0)] = ("predict", encounters[21], answer.json())
            bodies = encounters[30:40]
            answer = client.post("/predict/batch", json={"encounters": bodies})
            for position, prediction in enumerate(answer.json()["predictions"]):
                expected[(answer.headers[REQUEST_ID], position)] = ("batch", bodies[position], prediction)
        assert _log_metrics(url)["buffered"] == len(expected) == 32
        assert _rows(f"sqlite:///{path}") == []
    rows = _rows(f"sqlite:///{path}")
    assert len(rows) == len(expected)
    for row in rows:
        endpoint, body, answer = expected[(row["request_id"], row["position"])]
        _assert_row_is_the_answer(row, endpoint, body, answer)
        assert row["probability"] == answer["probability"]  # SQLite's REAL: the answer's double, exactly


@pytest.mark.slow
def test_without_a_store_nothing_is_logged_and_answers_still_carry_an_id(http, encounters):
    answer = http.post("/predict", json=encounters[0])
    assert answer.status_code == 200 and len(answer.headers[REQUEST_ID]) == 32
    batch = http.post("/predict/batch", json={"encounters": encounters[:3]})
    assert batch.status_code == 200 and batch.headers[REQUEST_ID] != answer.headers[REQUEST_ID]
    assert _metric(str(http.base_url).rstrip("/"), "readmit_api_prediction_log_written_total") == 0


def test_without_a_store_a_startup_line_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="readmit_serving.api.prediction_log"):
        log = PredictionLog(None)
        log.start()
        log.add("a" * 32, "predict", "tests", {}, None)
        log.close()
    assert "prediction log off: PREDICTIONS_DB_URL is not set" in caplog.text
    assert log.buffered() == 0


def test_an_unusable_url_stops_the_start_without_showing_it():
    for url in ("not a url s3cr3t-pw", "oracle+nodriver://writer:s3cr3t-pw@db/predictions"):
        with pytest.raises(ValueError, match="PREDICTIONS_DB_URL is not a usable SQLAlchemy URL") as refused:
            PredictionLog(url)
        assert "s3cr3t-pw" not in str(refused.value)


# -- 4. the cluster's identity: INSERT and CREATE on the table, nothing else ----------------------------------


@pytest.fixture
def restricted_identity(mysql_databases):
    """A fresh database and a user of its own holding INSERT and CREATE on ``prediction_log`` only (dropped
    after the test); yields (its URL, the root URL of the database, a function granting less)."""
    root_url = mysql_databases.create("predlog_grant")
    database = sqlalchemy.make_url(root_url).database
    user, password = f"plw_{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(18)
    server = create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{password}'")
        conn.exec_driver_sql(f"GRANT INSERT, CREATE ON `{database}`.`prediction_log` TO '{user}'@'%%'")
    url = sqlalchemy.make_url(root_url).set(username=user, password=password).render_as_string(hide_password=False)
    try:
        yield url, root_url, user
    finally:
        with server.connect() as conn:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'%%'")
        server.dispose()


def _predictions(count: int, encounters: list[dict], model_name: str = "m") -> list[tuple[dict, dict]]:
    return [(Encounter.model_validate(encounters[i % len(encounters)]).to_record(),
             Prediction(probability=0.01 * (i % 100), risk_band="low", scored=True, history="off",
                        model_name=model_name, model_version="7").model_dump())
            for i in range(count)]


def _index_columns(url: str) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        return {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes(prediction_log.name)}
    finally:
        engine.dispose()


def test_an_identity_with_insert_and_create_only_makes_and_fills_the_table(restricted_identity, encounters,
                                                                           mysql_databases):
    url, root_url, user = restricted_identity
    engine = create_engine(url)
    with engine.connect() as conn:  # what the identity holds: nothing but these two on the one table
        grants = [row[0].replace("`", "") for row in conn.exec_driver_sql("SHOW GRANTS")]
    engine.dispose()
    assert [g for g in grants if " ON *.* " not in g] == [
        f"GRANT INSERT, CREATE ON {sqlalchemy.make_url(url).database}.prediction_log TO {user}@%"], grants
    assert all(g.startswith(("GRANT USAGE ON *.*",)) for g in grants if " ON *.* " in g), grants

    log = PredictionLog(url, batch_rows=40, flush_ms=50)
    log.start()
    for i, (record, prediction) in enumerate(_predictions(100, encounters)):
        log.add(f"{i:032x}", "predict", "tests", record, prediction)
    log.close()
    rows = _rows(root_url)
    assert [row["request_id"] for row in rows] == [f"{i:032x}" for i in range(100)]
    # the table is the contract's, indexes included (as metadata.create_all makes it with every privilege)
    reference = mysql_databases.create("predlog_reference")
    reference_engine = create_engine(reference)
    metadata.create_all(reference_engine)
    reference_engine.dispose()
    assert _index_columns(root_url) == _index_columns(reference) == {
        "ix_prediction_log_predicted_at": ["predicted_at"], "ix_prediction_log_request": ["request_id", "position"]}

    # a second start finds the table there (CREATE TABLE IF NOT EXISTS) and appends
    again = PredictionLog(url, flush_ms=50)
    again.start()
    record, prediction = _predictions(1, encounters)[0]
    again.add("f" * 32, "batch", "tests", record, prediction)
    again.close()
    assert [row["request_id"] for row in _rows(root_url)][-1] == "f" * 32


def test_an_identity_that_may_only_insert_writes_to_an_existing_table(restricted_identity, encounters, caplog):
    """Without CREATE (the table made by someone else): one warning, and the rows are written."""
    url, root_url, user = restricted_identity
    root = create_engine(root_url)
    metadata.create_all(root)
    database = sqlalchemy.make_url(root_url).database
    with root.connect() as conn:
        conn.exec_driver_sql(f"REVOKE CREATE ON `{database}`.`prediction_log` FROM '{user}'@'%%'")
    root.dispose()
    with caplog.at_level(logging.WARNING, logger="readmit_serving.api.prediction_log"):
        log = PredictionLog(url, flush_ms=50)
        log.start()
        for i, (record, prediction) in enumerate(_predictions(10, encounters)):
            log.add(f"{i:032x}", "predict", "tests", record, prediction)
        log.close()
    assert len(_rows(root_url)) == 10
    assert "the table cannot be created (OperationalError: (1142" in caplog.text
    assert "writing again" not in caplog.text and "unavailable" not in caplog.text


# -- 5. the writer against real stores: bound, batches, flush, bad rows -----------------------------------------


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _dropped(reason: str) -> float:
    return _sample("readmit_api_prediction_log_dropped_total", reason=reason)


def test_a_row_gives_every_column_of_the_contracts_table_but_its_id():
    assert sorted(ROW_COLUMNS) == sorted(c.name for c in prediction_log.columns if not c.primary_key)


def test_the_buffer_is_bounded_and_what_is_left_at_shutdown_is_counted(encounters):
    """Nothing listens on the store's port (a real refusal): the buffer holds its bound, the rest is dropped and
    counted; close() gives up after its bound and counts what was buffered."""
    log = PredictionLog(f"mysql+pymysql://nobody:pw@127.0.0.1:{free_port()}/predictions", buffer_rows=50,
                        batch_rows=20, flush_ms=10, shutdown_seconds=0.5)
    full, shutdown = _dropped("buffer_full"), _dropped("shutdown")
    log.start()
    started = time.perf_counter()
    for i, (record, prediction) in enumerate(_predictions(80, encounters)):
        log.add(f"{i:032x}", "predict", "tests", record, prediction)
    assert time.perf_counter() - started < 0.05  # 80 appends, no I/O
    assert log.buffered() == 50 and _dropped("buffer_full") == full + 30
    assert _sample("readmit_api_prediction_log_buffered_rows") == 50
    time.sleep(0.3)  # the writer fails to write, keeps the rows
    assert log.buffered() == 50
    started = time.perf_counter()
    log.close()
    assert time.perf_counter() - started < 2.0
    assert _dropped("shutdown") == shutdown + 50 and log.buffered() == 0


def test_rows_are_written_in_batches_and_flushed_at_shutdown(encounters, tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    log = PredictionLog(url, batch_rows=10, flush_ms=600_000)
    written, writes = _sample("readmit_api_prediction_log_written_total"), \
        _sample("readmit_api_prediction_log_write_duration_seconds_count")
    log.start()
    for i, (record, prediction) in enumerate(_predictions(35, encounters)):
        log.add(f"{i:032x}", "batch", "tests", record, prediction, position=i)
    # full batches go at once; the 5 left wait for the flush interval
    _wait_for(lambda: _sample("readmit_api_prediction_log_written_total") == written + 30, 5, "3 batches")
    assert _sample("readmit_api_prediction_log_write_duration_seconds_count") == writes + 3
    time.sleep(0.3)
    assert log.buffered() == 5 and len(_rows(url)) == 30
    log.close()  # the shutdown flush
    assert _sample("readmit_api_prediction_log_written_total") == written + 35
    assert [row["position"] for row in _rows(url)] == list(range(35))


def test_a_row_waits_at_most_the_flush_interval(encounters, tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    log = PredictionLog(url, batch_rows=500, flush_ms=400)
    log.start()
    try:
        time.sleep(0.2)  # the table exists; the writer waits for rows
        record, prediction = _predictions(1, encounters)[0]
        log.add("a" * 32, "predict", "tests", record, prediction)
        added = time.monotonic()
        time.sleep(0.2)
        assert _rows(url) == []
        _wait_for(lambda: _rows(url), 2, "the row written", interval=0.02)
        assert 0.35 < time.monotonic() - added < 1.0
    finally:
        log.close()


def test_a_row_the_store_refuses_is_dropped_alone(encounters, mysql_databases, caplog):
    """A model name longer than the column (MariaDB in strict mode refuses it): the batch is retried, then
    written in halves; the 29 good rows are written, the bad one dropped and counted as store_error."""
    url = mysql_databases.create("predlog_refused")
    errors = _dropped("store_error")
    rows = _predictions(30, encounters)
    rows[17] = (rows[17][0], _predictions(1, encounters, model_name="m" * 300)[0][1])
    log = PredictionLog(url, batch_rows=30, flush_ms=10, first_pause=0.05)
    with caplog.at_level(logging.WARNING, logger="readmit_serving.api.prediction_log"):
        log.start()
        for i, (record, prediction) in enumerate(rows):
            log.add(f"{i:032x}", "predict", "tests", record, prediction)
        _wait_for(lambda: _dropped("store_error") == errors + 1, 10, "the bad row dropped")
        log.close()
    assert sorted(row["request_id"] for row in _rows(url)) == [f"{i:032x}" for i in range(30) if i != 17]
    assert f"the store refused a row of request {17:032x} (DataError: (1406" in caplog.text
    assert "m" * 300 not in caplog.text
