"""
### train_and_register

Runs when `preprocess_incremental` updates the `clean_encounters` Asset (or by hand):

1. `snapshot` — the clean train batches so far and the validation/test row counts (lineage);
2. `train_candidate` (one mapped task per candidate) — fits a full Pipeline (contract transform +
   estimator) on those batches, evaluates it on the validation split, and logs parameters, lineage,
   ROC-AUC / PR-AUC / Brier / log loss / F1 / recall at the chosen threshold, a calibration plot, a
   confusion matrix and the model (signature, input example) to MLflow;
3. `register_best` — builds the best candidate's model card (intended use, data, test and validation
   metrics with patient-bootstrap intervals, calibration, subgroups, the threshold as a capacity rule)
   and stores it on its run; decides, then registers: the best candidate is compared with the current champion
   on the same validation rows (both re-scored; a paired bootstrap over patients, corrected for having
   picked the best of N candidates) and registered as a version of `MODEL_NAME` with its decision as
   tags in one call; the `champion` alias moves to it only if the lower bound of its lead exceeds
   `PROMOTION_MIN_DELTA` and its card's calibration and subgroups are not worse than the champion's
   beyond `PROMOTION_MAX_CALIBRATION_WORSENING` / `PROMOTION_MAX_SUBGROUP_AUC_DROP`, otherwise it
   becomes `challenger`. A registry error (MLflow unreachable,
   timeout, 5xx, 401/403) fails the task, never counts as "no champion"; the task retries, and a retry
   completes the version an earlier attempt registered instead of creating another;
4. `record_test_metrics` — the champion's test-set metrics, computed once.

Params: `candidates` (default from `CANDIDATES`), `reason` (why the run was started: `monitor_drift` gives it
when drift or performance on arrival asks for retraining; tagged on every run as `trigger.reason`).

Settings: `CLEAN_DB_URL`, `MLFLOW_TRACKING_URI`, `MLFLOW_EXPERIMENT_NAME`, `MODEL_NAME`, `MODEL_ALIAS`,
`PROMOTION_MIN_DELTA`, `PROMOTION_CONFIDENCE`, `PROMOTION_BOOTSTRAP_SAMPLES`, `PROMOTION_MAX_SUBGROUP_AUC_DROP`,
`PROMOTION_MAX_CALIBRATION_WORSENING`, `MODEL_CARD_MIN_GROUP_ROWS`, `MODEL_CARD_BOOTSTRAP_SAMPLES`,
`MLFLOW_HTTP_REQUEST_TIMEOUT`, `MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task
from readmit_data.assets import CLEAN_ENCOUNTERS_ASSET


@dag(
    dag_id="train_and_register",
    schedule=[Asset(CLEAN_ENCOUNTERS_ASSET)],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["readmission", "training", "mlflow"],
    params={
        "candidates": Param(
            None, type=["null", "array"], items={"type": "string"},
            description="Candidate names to train; null: the CANDIDATES setting.",
        ),
        "reason": Param(
            None, type=["null", "string"],
            description="Why this run was started (monitor_drift gives it); tagged on every run as trigger.reason.",
        ),
    },
    doc_md=__doc__,
)
def train_and_register():
    @task
    def snapshot() -> dict:
        from dataclasses import asdict

        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for
        from readmit_data.training import take_snapshot

        settings = DataSettings()
        with engine_for(settings.clean_db_url) as engine:
            snap = take_snapshot(engine)
        print(f"training snapshot: {snap}")
        return asdict(snap)

    @task
    def candidate_names() -> list[str]:
        from readmit_data.candidates import CANDIDATES
        from readmit_data.settings import DataSettings

        names = get_current_context()["params"].get("candidates") or DataSettings().candidate_names
        unknown = sorted(set(names) - set(CANDIDATES))
        if unknown:
            raise ValueError(f"unknown candidates {unknown}: choose from {sorted(CANDIDATES)}")
        return list(names)

    @task(max_active_tis_per_dagrun=1)
    def train_candidate(candidate: str, data: dict) -> dict:
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for
        from readmit_data.training import Snapshot
        from readmit_data.training import train_candidate as train

        settings = DataSettings()
        context = get_current_context()
        run_type = str(context["dag_run"].run_type).lower()
        reason = context["params"].get("reason") or (
            "new clean data (the clean_encounters Asset was updated)" if "asset" in run_type else "started by hand")
        with engine_for(settings.clean_db_url) as engine:
            result = train(settings, engine, candidate, Snapshot(**data),
                           tags={"airflow.dag_run": context["run_id"], "airflow.dag": "train_and_register",
                                 "trigger.reason": reason[:5000]})
        print(f"{candidate}: run {result.run_id}, validation {result.metrics}")
        return result.to_dict()

    # idempotent (a retry completes what an earlier attempt registered): retried when MLflow is back
    @task(retries=2, retry_delay=timedelta(minutes=1), retry_exponential_backoff=True)
    def register_best(results: list[dict]) -> dict:
        from readmit_data.registry import best_candidate, register_and_promote
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for
        from readmit_data.training import CandidateResult

        settings = DataSettings()
        trained = [CandidateResult(**r) for r in results]
        best = best_candidate(trained)
        with engine_for(settings.clean_db_url) as engine:
            promotion = register_and_promote(settings, engine, best, candidates=len(trained))
        print(promotion.reason)
        return promotion.to_dict()

    @task(retries=2, retry_delay=timedelta(minutes=1), retry_exponential_backoff=True)
    def record_test_metrics(promotion: dict) -> dict | None:
        from readmit_data.registry import record_champion_test_metrics
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for

        settings = DataSettings()
        with engine_for(settings.clean_db_url) as engine:
            metrics = record_champion_test_metrics(settings, engine)
        print(f"champion test metrics: {metrics or 'already recorded'}")
        return metrics

    data = snapshot()
    results = train_candidate.partial(data=data).expand(candidate=candidate_names())
    record_test_metrics(register_best(results))


train_and_register()
