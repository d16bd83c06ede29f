"""monitor's drift check against real MLflow and SQLite stores: batches that arrived after the champion, shifted
by the synthetic generator's drift setting, ask for retraining with the reason; unshifted ones do not."""

from __future__ import annotations

import pandas as pd
import pytest
from readmit_data.arrival import score_on_arrival
from readmit_data.monitor import check_drift
from readmit_data.registry import register_and_promote
from readmit_data.stores import arrival_performance, drift_checks, feature_drift, make_engine, utcnow
from readmit_data.training import Snapshot, take_snapshot, train_candidate

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
    finally:
        engine.dispose()
    arrived = full.train_batches[FIRST_BATCHES:]
    assert check.skipped is None and check.model_version == "1"
    assert check.current_source == "batches " + ",".join(arrived)
    checks, features = _table(url, drift_checks), _table(url, feature_drift)
    assert len(checks) == 1 and len(features) == checks.loc[0, "features"] == 47
    assert checks.loc[0, "drifted"] == features["drifted"].sum() == len(check.drifted_features)
    assert checks.loc[0, "current_rows"] >= 1000
    run = MlflowClient(sqlite_tracking.uri).get_run(check.mlflow_run_id)
    assert run.data.metrics["drift_share"] == pytest.approx(check.share)
    assert run.data.tags["retrain"] == str(check.retrain).lower()
    assert [a.path for a in MlflowClient(sqlite_tracking.uri).list_artifacts(check.mlflow_run_id, "drift")] == [
        "drift/report.html"]
    if source == SHIFTED:
        assert check.retrain and check.reason.startswith("data drift: ")
        assert {"age", "admission_source_id", "number_inpatient"} <= set(check.drifted_features)
        assert checks.loc[0, "retrain"] == 1 and checks.loc[0, "reason"] == check.reason
    else:
        assert not check.retrain and check.drifted_features == [] and check.reason == ""
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
    env = {"CLEAN_DB_URL": url, "MLFLOW_TRACKING_URI": sqlite_tracking.uri, "MODEL_NAME": model_name,
           "MLFLOW_EXPERIMENT_NAME": settings.experiment_name}
    unpause(home, "train_and_register", env)
    first = dags_test(home, "monitor_drift", env)
    assert first.returncode == 0, first.stdout[-4000:]
    states = {row["task_id"]: row["state"] for row in task_states(home, "monitor_drift")}
    assert states == {"catch_up_arrivals": "success", "check": "success", "should_retrain": "success",
                      "retrain": "success"}
    with sqlite3.connect(home / "airflow.db") as db:
        runs = db.execute("SELECT conf FROM dag_run WHERE dag_id = 'train_and_register'").fetchall()
    assert len(runs) == 1
    conf = runs[0][0] if isinstance(runs[0][0], dict) else json.loads(runs[0][0])
    assert conf["reason"].startswith("data drift: ") and "number_inpatient" in conf["reason"]
    checks = _table(url, drift_checks)
    assert checks["triggered"].tolist() == [1]
    assert len(_table(url, arrival_performance)) >= 1  # caught up with the batches that arrived after it

    second = dags_test(home, "monitor_drift", env)
    assert second.returncode == 0, second.stdout[-4000:]
    states = [row for row in task_states(home, "monitor_drift") if row["task_id"] == "retrain"]
    assert [row["state"] for row in states] == ["success", "skipped"]
    with sqlite3.connect(home / "airflow.db") as db:
        assert db.execute("SELECT count(*) FROM dag_run WHERE dag_id = 'train_and_register'").fetchone()[0] == 1
