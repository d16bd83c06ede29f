"""Monitoring the champion between trainings: drift of the new encounters, and whether to retrain.

``check_drift`` compares the encounters that arrived after the champion was trained (the clean train
batches it was not trained on) with a seeded sample of its own training rows (``readmit_data.drift``),
records the result in CleanData (``drift_checks``, ``feature_drift``) and in MLflow's monitoring
experiment (figures, and Evidently's HTML report as ``drift/report.html``), and says whether the
champion should be retrained and why:

- the share of drifted features is at least ``DRIFT_SHARE_THRESHOLD``, or
- on a batch that arrived after it, the champion's ROC-AUC is below its validation ROC-AUC by more than
  ``ARRIVAL_MAX_AUC_DROP`` (``readmit_data.arrival``).

Fewer than ``drift.MIN_ROWS`` new encounters, or no champion, is no check (the reason is returned).
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select

from .arrival import monitoring_experiment
from .drift import MIN_ROWS, DriftResult, compare
from .mlflow_access import RegistryError, registry_call
from .settings import DataSettings
from .stores import arrival_performance, batch_lineage, drift_checks, feature_drift, utcnow
from .training import read_split

log = logging.getLogger(__name__)


@dataclass
class DriftCheck:
    model_version: str | None = None
    current_source: str = ""
    share: float | None = None
    drifted_features: list[str] = field(default_factory=list)
    retrain: bool = False
    reasons: list[str] = field(default_factory=list)
    skipped: str | None = None
    check_id: int | None = None
    mlflow_run_id: str | None = None
    pushed: bool = False
    """Whether the figures reached the Pushgateway (``PUSHGATEWAY_URL``)."""

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def _train_batches(clean_store: Engine) -> list[str]:
    query = select(batch_lineage.c.batch_id).where(batch_lineage.c.split == "train", batch_lineage.c.rows_out > 0)
    with clean_store.connect() as conn:
        return sorted(conn.execute(query).scalars())


ARRIVAL_Z = 1.645
"""One-sided 95 %: a batch's drop must exceed ``ARRIVAL_MAX_AUC_DROP`` by this many standard errors."""


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's (1982) standard error of a ROC-AUC from its value and the two class sizes."""
    if positives < 1 or negatives < 1:
        return float("inf")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives)
    return math.sqrt(max(variance, 0.0))


def arrival_drops(settings: DataSettings, clean_store: Engine, version: str) -> list[str]:
    """Why the champion's performance on arrival is a reason to retrain (empty: it is not): a batch whose ROC-AUC
    is below the champion's validation ROC-AUC by more than ``ARRIVAL_MAX_AUC_DROP``, beyond the batch's own
    sampling noise (``ARRIVAL_Z`` standard errors, Hanley & McNeil): a small batch does not raise a false alarm."""
    query = select(arrival_performance).where(arrival_performance.c.model_name == settings.model_name,
                                              arrival_performance.c.model_version == version)
    with clean_store.connect() as conn:
        rows = conn.execute(query).mappings().all()
    reasons = []
    for row in rows:
        if row["roc_auc"] is None or row["champion_val_roc_auc"] is None:
            continue
        drop = row["champion_val_roc_auc"] - row["roc_auc"]
        noise = ARRIVAL_Z * auc_standard_error(row["roc_auc"], row["positives"], row["rows"] - row["positives"])
        if drop > settings.arrival_max_auc_drop + noise:
            reasons.append(f"performance on arrival: ROC-AUC {row['roc_auc']:.4f} on {row['batch_id']} "
                           f"({row['rows']} encounters) vs {row['champion_val_roc_auc']:.4f} on validation (drop "
                           f"{drop:.4f} > {settings.arrival_max_auc_drop:g} + {noise:.4f} of sampling noise)")
    return reasons


def check_drift(settings: DataSettings, clean_store: Engine) -> DriftCheck:
    """One drift check of the champion; see the module's doc. ``RegistryError`` when MLflow cannot say who the
    champion is (a check without it would be meaningless)."""
    from .registry import _client, current_champion

    champion = current_champion(settings)
    if champion is None:
        return DriftCheck(skipped="no champion yet")
    version = str(champion.version)
    client = _client(settings)
    with registry_call(settings, f"reading the champion's run {champion.run_id}", "no drift check was made"):
        params = client.get_run(champion.run_id).data.params
    trained_on = [b for b in params.get("train_batches", "").split(",") if b]
    arrived = [b for b in _train_batches(clean_store) if b not in trained_on]
    reasons = arrival_drops(settings, clean_store, version)
    source = "batches " + ",".join(arrived) if arrived else "none"
    current = read_split(clean_store, "train", arrived) if arrived else pd.DataFrame()
    if len(current) < MIN_ROWS:
        check = DriftCheck(version, source, retrain=bool(reasons), reasons=reasons,
                           skipped=f"{len(current)} encounters arrived since the champion was trained: fewer than "
                                   f"{MIN_ROWS}, drift is not measured")
        if reasons:  # recorded: retraining is advised all the same (and triggered once)
            check.check_id = _record(settings, clean_store, check,
                                     DriftResult(0.0, 0, [], reference_rows=0, current_rows=len(current)))
        check.pushed = push_check(settings, check)
        return check
    reference = read_split(clean_store, "train", trained_on)
    if len(reference) > settings.drift_reference_rows:
        reference = reference.sample(settings.drift_reference_rows, random_state=settings.random_seed)
    result = compare(reference, current)
    if result.share >= settings.drift_share_threshold:
        reasons.insert(0, f"data drift: {result.drifted} of {len(result.features)} features drifted "
                          f"({result.share:.0%} >= {settings.drift_share_threshold:.0%}): "
                          + ", ".join(result.drifted_features()))
    check = DriftCheck(version, source, result.share, result.drifted_features(), bool(reasons), reasons)
    check.mlflow_run_id = _log_to_mlflow(settings, check, result)
    check.check_id = _record(settings, clean_store, check, result)
    check.pushed = push_check(settings, check, result)
    return check


PUSH_JOB = "readmit_monitor"


def push_check(settings: DataSettings, check: DriftCheck, result: DriftResult | None = None) -> bool:
    """Push a check's figures to ``PUSHGATEWAY_URL`` (job ``readmit_monitor``, replacing the previous push), for
    Prometheus, its alert rules and Grafana:

    - ``readmit_drift_share`` and ``readmit_drift_share_threshold`` (ReadmitDataDrift fires when the first reaches
      the second), ``readmit_drift_features_drifted``;
    - ``readmit_feature_drift_score{feature}`` and ``readmit_feature_drifted{feature}``;
    - ``readmit_monitor_retrain_advised`` (1 when drift or performance on arrival asks for retraining);
    - ``readmit_monitor_last_check_timestamp_seconds`` (ReadmitMonitorStale fires when checks stop).

    A check without a drift measurement (too few new encounters) pushes the timestamp and the advice only.
    Returns whether it was pushed; a Pushgateway that fails is logged, never raised (the check is recorded)."""
    import time

    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    if not settings.pushgateway_url:
        return False
    registry = CollectorRegistry()
    labels = {"model_name": settings.model_name, "model_version": str(check.model_version)}
    names = list(labels)

    def gauge(name: str, doc: str, value: float, extra: dict[str, str] | None = None) -> None:
        metric = Gauge(name, doc, [*names, *(extra or {})], registry=registry)
        metric.labels(**labels, **(extra or {})).set(value)

    gauge("readmit_monitor_last_check_timestamp_seconds", "When the last drift check ran (Unix time)", time.time())
    gauge("readmit_monitor_retrain_advised", "1 when drift or performance on arrival asks for retraining",
          1.0 if check.retrain else 0.0)
    gauge("readmit_drift_share_threshold", "Share of drifted features from which retraining is advised",
          settings.drift_share_threshold)
    if result is not None and result.features:
        gauge("readmit_drift_share", "Share of the contract's features that drifted", result.share)
        gauge("readmit_drift_features_drifted", "Features that drifted", result.drifted)
        score = Gauge("readmit_feature_drift_score", "Evidently's drift score of a feature (a distance; drifted at "
                      "its threshold)", [*names, "feature", "method"], registry=registry)
        drifted = Gauge("readmit_feature_drifted", "1 when the feature drifted", [*names, "feature"],
                        registry=registry)
        for feature in result.features:
            score.labels(**labels, feature=feature.feature, method=feature.method).set(feature.score)
            drifted.labels(**labels, feature=feature.feature).set(1.0 if feature.drifted else 0.0)
    try:
        push_to_gateway(settings.pushgateway_url, job=PUSH_JOB, registry=registry, timeout=10)
    except OSError as exc:  # refused, unreachable, timeout, HTTP error (urllib's errors are OSErrors)
        log.warning("the drift check's figures could not be pushed to the Pushgateway: %s", type(exc).__name__)
        return False
    return True


def source_key(source: str) -> str:
    """The identity of a set of arrived batches (``DriftCheck.current_source``, however long)."""
    import hashlib

    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def already_triggered(settings: DataSettings, clean_store: Engine, version: str | None, source: str) -> bool:
    """Whether a check of this champion on these arrived batches already triggered retraining."""
    query = select(drift_checks.c.check_id).where(
        drift_checks.c.model_name == settings.model_name, drift_checks.c.model_version == str(version),
        drift_checks.c.current_key == source_key(source), drift_checks.c.triggered == 1)
    with clean_store.connect() as conn:
        return conn.execute(query.limit(1)).first() is not None


def mark_triggered(settings: DataSettings, clean_store: Engine, check_id: int | None) -> None:
    """Record that the check ``check_id`` triggered retraining (no-op without a recorded check)."""
    if check_id is None:
        return
    with clean_store.begin() as conn:
        conn.execute(drift_checks.update().where(drift_checks.c.check_id == check_id).values(triggered=1))


def _record(settings: DataSettings, clean_store: Engine, check: DriftCheck, result: DriftResult) -> int:
    with clean_store.begin() as conn:
        check_id = conn.execute(drift_checks.insert().values(
            checked_at=utcnow(), model_name=settings.model_name, model_version=check.model_version,
            current_source=check.current_source[:255], current_key=source_key(check.current_source),
            reference_rows=result.reference_rows,
            current_rows=result.current_rows, features=len(result.features), drifted=result.drifted,
            share=result.share, retrain=int(check.retrain), reason=check.reason or None,
            mlflow_run_id=check.mlflow_run_id,
        )).inserted_primary_key[0]
        if result.features:
            conn.execute(feature_drift.insert(), [
                {"check_id": check_id, "feature": f.feature, "method": f.method, "score": f.score,
                 "threshold": f.threshold, "drifted": int(f.drifted)} for f in result.features])
    return int(check_id)


def _log_to_mlflow(settings: DataSettings, check: DriftCheck, result: DriftResult) -> str | None:
    """A run of the monitoring experiment with the figures and Evidently's report; None when MLflow fails (the
    check is still recorded in CleanData)."""
    import time

    from mlflow.entities import Metric

    from .registry import _client

    client = _client(settings)
    try:
        with registry_call(settings, "logging a drift check", "kept in CleanData only"):
            name = monitoring_experiment(settings)
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
            run = client.create_run(experiment_id, run_name=f"drift v{check.model_version}",
                                    tags={"monitoring": "drift", "model_name": settings.model_name,
                                          "model_version": str(check.model_version),
                                          "current": check.current_source[:5000],
                                          "retrain": str(check.retrain).lower(), "reason": check.reason[:5000]})
            now = int(time.time() * 1000)
            metrics = [Metric("drift_share", result.share, now, 0), Metric("drifted_features", result.drifted, now, 0),
                       Metric("current_rows", result.current_rows, now, 0),
                       Metric("reference_rows", result.reference_rows, now, 0)]
            metrics += [Metric(f"drift_score.{f.feature}", f.score, now, 0) for f in result.features]
            client.log_batch(run.info.run_id, metrics=metrics)
            with tempfile.TemporaryDirectory(prefix="readmit-drift-") as tmp:
                path = Path(tmp) / "report.html"
                path.write_text(result.html, encoding="utf-8")
                client.log_artifact(run.info.run_id, str(path), "drift")
            client.set_terminated(run.info.run_id)
            return run.info.run_id
    except RegistryError as exc:
        log.warning("%s", exc)
        return None
