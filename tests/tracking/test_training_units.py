"""The training functions the DAG calls, without a server."""

from itertools import combinations

import numpy as np
import pytest
from readmit_contract import TARGET, EncounterFeatures, clean, validate
from readmit_contract.artifact import verify_format_and_types
from readmit_data.candidates import CANDIDATES, build_pipeline, fit_pipeline
from readmit_data.registry import best_candidate
from readmit_data.stores import engines
from readmit_data.training import (
    CandidateResult,
    NoTrainingData,
    choose_threshold,
    evaluate,
    input_example,
    skops_trusted_types,
    take_snapshot,
)
from sklearn.base import clone
from sklearn.calibration import _SigmoidCalibration
from sklearn.model_selection import PredefinedSplit, cross_val_predict
from sklearn.pipeline import Pipeline


def test_threshold_maximises_f1():
    y = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    proba = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.8, 0.45, 0.9])
    t = choose_threshold(y, proba)
    best = max(evaluate(y, proba, c)["f1"] for c in proba)
    assert evaluate(y, proba, t)["f1"] == pytest.approx(best)


def test_evaluate_perfect_and_useless():
    y = np.array([0, 1, 0, 1])
    perfect = evaluate(y, np.array([0.1, 0.9, 0.2, 0.8]), 0.5)
    assert perfect["roc_auc"] == 1.0 and perfect["f1"] == 1.0 and perfect["brier"] < 0.05
    flat = evaluate(y, np.full(4, 0.5), 0.9)
    assert flat["roc_auc"] == 0.5 and flat["recall"] == 0.0


def test_every_candidate_is_a_contract_pipeline(synthetic_frame):
    rows = clean(validate(synthetic_frame).valid).clean
    for name in CANDIDATES:
        pipeline = build_pipeline(name)
        assert isinstance(pipeline, Pipeline) and isinstance(pipeline.named_steps["features"], EncounterFeatures)
    fitted = build_pipeline("hist_gradient_boosting").fit(rows, rows[TARGET])
    assert skops_trusted_types(fitted) == [
        "readmit_contract.features.EncounterFeatures",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    ]
    example = input_example(rows)
    assert (example == "?").any().any() and fitted.predict_proba(example).shape == (5, 2)
    with pytest.raises(KeyError, match="unknown candidate"):
        build_pipeline("deep_net")


def test_foreign_types_are_never_trusted(synthetic_frame):
    from sklearn.preprocessing import FunctionTransformer

    rows = clean(validate(synthetic_frame).valid).clean
    pipeline = build_pipeline("logistic_regression")
    pipeline.steps.insert(1, ("sneaky", FunctionTransformer(np.asarray)))
    pipeline.fit(rows, rows[TARGET])
    with pytest.raises(TypeError, match="outside scikit-learn"):
        skops_trusted_types(pipeline)


def test_no_clean_data_is_a_clear_error(tmp_path):
    with (engines(f"sqlite:///{tmp_path / 'r.db'}", f"sqlite:///{tmp_path / 'c.db'}") as (_, clean_store),
          pytest.raises(NoTrainingData, match="preprocess_incremental")):
        take_snapshot(clean_store)


def test_best_candidate_by_validation_roc_auc():
    results = [CandidateResult("a", "r1", "m1", {"roc_auc": 0.61}), CandidateResult("b", "r2", "m2", {"roc_auc": 0.66})]
    assert best_candidate(results).candidate == "b"
    with pytest.raises(ValueError):
        best_candidate([])


def test_random_forest_calibration_folds_are_grouped_by_patient(synthetic_frame, tmp_path):
    import mlflow

    rows = clean(validate(synthetic_frame).valid).clean
    patients = rows["patient_nbr"].to_numpy()
    assert rows["patient_nbr"].duplicated().sum() > 300  # patients come back
    y = rows[TARGET].to_numpy()
    pipeline = build_pipeline("random_forest").set_params(model__estimator__n_estimators=15)
    fit_pipeline(pipeline, rows, y)

    calibration = pipeline.named_steps["model"]
    folds = calibration.cv
    assert isinstance(folds, PredefinedSplit) and folds.get_n_splits() == 3
    fold_patients = [set(patients[test]) for _, test in folds.split()]
    assert all(a.isdisjoint(b) for a, b in combinations(fold_patients, 2))  # no patient in two folds
    assert set().union(*fold_patients) == set(patients) and min(map(len, fold_patients)) > 500

    # the sigmoid was fitted on those folds' out-of-fold scores: recomputed by hand, the same
    features = pipeline.named_steps["features"].transform(rows)
    out_of_fold = cross_val_predict(clone(calibration.estimator), features, y, cv=folds, method="predict_proba")
    expected = _SigmoidCalibration().fit(out_of_fold[:, 1], y)
    fitted = calibration.calibrated_classifiers_[0].calibrators[0]
    assert (fitted.a_, fitted.b_) == pytest.approx((expected.a_, expected.b_))
    assert len(calibration.calibrated_classifiers_) == 1  # one forest refit on all rows, as serving walks it

    # saved as training logs it, the model passes serving's format and allowed-types checks and loads
    folder = tmp_path / "model"
    mlflow.sklearn.save_model(pipeline, str(folder), serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                              skops_trusted_types=skops_trusted_types(pipeline))
    verify_format_and_types(folder)
    loaded = mlflow.sklearn.load_model(str(folder))
    np.testing.assert_allclose(loaded.predict_proba(rows.head(50)), pipeline.predict_proba(rows.head(50)))
