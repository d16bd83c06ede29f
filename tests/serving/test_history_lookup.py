"""The API looks a patient's history up in the real CleanData store (a MariaDB of the test's own, and the
SQLite file of the embedded default): a hit scores with the history training used, a miss scores as a first
encounter, and a store that is down or hangs leaves the API answering at once, without history, saying so."""

from __future__ import annotations

import os
import signal
import time

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from readmit_contract.columns import FEATURE_COLUMNS
from readmit_contract.history import HISTORY_NAMES, history_table
from readmit_data.stores import clean_encounters, create_clean_schema, make_engine
from sqlalchemy import select

from ..data.private_mariadb import PrivateMariaDB
from ..support import wait_http
from .conftest import AUTH, api_process

pytestmark = pytest.mark.slow
TIMEOUT_MS = 300


def _clean_rows(url: str) -> pd.DataFrame:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(select(clean_encounters), conn)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def clean_rows(registered) -> pd.DataFrame:
    return _clean_rows(registered.settings.clean_db_url)


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory, registered, clean_rows):
    """A private MariaDB holding a copy of the registered model's CleanData (what node 1 holds)."""
    server = PrivateMariaDB(tmp_path_factory.mktemp("history-mariadb"))
    server.start()
    try:
        url = server.database("clean")
        engine = make_engine(url)
        create_clean_schema(engine)
        with engine.begin() as conn:
            conn.execute(clean_encounters.insert(), clean_rows.astype(object).where(clean_rows.notna(), None)
                         .to_dict("records"))
        engine.dispose()
        server.clean_url = url
        yield server
    finally:
        server.stop()


LOGS: dict[str, object] = {}


@pytest.fixture(scope="module")
def api(registered, mariadb, tmp_path_factory):
    LOGS["folder"] = folder = tmp_path_factory.mktemp("history-api")
    url, process = api_process(folder, registered.tracking_uri,
                               registered.model_name, HISTORY_DB_URL=mariadb.clean_url,
                               HISTORY_TIMEOUT_MS=str(TIMEOUT_MS), HISTORY_CACHE_SECONDS="0")
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield url


@pytest.fixture(scope="module")
def pipeline(registered):
    mlflow.set_tracking_uri(registered.tracking_uri)
    return mlflow.sklearn.load_model(f"models:/{registered.model_name}@champion")


def _body(row: pd.Series, ids: bool = True) -> dict:
    names = [*(("encounter_id", "patient_nbr") if ids else ()), *FEATURE_COLUMNS]
    return {k: (None if pd.isna(v) else (int(v) if isinstance(v, np.integer) else v)) for k, v in row[names].items()}


def _repeat_patients(rows: pd.DataFrame, least: int = 3) -> list[int]:
    counts = rows["patient_nbr"].value_counts()
    return counts[counts >= least].index.tolist()


def _metric(api: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{api}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name}{labels} not exported")


def test_the_champion_reads_history(pipeline):
    assert pipeline[0].history_ and "history_known" in pipeline[0].feature_names_


def test_a_hit_scores_with_the_history_training_used(api, pipeline, clean_rows):
    """For the latest encounter of patients with several: the API's history is the stored table's, and
    its probability is the pipeline's with that history; the same encounter without the patient's number is
    scored without history (and says so)."""
    table = history_table(clean_rows).set_index("encounter_id")
    differs = 0
    with httpx.Client(base_url=api, headers=AUTH, timeout=30) as client:
        for patient in _repeat_patients(clean_rows)[:15]:
            mine = clean_rows[clean_rows["patient_nbr"] == patient].sort_values("encounter_id")
            row = mine.iloc[-1]
            history = table.loc[int(row["encounter_id"]), list(HISTORY_NAMES)].to_dict()
            expected = pipeline.predict_proba([{**_body(row), **history}])[:, 1][0]
            answer = client.post("/predict", json=_body(row)).json()
            assert answer["history"] == "found" and answer["scored"], answer
            assert answer["probability"] == pytest.approx(expected, rel=1e-9)
            anonymous = client.post("/predict", json=_body(row, ids=False)).json()
            assert anonymous["history"] == "no_patient"
            assert anonymous["probability"] == pytest.approx(pipeline.predict_proba([_body(row, ids=False)])[:, 1][0],
                                                             rel=1e-9)
            differs += anonymous["probability"] != answer["probability"]
            # an earlier encounter of the same patient is scored with the history before it, not after
            first = mine.iloc[0]
            assert client.post("/predict", json=_body(first)).json()["history"] == "first_encounter"
            middle = mine.iloc[len(mine) // 2]
            before = table.loc[int(middle["encounter_id"]), list(HISTORY_NAMES)].to_dict()
            assert 0 < before["hist_encounters"] < len(mine) - 1
            answer = client.post("/predict", json=_body(middle)).json()
            assert answer["history"] == "found"
            assert answer["probability"] == pytest.approx(
                pipeline.predict_proba([{**_body(middle), **before}])[:, 1][0], rel=1e-9)
            # without its encounter_id the store cannot tell what came before: no history (never "after all")
            unknown = {k: v for k, v in _body(row).items() if k != "encounter_id"}
            assert client.post("/predict", json=unknown).json()["history"] == "no_encounter"
        batch = client.post("/predict/batch", json={"encounters": [
            _body(clean_rows[clean_rows["patient_nbr"] == p].sort_values("encounter_id").iloc[-1])
            for p in _repeat_patients(clean_rows)[:15]]}).json()
    assert differs >= 5
    assert {p["history"] for p in batch["predictions"]} == {"found"}


def test_a_patient_the_store_does_not_know_is_a_first_encounter(api, pipeline, clean_rows):
    row = clean_rows.iloc[0].copy()
    row["patient_nbr"] = int(clean_rows["patient_nbr"].max()) + 1
    row["encounter_id"] = int(clean_rows["encounter_id"].max()) + 1
    with httpx.Client(base_url=api, headers=AUTH, timeout=30) as client:
        answer = client.post("/predict", json=_body(row)).json()
    assert answer["history"] == "first_encounter" and answer["scored"]
    first = {name: 0.0 for name in HISTORY_NAMES}
    assert answer["probability"] == pytest.approx(pipeline.predict_proba([{**_body(row), **first}])[:, 1][0],
                                                  rel=1e-9)


def test_a_store_that_hangs_or_is_down_leaves_the_api_answering(api, mariadb, clean_rows, pipeline):
    """The store frozen (SIGSTOP: queries hang) and then killed: every request is answered within the
    lookup timeout plus scoring, scored without history and marked unavailable; the failures are counted;
    once the store is back the lookups work again."""
    patient = _repeat_patients(clean_rows)[0]
    row = clean_rows[clean_rows["patient_nbr"] == patient].sort_values("encounter_id").iloc[-1]
    without = pipeline.predict_proba([_body(row, ids=False)])[:, 1][0]
    failures_before = sum(_metric(api, "readmit_api_history_failures_total", reason=r) for r in ("timeout", "error"))
    with httpx.Client(base_url=api, headers=AUTH, timeout=30) as client:
        os.kill(mariadb.process.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                started = time.monotonic()
                answer = client.post("/predict", json=_body(row)).json()
                assert time.monotonic() - started < TIMEOUT_MS / 1000 + 0.7, "the lookup held the request up"
                assert answer["history"] == "unavailable" and answer["scored"], answer
                assert answer["probability"] == pytest.approx(without, rel=1e-9)
        finally:
            os.kill(mariadb.process.pid, signal.SIGCONT)
        mariadb.kill()
        time.sleep(5.5)  # past the pause after the failure: the next request tries the (dead) store
        started = time.monotonic()
        answer = client.post("/predict", json=_body(row)).json()
        assert answer["history"] == "unavailable" and time.monotonic() - started < 2.0
        failures = sum(_metric(api, "readmit_api_history_failures_total", reason=r) for r in ("timeout", "error"))
        assert failures >= failures_before + 2
        assert _metric(api, "readmit_api_history_lookups_total", status="unavailable") >= 4
        # the log says what failed, without the SQL's parameters (patient numbers)
        log = "\n".join(p.read_text() for p in LOGS["folder"].glob("api-*.log"))
        assert "patient history unavailable" in log and str(patient) not in log

        mariadb.start()
        deadline = time.monotonic() + 30
        while (answer := client.post("/predict", json=_body(row)).json())["history"] != "found":
            assert time.monotonic() < deadline, answer
            time.sleep(1)
        history = history_table(clean_rows).set_index("encounter_id").loc[int(row["encounter_id"]), list(HISTORY_NAMES)]
        expected = pipeline.predict_proba([{**_body(row), **history.to_dict()}])[:, 1][0]
        assert answer["probability"] == pytest.approx(expected, rel=1e-9)  # scored with history again
        assert _metric(api, "readmit_api_history_lookups_total", status="found") > 0


def test_the_embedded_defaults_sqlite_store_is_looked_up_and_cached(registered, clean_rows):
    """The embedded default reads CleanData's SQLite file; a patient looked up once is served from the cache
    (the file removed from under it changes nothing within HISTORY_CACHE_SECONDS)."""
    import asyncio
    import shutil
    import tempfile
    from pathlib import Path

    from readmit_serving.api.history import HistoryLookup

    folder = Path(tempfile.mkdtemp())
    source = registered.settings.clean_db_url.removeprefix("sqlite:///")
    shutil.copy(source, folder / "clean.db")
    lookup = HistoryLookup(f"sqlite:///{folder / 'clean.db'}", timeout_ms=2000, cache_seconds=60)
    patient = _repeat_patients(clean_rows)[0]
    row = clean_rows[clean_rows["patient_nbr"] == patient].sort_values("encounter_id").iloc[-1]
    expected = history_table(clean_rows).set_index("encounter_id").loc[int(row["encounter_id"]), list(HISTORY_NAMES)]
    try:
        for _ in range(2):
            record = _body(row)
            assert asyncio.run(lookup.attach([record], True)) == ["found"]
            assert {k: record[k] for k in HISTORY_NAMES} == expected.to_dict()
            lookup.engine.dispose()
            (folder / "clean.db").unlink(missing_ok=True)  # the second round can only come from the cache
        record = _body(row, ids=False)
        assert asyncio.run(lookup.attach([record], True)) == ["no_patient"]
        assert all(record[k] is None for k in HISTORY_NAMES)
        assert asyncio.run(lookup.attach([_body(row)], False)) == ["not_used"]
    finally:
        lookup.close()
        shutil.rmtree(folder)
