"""Performance on arrival: what the current champion achieves on each newly cleaned batch, before any retraining.

A cleaned batch holds outcomes the champion has never been trained on. Scoring it with the champion
before ``train_and_register`` learns from it tells how the model does on new encounters: ROC-AUC,
PR-AUC, Brier score, and observed against mean predicted rate, for the whole batch and ROC-AUC for the
encounters of patients the champion never saw (none of their encounters in its training batches).

Each result is one row of CleanData's ``arrival_performance`` (batch, model name and version) and one
run of the MLflow experiment ``<MLFLOW_EXPERIMENT_NAME>-monitoring``. Scoring is idempotent: a batch the
current champion already scored, or was trained on, is skipped. MLflow away (or a champion refused by the
artifact checks) skips with its reason and never fails the cleaning: ``monitor_drift`` catches up later
with the batches still unscored (``batches=None``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from readmit_contract import TARGET
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sqlalchemy import Engine, select

from .mlflow_access import RegistryError, registry_call
from .settings import DataSettings
from .stores import arrival_performance, batch_lineage, clean_encounters, utcnow
from .training import read_split

log = logging.getLogger(__name__)

MONITORING_SUFFIX = "-monitoring"


@dataclass(frozen=True)
class Arrival:
    batch_id: str
    model_version: str | None = None
    rows: int = 0
    roc_auc: float | None = None
    roc_auc_new_patients: float | None = None
    brier: float | None = None
    observed_rate: float | None = None
    predicted_rate: float | None = None
    champion_val_roc_auc: float | None = None
    skipped: str | None = None
    """Why the batch was not scored now (None: scored, or scored before by this champion)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def monitoring_experiment(settings: DataSettings) -> str:
    return settings.experiment_name + MONITORING_SUFFIX


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def batch_rows(clean_store: Engine, batch_id: str) -> pd.DataFrame:
    """The clean rows of one batch with their patient history (as training reads them)."""
    split = _split_of(clean_store, batch_id)
    return read_split(clean_store, split, [batch_id]) if split else pd.DataFrame()


def _split_of(clean_store: Engine, batch_id: str) -> str | None:
    with clean_store.connect() as conn:
        return conn.execute(select(batch_lineage.c.split).where(batch_lineage.c.batch_id == batch_id)).scalar()


def _patients_of(clean_store: Engine, batches: list[str]) -> set[int]:
    if not batches:
        return set()
    query = select(clean_encounters.c.patient_nbr).where(clean_encounters.c.batch_id.in_(batches)).distinct()
    with clean_store.connect() as conn:
        return {int(v) for v in conn.execute(query).scalars()}


def _recorded(clean_store: Engine, name: str, version: str) -> set[str]:
    query = select(arrival_performance.c.batch_id).where(arrival_performance.c.model_name == name,
                                                         arrival_performance.c.model_version == version)
    with clean_store.connect() as conn:
        return set(conn.execute(query).scalars())


def _cleaned_batches(clean_store: Engine) -> list[str]:
    """Cleaned train batches with rows: the arrivals (validation and test are fixed splits, loaded once, that
    choose and report the models)."""
    query = select(batch_lineage.c.batch_id).where(batch_lineage.c.rows_out > 0, batch_lineage.c.split == "train")
    with clean_store.connect() as conn:
        return sorted(conn.execute(query).scalars())


def measure(y: np.ndarray, p: np.ndarray, new_patient: np.ndarray) -> dict[str, float | int | None]:
    """The figures of one batch: ``y`` outcomes, ``p`` the champion's probabilities."""
    y = np.asarray(y).astype(int)
    return {
        "rows": len(y), "positives": int(y.sum()), "new_patient_rows": int(new_patient.sum()),
        "roc_auc": _auc(y, p), "roc_auc_new_patients": _auc(y[new_patient], p[new_patient]),
        "pr_auc": float(average_precision_score(y, p)) if y.any() else None,
        "brier": float(brier_score_loss(y, p)), "observed_rate": float(y.mean()), "predicted_rate": float(p.mean()),
    }


def score_on_arrival(settings: DataSettings, clean_store: Engine, batches: list[str] | None = None) -> list[Arrival]:
    """Score ``batches`` (None: every cleaned train batch not yet scored by the current champion; other names are
    ignored) with the champion and record the figures; see the module's doc. Never raises for MLflow or the
    champion: skips with the reason."""
    from .registry import _client, current_champion, load_verified

    arrivals = _cleaned_batches(clean_store)
    wanted = arrivals if batches is None else [b for b in batches if b in arrivals]
    if not wanted:
        return []
    try:
        champion = current_champion(settings)
    except RegistryError as exc:
        log.warning("performance on arrival skipped: %s", exc)
        return [Arrival(b, skipped="MLflow could not be asked for the champion (see the task log)") for b in wanted]
    if champion is None:
        return [Arrival(b, skipped="no champion yet") for b in wanted]
    version = str(champion.version)
    client = _client(settings)
    try:
        with registry_call(settings, f"reading the champion's run {champion.run_id}", "no batch was scored"):
            run = client.get_run(champion.run_id)
    except RegistryError as exc:
        log.warning("performance on arrival skipped: %s", exc)
        return [Arrival(b, version, skipped="MLflow could not be read (see the task log)") for b in wanted]
    trained_on = [b for b in run.data.params.get("train_batches", "").split(",") if b]
    done = _recorded(clean_store, settings.model_name, version)
    todo = [b for b in wanted if b not in trained_on and b not in done]
    results = [Arrival(b, version, skipped="the champion was trained on it") for b in wanted if b in trained_on]
    results += [Arrival(b, version, skipped="already scored by this champion") for b in wanted
                if b in done and b not in trained_on]
    if not todo:
        return results
    try:
        with registry_call(settings, f"downloading champion v{version}", "no batch was scored"):
            model = load_verified(settings, version)
    except Exception as exc:  # noqa: BLE001 - refused, unreachable, or a model that does not deserialise
        log.warning("performance on arrival skipped: the champion could not be loaded: %s: %s",
                    type(exc).__name__, str(exc)[:500])
        return results + [Arrival(b, version, skipped="the champion could not be loaded (see the task log)")
                          for b in todo]
    known = _patients_of(clean_store, trained_on)
    val_auc = run.data.metrics.get("val_roc_auc")
    for batch_id in todo:
        try:
            results.append(_score_batch(settings, clean_store, batch_id, version, model, known, val_auc))
        except Exception as exc:  # noqa: BLE001 - monitoring never fails the cleaning: said, and skipped
            log.warning("performance on arrival of %s failed: %s: %s", batch_id, type(exc).__name__, str(exc)[:500])
            results.append(Arrival(batch_id, version, skipped="scoring it failed (see the task log)"))
    return results


def _score_batch(settings: DataSettings, clean_store: Engine, batch_id: str, version: str, model: Any,
                 known: set[int], val_auc: float | None) -> Arrival:
    from sqlalchemy.exc import IntegrityError

    rows = batch_rows(clean_store, batch_id)
    if rows.empty:
        return Arrival(batch_id, version, skipped="no clean rows")
    p = model.predict_proba(rows)[:, 1]
    new_patient = ~rows["patient_nbr"].astype("int64").isin(known).to_numpy()
    figures = measure(rows[TARGET].to_numpy(), p, new_patient)
    run_id = _log_to_mlflow(settings, batch_id, version, figures, val_auc)
    record = {"batch_id": batch_id, "model_name": settings.model_name, "model_version": version,
              "split": str(rows["split"].iloc[0]), **figures, "champion_val_roc_auc": val_auc,
              "scored_at": utcnow(), "mlflow_run_id": run_id}
    try:
        with clean_store.begin() as conn:
            conn.execute(arrival_performance.insert().values(**record))
    except IntegrityError:  # scored at the same moment by the other DAG: its row stands
        return Arrival(batch_id, version, skipped="already scored by this champion")
    return Arrival(batch_id, version, rows=figures["rows"], roc_auc=figures["roc_auc"],
                   roc_auc_new_patients=figures["roc_auc_new_patients"], brier=figures["brier"],
                   observed_rate=figures["observed_rate"], predicted_rate=figures["predicted_rate"],
                   champion_val_roc_auc=val_auc)


def _log_to_mlflow(settings: DataSettings, batch_id: str, version: str, figures: dict[str, Any],
                   val_auc: float | None) -> str | None:
    """One run of the monitoring experiment per (batch, champion version); None when MLflow fails (the figures
    are still recorded in CleanData)."""
    from mlflow.entities import Metric

    from .registry import _client

    client = _client(settings)
    try:
        with registry_call(settings, f"logging the performance on arrival of {batch_id}", "kept in CleanData only"):
            experiment = client.get_experiment_by_name(monitoring_experiment(settings))
            experiment_id = (experiment.experiment_id if experiment is not None
                             else client.create_experiment(monitoring_experiment(settings)))
            run = client.create_run(experiment_id, run_name=f"arrival {batch_id} v{version}",
                                    tags={"monitoring": "performance_on_arrival", "batch_id": batch_id,
                                          "model_name": settings.model_name, "model_version": version})
            metrics = {k: float(v) for k, v in figures.items() if v is not None}
            if val_auc is not None:
                metrics["champion_val_roc_auc"] = float(val_auc)
            now = int(utcnow().timestamp() * 1000)
            client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
            client.set_terminated(run.info.run_id)
            return run.info.run_id
    except RegistryError as exc:
        log.warning("%s", exc)
        return None
