"""monitor's drift checks against real MLflow and SQLite stores: batches that arrived after the champion, and the
same encounters as the API logs them when it scores them, shifted by the synthetic generator's drift setting, ask
for retraining with the reason; unshifted ones do not. The prediction log is pruned past its retention."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest
from readmit_contract import Encounter
from readmit_contract.prediction_log import ENCOUNTER_NAMES, encounter_json, prediction_log
from readmit_contract.prediction_log import metadata as predictions_metadata
from readmit_data.arrival import score_on_arrival
from readmit_data.monitor import Champion, check_drift, check_live_drift, prune_predictions
from readmit_data.registry import register_and_promote
from readmit_data.stores import arrival_performance, drift_checks, feature_drift, make_engine, utcnow
from readmit_data.training import Snapshot, read_split, take_snapshot, train_candidate

from .conftest import cleaned_store
from .test_gate import settings_for

pytestmark = pytest.mark.slow
SHIFTED = "synthetic:12000:23:1.5@0.55"
UNSHIFTED = "synthetic:12000:23"
FIRST_BATCHES = 3


def _champion(settings, url: str):
    from threadpoolctl import threadpool_limits

    engine = make_engine(url)
    try:
        full = take_snapshot(engine)
        first = Snapshot(full.train_batches[:FIRST_BATCHES], 0, full.validation_rows, full.test_rows)
        with threadpool_limits(1):
            result = train_candidate(settings, engine, "logistic_regression", first)
        register_and_promote(settings, engine, result)
        return result, full
    finally:
        engine.dispose()


def _table(url: str, table) -> pd.DataFrame:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(table.select(), conn)
    finally:
        engine.dispose()


def log_predictions(url: str, clean: pd.DataFrame, model_name: str, *, hours_ago: float = 0.0,
                    answered: int | None = None, caller: str = "test") -> int:
    """``clean`` rows as the API logs them: each validated as a request body (Encounter), its record's input
    columns as ``encounter_json`` writes them, one row per answer; returns how many."""
    bodies = json.loads(clean[list(ENCOUNTER_NAMES)].to_json(orient="records"))
    when = utcnow() - timedelta(hours=hours_ago)
    rows = [{"request_id": f"{i:032x}", "position": 0, "predicted_at": when, "caller": caller, "endpoint": "predict",
             "model_name": model_name, "model_version": "1", "encounter_id": body["encounter_id"],
             "patient_nbr": body["patient_nbr"],
             "encounter": encounter_json(Encounter.model_validate(body).to_record()),
             "scored": True, "probability": 0.1, "risk_band": "low", "reason": None, "history": "found"}
            for i, body in enumerate(bodies[:answered])]
    engine = make_engine(url)
    try:
        predictions_metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(prediction_log.insert(), rows)
    finally:
        engine.dispose()
    return len(rows)


@pytest.mark.parametrize("source", [SHIFTED, UNSHIFTED])
def test_drift_of_the_batches_that_arrived_after_the_champion(sqlite_tracking, tmp_path, model_name, source):
    from mlflow import MlflowClient

    url = cleaned_store(tmp_path, source)
    settings = settings_for(sqlite_tracking.uri, url, model_name)
    engine = make_engine(url)
    try:
        assert check_drift(settings, engine).skipped == "no champion yet"
        result, full = _champion(settings, url)
        check = check_drift(settings, engine)
        arrived = full.train_batches[FIRST_BATCHES:]
        # the same encounters scored by the API, each answered twice (the live check counts an encounter once)
        predictions = f"sqlite:///{tmp_path / 'predictions.db'}"
        current = read_split(engine, "train", arrived)
        log_predictions(predictions, current, model_name)
        log_predictions(predictions, current, model_name)
        log_predictions(predictions, current, model_name, hours_ago=30)  # outside DRIFT_PREDICTION_HOURS
        # the load test's traffic (caller locust, DRIFT_EXCLUDED_CALLERS): other encounters, left out
        log_predictions(predictions, read_split(engine, "validation"), model_name, caller="locust")
        store = make_engine(predictions)
        try:
            live = check_live_drift(settings, engine, store)
            # a champion that learnt from every batch: live drift is recorded, retraining would add nothing
            learnt_all = check_live_drift(settings, engine, store,
                                          Champion("1", full.train_batches[:FIRST_BATCHES], []))
        finally:
            store.dispose()
    finally:
        engine.dispose()
    assert live.population == "predictions" and live.skipped is None
    assert live.current_source.startswith("predictions ") and f"({len(current)} encounters)" in live.current_source
    assert live.arrived == check.arrived == check.current_source
    assert check.skipped is None and check.model_version == "1"
    assert check.current_source == "batches " + ",".join(arrived)
    checks, features = _table(url, drift_checks), _table(url, feature_drift)
    assert checks["population"].tolist() == ["batches", "predictions", "predictions"]
    assert checks["current_rows"].tolist() == [len(current)] * 3
    assert checks["current_key"].nunique() == 2  # the live checks share the batches' key when batches arrived
    features = features[features["check_id"] == checks.loc[0, "check_id"]]
    assert len(features) == checks.loc[0, "features"] == 47
    assert checks.loc[0, "drifted"] == features["drifted"].sum() == len(check.drifted_features)
    assert checks.loc[0, "current_rows"] >= 1000
    run = MlflowClient(sqlite_tracking.uri).get_run(check.mlflow_run_id)
    assert run.data.metrics["drift_share"] == pytest.approx(check.share)
    assert run.data.tags["retrain"] == str(check.retrain).lower()
    assert [a.path for a in MlflowClient(sqlite_tracking.uri).list_artifacts(check.mlflow_run_id, "drift")] == [
        "drift/report.html"]
    if source == SHIFTED:
        assert check.retrain and check.reason.startswith("data drift in the batches that arrived: ")
        assert {"age", "admission_source_id", "number_inpatient"} <= set(check.drifted_features)
        assert checks.loc[0, "retrain"] == 1 and checks.loc[0, "reason"] == check.reason
        # what the API received drifts as the batches did (its values are read as the clean rows are)
        assert live.retrain and live.reason.startswith("data drift in the encounters scored: ")
        assert live.drifted_features == check.drifted_features and live.share == pytest.approx(check.share)
        assert not learnt_all.retrain and "not retrained: no batch has arrived" in learnt_all.reason
        assert checks["retrain"].tolist() == [1, 1, 0]
    else:
        assert not check.retrain and check.drifted_features == [] and check.reason == ""
        assert not live.retrain and live.drifted_features == [] and live.reason == ""
        # a drop in performance on arrival beyond the limit is a reason too
        engine = make_engine(url)
        try:
            score_on_arrival(settings, engine)

            def arrived(batch: str, rows: int) -> None:
                with engine.begin() as conn:
                    conn.execute(arrival_performance.insert().values(
                        batch_id=batch, model_name=model_name, model_version="1", split="train", rows=rows,
                        positives=rows // 9, new_patient_rows=rows, roc_auc=result.metrics["roc_auc"] - 0.15,
                        brier=0.1, observed_rate=0.1, predicted_rate=0.1,
                        champion_val_roc_auc=result.metrics["roc_auc"], scored_at=utcnow()))

            arrived("train-9998", 100)  # the same drop on 100 encounters is within their noise
            small = check_drift(settings, engine)
            arrived("train-9999", 3000)
            again = check_drift(settings, engine)
        finally:
            engine.dispose()
        assert not small.retrain, small.reason
        assert again.retrain and again.reasons == [
            r for r in again.reasons if r.startswith("performance on arrival: ")] and "train-9999" in again.reason
        assert "train-9998" not in again.reason


def test_prune_deletes_only_predictions_past_their_retention(tmp_path, model_name):
    from readmit_contract import validate
    from readmit_contract.synthetic import generate
    from readmit_data.settings import DataSettings

    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    rows = validate(generate(40, seed=3)).valid.head(30)
    log_predictions(url, rows, model_name, hours_ago=24 * 11)
    log_predictions(url, rows, model_name, hours_ago=24 * 9)
    settings = DataSettings(PREDICTION_LOG_RETENTION_DAYS=10)
    engine = make_engine(url)
    try:
        assert prune_predictions(settings, engine, chunk=7) == 30  # in chunks smaller than what is due
        assert prune_predictions(settings, engine) == 0
        left = _table(url, prediction_log)
    finally:
        engine.dispose()
    assert len(left) == 30 and (left["predicted_at"] > utcnow() - timedelta(days=10)).all()


def test_a_prediction_log_that_cannot_be_read_skips_the_live_check_only(tmp_path):
    from readmit_data.monitor import _live_or_skipped
    from readmit_data.settings import DataSettings

    (tmp_path / "a-file").write_text("not a folder")  # the store's file cannot be opened
    settings = DataSettings(PREDICTIONS_DB_URL=f"sqlite:///{tmp_path / 'a-file' / 'predictions.db'}")
    engine = make_engine(f"sqlite:///{tmp_path / 'clean.db'}")
    try:
        check = _live_or_skipped(settings, engine, Champion("3", ["train-0001"], ["train-0002"]))
    finally:
        engine.dispose()
    assert check.population == "predictions" and check.model_version == "3" and not check.retrain
    assert check.skipped.startswith("the prediction log could not be read (")
    assert check.arrived == "batches train-0002" and not check.pushed


def test_monitor_drift_runs_for_real_and_asks_for_retraining_once(sqlite_tracking, tmp_path, model_name):
    """`airflow dags test monitor_drift` on shifted arrivals: the check advises retraining, train_and_register is
    triggered with the reason in its conf; a second run on the same champion and batches does not trigger again."""
    import json
    import sqlite3

    from ..airflow_support import clone_home, dags_test, migrate, task_states, unpause

    url = cleaned_store(tmp_path / "stores", SHIFTED)
    settings = settings_for(sqlite_tracking.uri, url, model_name)
    _champion(settings, url)
    template = tmp_path / "airflow-template"
    migrate(template)
    home = clone_home(template, tmp_path / "airflow")
    engine = make_engine(url)
    try:
        current = read_split(engine, "train", take_snapshot(engine).train_batches[FIRST_BATCHES:])
    finally:
        engine.dispose()
    predictions = f"sqlite:///{tmp_path / 'predictions.db'}"
    log_predictions(predictions, current, model_name)
    log_predictions(predictions, current, model_name, answered=5, hours_ago=24 * 200)  # past the retention
    env = {"CLEAN_DB_URL": url, "MLFLOW_TRACKING_URI": sqlite_tracking.uri, "MODEL_NAME": model_name,
           "MLFLOW_EXPERIMENT_NAME": settings.experiment_name, "PREDICTIONS_DB_URL": predictions,
           "PREDICTION_LOG_RETENTION_DAYS": "180"}
    unpause(home, "train_and_register", env)
    first = dags_test(home, "monitor_drift", env)
    assert first.returncode == 0, first.stdout[-4000:]
    states = {row["task_id"]: row["state"] for row in task_states(home, "monitor_drift")}
    assert states == {"catch_up_arrivals": "success", "check": "success", "should_retrain": "success",
                      "retrain": "success", "prune_prediction_log": "success"}
    with sqlite3.connect(home / "airflow.db") as db:
        runs = db.execute("SELECT conf FROM dag_run WHERE dag_id = 'train_and_register'").fetchall()
    assert len(runs) == 1
    conf = runs[0][0] if isinstance(runs[0][0], dict) else json.loads(runs[0][0])
    assert conf["reason"].startswith("data drift in the batches that arrived: ")
    assert "number_inpatient" in conf["reason"]
    assert "; data drift in the encounters scored: " in conf["reason"]  # both populations drifted
    checks = _table(url, drift_checks)
    assert checks["population"].tolist() == ["batches", "predictions"]
    assert checks["triggered"].tolist() == [1, 1]
    assert len(_table(predictions, prediction_log)) == len(current)  # the 5 past the retention were deleted
    assert len(_table(url, arrival_performance)) >= 1  # caught up with the batches that arrived after it

    second = dags_test(home, "monitor_drift", env)
    assert second.returncode == 0, second.stdout[-4000:]
    states = [row for row in task_states(home, "monitor_drift") if row["task_id"] == "retrain"]
    assert [row["state"] for row in states] == ["success", "skipped"]
    with sqlite3.connect(home / "airflow.db") as db:
        assert db.execute("SELECT count(*) FROM dag_run WHERE dag_id = 'train_and_register'").fetchone()[0] == 1
