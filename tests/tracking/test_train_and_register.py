"""train_and_register run for real (`airflow dags test`) against real MLflow servers."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from readmit_contract import validate
from readmit_contract.artifact import DIGEST_TAG, artifact_digest
from readmit_contract.card import CARD_DIGEST_TAG, CARD_JSON, ModelCard, card_digest
from readmit_contract.columns import FEATURE_COLUMNS
from readmit_data.loading import load, read_source
from readmit_data.preprocessing import preprocess_pending
from readmit_data.stores import engines

from ..airflow_support import clone_home, dags_test, migrate

pytestmark = pytest.mark.slow
SOURCE = "synthetic:7000:21"
CANDIDATES = ["logistic_regression", "random_forest", "hist_gradient_boosting"]


@pytest.fixture(scope="module")
def airflow_template(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-template")
    migrate(home)
    return home


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory):
    """CleanData filled through the platform's own path: raw batches loaded, then preprocessed."""
    root = tmp_path_factory.mktemp("stores")
    raw_url, clean_url = f"sqlite:///{root / 'raw.db'}", f"sqlite:///{root / 'clean.db'}"
    with engines(raw_url, clean_url) as (raw, clean_store):
        load(raw, read_source(SOURCE), source=SOURCE, batch="all", batch_size=1500, progress=False)
        preprocess_pending(raw, clean_store)
    return raw_url, clean_url


def test_train_register_promote(tracking, model_name, clean_data, airflow_template, tmp_path):
    raw_url, clean_url = clean_data
    home = clone_home(airflow_template, tmp_path / "airflow")
    env = {"RAW_DB_URL": raw_url, "CLEAN_DB_URL": clean_url, "MLFLOW_TRACKING_URI": tracking.uri,
           "MODEL_NAME": model_name, "MLFLOW_EXPERIMENT_NAME": model_name, "CANDIDATES": ",".join(CANDIDATES)}
    first = dags_test(home, "train_and_register", env)
    assert first.returncode == 0, first.stdout[-4000:]

    client = MlflowClient(tracking.uri)
    experiment = client.get_experiment_by_name(model_name)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["candidate"] for r in runs) == sorted(CANDIDATES)
    for run in runs:
        metrics = run.data.metrics
        for key in ("val_roc_auc", "val_pr_auc", "val_brier", "val_log_loss", "val_f1", "val_recall", "threshold",
                    "train_seconds"):
            assert key in metrics, (run.data.tags["candidate"], key)
        assert 0.5 < metrics["val_roc_auc"] < 1.0
        assert run.data.params["train_batches"].startswith("train-0001,")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert artifacts == {"plots/calibration.png", "plots/confusion_matrix.png"}
        assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} == {"data/lineage.json"}

    best = max(runs, key=lambda r: r.data.metrics["val_roc_auc"])
    champion = client.get_model_version_by_alias(model_name, "champion")
    assert champion.version == "1" and champion.run_id == best.info.run_id
    assert champion.tags["promotion"].startswith("first model")
    assert champion.tags["promotion.decision"] == "first_model" and champion.tags["promotion.champion"] == "none"
    mlflow.set_tracking_uri(tracking.uri)  # models:/ URIs resolve through the process-wide registry URI
    with tempfile.TemporaryDirectory() as tmp:  # the digest of the artifact as MLflow hands it out, for serving
        assert champion.tags[DIGEST_TAG] == artifact_digest(mlflow.artifacts.download_artifacts(
            f"models:/{model_name}/1", dst_path=tmp))
    # its model card: stored on the run (JSON, markdown, calibration plot), its digest on the version
    card_files = {a.path for a in client.list_artifacts(best.info.run_id, "model_card")}
    assert card_files == {CARD_JSON, "model_card/card.md", "model_card/calibration.png"}
    with tempfile.TemporaryDirectory() as tmp:
        card_bytes = Path(client.download_artifacts(best.info.run_id, CARD_JSON, tmp)).read_bytes()
    assert champion.tags[CARD_DIGEST_TAG] == card_digest(card_bytes)
    card = ModelCard.model_validate_json(card_bytes)
    assert card.model.run_id == best.info.run_id and card.model.candidate == best.data.tags["candidate"]
    assert card.evaluation["validation"].roc_auc.value == pytest.approx(best.data.metrics["val_roc_auc"], abs=1e-9)
    assert card.threshold.value == pytest.approx(best.data.metrics["threshold"])
    assert card.data.train_batches == best.data.params["train_batches"].split(",")
    assert card.data.rows["train"] == int(best.data.metrics["train_rows"])
    assert float(champion.tags["test_roc_auc"]) == pytest.approx(card.evaluation["test"].roc_auc.value, abs=1e-5)
    assert float(champion.tags["test_roc_auc"]) > 0.5  # champion's test metrics, recorded once
    assert "test_roc_auc" in client.get_run(best.info.run_id).data.metrics

    if tracking.s3_endpoint:  # the model really sits in the bucket, behind the server
        from ..conftest import s3_client

        keys = [o["Key"] for o in s3_client(tracking.s3_endpoint).list_objects_v2(Bucket=tracking.bucket)["Contents"]]
        assert any(k.endswith("MLmodel") for k in keys)
        assert any(k.endswith("model.skops") for k in keys)
        assert any(k.endswith("plots/calibration.png") for k in keys)

    # the registered Pipeline scores raw contract rows (text as it arrives, "?" for missing)
    mlflow.set_tracking_uri(tracking.uri)
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    raw_rows = validate(read_source(SOURCE).head(40)).valid[list(FEATURE_COLUMNS)]
    assert (raw_rows == "?").any().any()
    proba = np.asarray(model.predict(raw_rows))
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()

    # a deliberately worse model does not take the alias
    second = dags_test(home, "train_and_register", env, conf={"candidates": ["prior_baseline"]})
    assert second.returncode == 0, second.stdout[-4000:]
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    challenger = client.get_model_version_by_alias(model_name, "challenger")
    assert challenger.version == "2"
    assert challenger.tags["promotion"].startswith("not promoted: prior_baseline validation ROC-AUC 0.5000")
    # the decision and its figures were registered with the version: champion v1 re-scored on the same rows,
    # a paired bootstrap over patients (one candidate in this run: no best-of-N correction)
    assert challenger.tags["promotion.decision"] == "not_better" and challenger.tags["promotion.champion"] == "1"
    assert float(challenger.tags["gate.champion_roc_auc"]) == pytest.approx(best.data.metrics["val_roc_auc"], abs=1e-6)
    assert float(challenger.tags["gate.lower_bound"]) < float(challenger.tags["gate.delta"]) < 0
    assert challenger.tags["gate.candidates"] == "1" and float(challenger.tags["gate.confidence"]) == 0.95
    assert int(challenger.tags["gate.patients"]) <= int(challenger.tags["gate.rows"])
    assert "test_roc_auc" not in challenger.tags
    assert re.fullmatch(r"[0-9a-f]{64}", challenger.tags[DIGEST_TAG])
    assert re.fullmatch(r"[0-9a-f]{64}", challenger.tags[CARD_DIGEST_TAG])  # every registered version has a card
    baseline_run = client.get_run(challenger.run_id)
    assert baseline_run.data.tags["promotion"] == challenger.tags["promotion"]
    assert baseline_run.data.tags["gate.lower_bound"] == challenger.tags["gate.lower_bound"]
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 2  # one version per run that won


def test_training_modes_run_for_real(sqlite_tracking, model_name, clean_data, airflow_template, tmp_path):
    """mode learning_curve, then mode warm_start, through `airflow dags test`, against a champion of the first two
    batches: the curve registers nothing; the warm start continues the champion and goes through the gate."""
    from readmit_data.registry import register_and_promote
    from readmit_data.settings import DataSettings
    from readmit_data.stores import make_engine
    from readmit_data.training import MODE_TAG, Snapshot, take_snapshot, train_candidate
    from threadpoolctl import threadpool_limits

    from ..airflow_support import task_states

    raw_url, clean_url = clean_data
    env = {"RAW_DB_URL": raw_url, "CLEAN_DB_URL": clean_url, "MLFLOW_TRACKING_URI": sqlite_tracking.uri,
           "MODEL_NAME": model_name, "MLFLOW_EXPERIMENT_NAME": model_name, "WARM_START_ITERATIONS": "20",
           "PROMOTION_BOOTSTRAP_SAMPLES": "200", "MODEL_CARD_BOOTSTRAP_SAMPLES": "100",
           "OMP_NUM_THREADS": "1"}  # OpenMP threads fighting over 2 shared cores are many times slower than one
    settings = DataSettings(**env)
    engine = make_engine(clean_url)
    try:
        full = take_snapshot(engine)
        first = Snapshot(full.train_batches[:2], 0, full.validation_rows, full.test_rows)
        with threadpool_limits(1):
            trained = train_candidate(settings, engine, "hist_gradient_boosting", first)
        assert register_and_promote(settings, engine, trained).version == "1"
    finally:
        engine.dispose()
    home = clone_home(airflow_template, tmp_path / "airflow")
    client = MlflowClient(sqlite_tracking.uri)
    experiment = client.get_experiment_by_name(model_name)

    curve = dags_test(home, "train_and_register", env, conf={"mode": "learning_curve"})
    assert curve.returncode == 0, curve.stdout[-4000:]
    states = {(s["task_id"], s["map_index"]): s["state"] for s in task_states(home, "train_and_register")}
    assert states[("train_candidate", 0)] == "success" and ("train_candidate", 1) not in states
    assert states[("register_best", -1)] == "skipped" and states[("record_test_metrics", -1)] == "skipped"
    [run] = client.search_runs([experiment.experiment_id], f"tags.`{MODE_TAG}` = 'learning_curve'")
    assert run.data.tags["learning_curve.candidate"] == "hist_gradient_boosting"  # the champion's candidate
    assert {a.path for a in client.list_artifacts(run.info.run_id, "learning_curve")} == {
        "learning_curve/curve.png", "learning_curve/curve.csv", "learning_curve/curve.json"}
    batches = len(full.train_batches)
    assert len(client.get_metric_history(run.info.run_id, "curve_full_val_roc_auc")) == batches
    assert len(client.get_metric_history(run.info.run_id, "curve_warm_start_val_roc_auc")) == batches - 1
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 1
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"

    warm = dags_test(home, "train_and_register", env, conf={"mode": "warm_start", "reason": "a new batch"})
    assert warm.returncode == 0, warm.stdout[-4000:]
    [run] = client.search_runs([experiment.experiment_id], f"tags.`{MODE_TAG}` = 'warm_start'")
    assert run.data.tags["warm_start.from_version"] == "1" and run.data.tags["trigger.reason"] == "a new batch"
    assert run.data.tags["warm_start.new_batches"] == ",".join(full.train_batches[2:])
    assert run.data.metrics["warm_start_estimators_after"] == 320
    version = client.get_model_version(model_name, "2")
    assert version.run_id == run.info.run_id and version.tags[MODE_TAG] == "warm_start"
    assert version.tags["promotion.champion"] == "1"  # gated against the champion it was continued from
    assert version.tags["promotion.decision"] in ("better", "not_better", "worse_calibration", "worse_subgroup")
    holder = "champion" if version.tags["promotion.decision"] == "better" else "challenger"
    assert client.get_model_version_by_alias(model_name, holder).version == "2"
