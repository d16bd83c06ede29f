"""Candidate models: each a full scikit-learn Pipeline, the contract's transform + an estimator.

Tuned for an ~11 % positive class without distorting probabilities: the estimators
see the natural class balance (so predicted probabilities stay calibrated, which the
risk bands and the Brier score rely on), the decision threshold is chosen on the
validation set (max F1), and the random forest, whose raw scores are compressed
towards the mean, is calibrated with a sigmoid (Platt) fit on 3-fold out-of-fold scores,
the folds grouped by patient (``fit_pipeline``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from readmit_contract import EncounterFeatures
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, PredefinedSplit
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

PATIENT_COLUMN = "patient_nbr"
CALIBRATION_FOLDS = 3


def _logistic_regression(seed: int) -> BaseEstimator:
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000, random_state=seed))


def _random_forest(seed: int) -> BaseEstimator:
    forest = RandomForestClassifier(
        n_estimators=200, min_samples_leaf=20, max_features="sqrt", n_jobs=-1, random_state=seed
    )
    # ensemble=False: one forest refit on all rows, calibrated on out-of-fold scores, so serving walks
    # 200 trees, not 3 x 200. The folds keep each patient's encounters together: fit_pipeline turns this
    # splitter into the training rows' folds.
    return CalibratedClassifierCV(forest, method="sigmoid", ensemble=False,
                                  cv=GroupKFold(n_splits=CALIBRATION_FOLDS, shuffle=True, random_state=seed))


def _hist_gradient_boosting(seed: int) -> BaseEstimator:
    return HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=300, max_leaf_nodes=31, min_samples_leaf=50, l2_regularization=1.0,
        early_stopping=False, random_state=seed,
    )


def _prior_baseline(seed: int) -> BaseEstimator:
    """Predicts the class prior for everyone: a floor every real model must beat."""
    return DummyClassifier(strategy="prior")


CANDIDATES: dict[str, Callable[[int], BaseEstimator]] = {
    "logistic_regression": _logistic_regression,
    "random_forest": _random_forest,
    "hist_gradient_boosting": _hist_gradient_boosting,
    "prior_baseline": _prior_baseline,
}


def build_pipeline(name: str, seed: int = 0) -> Pipeline:
    """The candidate ``name`` as one Pipeline: the contract's feature transform, then the estimator."""
    if name not in CANDIDATES:
        raise KeyError(f"unknown candidate {name!r}: choose from {sorted(CANDIDATES)}")
    return Pipeline([("features", EncounterFeatures()), ("model", CANDIDATES[name](seed))])


def _needs_groups(splitter: object) -> bool:
    return isinstance(splitter, GroupKFold)


def fit_pipeline(pipeline: Pipeline, frame: pd.DataFrame, y: np.ndarray) -> Pipeline:
    """Fit ``pipeline`` on the rows of ``frame`` (labels ``y``); a calibration with a group splitter gets its
    folds by patient (``patient_nbr``), so no patient's encounters sit on both sides of a fold.

    Why grouped: a patient's encounters look alike; with ungrouped folds the forest scoring a held-out
    encounter was trained on the same patient's other encounters, its out-of-fold scores are too good,
    and the sigmoid fitted on them is over-confident on new patients.

    How: scikit-learn routes ``groups`` (metadata routing) to a ``CalibratedClassifierCV``'s splitter only
    when it ensembles the folds' models (``ensemble=True``); with ``ensemble=False`` (one forest refit on
    all rows, what serving walks) its ``cross_val_predict`` is called without them (scikit-learn 1.9),
    so a ``GroupKFold`` there fails. The group splitter is therefore applied here, to the training rows'
    patients, and the calibration receives the resulting folds as a ``PredefinedSplit`` (the fold of each
    training row: a small integer array kept in the artifact; scikit-learn types only, which serving's
    allowed-types check accepts)."""
    model = pipeline.named_steps["model"]
    if isinstance(model, CalibratedClassifierCV) and _needs_groups(model.cv):
        pipeline.set_params(model__cv=patient_folds(model.cv, frame, y))
    return pipeline.fit(frame, y)


def patient_folds(splitter: GroupKFold, frame: pd.DataFrame, y: np.ndarray) -> PredefinedSplit:
    """The folds ``splitter`` makes of ``frame``'s rows grouped by patient, as a ``PredefinedSplit``."""
    if PATIENT_COLUMN not in frame.columns:
        raise KeyError(f"grouped calibration folds need the {PATIENT_COLUMN} column")
    fold_of_row = np.full(len(frame), -1, dtype=np.int64)
    for fold, (_, test) in enumerate(splitter.split(frame, y, groups=frame[PATIENT_COLUMN].to_numpy())):
        fold_of_row[test] = fold
    return PredefinedSplit(fold_of_row)
