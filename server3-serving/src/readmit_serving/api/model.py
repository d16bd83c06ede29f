"""The served model: the registered Pipeline (contract transform + estimator) and what the API needs
to answer with it, loaded once per version; and the holder that swaps versions atomically.

A version is loaded only from a local folder whose artifact passed the contract's checks
(``readmit_contract.artifact``): the checksum recorded at training, skops format, allowed types.
Once loaded it must pass a smoke test before it may serve: score the contract's example encounter
(one row, and a batch, the two paths of ``LoadedModel.predict``) with finite probabilities in [0, 1].
A verified artifact that cannot be deserialised (``unloadable``) or a model that fails the smoke test
(``predict_failed``) is refused like a tampered one: ``ArtifactRefused`` with one of ``SERVING_REFUSAL_CODES``.
A download that fails (MLflow or the artifact store away) is not a refusal: it raises as it came.

A version that passed is given what serves its explanations and its model card, neither of which can refuse it:
its explainer (``explanations.build_explainer``: None when it cannot be explained) and its card
(``model_card.load_card``: the card, or why there is none to serve)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from readmit_contract import Encounter, EncounterFeatures, example_encounter
from readmit_contract.artifact import DIGEST_TAG, ArtifactRefused, load_verified, verify_artifact
from readmit_contract.target import excluded_reason, is_scorable
from sklearn.base import BaseEstimator

from .explanations import build_explainer, check_records
from .model_card import MISSING, CardState, load_card
from .trees import (
    COMPILED,
    INTERPRETED,
    SCIKIT_LEARN,
    TreePredictor,
    agrees,
    can_compile,
    compiled,
    import_trees,
    interpreted,
)

log = logging.getLogger(__name__)

RISK_BANDS = ("low", "medium", "high")
SERVING_REFUSAL_CODES: tuple[str, ...] = ("unloadable", "predict_failed")
"""Refusals decided by serving once the artifact passed the contract's checks (beside ``REFUSAL_CODES``)."""
UNLOADABLE = "its model file passed the integrity checks but cannot be loaded"
PREDICT_FAILED = "it cannot score the contract's example encounter"
NOT_PROBABILITIES = "its answers for the contract's example encounter are not probabilities between 0 and 1"
INTERPRETED_MAX_ROWS = 64
"""Boosted trees: up to this many encounters per call Treelite's interpreter is faster than scikit-learn (~60 us
against ~2 ms for one encounter), above it scikit-learn's binned walk (until the compiled trees serve). A forest's
calls all go to the interpreter (one encounter ~80 us against ~20 ms; a 256-row slice ~60 against ~140 us each)."""
SMOKE_BATCH_ROWS = 17
"""The smoke test's batch: more rows than one, as a micro-batch or a batch slice brings."""


@dataclass(frozen=True)
class LoadedModel:
    pipeline: Any
    name: str
    version: str
    alias: str
    run_id: str
    threshold: float
    """Probability at or above which an encounter is flagged (chosen on validation, max F1)."""
    base_rate: float
    """Share of 30-day readmissions in the training data: below it, risk is low."""
    metrics: dict[str, float] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    trees: TreePredictor | None = None
    """The estimator's trees evaluated by Treelite (``trees``), when proven equal to scikit-learn's predictions."""
    explainer: Any = None
    """The ``readmit_contract.explanation.Explainer`` of the pipeline, when it explains it (see ``explanations``)."""
    card: CardState | None = None
    """The version's model card, or why there is none to serve (None: not looked up)."""

    def predict(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """Probability of 30-day readmission for each record (mapping of contract column -> value)."""
        trees = self.trees
        if trees is not None and (trees.kind == COMPILED or trees.imported.forest
                                  or len(records) <= INTERPRETED_MAX_ROWS):
            return trees.positive(self.transform(records))
        return self.pipeline.predict_proba(records)[:, 1]

    @property
    def transform(self) -> Any:
        """The pipeline's transform (every step but the estimator) as a function of records: the contract's
        ``EncounterFeatures.transform_records`` when that is the only step (fitted: the model was loaded and
        smoke-tested), else the transform steps' ``transform``."""
        transform = self.__dict__.get("_transform")
        if transform is None:
            steps = self.pipeline[:-1]  # a new Pipeline object per slicing: built once
            only = steps[0] if len(steps) == 1 else None
            transform = only.transform_records if isinstance(only, EncounterFeatures) else steps.transform
            object.__setattr__(self, "_transform", transform)
        return transform

    @property
    def predictor(self) -> str:
        """How the estimator is evaluated: ``compiled`` or ``interpreted`` (Treelite), or ``scikit-learn``."""
        return self.trees.kind if self.trees is not None else SCIKIT_LEARN

    @property
    def card_state(self) -> CardState:
        return self.card if self.card is not None else CardState(MISSING, self.version)

    @property
    def uses_history(self) -> bool:
        """Whether the model reads patient history (fitted on rows that carried it)."""
        return bool(getattr(self.pipeline[0], "history_", False))

    def band(self, probability: float) -> str:
        if probability >= self.threshold:
            return "high"
        if probability >= min(self.base_rate, self.threshold):
            return "medium"
        return "low"


def out_of_scope(record: dict[str, Any]) -> str | None:
    """Why an encounter is not scored (death or hospice), or None."""
    return None if is_scorable(record) else excluded_reason(record["discharge_disposition_id"])


def single_threaded(estimator: Any) -> Any:
    """Set ``n_jobs=1`` on every fitted estimator inside ``estimator`` (pipelines, calibrated clones,
    forests): serving parallelism comes from micro-batching, and a joblib pool per call costs ~100 ms."""
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, BaseEstimator):
            if hasattr(obj, "n_jobs"):
                obj.n_jobs = 1
            children = vars(obj).values()
        elif isinstance(obj, list | tuple):
            children = obj
        elif isinstance(obj, dict):
            children = obj.values()
        else:
            return
        for child in children:
            walk(child)

    walk(estimator)
    return estimator


def interpreted_if_equal(pipeline: Any) -> TreePredictor | None:
    """Treelite's interpreter for the pipeline's estimator if it reproduces scikit-learn on sample encounters,
    else None (not a tree model Treelite takes, or it disagrees)."""
    imported = import_trees(pipeline[-1])
    if imported is None:
        return None
    predictor = interpreted(imported)
    if agrees(pipeline, predictor):
        return predictor
    log.warning("Treelite's evaluation of the %s disagrees with scikit-learn: scikit-learn serves it",
                type(pipeline[-1]).__name__)
    return None


def compile_trees(model: LoadedModel, toolchain: str, max_nodes: int) -> LoadedModel | None:
    """``model`` with its trees compiled (``trees.compiled``) when they are interpreted now, small enough, a
    compiler is there, and the compiled trees agree with scikit-learn and pass the smoke test; else None (why in
    the log)."""
    trees = model.trees
    if trees is None or trees.kind != INTERPRETED:
        return None
    if trees.nodes > max_nodes:
        log.info("%s v%s: %d tree nodes, more than TREES_COMPILE_MAX_NODES (%d): interpreted", model.name,
                 model.version, trees.nodes, max_nodes)
        return None
    if not can_compile(toolchain):
        log.warning("%s v%s: no C compiler %r on PATH: its trees stay interpreted", model.name, model.version,
                    toolchain)
        return None
    started = time.perf_counter()
    try:
        predictor = compiled(trees.imported, toolchain)
        if not agrees(model.pipeline, predictor):
            log.warning("%s v%s: the compiled trees disagree with scikit-learn: they stay interpreted", model.name,
                        model.version)
            return None
        faster = replace(model, trees=predictor)
        smoke_test(faster)
    except Exception as exc:  # noqa: BLE001 - the interpreted trees keep serving
        log.warning("%s v%s: compiling its trees failed (%s): they stay interpreted", model.name, model.version,
                    type(exc).__name__, exc_info=True)
        return None
    log.info("%s v%s: %d tree nodes compiled in %.1f s", model.name, model.version, trees.nodes,
             time.perf_counter() - started)
    return faster


def _load_pipeline(client: Any, name: str, version: str, tags: dict[str, str], folder: Path,
                   tracking_uri: str | None) -> Any:
    """``load_verified``, with a verified artifact that does not deserialise refused (``unloadable``): a failure
    whose folder still passes every check is the model's, anything else (a download cut short) is raised as is."""
    try:
        return load_verified(client, name, version, tags, folder, tracking_uri)
    except ArtifactRefused:
        raise
    except Exception as exc:
        try:
            verify_artifact(folder, tags.get(DIGEST_TAG))
        except Exception:  # noqa: BLE001 - not (fully) downloaded: the failure was the download's
            raise exc from None
        shutil.rmtree(folder, ignore_errors=True)
        raise ArtifactRefused("unloadable", UNLOADABLE, f"{type(exc).__name__}: {exc}") from exc


def smoke_records() -> list[dict[str, Any]]:
    """The contract's example encounter as the API hands it to a model (``Encounter.to_record``)."""
    return [Encounter.model_validate(example_encounter()).to_record()]


def smoke_test(model: LoadedModel) -> None:
    """Score the contract's example encounter alone and in a batch;
    ``ArtifactRefused`` (``predict_failed``) unless each answer is a finite probability."""
    record = smoke_records()[0]
    for records in ([record], [record] * SMOKE_BATCH_ROWS, [record] * (INTERPRETED_MAX_ROWS + 1)):
        try:
            probabilities = np.asarray(model.predict(records), dtype="float64")
        except Exception as exc:
            raise ArtifactRefused("predict_failed", PREDICT_FAILED, f"{type(exc).__name__}: {exc}") from exc
        if (probabilities.shape != (len(records),) or not np.isfinite(probabilities).all()
                or (probabilities < 0).any() or (probabilities > 1).any()):
            raise ArtifactRefused("predict_failed", NOT_PROBABILITIES, f"{len(records)} record(s) -> "
                                  f"{probabilities.ravel()[:5]!r}, shape {probabilities.shape}")


def load_version(client: Any, name: str, version: str, alias: str, cache_dir: str | None = None,
                 tracking_uri: str | None = None) -> LoadedModel:
    """Download (into ``cache_dir``/NAME/VERSION, else a temporary folder), verify, load and smoke-test one
    registered version, with its threshold and metrics from its run. Raises ``ArtifactRefused`` for a version
    that must not be served."""
    model_version = client.get_model_version(name, version)
    tags = dict(model_version.tags)
    if cache_dir:
        folder = Path(cache_dir) / name / str(version)
        pipeline = _load_pipeline(client, name, version, tags, folder, tracking_uri)
    else:
        folder = None
        with tempfile.TemporaryDirectory(prefix="readmit-model-") as tmp:
            pipeline = _load_pipeline(client, name, version, tags, Path(tmp) / "model", tracking_uri)
    pipeline = single_threaded(pipeline)
    run = client.get_run(model_version.run_id)
    metrics = dict(run.data.metrics)
    for key, value in tags.items():
        if key.startswith("test_"):
            with contextlib.suppress(ValueError):
                metrics[key] = float(value)
    model = LoadedModel(
        pipeline=pipeline,
        name=name,
        version=str(version),
        alias=alias,
        run_id=model_version.run_id,
        threshold=float(metrics.get("threshold", 0.5)),
        base_rate=float(metrics.get("train_positive_rate", 0.11)),
        metrics=metrics,
    )
    try:
        smoke_test(model)  # before Treelite: its check scores 500 encounters with scikit-learn
        try:
            trees = interpreted_if_equal(pipeline)
        except Exception as exc:
            raise ArtifactRefused("predict_failed", PREDICT_FAILED, f"{type(exc).__name__}: {exc}") from exc
        if trees is not None:
            model = replace(model, trees=trees)
            smoke_test(model)
    except ArtifactRefused:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # nothing refused stays in the cache
        raise
    return replace(model, explainer=_explainer(model),
                   card=load_card(client, name, str(version), model_version.run_id, tags))


def _explainer(model: LoadedModel) -> Any:
    """``build_explainer`` checked against the model's own probabilities (None when they cannot be had)."""
    records = check_records(smoke_records())
    try:
        probabilities = np.asarray(model.predict(records), dtype="float64")
    except Exception:  # noqa: BLE001 - passed the smoke test, so unlikely; then no explanations, never a refusal
        log.warning("%s v%s: scoring the explainer's check encounters failed: no explanations", model.name,
                    model.version, exc_info=True)
        return None
    return build_explainer(model, records, probabilities)


class ModelHolder:
    """The current model; replaced by one reference assignment, so a request (or a micro-batch) that
    took the old model finishes on it while new ones get the new one."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        self._upgrade = threading.Lock()

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        previous, self.current = self.current, model
        return previous

    def upgrade(self, model: LoadedModel, faster: LoadedModel) -> bool:
        """Put ``faster`` (the same version, evaluated another way) in place of ``model`` if it still serves."""
        with self._upgrade:
            if self.current is not model:
                return False
            self.current = faster
            return True
