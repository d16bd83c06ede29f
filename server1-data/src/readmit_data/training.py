"""Training one candidate on CleanData and logging it to MLflow.

Every candidate is a full Pipeline (contract transform + estimator), fitted on the
clean train rows of a fixed snapshot of batches, evaluated on the validation split,
and logged with its parameters, data lineage, validation metrics at the chosen
threshold, a calibration plot, a confusion matrix, and the model itself (signature,
input example, ``predict_proba`` as its pyfunc method).

MLflow failing on the way (tracking server down, its artifact store down, 5xx, authentication)
stops the candidate with a ``RegistryError`` saying which step failed; the run is marked failed
when MLflow still answers, and a failed run is never registered (registration takes the results
of candidates that finished). A retry trains the candidate again in a new run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from readmit_contract import TARGET  # noqa: E402
from readmit_contract.artifact import foreign_types  # noqa: E402
from readmit_contract.columns import FEATURE_COLUMNS  # noqa: E402
from readmit_contract.history import HISTORY_NAMES  # noqa: E402
from sklearn.calibration import CalibrationDisplay  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline  # noqa: E402
from sqlalchemy import Engine, select  # noqa: E402

from .candidates import build_pipeline, fit_pipeline  # noqa: E402
from .mlflow_access import bounded_http, registry_call  # noqa: E402
from .search import apply as apply_search  # noqa: E402
from .search import search  # noqa: E402
from .settings import DataSettings  # noqa: E402
from .stores import batch_lineage, clean_encounters, patient_history  # noqa: E402

log = logging.getLogger(__name__)


def skops_trusted_types(pipeline: Pipeline) -> list[str]:
    """The types of ``pipeline`` skops does not trust by default, all from the modules the contract allows
    (scikit-learn's and the contract's, ``readmit_contract.artifact.ALLOWED_MODULE_PREFIXES``), else an error."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    foreign = foreign_types(untrusted)
    if foreign:
        raise TypeError(f"the model holds types outside scikit-learn and the contract: {foreign}")
    return untrusted


class NoTrainingData(RuntimeError):
    """CleanData holds no train or no validation rows yet."""


@dataclass(frozen=True)
class Snapshot:
    """The data a training run uses: train batches cleaned so far, and the row counts."""

    train_batches: list[str]
    train_rows: int
    validation_rows: int
    test_rows: int


def read_split(clean_store: Engine, split: str, batches: list[str] | None = None) -> pd.DataFrame:
    """Clean rows of one split (only ``batches`` when given), in encounter order, each with its patient
    history (patient_history's columns; NaN, i.e. missing, for a row the table does not hold)."""
    history = [patient_history.c[name] for name in HISTORY_NAMES]
    query = (select(clean_encounters, *history)
             .select_from(clean_encounters.outerjoin(
                 patient_history, patient_history.c.encounter_id == clean_encounters.c.encounter_id))
             .where(clean_encounters.c.split == split))
    if batches is not None:
        query = query.where(clean_encounters.c.batch_id.in_(batches))
    with clean_store.connect() as conn:
        frame = pd.read_sql(query.order_by(clean_encounters.c.encounter_id), conn)
    return frame


def take_snapshot(clean_store: Engine) -> Snapshot:
    with clean_store.connect() as conn:
        lineage = pd.read_sql(select(batch_lineage), conn)
    if lineage.empty:
        raise NoTrainingData("CleanData has no cleaned batches yet: run preprocess_incremental first")
    rows = lineage.groupby("split")["rows_out"].sum()
    train_batches = sorted(lineage.loc[lineage["split"] == "train", "batch_id"])
    snapshot = Snapshot(
        train_batches=train_batches,
        train_rows=int(rows.get("train", 0)),
        validation_rows=int(rows.get("validation", 0)),
        test_rows=int(rows.get("test", 0)),
    )
    if not snapshot.train_rows or not snapshot.validation_rows:
        raise NoTrainingData(f"not enough clean data to train: {snapshot}")
    return snapshot


def choose_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """The probability threshold with the best F1 on (y, proba)."""
    precision, recall, thresholds = precision_recall_curve(y, proba)
    if len(thresholds) == 0:
        return 0.5
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def calibration_line(y: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """Calibration slope and intercept (Van Calster et al., 2019): the logistic regression of the outcome on
    the logit of the predicted probability. Slope 1 and intercept 0 for perfect calibration; a slope below 1
    means predictions too extreme (over-fitting), above 1 too modest."""
    from sklearn.linear_model import LogisticRegression

    p = np.clip(proba, 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p)).reshape(-1, 1)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(logit, y)  # no penalty
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def evaluate(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """Ranking, calibration and thresholded metrics of probabilities ``proba`` for labels ``y``."""
    predicted = (proba >= threshold).astype(int)
    slope, intercept = calibration_line(y, proba)
    return {
        "roc_auc": float(roc_auc_score(y, proba)),
        "pr_auc": float(average_precision_score(y, proba)),
        "brier": float(brier_score_loss(y, proba)),
        "calibration_slope": slope,
        "calibration_intercept": intercept,
        "log_loss": float(log_loss(y, np.clip(proba, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "positive_rate": float(predicted.mean()),
    }


def plots(y: np.ndarray, proba: np.ndarray, threshold: float, title: str) -> dict[str, plt.Figure]:
    calibration, ax = plt.subplots(figsize=(5, 5))
    CalibrationDisplay.from_predictions(y, proba, n_bins=10, strategy="quantile", name=title, ax=ax)
    ax.set_title(f"Calibration on validation: {title}")
    confusion, ax2 = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        y, (proba >= threshold).astype(int), display_labels=["not <30", "<30"], ax=ax2, colorbar=False
    )
    ax2.set_title(f"Validation, threshold {threshold:.3f}")
    return {"plots/calibration.png": calibration, "plots/confusion_matrix.png": confusion}


def with_history_dropout(train: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """``train`` with the patient history of a seeded ``share`` of its rows blanked (NaN: missing), so the
    model learns the case where serving cannot look a patient up; the other rows keep theirs."""
    if share <= 0 or train.empty:
        return train
    blank = np.random.default_rng(seed).random(len(train)) < share
    out = train.copy()
    out.loc[blank, list(HISTORY_NAMES)] = np.nan
    return out


def optional_history(signature: Any) -> Any:
    """The signature with the history columns optional: a caller of the logged model (pyfunc) without a
    history store sends the encounter alone, which the model scores as history missing."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    inputs = [c for c in signature.inputs.inputs if c.name not in HISTORY_NAMES]
    if len(inputs) == len(signature.inputs.inputs):
        return signature
    optional = [ColSpec(DataType.double, name, required=False) for name in HISTORY_NAMES]
    return ModelSignature(Schema([*inputs, *optional]), signature.outputs)


def input_example(frame: pd.DataFrame, rows: int = 5) -> pd.DataFrame:
    """Feature columns of a few rows, missing values as the contract's raw marker."""
    features = frame[list(FEATURE_COLUMNS)].head(rows)
    example = features.astype(object).where(features.notna(), "?")
    if all(name in frame.columns for name in HISTORY_NAMES):  # the patient history the model also reads
        example = pd.concat([example, frame[list(HISTORY_NAMES)].head(rows).astype(float)], axis=1)
    return example


def _flat_params(pipeline: Pipeline) -> dict[str, Any]:
    params = {"features__" + k: v for k, v in pipeline.named_steps["features"].get_params().items()}
    model = pipeline.named_steps["model"]
    params["estimator"] = type(model).__name__
    for k, v in model.get_params().items():
        if isinstance(v, str | int | float | bool) or v is None:
            params[k] = v
    return params


MODEL_REQUIREMENTS = ("skops", "readmit-contract", "numpy", "pandas", "scipy")
"""What a logged Pipeline needs besides scikit-learn (MLflow's default for the flavor) and mlflow (which it adds):
the format, the contract's transform, and what they stand on."""


def pip_requirements() -> list[str]:
    """The logged model's requirements, pinned to this environment. Given explicitly: MLflow would otherwise
    infer them by loading the model in a subprocess (about 12 s per candidate), and would list whatever that
    process happened to import (pytest, rich, ...)."""
    from importlib.metadata import version

    import mlflow.sklearn

    pinned = [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]
    return [*mlflow.sklearn.get_default_pip_requirements(), *pinned]


@dataclass
class CandidateResult:
    candidate: str
    run_id: str
    model_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.5
    lineage: dict[str, str] = field(default_factory=dict)
    """Tags the registered version carries besides the decision: how the model was made when it was not trained
    from scratch (``training.mode``, ``warm_start.*``: readmit_data.warm_start); empty for a retrained candidate."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MODE_TAG = "training.mode"
"""Run (and version) tag naming how a run trained: ``warm_start`` or ``learning_curve``; retrained runs have none."""
RETRAIN, WARM_START, LEARNING_CURVE = "retrain", "warm_start", "learning_curve"
TRAINING_MODES = (RETRAIN, WARM_START, LEARNING_CURVE)
"""train_and_register's ``mode``: retrain every candidate from scratch (the default), continue the champion with
the batches it has not learnt from (readmit_data.warm_start), or a learning curve (readmit_data.learning_curve)."""


def mode_candidates(settings: DataSettings, mode: str, requested: list[str] | None) -> list[str]:
    """The candidates a train_and_register run of ``mode`` trains: ``requested`` or the ``CANDIDATES`` setting
    (retrain); the champion's candidate (warm start); ``requested``, else the champion's candidate (learning
    curve). ``ValueError`` for an unknown mode or candidate; ``warm_start.WarmStartRefused`` (a ``ValueError``)
    without a champion, or when the champion's candidate has no honest warm start."""
    from .candidates import CANDIDATES

    if mode not in TRAINING_MODES:
        raise ValueError(f"unknown training mode {mode!r}: choose from {list(TRAINING_MODES)}")
    names = list(requested or [])
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise ValueError(f"unknown candidates {unknown}: choose from {sorted(CANDIDATES)}")
    if mode == RETRAIN:
        return names or settings.candidate_names
    if mode == LEARNING_CURVE and names:
        return names
    from .warm_start import WarmStartRefused, champion_candidate, refusal

    try:
        version, candidate = champion_candidate(settings)
    except WarmStartRefused as exc:
        if mode == LEARNING_CURVE:
            raise ValueError(f"learning_curve draws the champion's candidate unless one is named: {exc}, or name the "
                             "candidate (param candidates)") from exc
        raise
    if mode == WARM_START:
        if names and names != [candidate]:
            raise ValueError(f"warm_start continues the champion (v{version}, {candidate}): candidates must be "
                             f"empty or [{candidate!r}], not {names}")
        why = refusal(candidate)
        if why is not None:
            raise WarmStartRefused(f"champion v{version}: {why}")
    return [candidate]


def train_candidate(
    settings: DataSettings,
    clean_store: Engine,
    candidate: str,
    snapshot: Snapshot,
    tags: dict[str, str] | None = None,
) -> CandidateResult:
    """Fit, evaluate and log one candidate; returns its run, model URI and validation metrics.

    ``RegistryError`` when MLflow fails at any step (the run is then marked failed, if MLflow answers)."""
    train = read_split(clean_store, "train", snapshot.train_batches)
    validation = read_split(clean_store, "validation")
    pipeline = build_pipeline(candidate, settings.random_seed)

    with candidate_run(settings, candidate, {"candidate": candidate, **(tags or {})}) as run_id:
        return _fit_and_log(settings, pipeline, candidate, snapshot, train, validation, run_id)


@contextmanager
def candidate_run(settings: DataSettings, name: str, tags: dict[str, str]) -> Iterator[str]:
    """An MLflow run named ``name`` in the training experiment (yields its id), closed when the block ends and
    marked failed when it raises. ``RegistryError`` when MLflow fails to start or close it."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with registry_call(settings, f"starting a run of {name} in experiment {settings.experiment_name!r}",
                       "nothing was trained; a retry of the task trains the candidate"):
        mlflow.set_experiment(settings.experiment_name)
        run = mlflow.start_run(run_name=name, tags=tags)
    try:
        yield run.info.run_id
    except BaseException:
        _end_failed_run(settings, run.info.run_id)
        raise
    with registry_call(settings, f"closing run {run.info.run_id} of {name}",
                       "the candidate is logged but its run is not marked finished; a retry trains it again"):
        mlflow.end_run()


def _end_failed_run(settings: DataSettings, run_id: str) -> None:
    """Mark the run failed if MLflow answers; MLflow being down is what the caller reports already."""
    import mlflow

    try:
        with bounded_http(settings):
            mlflow.end_run("FAILED")
    except Exception as exc:  # noqa: BLE001 - best effort: the original error is the one that matters
        log.warning("run %s could not be marked failed (%s): it stays open in MLflow, never registered",
                    run_id, type(exc).__name__)


def _fit_and_log(settings: DataSettings, pipeline: Pipeline, candidate: str, snapshot: Snapshot,
                 train: pd.DataFrame, validation: pd.DataFrame, run_id: str) -> CandidateResult:
    fit_rows = with_history_dropout(train, settings.history_dropout, settings.random_seed)
    searched = None
    if settings.search_seconds > 0:
        searched = search(candidate, pipeline, fit_rows, train[TARGET].to_numpy(), settings.search_seconds,
                          settings.random_seed)
        if searched is not None and searched.params:
            apply_search(pipeline, searched.params)
    started = time.perf_counter()
    fit_pipeline(pipeline, fit_rows, train[TARGET].to_numpy())
    seconds = time.perf_counter() - started
    return log_fitted(settings, pipeline, candidate, snapshot, train, validation, run_id, seconds, searched)


def log_fitted(settings: DataSettings, pipeline: Pipeline, candidate: str, snapshot: Snapshot, train: pd.DataFrame,
               validation: pd.DataFrame, run_id: str, seconds: float, searched: Any = None,
               extra_params: dict[str, Any] | None = None, extra_metrics: dict[str, float] | None = None,
               lineage: dict[str, str] | None = None) -> CandidateResult:
    """Evaluate the fitted ``pipeline`` on ``validation`` and log it to the active run ``run_id`` as a candidate:
    parameters (+ ``extra_params``), lineage (``snapshot``; ``lineage`` also as run tags and on the result, for
    the registered version), metrics (+ ``extra_metrics``), plots and the model. ``train``: the rows it learnt
    from (their count and positive rate are logged)."""
    import mlflow
    from mlflow.models import infer_signature

    y_val = validation[TARGET].to_numpy()
    proba = pipeline.predict_proba(validation)[:, 1]
    threshold = choose_threshold(y_val, proba)
    metrics = evaluate(y_val, proba, threshold)
    # what the model achieves when serving cannot look patients up (history missing for every row)
    metrics["roc_auc_without_history"] = float(roc_auc_score(
        y_val, pipeline.predict_proba(validation.assign(**dict.fromkeys(HISTORY_NAMES, np.nan)))[:, 1]))
    failed = "the run is marked failed and nothing was registered; a retry of the task trains the candidate again"

    # Parameters before the model (MLflow copies the run's parameters onto the logged model), metrics after it,
    # linked to it in the same call: logged before, MLflow would link them afterwards itself by reading each
    # metric's history back (one request per metric, about 20 per candidate, each a password check on a
    # server with authentication). Same metrics on the run and on its logged model either way.
    with registry_call(settings, f"logging {candidate}'s parameters (run {run_id})", failed):
        mlflow.log_params(_flat_params(pipeline))
        mlflow.log_params({
            "train_batches": ",".join(snapshot.train_batches),
            "n_features": len(pipeline.named_steps["features"].feature_names_),
        })
        mlflow.set_tags({"data.train_batches": ",".join(snapshot.train_batches), **(lineage or {})})
        if extra_params:
            mlflow.log_params(extra_params)
    run_metrics = {f"val_{k}": v for k, v in metrics.items()} | {
        "threshold": threshold,
        "train_seconds": seconds,
        "train_rows": len(train),
        "validation_rows": len(validation),
        "train_positive_rate": float(train[TARGET].mean()),
    } | (extra_metrics or {})
    if searched is not None:
        run_metrics |= {"search_cv_roc_auc": searched.cv_roc_auc, "search_trials": searched.trials,
                        "search_seconds": searched.seconds, "search_default_cv_roc_auc": searched.default_cv_roc_auc}
        with registry_call(settings, f"logging {candidate}'s parameter search (run {run_id})", failed):
            mlflow.log_dict({"best": searched.params, "trials": searched.history}, "search/trials.json")
    with registry_call(settings, f"storing {candidate}'s lineage and plots in MLflow's artifact store (run {run_id})",
                       failed):
        mlflow.log_dict(asdict(snapshot), "data/lineage.json")
        figures = plots(y_val, proba, threshold, candidate)
        try:
            for path, figure in figures.items():
                mlflow.log_figure(figure, path)
        finally:
            for figure in figures.values():
                plt.close(figure)

    example = input_example(validation)
    signature = optional_history(infer_signature(example, pipeline.predict_proba(example)))
    trusted = skops_trusted_types(pipeline)
    with registry_call(settings, f"storing {candidate}'s model in MLflow's artifact store (run {run_id})", failed):
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=signature,
            input_example=example,
            pyfunc_predict_fn="predict_proba",
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=trusted,
            pip_requirements=pip_requirements(),
            metadata={"threshold": threshold, "train_positive_rate": float(train[TARGET].mean()),
                      "candidate": candidate},
        )
    with registry_call(settings, f"logging {candidate}'s metrics (run {run_id})", failed):
        mlflow.log_metrics(run_metrics, model_id=info.model_id)
    return CandidateResult(candidate, run_id, info.model_uri, metrics, threshold, dict(lineage or {}))
