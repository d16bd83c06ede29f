"""Incremental warm start (readmit_data.warm_start): the champion continued with new batches, then the same gate."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from readmit_contract import TARGET
from readmit_data.candidates import build_pipeline, fit_pipeline
from readmit_data.registry import load_verified, register_and_promote
from readmit_data.settings import DataSettings
from readmit_data.stores import make_engine
from readmit_data.training import (
    MODE_TAG,
    Snapshot,
    mode_candidates,
    read_split,
    take_snapshot,
    train_candidate,
    with_history_dropout,
)
from readmit_data.warm_start import WarmStartRefused, continue_champion, continue_pipeline, estimator_count
from threadpoolctl import threadpool_limits

from .conftest import cleaned_store

SOURCE = "synthetic:6000:21"
ITERATIONS = 30


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return cleaned_store(tmp_path_factory.mktemp("warm-start-stores"), SOURCE)  # 1,500-row batches


@pytest.fixture(scope="module")
def frames(store) -> dict:
    engine = make_engine(store)
    try:
        snapshot = take_snapshot(engine)
        train, validation = read_split(engine, "train"), read_split(engine, "validation")
    finally:
        engine.dispose()
    batches = snapshot.train_batches
    assert len(batches) >= 3
    old = train[train["batch_id"].isin(batches[:2])]
    new = train[train["batch_id"].isin(batches[2:])]
    return {"old": with_history_dropout(old, 0.1, 0), "new": with_history_dropout(new, 0.1, 0),
            "validation": validation, "batches": batches}


def _fit(candidate: str, rows: pd.DataFrame, **params):
    pipeline = build_pipeline(candidate)
    if params:
        pipeline.set_params(**params)
    with threadpool_limits(1):  # OpenMP threads fighting over 2 busy cores are many times slower than one
        return fit_pipeline(pipeline, rows, rows[TARGET].to_numpy())


@pytest.fixture(scope="module")
def boosted(frames):
    """A hist_gradient_boosting champion of the first two batches."""
    return _fit("hist_gradient_boosting", frames["old"])


def test_boosting_continues_the_champion_with_the_new_rows(boosted, frames):
    before = boosted.predict_proba(frames["validation"])
    with threadpool_limits(1):
        continued, step = continue_pipeline(boosted, frames["new"], frames["new"][TARGET].to_numpy(),
                                            iterations=ITERATIONS, previous_rows=len(frames["old"]))
    champion, model = boosted.named_steps["model"], continued.named_steps["model"]
    assert (step.unit, step.before, step.after) == ("boosting iterations", 300, 300 + ITERATIONS)
    assert step.added == ITERATIONS
    assert model.n_iter_ == 300 + ITERATIONS and estimator_count(continued) == 300 + ITERATIONS
    # a continuation, not a re-fit: its first 300 iterations are the champion's, prediction for prediction
    X = continued.named_steps["features"].transform(frames["validation"])
    staged = list(model.staged_predict_proba(X))
    assert len(staged) == 300 + ITERATIONS
    np.testing.assert_array_equal(staged[299], before)
    assert np.abs(staged[-1] - before).max() > 1e-3  # ... and the new iterations changed it
    # fitted on the champion's bin edges and transform, both kept as they were
    for kept, original in zip(model._bin_mapper.bin_thresholds_, champion._bin_mapper.bin_thresholds_, strict=True):
        np.testing.assert_array_equal(kept, original)
    np.testing.assert_array_equal(continued.named_steps["features"].transform(frames["validation"]),
                                  boosted.named_steps["features"].transform(frames["validation"]))
    assert model.warm_start is False and "_bin_data" not in vars(model)  # nothing of the mechanism is saved
    # the champion itself is untouched
    assert champion.n_iter_ == 300 and champion.max_iter == 300
    np.testing.assert_array_equal(boosted.predict_proba(frames["validation"]), before)


def test_the_check_of_bin_edges_tells_scikit_learns_own_warm_start_apart(boosted, frames):
    """The guard of the private mechanism (``_split_on_edges``): the trees of this module's continuation split on
    the champion's bin edges; those of scikit-learn's plain warm start, which re-bins the new rows, do not."""
    import copy

    from readmit_data.warm_start import _split_on_edges

    champion = boosted.named_steps["model"]
    edges = champion._bin_mapper.bin_thresholds_
    assert _split_on_edges(champion._predictors, edges)
    with threadpool_limits(1):
        ours, _ = continue_pipeline(boosted, frames["new"], frames["new"][TARGET].to_numpy(), iterations=ITERATIONS,
                                    previous_rows=len(frames["old"]))
        plain = copy.deepcopy(boosted)
        model = plain.named_steps["model"]
        model.set_params(warm_start=True, max_iter=300 + ITERATIONS)
        few = frames["new"].head(300)  # fewer rows, fewer distinct values: bin edges of their own
        model.fit(plain.named_steps["features"].transform(few), few[TARGET].to_numpy())
    assert any(len(a) != len(b) or (a != b).any()
               for a, b in zip(model._bin_mapper.bin_thresholds_, edges, strict=True))
    assert _split_on_edges(ours.named_steps["model"]._predictors[300:], edges)
    assert not _split_on_edges(model._predictors[300:], edges)


def test_continuing_on_the_champions_own_rows_is_a_longer_fit(frames):
    """The continued trees start from the champion's own predictions: on the rows it was fitted on (the same bin
    edges either way), continuing 300 iterations by 30 gives exactly the model of a 330-iteration fit."""
    short = _fit("hist_gradient_boosting", frames["old"])
    with threadpool_limits(1):
        continued, _ = continue_pipeline(short, frames["old"], frames["old"][TARGET].to_numpy(),
                                         iterations=ITERATIONS, previous_rows=len(frames["old"]))
    longer = _fit("hist_gradient_boosting", frames["old"], model__max_iter=300 + ITERATIONS)
    np.testing.assert_allclose(continued.predict_proba(frames["validation"]),
                               longer.predict_proba(frames["validation"]), rtol=0, atol=1e-12)


def test_forest_adds_trees_in_proportion_to_the_new_rows(frames):
    champion = _fit("random_forest", frames["old"])
    calibrated = champion.named_steps["model"]
    forest = calibrated.calibrated_classifiers_[0].estimator
    with threadpool_limits(1):
        continued, step = continue_pipeline(champion, frames["new"], frames["new"][TARGET].to_numpy(),
                                            iterations=ITERATIONS, previous_rows=len(frames["old"]))
    expected = round(200 * len(frames["new"]) / len(frames["old"]))
    assert (step.unit, step.before, step.after) == ("trees", 200, 200 + expected)
    inner = continued.named_steps["model"].calibrated_classifiers_[0]
    assert len(inner.estimator.estimators_) == 200 + expected and len(forest.estimators_) == 200
    for kept, original in zip(inner.estimator.estimators_[:200], forest.estimators_, strict=True):
        np.testing.assert_array_equal(kept.tree_.threshold, original.tree_.threshold)
        np.testing.assert_array_equal(kept.tree_.value, original.tree_.value)
    # the calibration (fitted on patient-grouped out-of-fold scores) is kept as it was
    original_sigmoid = calibrated.calibrated_classifiers_[0].calibrators[0]
    assert (inner.calibrators[0].a_, inner.calibrators[0].b_) == (original_sigmoid.a_, original_sigmoid.b_)
    assert np.abs(continued.predict_proba(frames["validation"])
                  - champion.predict_proba(frames["validation"])).max() > 1e-4


def test_no_honest_continuation_is_refused(frames):
    rows = frames["old"]
    logistic = _fit("logistic_regression", rows)
    with pytest.raises(WarmStartRefused, match="convex problem.*Retrain it on all batches"):
        continue_pipeline(logistic, frames["new"], frames["new"][TARGET].to_numpy(), iterations=10,
                          previous_rows=len(rows))
    baseline = _fit("prior_baseline", rows)
    with pytest.raises(WarmStartRefused, match="nothing to continue"):
        continue_pipeline(baseline, frames["new"], frames["new"][TARGET].to_numpy(), iterations=10,
                          previous_rows=len(rows))
    one_class = frames["new"][frames["new"][TARGET] == 0]
    with pytest.raises(WarmStartRefused, match="both outcomes"):
        continue_pipeline(logistic, one_class, one_class[TARGET].to_numpy(), iterations=10, previous_rows=len(rows))


def test_modes_and_their_candidates_are_checked_before_anything_runs():
    settings = DataSettings(CANDIDATES="logistic_regression,random_forest")
    assert mode_candidates(settings, "retrain", None) == ["logistic_regression", "random_forest"]  # as before
    assert mode_candidates(settings, "retrain", ["prior_baseline"]) == ["prior_baseline"]
    assert mode_candidates(settings, "learning_curve", ["random_forest"]) == ["random_forest"]
    with pytest.raises(ValueError, match="unknown training mode 'incremental'"):
        mode_candidates(settings, "incremental", None)
    with pytest.raises(ValueError, match=r"unknown candidates \['xgboost'\]"):
        mode_candidates(settings, "learning_curve", ["xgboost"])


@pytest.mark.slow
def test_the_champion_is_continued_logged_and_gated(sqlite_tracking, store, model_name):
    import mlflow
    from mlflow import MlflowClient
    from readmit_contract.artifact import DIGEST_TAG
    from readmit_contract.card import CARD_DIGEST_TAG

    # a margin no model clears: the decision is the gate's, made against the champion the model was continued from
    settings = DataSettings(MLFLOW_TRACKING_URI=sqlite_tracking.uri, MODEL_NAME=model_name,
                            MLFLOW_EXPERIMENT_NAME=model_name, CLEAN_DB_URL=store, PROMOTION_MIN_DELTA=1.0,
                            PROMOTION_BOOTSTRAP_SAMPLES=200, MODEL_CARD_BOOTSTRAP_SAMPLES=100,
                            WARM_START_ITERATIONS=ITERATIONS)
    client = MlflowClient(sqlite_tracking.uri)
    engine = make_engine(store)
    try:
        full = take_snapshot(engine)
        with pytest.raises(WarmStartRefused, match="has no 'champion' to continue"):
            continue_champion(settings, engine, full)
        with pytest.raises(ValueError, match="name the candidate"):
            mode_candidates(settings, "learning_curve", None)

        first = Snapshot(full.train_batches[:2], 0, full.validation_rows, full.test_rows)
        with threadpool_limits(1):
            trained = train_candidate(settings, engine, "hist_gradient_boosting", first)
        assert register_and_promote(settings, engine, trained).version == "1"
        assert mode_candidates(settings, "warm_start", None) == ["hist_gradient_boosting"]
        assert mode_candidates(settings, "learning_curve", None) == ["hist_gradient_boosting"]
        with pytest.raises(ValueError, match="continues the champion"):
            mode_candidates(settings, "warm_start", ["random_forest"])
        with pytest.raises(WarmStartRefused, match="learnt from every clean train batch"):
            continue_champion(settings, engine, first)

        with threadpool_limits(1):
            warm = continue_champion(settings, engine, full, tags={"trigger.reason": "a test"})
        new = full.train_batches[2:]
        run = client.get_run(warm.run_id)
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags[MODE_TAG] == "warm_start" and tags["candidate"] == "hist_gradient_boosting"
        assert tags["warm_start.from_version"] == "1" and tags["warm_start.from_run"] == trained.run_id
        assert tags["warm_start.base_batches"] == ",".join(full.train_batches[:2])
        assert tags["warm_start.new_batches"] == ",".join(new) and tags["trigger.reason"] == "a test"
        assert params["train_batches"] == ",".join(full.train_batches)  # everything it has learnt from
        assert params["max_iter"] == str(300 + ITERATIONS)
        assert (metrics["warm_start_estimators_before"], metrics["warm_start_estimators_after"]) == (300, 330)
        assert metrics["train_rows"] == full.train_rows
        assert metrics["warm_start_champion_val_roc_auc"] == pytest.approx(trained.metrics["roc_auc"], abs=1e-12)
        assert metrics["val_roc_auc"] == pytest.approx(warm.metrics["roc_auc"])
        artifacts = {a.path for a in client.list_artifacts(warm.run_id, "plots")}
        assert artifacts == {"plots/calibration.png", "plots/confusion_matrix.png"}
        with tempfile.TemporaryDirectory() as tmp:
            record = json.loads(Path(client.download_artifacts(warm.run_id, "data/warm_start.json", tmp)).read_text())
        assert record["estimators_before"] == 300 and record["estimators_after"] == 330
        assert record["new_rows"] + record["previous_rows"] == full.train_rows

        # the same gate as any candidate: compared with champion v1 on the same rows, not promoted under the margin
        promotion = register_and_promote(settings, engine, warm)
        assert (promotion.version, promotion.promoted, promotion.decision) == ("2", False, "not_better")
        assert client.get_model_version_by_alias(model_name, "champion").version == "1"
        version = client.get_model_version_by_alias(model_name, "challenger")
        assert version.version == "2" and version.tags["promotion.champion"] == "1"
        assert version.tags[MODE_TAG] == "warm_start" and version.tags["warm_start.from_version"] == "1"
        assert version.tags["warm_start.new_batches"] == ",".join(new)
        assert float(version.tags["gate.delta"]) == pytest.approx(
            warm.metrics["roc_auc"] - trained.metrics["roc_auc"], abs=1e-6)
        assert DIGEST_TAG in version.tags and CARD_DIGEST_TAG in version.tags  # checksum and model card, as any
        assert client.list_artifacts(warm.run_id, "model_card")

        # what serving would load: v2 passes its checks and carries v1's 300 iterations, then 30 more
        mlflow.set_tracking_uri(sqlite_tracking.uri)
        champion, challenger = load_verified(settings, "1"), load_verified(settings, "2")
        validation = read_split(engine, "validation")
        X = challenger.named_steps["features"].transform(validation)
        staged = list(challenger.named_steps["model"].staged_predict_proba(X))
        assert challenger.named_steps["model"].n_iter_ == 330 and len(staged) == 330
        np.testing.assert_array_equal(staged[299], champion.predict_proba(validation))
    finally:
        engine.dispose()
