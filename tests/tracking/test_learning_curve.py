"""Cumulative learning curve (readmit_data.learning_curve): batches 1..N, full retraining and warm start, in MLflow."""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from readmit_contract import TARGET
from readmit_data.candidates import build_pipeline, fit_pipeline
from readmit_data.learning_curve import PLOT, TABLE_CSV, TABLE_JSON, compute_curve, run_learning_curve
from readmit_data.registry import register_and_promote
from readmit_data.settings import DataSettings
from readmit_data.stores import make_engine
from readmit_data.training import MODE_TAG, read_split, take_snapshot, train_candidate, with_history_dropout
from readmit_data.warm_start import continue_pipeline
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from .conftest import cleaned_store

SOURCE = "synthetic:6000:21"
ITERATIONS = 30


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return cleaned_store(tmp_path_factory.mktemp("learning-curve-stores"), SOURCE)  # 1,500-row batches


@pytest.fixture(scope="module")
def data(store) -> dict:
    engine = make_engine(store)
    try:
        snapshot = take_snapshot(engine)
        return {"snapshot": snapshot, "train": read_split(engine, "train"),
                "validation": read_split(engine, "validation")}
    finally:
        engine.dispose()


def _settings(**extra) -> DataSettings:
    return DataSettings(PROMOTION_BOOTSTRAP_SAMPLES=200, WARM_START_ITERATIONS=ITERATIONS, **extra)


def test_a_candidate_without_warm_start_gets_the_full_line_and_the_reason(data):
    batches = data["snapshot"].train_batches
    with threadpool_limits(1):
        curve = compute_curve(_settings(), "logistic_regression", data["train"], data["validation"], batches)
    table = curve.table()
    assert list(table["batches"]) == list(range(1, len(batches) + 1)) and list(table["last_batch"]) == batches
    counts = data["train"]["batch_id"].value_counts()
    assert list(table["train_rows"]) == list(np.cumsum([counts[b] for b in batches]))  # cumulative: 1, 1-2, ...
    assert table["warm_start_val_roc_auc"].isna().all()
    assert curve.warm_start.startswith("no warm-start line: logistic_regression cannot be warm-started")
    assert ((table["full_val_roc_auc_low"] <= table["full_val_roc_auc"])
            & (table["full_val_roc_auc"] <= table["full_val_roc_auc_high"])).all()
    # "enough": the first N the all-batches model does not beat beyond the noise; the last point is that model
    assert table["final_lead_lower_bound"].iloc[-1] is None or math.isnan(table["final_lead_lower_bound"].iloc[-1])
    enough = table[table["batches"] == curve.enough_batches].iloc[0]
    assert enough["train_rows"] == curve.enough_rows
    earlier = table[table["batches"] < curve.enough_batches]["final_lead_lower_bound"]
    assert (earlier > 0).all()
    assert curve.enough_batches == len(batches) or enough["final_lead_lower_bound"] <= 0


@pytest.mark.slow
def test_the_curve_is_logged_and_registers_nothing(sqlite_tracking, store, data, model_name):
    from mlflow import MlflowClient

    settings = _settings(MLFLOW_TRACKING_URI=sqlite_tracking.uri, MODEL_NAME=model_name,
                         MLFLOW_EXPERIMENT_NAME=model_name, CLEAN_DB_URL=store, MODEL_CARD_BOOTSTRAP_SAMPLES=100)
    client = MlflowClient(sqlite_tracking.uri)
    snapshot, validation = data["snapshot"], data["validation"]
    batches = snapshot.train_batches
    engine = make_engine(store)
    try:
        # a champion already there: the curve must leave it (and the registry) as it is
        baseline = train_candidate(settings, engine, "prior_baseline", snapshot)
        assert register_and_promote(settings, engine, baseline).version == "1"
        with threadpool_limits(1):
            curve = run_learning_curve(settings, engine, "hist_gradient_boosting", snapshot,
                                       tags={"trigger.reason": "a test"})
    finally:
        engine.dispose()

    assert [v.version for v in client.search_model_versions(f"name = '{model_name}'")] == ["1"]
    registered = client.get_registered_model(model_name)
    assert registered.aliases == {"champion": "1"}
    run = client.get_run(curve.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[MODE_TAG] == "learning_curve" and run.data.tags["trigger.reason"] == "a test"
    assert run.data.tags["learning_curve.candidate"] == "hist_gradient_boosting"
    assert run.data.tags["learning_curve.verdict"] == curve.verdict
    experiment = client.get_experiment_by_name(model_name)
    assert not client.search_logged_models([experiment.experiment_id], f"source_run_id = '{curve.run_id}'")

    # the artifacts: plot, table (CSV and JSON), one row per N with both lines
    assert {a.path for a in client.list_artifacts(curve.run_id, "learning_curve")} == {PLOT, TABLE_CSV, TABLE_JSON}
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(client.download_artifacts(curve.run_id, PLOT, tmp)).read_bytes()
        table = pd.read_csv(io.StringIO(Path(client.download_artifacts(curve.run_id, TABLE_CSV, tmp)).read_text()))
        stored = json.loads(Path(client.download_artifacts(curve.run_id, TABLE_JSON, tmp)).read_text())
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    height, width, _ = matplotlib.image.imread(io.BytesIO(png)).shape
    assert width > 500 and height > 300
    assert list(table["batches"]) == list(range(1, len(batches) + 1)) and list(table["last_batch"]) == batches
    counts = data["train"]["batch_id"].value_counts()
    assert list(table["train_rows"]) == list(np.cumsum([counts[b] for b in batches]))
    assert table["full_val_roc_auc"].between(0.5, 1).all()
    assert np.isnan(table["warm_start_val_roc_auc"].iloc[0])  # N = 1: both lines are the same model
    assert table["warm_start_val_roc_auc"].iloc[1:].between(0.5, 1).all()
    # a chain of continuations: batch 1's 300 iterations, then 30 more per batch
    assert list(table["full_estimators"]) == [300] * len(batches)
    assert list(table["warm_start_estimators"].iloc[1:]) == [300 + ITERATIONS * n for n in range(1, len(batches))]
    np.testing.assert_allclose(table["warm_start_minus_full"].iloc[1:],
                               table["warm_start_val_roc_auc"].iloc[1:] - table["full_val_roc_auc"].iloc[1:])
    assert [p["train_rows"] for p in stored["points"]] == list(table["train_rows"])
    np.testing.assert_allclose([p["full_val_roc_auc"] for p in stored["points"]], table["full_val_roc_auc"])
    assert stored["points"][0]["warm_start_val_roc_auc"] is None
    assert stored["enough_rows"] == curve.enough_rows and stored["candidate"] == "hist_gradient_boosting"

    # the figures as metrics: step = training rows (and training rows by batch count)
    full = client.get_metric_history(curve.run_id, "curve_full_val_roc_auc")
    assert [m.step for m in full] == list(table["train_rows"])
    np.testing.assert_allclose([m.value for m in full], table["full_val_roc_auc"])
    warm = client.get_metric_history(curve.run_id, "curve_warm_start_val_roc_auc")
    assert [m.step for m in warm] == list(table["train_rows"].iloc[1:])
    np.testing.assert_allclose([m.value for m in warm], table["warm_start_val_roc_auc"].iloc[1:])
    rows = client.get_metric_history(curve.run_id, "curve_train_rows")
    assert [(m.step, m.value) for m in rows] == list(zip(table["batches"], table["train_rows"], strict=True))
    assert run.data.metrics["curve_enough_rows"] == curve.enough_rows

    # the points are the models they claim to be: the last full point is a retraining on every batch, and at
    # N = 2 the warm start is batch 1's model continued with batch 2
    train = data["train"]
    y_val = validation[TARGET].to_numpy()
    with threadpool_limits(1):
        everything = fit_pipeline(build_pipeline("hist_gradient_boosting"), with_history_dropout(train, 0.1, 0),
                                  train[TARGET].to_numpy())
        first_rows = train[train["batch_id"] == batches[0]]
        first = fit_pipeline(build_pipeline("hist_gradient_boosting"), with_history_dropout(first_rows, 0.1, 0),
                             first_rows[TARGET].to_numpy())
        second = train[train["batch_id"] == batches[1]]
        continued, _ = continue_pipeline(first, with_history_dropout(second, 0.1, 0), second[TARGET].to_numpy(),
                                         iterations=ITERATIONS, previous_rows=len(first_rows))
    assert table["full_val_roc_auc"].iloc[-1] == pytest.approx(
        roc_auc_score(y_val, everything.predict_proba(validation)[:, 1]), abs=1e-12)
    assert table["full_val_roc_auc"].iloc[0] == pytest.approx(
        roc_auc_score(y_val, first.predict_proba(validation)[:, 1]), abs=1e-12)
    assert table["warm_start_val_roc_auc"].iloc[1] == pytest.approx(
        roc_auc_score(y_val, continued.predict_proba(validation)[:, 1]), abs=1e-12)
