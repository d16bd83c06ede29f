"""Monitoring the champion between trainings: drift of the encounters it meets, and whether to retrain.

Two populations are compared with a seeded sample of the champion's own training rows
(``readmit_data.drift``), each recorded in CleanData (``drift_checks``, ``feature_drift``) and in MLflow's
monitoring experiment (figures, and Evidently's HTML report as ``drift/report.html``), and pushed to
Prometheus (``push_check``):

- ``batches`` (``check_drift``): the clean train batches that arrived after the champion was trained;
- ``predictions`` (``check_live_drift``): the encounters the API scored in the last ``DRIFT_PREDICTION_HOURS``,
  read from the prediction log (``PREDICTIONS_DB_URL``), each encounter once.

Retraining is advised when

- the share of drifted features is at least ``DRIFT_SHARE_THRESHOLD`` (either population), or
- on a batch that arrived after it, the champion's ROC-AUC is below its validation ROC-AUC by more than
  ``ARRIVAL_MAX_AUC_DROP`` (``readmit_data.arrival``),

and only while batches have arrived that the champion has not learnt from: without them a retraining would
learn from the same rows (drift of live traffic is then recorded and alerted on, with that said).

Fewer than ``drift.MIN_ROWS`` encounters, or no champion, is no measurement (the reason is returned).
``prune_predictions`` deletes logged predictions older than ``PREDICTION_LOG_RETENTION_DAYS``.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, or_, select

from .arrival import monitoring_experiment
from .drift import MIN_ROWS, DriftResult, compare
from .mlflow_access import RegistryError, registry_call
from .settings import DataSettings
from .stores import arrival_performance, batch_lineage, drift_checks, feature_drift, make_engine, utcnow
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
    population: str = "batches"
    """What was compared with the training rows: ``batches`` or ``predictions`` (``POPULATIONS``)."""
    arrived: str = ""
    """The batches that arrived after the champion (``batches a,b`` or ``none``): what a retraining would add;
    retraining is triggered once per champion and ``arrived``."""

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


POPULATIONS = ("batches", "predictions")
LIVE_MAX_ROWS = 50_000
"""The live drift check reads at most this many of the latest logged predictions."""


@dataclass(frozen=True)
class Champion:
    """The champion a check is about: its version, the batches it learnt from and those that arrived since."""

    version: str
    trained_on: list[str]
    arrived: list[str]

    @property
    def arrived_source(self) -> str:
        return "batches " + ",".join(self.arrived) if self.arrived else "none"


def champion_batches(settings: DataSettings, clean_store: Engine) -> Champion | None:
    """The champion and its batches (None: no champion yet); ``RegistryError`` when MLflow cannot say (a check
    without it would be meaningless)."""
    from .registry import _client, current_champion

    champion = current_champion(settings)
    if champion is None:
        return None
    with registry_call(settings, f"reading the champion's run {champion.run_id}", "no drift check was made"):
        params = _client(settings).get_run(champion.run_id).data.params
    trained_on = [b for b in params.get("train_batches", "").split(",") if b]
    arrived = [b for b in _train_batches(clean_store) if b not in trained_on]
    return Champion(str(champion.version), trained_on, arrived)


def _reference(settings: DataSettings, clean_store: Engine, champion: Champion) -> pd.DataFrame:
    reference = read_split(clean_store, "train", champion.trained_on)
    if len(reference) > settings.drift_reference_rows:
        reference = reference.sample(settings.drift_reference_rows, random_state=settings.random_seed)
    return reference


def _drift_reason(settings: DataSettings, result: DriftResult, where: str) -> str:
    return (f"data drift {where}: {result.drifted} of {len(result.features)} features drifted "
            f"({result.share:.0%} >= {settings.drift_share_threshold:.0%}): " + ", ".join(result.drifted_features()))


def _finish(settings: DataSettings, clean_store: Engine, check: DriftCheck, result: DriftResult) -> DriftCheck:
    """Log a measured check to MLflow, record it, push it."""
    check.mlflow_run_id = _log_to_mlflow(settings, check, result)
    check.check_id = _record(settings, clean_store, check, result)
    check.pushed = push_check(settings, check, result)
    return check


def check_drift(settings: DataSettings, clean_store: Engine, champion: Champion | None = None) -> DriftCheck:
    """The drift check of the batches that arrived after the champion (population ``batches``); see the
    module's doc. ``champion``: from ``champion_batches`` (asked of MLflow when not given)."""
    champion = champion or champion_batches(settings, clean_store)
    if champion is None:
        return DriftCheck(skipped="no champion yet")
    version, source = champion.version, champion.arrived_source
    reasons = arrival_drops(settings, clean_store, version)
    current = read_split(clean_store, "train", champion.arrived) if champion.arrived else pd.DataFrame()
    if len(current) < MIN_ROWS:
        check = DriftCheck(version, source, retrain=bool(reasons), reasons=reasons, arrived=source,
                           skipped=f"{len(current)} encounters arrived since the champion was trained: fewer than "
                                   f"{MIN_ROWS}, drift is not measured")
        if reasons:  # recorded: retraining is advised all the same (and triggered once)
            check.check_id = _record(settings, clean_store, check,
                                     DriftResult(0.0, 0, [], reference_rows=0, current_rows=len(current)))
        check.pushed = push_check(settings, check)
        return check
    result = compare(_reference(settings, clean_store, champion), current)
    if result.share >= settings.drift_share_threshold:
        reasons.insert(0, _drift_reason(settings, result, "in the batches that arrived"))
    check = DriftCheck(version, source, result.share, result.drifted_features(), bool(reasons), reasons,
                       arrived=source)
    return _finish(settings, clean_store, check, result)


def recent_predictions(settings: DataSettings, predictions_store: Engine) -> tuple[pd.DataFrame, str]:
    """The encounters the API scored in the last ``DRIFT_PREDICTION_HOURS`` (at most ``LIVE_MAX_ROWS`` of the
    latest), each encounter once (its latest answer; rows without an encounter_id all count), as a frame of
    the contract's input columns; and a description of the window."""
    from readmit_contract.prediction_log import encounters_frame, prediction_log

    since = utcnow() - timedelta(hours=settings.drift_prediction_hours)
    query = (select(prediction_log.c.encounter_id, prediction_log.c.encounter, prediction_log.c.predicted_at)
             .where(prediction_log.c.model_name == settings.model_name, prediction_log.c.scored.is_(True),
                    prediction_log.c.predicted_at >= since))
    if settings.excluded_callers:  # the load test's traffic (DRIFT_EXCLUDED_CALLERS); a row without caller counts
        query = query.where(or_(prediction_log.c.caller.is_(None),
                                prediction_log.c.caller.not_in(settings.excluded_callers)))
    query = query.order_by(prediction_log.c.id.desc()).limit(LIVE_MAX_ROWS)
    with predictions_store.connect() as conn:
        rows = conn.execute(query).all()
    seen: set[int] = set()
    texts, first, last = [], None, None
    for encounter_id, text, predicted_at in rows:
        if encounter_id is not None:
            if encounter_id in seen:
                continue
            seen.add(encounter_id)
        texts.append(text)
        first = predicted_at if first is None or predicted_at < first else first
        last = predicted_at if last is None or predicted_at > last else last
    window = (f"predictions {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC ({len(texts)} encounters)"
              if texts else f"predictions of the last {settings.drift_prediction_hours:g} h (none)")
    return encounters_frame(texts), window


def check_live_drift(settings: DataSettings, clean_store: Engine, predictions_store: Engine,
                     champion: Champion | None = None) -> DriftCheck:
    """The drift check of the live traffic (population ``predictions``); see the module's doc."""
    from readmit_contract.prediction_log import metadata as predictions_metadata

    champion = champion or champion_batches(settings, clean_store)
    if champion is None:
        return DriftCheck(skipped="no champion yet", population="predictions")
    predictions_metadata.create_all(predictions_store)  # the API may not have logged anything yet
    current, window = recent_predictions(settings, predictions_store)
    base = {"population": "predictions", "arrived": champion.arrived_source}
    if len(current) < MIN_ROWS:
        check = DriftCheck(champion.version, window, **base,
                           skipped=f"{len(current)} encounters scored in the last "
                                   f"{settings.drift_prediction_hours:g} h: fewer than {MIN_ROWS}, drift is not "
                                   "measured")
        check.pushed = push_check(settings, check)
        return check
    result = compare(_reference(settings, clean_store, champion), current)
    check = DriftCheck(champion.version, window, result.share, result.drifted_features(), **base)
    if result.share >= settings.drift_share_threshold:
        reason = _drift_reason(settings, result, "in the encounters scored")
        if champion.arrived:
            check.retrain, check.reasons = True, [reason]
        else:  # recorded and alerted on; a retraining would learn from the same rows
            check.reasons = [reason + "; not retrained: no batch has arrived since the champion was trained (load "
                                      "recent encounters with their outcomes)"]
    return _finish(settings, clean_store, check, result)


def prune_predictions(settings: DataSettings, predictions_store: Engine, chunk: int = 10_000) -> int:
    """Delete logged predictions older than ``PREDICTION_LOG_RETENTION_DAYS``, in chunks (short transactions
    beside the API's inserts); returns how many."""
    from readmit_contract.prediction_log import metadata as predictions_metadata
    from readmit_contract.prediction_log import prediction_log

    predictions_metadata.create_all(predictions_store)
    cutoff = utcnow() - timedelta(days=settings.prediction_log_retention_days)
    deleted = 0
    while True:
        with predictions_store.begin() as conn:
            ids = conn.execute(select(prediction_log.c.id).where(prediction_log.c.predicted_at < cutoff)
                               .order_by(prediction_log.c.id).limit(chunk)).scalars().all()
            if not ids:
                return deleted
            deleted += conn.execute(prediction_log.delete().where(prediction_log.c.id.in_(ids))).rowcount


def monitor(settings: DataSettings, clean_store: Engine) -> list[DriftCheck]:
    """Both checks of one monitor_drift run (the live one when ``PREDICTIONS_DB_URL`` is set), on one reading of
    who the champion is."""
    champion = champion_batches(settings, clean_store)
    if champion is None:
        return [DriftCheck(skipped="no champion yet")]
    checks = [check_drift(settings, clean_store, champion)]
    if settings.predictions_db_url:
        checks.append(_live_or_skipped(settings, clean_store, champion))
    return checks


def _live_or_skipped(settings: DataSettings, clean_store: Engine, champion: Champion) -> DriftCheck:
    """The live check; a failure of the prediction log (store down, unreadable rows) skips it with the reason,
    unpushed (ReadmitMonitorStale tells when that lasts), and never takes the batches' check and its retraining
    advice down with it."""
    from .stores import store_failure

    predictions_store = None
    try:
        predictions_store = make_engine(settings.predictions_db_url)
        return check_live_drift(settings, clean_store, predictions_store, champion)
    except Exception as exc:  # noqa: BLE001 - said in the check and the task log
        log.warning("the live drift check failed: %s", store_failure(exc))
        return DriftCheck(champion.version, population="predictions", arrived=champion.arrived_source,
                          skipped=f"the prediction log could not be read ({store_failure(exc)})")
    finally:
        if predictions_store is not None:
            predictions_store.dispose()


PUSH_JOB = "readmit_monitor"


def push_check(settings: DataSettings, check: DriftCheck, result: DriftResult | None = None) -> bool:
    """Push a check's figures to ``PUSHGATEWAY_URL`` (job ``readmit_monitor``, grouped by ``population``:
    each push replaces the previous one of its population), for Prometheus, its alert rules and Grafana; every
    series is labelled model_name, model_version and population:

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
    labels = {"model_name": settings.model_name, "model_version": str(check.model_version),
              "population": check.population}
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
        push_to_gateway(settings.pushgateway_url, job=PUSH_JOB, registry=registry, timeout=10,
                        grouping_key={"population": check.population})
    except OSError as exc:  # refused, unreachable, timeout, HTTP error (urllib's errors are OSErrors)
        log.warning("the drift check's figures could not be pushed to the Pushgateway: %s", type(exc).__name__)
        return False
    return True


def source_key(source: str) -> str:
    """The identity of a set of arrived batches (``DriftCheck.current_source``, however long)."""
    import hashlib

    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def already_triggered(settings: DataSettings, clean_store: Engine, version: str | None, source: str) -> bool:
    """Whether a check of this champion, with these arrived batches (``DriftCheck.arrived``), already triggered
    retraining (either population)."""
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
            population=check.population, current_source=check.current_source[:255],
            current_key=source_key(check.arrived or check.current_source),
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
            run = client.create_run(experiment_id, run_name=f"drift v{check.model_version} {check.population}",
                                    tags={"monitoring": "drift", "population": check.population,
                                          "model_name": settings.model_name,
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
