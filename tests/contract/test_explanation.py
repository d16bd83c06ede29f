"""Explanations of the candidates' predictions: additive (base + contributions = the model's log-odds), in
clinical words, the linear ones equal to SHAP's own linear explainer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from readmit_contract import TARGET, EncounterFeatures, clean, synthetic, validate
from readmit_contract.explanation import (
    LINEAR,
    NOT_KNOWN,
    NOT_RECORDED,
    PRIOR,
    TREE_PATH,
    TREE_SHAP,
    Explainer,
    factors,
)
from readmit_contract.features import INPUT_COLUMNS
from readmit_contract.history import HISTORY_NAMES, history_table
from readmit_data.candidates import build_pipeline, fit_pipeline
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

CANDIDATES = ("hist_gradient_boosting", "random_forest", "logistic_regression", "prior_baseline")
METHOD = {"hist_gradient_boosting": TREE_SHAP, "random_forest": TREE_PATH, "logistic_regression": LINEAR,
          "prior_baseline": PRIOR}


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    frame = clean(validate(synthetic.generate(3000, seed=21)).valid).clean.reset_index(drop=True)
    return frame.join(history_table(frame)[list(HISTORY_NAMES)])


@pytest.fixture(scope="module")
def fitted(rows) -> dict[str, Pipeline]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return {name: fit_pipeline(build_pipeline(name, seed=2), rows, rows[TARGET].to_numpy())
                for name in CANDIDATES}


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def test_every_feature_belongs_to_exactly_one_factor(rows):
    for transform in (EncounterFeatures().fit(rows), EncounterFeatures().fit(rows.drop(columns=list(HISTORY_NAMES)))):
        found = factors(transform)
        positions = sorted(i for f in found for i in f.features)
        assert positions == list(range(len(transform.feature_names_)))
        assert len({f.key for f in found}) == len(found)
        assert all(f.label and f.label[0].isupper() for f in found)
    assert {f.key for f in factors(EncounterFeatures().fit(rows))} >= {*HISTORY_NAMES, "history_known", "age"}


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_contributions_add_up_to_the_models_log_odds(fitted, rows, candidate):
    pipeline = fitted[candidate]
    explainer = Explainer.for_pipeline(pipeline)
    assert explainer is not None and explainer.method == METHOD[candidate]
    sample = rows.sample(40, random_state=1)
    records = sample.to_dict("records")
    explanations = explainer.explain(records)
    proba = pipeline.predict_proba(sample)[:, 1]
    log_odds = np.array([e.base + math.fsum(c.contribution for c in e.contributions) for e in explanations])
    np.testing.assert_allclose(log_odds, _logit(proba), rtol=0, atol=1e-8)
    assert [e.probability for e in explanations] == pytest.approx(proba.tolist(), abs=1e-9)
    # the same rows as a frame and as records explain alike
    again = explainer.explain(sample)
    assert [e.contributions for e in again] == [e.contributions for e in explanations]
    if candidate == "prior_baseline":
        assert all(c.contribution == 0 for e in explanations for c in e.contributions)
    else:
        assert all(any(abs(c.contribution) > 1e-6 for c in e.contributions) for e in explanations)
        assert all(abs(e.contributions[0].contribution) >= abs(e.contributions[-1].contribution)
                   for e in explanations)  # largest first
    top, rest = explanations[0].top(5)
    assert explanations[0].base + math.fsum(c.contribution for c in top) + rest == pytest.approx(log_odds[0])


def test_linear_contributions_equal_shaps_linear_explainer(fitted, rows):
    import shap

    pipeline = fitted["logistic_regression"]
    scaler, regression = pipeline[-1][0], pipeline[-1][-1]
    scaled = scaler.transform(pipeline[0].transform(rows))
    library = shap.LinearExplainer(regression, shap.maskers.Independent(scaled, max_samples=len(scaled)))
    sample = rows.head(10)
    expected = library.shap_values(scaler.transform(pipeline[0].transform(sample)))
    explainer = Explainer.for_pipeline(pipeline)
    ours = np.asarray(explainer._contributions(pipeline[0].transform(sample)))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_the_forests_path_attributions_rank_factors_as_exact_shap_does(fitted, rows):
    """The forest is explained with SHAP's approximate tree attributions (exact TreeSHAP is too slow on its deep
    trees): they must tell the same story as the exact values."""
    import shap
    from scipy.stats import spearmanr

    pipeline = fitted["random_forest"]
    forest = pipeline[-1].calibrated_classifiers_[0].estimator
    X = pipeline[0].transform(rows.head(20))
    exact = np.asarray(shap.TreeExplainer(forest).shap_values(X, check_additivity=False))[:, :, 1]
    approximate = np.asarray(shap.TreeExplainer(forest).shap_values(X, approximate=True,
                                                                       check_additivity=False))[:, :, 1]
    correlation = [spearmanr(np.abs(e), np.abs(a)).statistic for e, a in zip(exact, approximate, strict=True)]
    assert np.mean(correlation) > 0.8
    top = [len(set(np.argsort(-np.abs(e))[:5]) & set(np.argsort(-np.abs(a))[:5]))
           for e, a in zip(exact, approximate, strict=True)]
    assert np.mean(top) >= 3


def test_factors_are_named_in_clinical_words(fitted, rows):
    record = rows.iloc[0].to_dict()
    record.update(discharge_disposition_id=3, number_inpatient=3, diag_1="428", payer_code=None,
                  admission_source_id=7)
    unknown = {**record, **dict.fromkeys(HISTORY_NAMES)}
    explainer = Explainer.for_pipeline(fitted["hist_gradient_boosting"])
    (known_one,) = explainer.explain([record])
    texts = {c.factor: c.text for c in known_one.contributions}
    assert texts["discharge_disposition_id"] == "Discharge disposition: Discharged/transferred to SNF"
    assert texts["number_inpatient"] == "Inpatient visits in the year before the encounter: 3"
    assert texts["diag_1"] == "Primary diagnosis (ICD-9): 428 (circulatory)"
    assert texts["admission_source_id"] == "Source of admission: Emergency Room"
    assert texts["payer_code"] == f"Payer (insurance) code: {NOT_RECORDED}"
    assert texts["hist_encounters"] == f"Earlier encounters of this patient: {int(record['hist_encounters'])}"
    assert texts["history_known"].endswith(": yes")
    (unknown_one,) = explainer.explain([unknown])
    texts = {c.factor: c.text for c in unknown_one.contributions}
    assert texts["hist_encounters"].endswith(NOT_KNOWN) and texts["history_known"].endswith(": no")
    assert not any(name in text for text in texts.values() for name in INPUT_COLUMNS if "_" in name)


def test_models_it_cannot_explain_get_no_explainer(rows):
    y = rows[TARGET].to_numpy()
    isotonic = Pipeline([("features", EncounterFeatures()),
                         ("model", CalibratedClassifierCV(RandomForestClassifier(n_estimators=5, random_state=0),
                                                          method="isotonic", cv=2))]).fit(rows, y)
    assert Explainer.for_pipeline(isotonic) is None
