"""Cumulative learning curve: how much data is enough (train_and_register's ``mode`` ``learning_curve``).

For one candidate, a model is trained from scratch on train batches 1..N for every N (batch 1, batches 1-2, ...,
all of them, in the order they arrived), exactly as ``mode`` retrain would train it on those batches (the
candidate's fixed parameters: no search; the same history dropout and seed), and scored on the validation
split, whose patients none of them learnt from. Next to each full retraining, from N = 2 on, the curve records
the **warm-started** model: the model of batch 1 continued with batch 2, that one continued with batch 3, and so
on (``readmit_data.warm_start``: each continuation is what ``mode`` warm_start does to a champion), so the two
lines compare the two ways of keeping a model up to date on the same rows. A candidate without an honest warm
start (logistic regression, the prior baseline) gets the full line only, and the curve says why.

Every point carries a 95 % interval of its ROC-AUC from a bootstrap over validation *patients*
(``gate.patient_bootstrap_interval``), and the warm-started model's difference from the full retraining a paired
interval (``gate.paired_bootstrap``, both directions). "Enough" is the fewest batches whose model the model of all
batches does not beat beyond the noise (the lower bound of the all-batches model's paired lead, at
``PROMOTION_CONFIDENCE``, is at most 0): with this validation set, more rows gave no gain one can tell from
chance. When that is only the last point, the curve is still rising and more data is likely to help.

Logged as one run of the training experiment (tag ``training.mode`` ``learning_curve``): the figures as metrics
(``curve_*``, step = training rows; ``curve_train_rows`` with step = batches), the plot
(``learning_curve/curve.png``), the table, one row per N with both lines (``learning_curve/curve.csv`` and
``curve.json``). It registers nothing, logs no model and never moves an alias.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from readmit_contract import TARGET  # noqa: E402
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

from .candidates import PATIENT_COLUMN, build_pipeline, fit_pipeline  # noqa: E402
from .gate import paired_bootstrap, patient_bootstrap_interval  # noqa: E402
from .mlflow_access import registry_call  # noqa: E402
from .settings import DataSettings  # noqa: E402
from .training import (  # noqa: E402
    LEARNING_CURVE,
    MODE_TAG,
    Snapshot,
    candidate_run,
    read_split,
    with_history_dropout,
)
from .warm_start import WarmStartRefused, continue_pipeline, estimator_count, refusal  # noqa: E402

log = logging.getLogger(__name__)

ARTIFACT_DIR = "learning_curve"
PLOT = f"{ARTIFACT_DIR}/curve.png"
TABLE_CSV = f"{ARTIFACT_DIR}/curve.csv"
TABLE_JSON = f"{ARTIFACT_DIR}/curve.json"
CANDIDATE_TAG = "learning_curve.candidate"


@dataclass
class CurvePoint:
    """One N of the curve: the full retraining on batches 1..N and, for N > 1, the warm-started model."""

    batches: int
    last_batch: str
    train_rows: int
    train_patients: int
    full_val_roc_auc: float
    full_val_roc_auc_low: float
    full_val_roc_auc_high: float
    full_val_pr_auc: float
    full_val_brier: float
    full_seconds: float
    full_estimators: int | None
    final_lead_lower_bound: float | None
    """Lower bound of the all-batches model's ROC-AUC lead over this one (paired patient bootstrap); None at the
    last point (it is the all-batches model)."""
    warm_start_val_roc_auc: float | None = None
    warm_start_val_roc_auc_low: float | None = None
    warm_start_val_roc_auc_high: float | None = None
    warm_start_val_pr_auc: float | None = None
    warm_start_val_brier: float | None = None
    warm_start_seconds: float | None = None
    warm_start_estimators: int | None = None
    warm_start_minus_full: float | None = None
    warm_start_minus_full_low: float | None = None
    warm_start_minus_full_high: float | None = None


@dataclass
class LearningCurve:
    candidate: str
    points: list[CurvePoint]
    warm_start: str
    """How the warm-start line was made, or why there is none."""
    enough_batches: int
    enough_rows: int
    verdict: str
    validation_rows: int
    validation_patients: int
    confidence: float
    run_id: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per N, both lines side by side."""
        return pd.DataFrame([asdict(p) for p in self.points])

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "points"},
                "points": [{k: _json_number(v) for k, v in asdict(p).items()} for p in self.points]}


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _scores(y: np.ndarray, proba: np.ndarray, patients: np.ndarray, settings: DataSettings) -> dict[str, float]:
    low, high = patient_bootstrap_interval(y, proba, patients, confidence=0.95,
                                           samples=settings.promotion_bootstrap_samples, seed=settings.random_seed)
    return {"roc_auc": float(roc_auc_score(y, proba)), "low": low, "high": high,
            "pr_auc": float(average_precision_score(y, proba)), "brier": float(brier_score_loss(y, proba))}


def _paired(settings: DataSettings, y: np.ndarray, a: np.ndarray, b: np.ndarray, patients: np.ndarray,
            confidence: float) -> float:
    """Lower bound (one-sided, ``confidence``) of ROC-AUC(a) - ROC-AUC(b), patients resampled, both on the same rows."""
    return paired_bootstrap(y, a, b, patients, confidence=confidence, samples=settings.promotion_bootstrap_samples,
                            seed=settings.random_seed).lower_bound


def compute_curve(settings: DataSettings, candidate: str, train: pd.DataFrame, validation: pd.DataFrame,
                  batches: list[str], warm_start: bool = True) -> LearningCurve:
    """The learning curve of ``candidate`` over ``batches`` (in that order) of the ``train`` rows, scored on the
    ``validation`` rows (see the module's doc). ``warm_start=False``: the full-retraining line only."""
    if not batches:
        raise ValueError("a learning curve needs at least one train batch")
    y_val = validation[TARGET].to_numpy()
    patients = validation[PATIENT_COLUMN].to_numpy()
    confidence = settings.promotion_confidence
    why_not = refusal(candidate) if warm_start else "not asked for"
    warm: Pipeline | None = None
    rows_so_far = 0
    points: list[CurvePoint] = []
    full_probas: list[np.ndarray] = []
    for n, batch in enumerate(batches, start=1):
        rows = train[train["batch_id"].isin(batches[:n])]
        started = time.perf_counter()
        full = fit_pipeline(build_pipeline(candidate, settings.random_seed),
                            with_history_dropout(rows, settings.history_dropout, settings.random_seed),
                            rows[TARGET].to_numpy())
        full_seconds = time.perf_counter() - started
        proba = full.predict_proba(validation)[:, 1]
        full_probas.append(proba)
        scores = _scores(y_val, proba, patients, settings)
        point = CurvePoint(
            batches=n, last_batch=batch, train_rows=len(rows), train_patients=int(rows[PATIENT_COLUMN].nunique()),
            full_val_roc_auc=scores["roc_auc"], full_val_roc_auc_low=scores["low"],
            full_val_roc_auc_high=scores["high"], full_val_pr_auc=scores["pr_auc"], full_val_brier=scores["brier"],
            full_seconds=full_seconds, full_estimators=estimator_count(full), final_lead_lower_bound=None)
        if why_not is None and n == 1:
            warm = full  # both lines start from the same model of batch 1
        elif why_not is None and warm is not None:
            new = train[train["batch_id"] == batch]
            started = time.perf_counter()
            try:
                warm, _ = continue_pipeline(
                    warm, with_history_dropout(new, settings.history_dropout, settings.random_seed),
                    new[TARGET].to_numpy(), iterations=settings.warm_start_iterations, previous_rows=rows_so_far)
            except WarmStartRefused as refused:
                why_not, warm = f"stopped at batch {n} ({batch}): {refused}", None
            else:
                warm_proba = warm.predict_proba(validation)[:, 1]
                ws = _scores(y_val, warm_proba, patients, settings)
                point.warm_start_val_roc_auc, point.warm_start_val_pr_auc = ws["roc_auc"], ws["pr_auc"]
                point.warm_start_val_roc_auc_low, point.warm_start_val_roc_auc_high = ws["low"], ws["high"]
                point.warm_start_val_brier = ws["brier"]
                point.warm_start_seconds = time.perf_counter() - started
                point.warm_start_estimators = estimator_count(warm)
                point.warm_start_minus_full = ws["roc_auc"] - scores["roc_auc"]
                # two-sided interval of (warm - full) from the two one-sided bounds at (1 + 0.95) / 2
                point.warm_start_minus_full_low = _paired(settings, y_val, warm_proba, proba, patients, 0.975)
                point.warm_start_minus_full_high = -_paired(settings, y_val, proba, warm_proba, patients, 0.975)
        rows_so_far = len(rows)
        points.append(point)
        log.info("learning curve %s: %d batch(es), %d rows: full %.4f%s", candidate, n, len(rows),
                 scores["roc_auc"], "" if point.warm_start_val_roc_auc is None
                 else f", warm start {point.warm_start_val_roc_auc:.4f}")

    final = full_probas[-1]
    for point, proba in zip(points[:-1], full_probas[:-1], strict=True):
        point.final_lead_lower_bound = _paired(settings, y_val, final, proba, patients, confidence)
    enough = next(p for p in points if p.final_lead_lower_bound is None or p.final_lead_lower_bound <= 0)
    if len(points) == 1:
        verdict = "one batch only: nothing to compare it with"
    elif enough is points[-1]:
        verdict = (f"still rising: the model of all {len(points)} batches ({enough.train_rows} rows) beats the model "
                   f"of {len(points) - 1} beyond the noise; more data is likely to help")
    else:
        verdict = (f"{enough.train_rows} rows ({enough.batches} of {len(points)} batches) are enough: the model of "
                   f"all {points[-1].train_rows} rows does not beat theirs beyond the noise (validation ROC-AUC "
                   f"{enough.full_val_roc_auc:.4f} vs {points[-1].full_val_roc_auc:.4f}, {confidence:.0%} one-sided)")
    if why_not is None:
        extra = (f"{settings.warm_start_iterations} boosting iterations" if candidate == "hist_gradient_boosting"
                 else "trees in proportion to its rows")
        warm_note = (f"from batch 2 on, the model of batch 1 continued with each next batch in turn ({extra} per "
                     "batch, fitted on that batch only; the transform as fitted on batch 1)")
    else:
        warm_note = f"no warm-start line: {why_not}"
    return LearningCurve(
        candidate=candidate, points=points, warm_start=warm_note, enough_batches=enough.batches,
        enough_rows=enough.train_rows, verdict=verdict, validation_rows=len(validation),
        validation_patients=int(validation[PATIENT_COLUMN].nunique()), confidence=confidence,
        settings={"history_dropout": settings.history_dropout, "random_seed": settings.random_seed,
                  "warm_start_iterations": settings.warm_start_iterations,
                  "bootstrap_samples": settings.promotion_bootstrap_samples})


def curve_figure(curve: LearningCurve) -> plt.Figure:
    """Validation ROC-AUC against training rows: full retraining and warm start, 95 % patient-bootstrap bands."""
    table = curve.table()
    figure, ax = plt.subplots(figsize=(7.5, 4.8))
    rows = table["train_rows"].to_numpy()
    ax.fill_between(rows, table["full_val_roc_auc_low"], table["full_val_roc_auc_high"], color="tab:blue", alpha=0.15)
    ax.plot(rows, table["full_val_roc_auc"], "o-", color="tab:blue", label="retrained from scratch on batches 1..N")
    for row in table.itertuples():
        ax.annotate(f"N={row.batches}", (row.train_rows, row.full_val_roc_auc), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8, color="tab:blue")
    warm = table[table["warm_start_val_roc_auc"].notna()] if "warm_start_val_roc_auc" in table else table.iloc[:0]
    if not warm.empty:
        first = table.iloc[0]
        xs = np.concatenate([[first["train_rows"]], warm["train_rows"].to_numpy()])
        ax.fill_between(warm["train_rows"], warm["warm_start_val_roc_auc_low"].astype(float),
                        warm["warm_start_val_roc_auc_high"].astype(float), color="tab:orange", alpha=0.12)
        ax.plot(xs, np.concatenate([[first["full_val_roc_auc"]], warm["warm_start_val_roc_auc"].astype(float)]),
                "s--", color="tab:orange", label="warm start: batch 1's model continued with each next batch")
    ax.axvline(curve.enough_rows, color="grey", linestyle=":", label=f"enough: {curve.enough_rows} rows")
    ax.set_xlabel("training rows")
    ax.set_ylabel("validation ROC-AUC")
    ax.set_title(f"Learning curve: {curve.candidate} ({curve.validation_rows} validation rows, "
                 f"{curve.validation_patients} patients; bands: 95 %)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def curve_metrics(point: CurvePoint) -> dict[str, float]:
    """The point's figures as ``curve_*`` metrics (those it has)."""
    names = ("full_val_roc_auc", "full_val_roc_auc_low", "full_val_roc_auc_high", "full_val_pr_auc",
             "full_val_brier", "full_seconds", "warm_start_val_roc_auc", "warm_start_val_roc_auc_low",
             "warm_start_val_roc_auc_high", "warm_start_val_pr_auc", "warm_start_val_brier", "warm_start_seconds",
             "warm_start_minus_full")
    values = {f"curve_{name}": getattr(point, name) for name in names}
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def log_curve(settings: DataSettings, curve: LearningCurve) -> None:
    """Log ``curve`` to the active run: parameters, metrics per point, the plot, the table (CSV and JSON)."""
    import mlflow

    failed = "the learning-curve run is marked failed; nothing was registered"
    with registry_call(settings, f"logging the learning curve of {curve.candidate}", failed):
        mlflow.log_params({"candidate": curve.candidate,
                           "train_batches": ",".join(p.last_batch for p in curve.points),
                           "warm_start_iterations": settings.warm_start_iterations,
                           "history_dropout": settings.history_dropout, "random_seed": settings.random_seed,
                           "bootstrap_samples": settings.promotion_bootstrap_samples})
        mlflow.set_tags({"learning_curve.verdict": curve.verdict[:5000],
                         "learning_curve.warm_start": curve.warm_start[:5000]})
        for point in curve.points:
            mlflow.log_metrics(curve_metrics(point), step=point.train_rows)
            mlflow.log_metric("curve_train_rows", point.train_rows, step=point.batches)
        mlflow.log_metrics({"curve_enough_rows": curve.enough_rows, "curve_enough_batches": curve.enough_batches,
                            "curve_batches": len(curve.points), "validation_rows": curve.validation_rows})
    with registry_call(settings, f"storing the learning curve of {curve.candidate} in MLflow's artifact store", failed):
        buffer = io.StringIO()
        curve.table().to_csv(buffer, index=False)
        mlflow.log_text(buffer.getvalue(), TABLE_CSV)
        mlflow.log_dict(curve.to_dict(), TABLE_JSON)
        figure = curve_figure(curve)
        try:
            mlflow.log_figure(figure, PLOT)
        finally:
            plt.close(figure)


def run_learning_curve(settings: DataSettings, clean_store: Engine, candidate: str, snapshot: Snapshot,
                       tags: dict[str, str] | None = None, warm_start: bool = True) -> LearningCurve:
    """The learning curve of ``candidate`` over the batches of ``snapshot``, computed and logged in a run of the
    training experiment of its own (returned with its ``run_id``). Registers nothing. ``RegistryError`` when
    MLflow fails (the run is then marked failed)."""
    train = read_split(clean_store, "train", snapshot.train_batches)
    validation = read_split(clean_store, "validation")
    batches = sorted(snapshot.train_batches)
    run_tags = {MODE_TAG: LEARNING_CURVE, CANDIDATE_TAG: candidate, **(tags or {})}
    with candidate_run(settings, f"learning curve: {candidate}", run_tags) as run_id:
        curve = compute_curve(settings, candidate, train, validation, batches, warm_start=warm_start)
        curve.run_id = run_id
        log_curve(settings, curve)
    log.info("learning curve of %s (run %s): %s", candidate, run_id, curve.verdict)
    return curve
