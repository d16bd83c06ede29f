"""A bounded hyper-parameter search for the tree candidates (Optuna, TPE sampler, a time budget).

Each trial scores parameters by the mean ROC-AUC over patient-grouped folds of the *train* rows (no
patient on both sides of a fold; validation and test are never seen), so the search cannot overfit
the rows the gate and the test report use. The contract's transform is fitted once per fold and its
matrices reused by every trial: a trial costs only the estimator's fits.

Why Optuna: a well-kept library with a wall-clock ``timeout`` and a TPE sampler that beats a grid for
the same budget; its study is seeded, so a search with a trial budget is reproducible (with a time
budget the number of trials depends on the machine's speed, and is logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline

from .candidates import PATIENT_COLUMN

log = logging.getLogger(__name__)
SEARCH_FOLDS = 3

Space = Callable[[Any], dict[str, Any]]


def _hist_gradient_boosting(trial: Any) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.15, log=True),
        "max_iter": trial.suggest_int("max_iter", 150, 600, step=50),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 8, 63, log=True),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 20, 400, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-3, 20.0, log=True),
        "max_features": trial.suggest_float("max_features", 0.2, 1.0),
    }


def _random_forest(trial: Any) -> dict[str, Any]:
    return {
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 5, 100, log=True),
        "max_features": trial.suggest_float("max_features", 0.05, 0.5, log=True),
    }


SPACES: dict[str, Space] = {"hist_gradient_boosting": _hist_gradient_boosting, "random_forest": _random_forest}
"""The candidates searched, and their spaces (estimator parameters)."""


@dataclass
class SearchResult:
    params: dict[str, Any]
    cv_roc_auc: float
    trials: int
    seconds: float
    default_cv_roc_auc: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _bare(model: BaseEstimator) -> BaseEstimator:
    """The estimator whose parameters are searched: the forest inside its calibration (a monotonic map,
    which leaves ROC-AUC unchanged), else the model itself."""
    return model.estimator if isinstance(model, CalibratedClassifierCV) else model


def _folds(pipeline: Pipeline, frame: pd.DataFrame, y: np.ndarray, seed: int) -> list[tuple]:
    splitter = GroupKFold(n_splits=SEARCH_FOLDS, shuffle=True, random_state=seed)
    folds = []
    for fit_rows, score_rows in splitter.split(frame, y, groups=frame[PATIENT_COLUMN].to_numpy()):
        features = clone(pipeline.named_steps["features"]).fit(frame.iloc[fit_rows])
        folds.append((features.transform(frame.iloc[fit_rows]), y[fit_rows],
                      features.transform(frame.iloc[score_rows]), y[score_rows]))
    return folds


def _cv_auc(estimator: BaseEstimator, folds: list[tuple]) -> float:
    scores = []
    for X_fit, y_fit, X_score, y_score in folds:
        model = clone(estimator).fit(X_fit, y_fit)
        scores.append(roc_auc_score(y_score, model.predict_proba(X_score)[:, 1]))
    return float(np.mean(scores))


def search(candidate: str, pipeline: Pipeline, frame: pd.DataFrame, y: np.ndarray, seconds: float,
           seed: int = 0, max_trials: int | None = None) -> SearchResult | None:
    """The best parameters found for ``candidate`` within ``seconds`` (or ``max_trials``), or None when the
    candidate has no search space. The candidate's fixed parameters are scored on the same folds first: when
    no trial beats them, ``params`` is empty (keep them)."""
    if candidate not in SPACES:
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    folds = _folds(pipeline, frame, y, seed)
    bare = _bare(pipeline.named_steps["model"])
    space = SPACES[candidate]

    def objective(trial: Any) -> float:
        return _cv_auc(clone(bare).set_params(**space(trial)), folds)

    default_auc = _cv_auc(bare, folds)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    remaining = max(1.0, seconds - (time.perf_counter() - started))
    study.optimize(objective, timeout=remaining, n_trials=max_trials, gc_after_trial=False)
    improved = bool(study.trials) and study.best_value > default_auc
    result = SearchResult(
        params=dict(study.best_params) if improved else {},
        cv_roc_auc=float(study.best_value) if improved else default_auc, trials=len(study.trials),
        seconds=time.perf_counter() - started, default_cv_roc_auc=default_auc,
        history=[{"number": t.number, "value": t.value, **t.params} for t in study.trials],
    )
    log.info("%s: %d trials in %.0f s, grouped-CV ROC-AUC %.4f (fixed parameters %.4f)", candidate, result.trials,
             result.seconds, result.cv_roc_auc, result.default_cv_roc_auc)
    return result


def apply(pipeline: Pipeline, params: dict[str, Any]) -> Pipeline:
    """``pipeline`` with the searched estimator parameters set (inside the calibration for the forest)."""
    model = pipeline.named_steps["model"]
    prefix = "model__estimator__" if isinstance(model, CalibratedClassifierCV) else "model__"
    return pipeline.set_params(**{prefix + k: v for k, v in params.items()})
