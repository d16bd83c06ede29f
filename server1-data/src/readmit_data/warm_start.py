"""Incremental warm start: the champion continued with the train batches it has not learnt from, instead of a
candidate retrained from scratch on every batch (train_and_register's ``mode`` ``warm_start``).

The model is the whole Pipeline (the contract's transform + the estimator), so a continuation keeps the fitted
transform as it is (its vocabularies: a value first frequent in the new batches maps to "other", as in serving,
until a retraining refits it) and continues only the estimator, on the new rows transformed by that transform.
What "continue" honestly means depends on the estimator:

- **hist_gradient_boosting**: ``WARM_START_ITERATIONS`` more boosting iterations, fitted on the new rows only,
  each one on the gradients of the model so far (the champion's trees stay as they are, in front). scikit-learn's
  own ``warm_start`` is made for a second ``fit`` on the *same* rows: it refits the bin edges on whatever rows it
  is given and then reads the earlier trees' split *bins* on rows binned by the new edges, so on new rows it
  would start the new trees from wrong predictions. The continuation therefore keeps the champion's bin edges
  (part of the model, like the transform) for the new rows; continuing on the champion's own rows then gives
  exactly the model a longer fit would have (``tests/tracking/test_warm_start.py``).
- **random_forest** (a forest inside a sigmoid calibration fitted on patient-grouped out-of-fold scores): more
  trees, each fitted on a bootstrap of the new rows only, in proportion to them (trees so far x new rows / rows
  learnt so far, so each training row weighs about the same in the forest's average as in a refit). The
  calibration is kept: it maps the score a forest gives a row it did not learn from, which the added trees do
  not change in kind; the promotion gate checks the calibration against the champion's anyway.
- **logistic_regression** is refused: its fit is a convex problem solved to convergence, so starting from the
  champion's coefficients only changes where the solver starts, not where it ends: the result would be a model
  of the new batches alone, which forgot every earlier row (and its scaler would stay the old one's).
- **prior_baseline** is refused: it has nothing to continue.

A continued model is a candidate like the others: logged with its parameters, metrics, plots and model in a run
of the training experiment, with its lineage (``training.mode`` ``warm_start``, the version and run it was
started from, the batches that version had learnt from and the new ones), registered with the same gate
(``registry.register_and_promote``: it takes ``champion`` only if it beats the champion it was continued from by
the configured margin beyond the noise) and the same model card. Its ``train_batches`` are all the batches it has
learnt from, so monitoring counts them as the champion's own. It grows with each continuation (iterations,
trees), and so does its serving cost.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from readmit_contract import TARGET
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sqlalchemy import Engine

from .mlflow_access import registry_call
from .settings import DataSettings
from .training import (
    MODE_TAG,
    WARM_START,
    CandidateResult,
    Snapshot,
    candidate_run,
    log_fitted,
    read_split,
    with_history_dropout,
)

log = logging.getLogger(__name__)

CONTINUED = ("hist_gradient_boosting", "random_forest")
"""The candidates a warm start continues."""
REFUSED = {
    "logistic_regression": (
        "logistic_regression cannot be warm-started honestly: its fit is a convex problem solved to convergence, "
        "so starting from the champion's coefficients changes only where the solver starts, not where it ends; "
        "fitted on the new batches it would be a model of those batches alone, which forgot every earlier row. "
        "Retrain it on all batches (mode retrain)"),
    "prior_baseline": "prior_baseline has nothing to continue (it predicts the class prior): retrain it (mode retrain)",
}
"""The candidates a warm start refuses, and why."""


class WarmStartRefused(ValueError):
    """The champion cannot be continued (why is the message): nothing was trained or logged."""


@dataclass(frozen=True)
class Continuation:
    """What a warm start added: ``unit`` (boosting iterations, trees), how many before and after."""

    unit: str
    before: int
    after: int

    @property
    def added(self) -> int:
        return self.after - self.before


def estimator_count(pipeline: Pipeline) -> int | None:
    """Boosting iterations or trees of a fitted candidate Pipeline; None for other estimators."""
    model = pipeline.named_steps["model"]
    if isinstance(model, HistGradientBoostingClassifier):
        return int(model.n_iter_)
    forest = _calibrated_forest(model)
    return None if forest is None else len(forest.estimators_)


def _calibrated_forest(model: Any) -> RandomForestClassifier | ExtraTreesClassifier | None:
    """The fitted forest inside a calibration fitted with ``ensemble=False`` (one forest), else None."""
    if not isinstance(model, CalibratedClassifierCV) or not hasattr(model, "calibrated_classifiers_"):
        return None
    if len(model.calibrated_classifiers_) != 1:
        return None
    inner = model.calibrated_classifiers_[0].estimator
    return inner if isinstance(inner, RandomForestClassifier | ExtraTreesClassifier) else None


def refusal(candidate: str) -> str | None:
    """Why ``candidate`` cannot be warm-started, or None when it can."""
    if candidate in CONTINUED:
        return None
    return REFUSED.get(candidate, f"{candidate} has no warm start: retrain it (mode retrain)")


def continue_pipeline(pipeline: Pipeline, frame: pd.DataFrame, y: np.ndarray, *, iterations: int,
                      previous_rows: int) -> tuple[Pipeline, Continuation]:
    """A copy of the fitted candidate ``pipeline`` continued with the rows of ``frame`` (labels ``y``): its
    transform as fitted, its estimator continued (see the module's doc); ``pipeline`` itself is left unchanged.
    ``iterations``: boosting iterations to add; ``previous_rows``: the rows ``pipeline`` has learnt from (a
    forest's new trees are in proportion to the new rows). ``WarmStartRefused`` for an estimator without an
    honest continuation, or rows of one class only."""
    y = np.asarray(y)
    if len(frame) == 0 or len(np.unique(y)) < 2:
        raise WarmStartRefused(f"the new rows ({len(frame)}) do not hold both outcomes: nothing to continue with")
    continued = copy.deepcopy(pipeline)
    model = continued.named_steps["model"]
    X = continued.named_steps["features"].transform(frame)
    if isinstance(model, HistGradientBoostingClassifier):
        return continued, _continue_boosting(model, X, y, iterations)
    forest = _calibrated_forest(model)
    if forest is not None:
        trees = max(1, round(len(forest.estimators_) * len(frame) / max(1, previous_rows)))
        return continued, _continue_forest(forest, X, y, trees)
    kind = {"LogisticRegression": "logistic_regression", "DummyClassifier": "prior_baseline"}
    inner = model.steps[-1][1] if isinstance(model, Pipeline) else model
    raise WarmStartRefused(refusal(kind.get(type(inner).__name__, type(inner).__name__)) or "")


def _continue_boosting(model: HistGradientBoostingClassifier, X: np.ndarray, y: np.ndarray,
                       iterations: int) -> Continuation:
    """``iterations`` more boosting iterations fitted on (X, y), on the gradients of the model so far, the rows
    binned by the model's own bin edges (scikit-learn's warm start would refit them on X: see the module's doc)."""
    if iterations < 1:
        raise ValueError("a warm start adds at least one iteration")
    mapper = model._bin_mapper
    before = int(model.n_iter_)

    def keep_bin_edges(data: np.ndarray, sample_weight: Any, is_training_data: bool) -> np.ndarray:
        model._bin_mapper = mapper  # fit() has just put a fresh, unfitted bin mapper there
        binned = mapper.transform(data)
        return binned if is_training_data else np.ascontiguousarray(binned)

    model.set_params(warm_start=True, max_iter=before + iterations)
    model._bin_data = keep_bin_edges  # an instance attribute, removed below: never part of the saved model
    try:
        model.fit(X, y)
    finally:
        vars(model).pop("_bin_data", None)
        model.set_params(warm_start=False)
    if model._bin_mapper is not mapper or not _split_on_edges(model._predictors[before:], mapper.bin_thresholds_):
        raise RuntimeError("scikit-learn replaced the model's bin edges: this scikit-learn's warm start is not the "
                           "one readmit_data.warm_start was written for")
    return Continuation("boosting iterations", before, int(model.n_iter_))


def _split_on_edges(predictors: list, thresholds: list[np.ndarray]) -> bool:
    """Whether every numeric split of these trees lies on one of ``thresholds`` (the champion's bin edges), at
    the bin it was grown on: the raw threshold scikit-learn stores with each node is the edge of its bin (infinity
    for a split that sends only missing values right), so trees grown on other edges fail this."""
    for per_class in predictors:
        for tree in per_class:
            nodes = tree.nodes[(tree.nodes["is_leaf"] == 0) & (tree.nodes["is_categorical"] == 0)]
            for feature, bin_index, threshold in zip(nodes["feature_idx"], nodes["bin_threshold"],
                                                     nodes["num_threshold"], strict=True):
                edges = thresholds[feature]
                expected = edges[bin_index] if bin_index < len(edges) else np.inf
                if not (threshold == expected or np.isinf(threshold)):
                    return False
    return True


def _continue_forest(forest: RandomForestClassifier | ExtraTreesClassifier, X: np.ndarray, y: np.ndarray,
                     trees: int) -> Continuation:
    """``trees`` more trees, each fitted on a bootstrap of (X, y); the earlier trees stay as they are."""
    before = len(forest.estimators_)
    forest.set_params(warm_start=True, n_estimators=before + trees)
    try:
        forest.fit(X, y)
    finally:
        forest.set_params(warm_start=False)
    return Continuation("trees", before, len(forest.estimators_))


def _candidate_of(settings: DataSettings, champion: Any) -> str:
    candidate = (champion.tags or {}).get("candidate")
    if candidate:
        return candidate
    from mlflow import MlflowClient

    with registry_call(settings, f"reading the run of champion v{champion.version}", "nothing was trained"):
        candidate = MlflowClient(settings.mlflow_tracking_uri).get_run(champion.run_id).data.tags.get("candidate")
    if not candidate:
        raise WarmStartRefused(f"champion v{champion.version} does not say which candidate it is (no 'candidate' "
                               "tag): it cannot be continued; retrain (mode retrain)")
    return candidate


def champion_candidate(settings: DataSettings) -> tuple[str, str]:
    """(the champion's version, its candidate name); ``WarmStartRefused`` when there is no champion."""
    from .registry import current_champion

    champion = current_champion(settings)
    if champion is None:
        raise WarmStartRefused(f"{settings.model_name} has no {settings.model_alias!r} yet: train one first "
                               "(mode retrain)")
    return str(champion.version), _candidate_of(settings, champion)


def continue_champion(settings: DataSettings, clean_store: Engine, snapshot: Snapshot,
                      tags: dict[str, str] | None = None) -> CandidateResult:
    """The champion continued with the batches of ``snapshot`` it has not learnt from, logged as a candidate in
    a run of the training experiment (lineage as tags, kept on the result for the registered version). Nothing is
    registered here: the result goes through ``registry.register_and_promote`` like any candidate.

    ``WarmStartRefused`` (nothing logged) when there is no champion, its candidate has no honest continuation, its
    artifact is refused, or it has learnt from every batch of ``snapshot`` already; ``RegistryError`` when MLflow
    fails."""
    import mlflow
    from mlflow import MlflowClient
    from readmit_contract.artifact import ArtifactRefused

    from .registry import current_champion, load_verified

    champion = current_champion(settings)
    if champion is None:
        raise WarmStartRefused(f"{settings.model_name} has no {settings.model_alias!r} to continue: train one first "
                               "(mode retrain)")
    version = str(champion.version)
    candidate = _candidate_of(settings, champion)
    why = refusal(candidate)
    if why is not None:
        raise WarmStartRefused(f"champion v{version}: {why}")
    with registry_call(settings, f"reading the run of champion v{version}", "nothing was trained"):
        params = MlflowClient(settings.mlflow_tracking_uri).get_run(champion.run_id).data.params
    learnt = [b for b in params.get("train_batches", "").split(",") if b]
    new = [b for b in snapshot.train_batches if b not in learnt]
    if not new:
        raise WarmStartRefused(f"champion v{version} has learnt from every clean train batch already "
                               f"({', '.join(learnt)}): there is nothing to continue it with")
    try:
        with registry_call(settings, f"downloading champion v{version} of {settings.model_name}",
                           "nothing was trained"):
            pipeline = load_verified(settings, version)
    except ArtifactRefused as refused:
        raise WarmStartRefused(f"champion v{version}'s artifact is refused ({refused.code}: {refused.reason}): it "
                               "cannot be continued; retrain (mode retrain)") from refused

    new_rows = read_split(clean_store, "train", new)
    learnt_rows = read_split(clean_store, "train", learnt)
    validation = read_split(clean_store, "validation")
    started = time.perf_counter()
    continued, step = continue_pipeline(
        pipeline, with_history_dropout(new_rows, settings.history_dropout, settings.random_seed),
        new_rows[TARGET].to_numpy(), iterations=settings.warm_start_iterations, previous_rows=len(learnt_rows))
    seconds = time.perf_counter() - started
    champion_auc = float(roc_auc_score(validation[TARGET], pipeline.predict_proba(validation)[:, 1]))
    log.info("champion v%s (%s) continued with %s: %s %d -> %d", version, candidate, new, step.unit, step.before,
             step.after)

    batches = sorted(set(learnt) | set(new))
    lineage = {
        MODE_TAG: WARM_START,
        "warm_start.from_version": version,
        "warm_start.from_run": champion.run_id,
        "warm_start.base_batches": ",".join(learnt),
        "warm_start.new_batches": ",".join(new),
        "warm_start.added": f"{step.added} {step.unit} ({step.before} -> {step.after})",
    }
    learnt_from = pd.concat([learnt_rows, new_rows], ignore_index=True)
    lineage_snapshot = Snapshot(train_batches=batches, train_rows=len(learnt_from),
                                validation_rows=snapshot.validation_rows, test_rows=snapshot.test_rows)
    run_tags = {"candidate": candidate, **lineage, **(tags or {})}
    with candidate_run(settings, f"{candidate} (warm start from v{version})", run_tags) as run_id:
        result = log_fitted(
            settings, continued, candidate, lineage_snapshot, learnt_from, validation, run_id, seconds,
            extra_params={"warm_start.from_version": version, "warm_start.base_batches": ",".join(learnt),
                          "warm_start.new_batches": ",".join(new), "warm_start.unit": step.unit},
            extra_metrics={"warm_start_estimators_before": step.before, "warm_start_estimators_after": step.after,
                           "warm_start_new_rows": len(new_rows), "warm_start_previous_rows": len(learnt_rows),
                           "warm_start_champion_val_roc_auc": champion_auc},
            lineage=lineage)
        with registry_call(settings, f"storing the warm start's lineage (run {run_id})",
                           "the run is marked failed and nothing was registered"):
            mlflow.log_dict({**lineage, "unit": step.unit, "estimators_before": step.before,
                             "estimators_after": step.after, "new_rows": len(new_rows),
                             "previous_rows": len(learnt_rows), "champion_val_roc_auc": champion_auc,
                             "val_roc_auc": result.metrics["roc_auc"]}, "data/warm_start.json")
    return result
