"""Performance on arrival: the champion scores newly cleaned train batches before any retraining; figures in
CleanData and in MLflow's monitoring experiment, recomputed here on the same rows (real MLflow, SQLite stores)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from readmit_contract import TARGET
from readmit_data.arrival import batch_rows, monitoring_experiment, score_on_arrival
from readmit_data.registry import load_verified, register_and_promote
from readmit_data.stores import arrival_performance, make_engine
from readmit_data.training import Snapshot, take_snapshot, train_candidate
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from ..support import free_port
from .test_gate import settings_for

SOURCE = "synthetic:9000:17"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from .conftest import cleaned_store

    return cleaned_store(tmp_path_factory.mktemp("arrival-stores"), SOURCE)  # 1,500-row batches


def _recorded(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(arrival_performance.select(), conn)


@pytest.mark.slow
def test_the_champion_scores_each_new_batch_once(sqlite_tracking, store, model_name):
    from mlflow import MlflowClient
    from threadpoolctl import threadpool_limits

    settings = settings_for(sqlite_tracking.uri, store, model_name)
    engine = make_engine(store)
    try:
        assert [a.skipped for a in score_on_arrival(settings, engine)][:1] == ["no champion yet"]
        full = take_snapshot(engine)
        assert len(full.train_batches) >= 3
        first = Snapshot(full.train_batches[:1], 0, full.validation_rows, full.test_rows)
        with threadpool_limits(1):
            result = train_candidate(settings, engine, "logistic_regression", first)
        register_and_promote(settings, engine, result)

        arrivals = {a.batch_id: a for a in score_on_arrival(settings, engine)}
        assert arrivals[full.train_batches[0]].skipped == "the champion was trained on it"
        scored = [b for b in full.train_batches[1:]]
        assert all(arrivals[b].skipped is None and arrivals[b].rows > 0 for b in scored)
        assert "validation" not in arrivals and "test" not in arrivals  # fixed splits, not arrivals

        recorded = _recorded(engine).set_index("batch_id")
        assert sorted(recorded.index) == sorted(scored)
        model = load_verified(settings, "1")
        seen = set(batch_rows(engine, full.train_batches[0])["patient_nbr"])
        for batch in scored:  # the figures, recomputed on the batch's rows
            rows = batch_rows(engine, batch)
            y, p = rows[TARGET].to_numpy(), model.predict_proba(rows)[:, 1]
            row = recorded.loc[batch]
            assert (row["model_name"], row["model_version"], row["split"]) == (model_name, "1", "train")
            assert (row["rows"], row["positives"]) == (len(rows), y.sum())
            assert row["roc_auc"] == pytest.approx(roc_auc_score(y, p))
            assert row["pr_auc"] == pytest.approx(average_precision_score(y, p))
            assert row["brier"] == pytest.approx(brier_score_loss(y, p))
            assert (row["observed_rate"], row["predicted_rate"]) == pytest.approx((y.mean(), p.mean()))
            new = ~rows["patient_nbr"].isin(seen).to_numpy()
            assert row["new_patient_rows"] == new.sum() and 0 < new.sum() <= len(rows)
            assert row["roc_auc_new_patients"] == pytest.approx(roc_auc_score(y[new], p[new]))
            assert row["champion_val_roc_auc"] == pytest.approx(result.metrics["roc_auc"])
            run = MlflowClient(sqlite_tracking.uri).get_run(row["mlflow_run_id"])
            assert run.data.tags["batch_id"] == batch and run.data.tags["model_version"] == "1"
            assert run.data.metrics["roc_auc"] == pytest.approx(row["roc_auc"])
        experiment = MlflowClient(sqlite_tracking.uri).get_experiment_by_name(monitoring_experiment(settings))
        assert experiment is not None

        # idempotent: scored once per champion version
        again = score_on_arrival(settings, engine)
        assert {a.skipped for a in again} == {"already scored by this champion", "the champion was trained on it"}
        assert len(_recorded(engine)) == len(scored)

        # MLflow away: skipped with the reason, nothing raised, nothing recorded
        away = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}",
                                           "mlflow_http_request_max_retries": 0})
        with engine.begin() as conn:
            conn.execute(arrival_performance.delete())
        skipped = score_on_arrival(away, engine)
        assert skipped and all(a.skipped and "MLflow" in a.skipped for a in skipped)
        assert _recorded(engine).empty
    finally:
        engine.dispose()
    assert np.isfinite(recorded["roc_auc"]).all()
