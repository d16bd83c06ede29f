"""Registering the best candidate and moving the ``champion`` alias only when it wins.

The best candidate (validation ROC-AUC) is registered as a new version of
``MODEL_NAME``. It takes the ``champion`` alias only if it beats the current
champion on the same validation set (the champion is re-scored on today's
validation rows, not compared with a figure from another day's data); otherwise it
becomes ``challenger`` and the reason is recorded on the version and on its run. A
champion's test-set metrics are computed once, when it first becomes champion.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from readmit_contract import TARGET
from readmit_contract import artifact
from readmit_contract.artifact import (
    DIGEST_TAG,
    ArtifactRefused,
    artifact_digest,
    download_registered,
    verify_format_and_types,
)
from sklearn.metrics import roc_auc_score
from sqlalchemy import Engine

from .settings import DataSettings
from .training import CandidateResult, evaluate, read_split

TEST_TAG_PREFIX = "test_"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    model_name: str
    version: str
    candidate: str
    run_id: str
    promoted: bool
    alias: str
    reason: str
    candidate_roc_auc: float
    champion_roc_auc: float | None
    previous_champion: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_candidate(results: list[CandidateResult]) -> CandidateResult:
    if not results:
        raise ValueError("no candidate was trained")
    return max(results, key=lambda r: r.metrics["roc_auc"])


def _client(settings: DataSettings):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri)


def current_champion(settings: DataSettings):
    """The model version holding the champion alias, or None."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    try:
        return client.get_model_version_by_alias(settings.model_name, settings.model_alias)
    except MlflowException:
        return None


def record_artifact_digest(settings: DataSettings, version: str) -> str:
    """Tag ``version`` with the digest of its artifact as MLflow stores it, after checking the artifact meets the
    contract (skops, allowed types: ``ArtifactRefused`` otherwise, and no tag). Returns the digest."""
    client = _client(settings)
    with tempfile.TemporaryDirectory(prefix="readmit-register-") as tmp:
        folder = download_registered(client, settings.model_name, version, Path(tmp) / "model",
                                     settings.mlflow_tracking_uri)
        verify_format_and_types(folder)
        digest = artifact_digest(folder)
    client.set_model_version_tag(settings.model_name, version, DIGEST_TAG, digest)
    return digest


def load_verified(settings: DataSettings, version: str):
    """The Pipeline of a registered version, loaded only if its artifact passes serving's checks
    (``ArtifactRefused`` otherwise)."""
    client = _client(settings)
    tags = dict(client.get_model_version(settings.model_name, version).tags)
    with tempfile.TemporaryDirectory(prefix="readmit-verify-") as tmp:
        return artifact.load_verified(client, settings.model_name, version, tags, Path(tmp) / "model",
                                      settings.mlflow_tracking_uri)


def _against_champion(settings: DataSettings, clean_store: Engine, best: CandidateResult,
                      champion) -> tuple[bool, str, float | None]:
    """(promoted, reason, champion's validation ROC-AUC) of ``best`` against the current champion."""
    candidate_auc = best.metrics["roc_auc"]
    if champion is None:
        return True, f"first model: validation ROC-AUC {candidate_auc:.4f}", None
    try:
        champion_model = load_verified(settings, champion.version)
    except ArtifactRefused as refused:
        log.warning("champion v%s is refused (%s): %s", champion.version, refused.code, refused.details)
        return True, (f"promoted: champion v{champion.version} was refused ({refused.reason}); "
                      f"{best.candidate} validation ROC-AUC {candidate_auc:.4f}"), None
    validation = read_split(clean_store, "validation")
    champion_auc = float(roc_auc_score(validation[TARGET].to_numpy(), champion_model.predict_proba(validation)[:, 1]))
    promoted = candidate_auc > champion_auc + settings.promotion_min_delta
    comparison = (
        f"{best.candidate} validation ROC-AUC {candidate_auc:.4f} vs champion v{champion.version} "
        f"{champion_auc:.4f} on the same {len(validation)} validation rows (min delta {settings.promotion_min_delta})"
    )
    return promoted, ("promoted: " if promoted else "not promoted: ") + comparison, champion_auc


def register_and_promote(settings: DataSettings, clean_store: Engine, best: CandidateResult) -> Promotion:
    import mlflow

    client = _client(settings)
    champion = current_champion(settings)
    version = mlflow.register_model(
        best.model_uri, settings.model_name,
        tags={"candidate": best.candidate, "val_roc_auc": f"{best.metrics['roc_auc']:.6f}"},
    ).version
    record_artifact_digest(settings, version)  # before any alias can point at it
    candidate_auc = best.metrics["roc_auc"]
    promoted, reason, champion_auc = _against_champion(settings, clean_store, best, champion)
    alias = settings.model_alias if promoted else settings.challenger_alias
    client.set_registered_model_alias(settings.model_name, alias, version)
    client.set_model_version_tag(settings.model_name, version, "promotion", reason)
    client.set_tag(best.run_id, "promotion", reason)
    return Promotion(
        model_name=settings.model_name,
        version=str(version),
        candidate=best.candidate,
        run_id=best.run_id,
        promoted=promoted,
        alias=alias,
        reason=reason,
        candidate_roc_auc=candidate_auc,
        champion_roc_auc=champion_auc,
        previous_champion=None if champion is None else str(champion.version),
    )


def record_champion_test_metrics(settings: DataSettings, clean_store: Engine) -> dict[str, float] | None:
    """Test-set metrics of the current champion, computed and recorded once (None if already there or refused)."""
    client = _client(settings)
    champion = current_champion(settings)
    if champion is None or any(k.startswith(TEST_TAG_PREFIX) for k in champion.tags):
        return None
    test = read_split(clean_store, "test")
    if test.empty:
        return None
    try:
        model = load_verified(settings, champion.version)
    except ArtifactRefused as refused:
        log.warning("champion v%s is refused (%s), no test metrics: %s", champion.version, refused.code,
                    refused.details)
        return None
    threshold = client.get_run(champion.run_id).data.metrics.get("threshold", 0.5)
    metrics = evaluate(test[TARGET].to_numpy(), model.predict_proba(test)[:, 1], threshold)
    for key, value in metrics.items():
        client.set_model_version_tag(settings.model_name, champion.version, f"{TEST_TAG_PREFIX}{key}", f"{value:.6f}")
        client.log_metric(champion.run_id, f"{TEST_TAG_PREFIX}{key}", value)
    client.set_model_version_tag(settings.model_name, champion.version, "test_rows", str(len(test)))
    return metrics
