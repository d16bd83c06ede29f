"""
### preprocess_incremental

Cleans what the raw-load notebook put into **RawData**:

1. `find_pending_batches` — raw batches (validation, test, train-NNNN, and `unreadable` when the source
   had lines that are not rows) not yet in CleanData's lineage;
2. `preprocess_batch` (one mapped task per batch) — validates the rows with the shared contract
   (rejected rows go to `rejected_rows` with their reasons and source lines: values the contract refuses,
   over-long values, an encounter_id already clean in another batch — ids normalised, `0123` is `123` —
   and the source's unreadable lines), applies the contract's cleaning
   (hospice/expired excluded, `?` to NULL, target `readmitted_30d`) and writes the clean rows and a
   `batch_lineage` record in one transaction;
3. `score_on_arrival` — the current champion scores the newly cleaned train batches before any
   retraining (performance on arrival: ROC-AUC, PR-AUC, Brier, observed vs predicted rate, recorded in
   CleanData's `arrival_performance` and MLflow's `<experiment>-monitoring`); MLflow away or no champion
   yet skips it with the reason, never blocking what follows (`monitor_drift` catches up);
4. `publish` — updates the `clean_encounters` Asset when anything new was cleaned, which triggers
   `train_and_register`.

Retries come from Airflow's `AIRFLOW__CORE__DEFAULT_TASK_RETRIES` / `..._RETRY_DELAY` (2 / 30 s in the
cluster). Idempotent: with nothing new, nothing changes; a failed task (the database gone mid-batch
included) leaves no partial batch and a re-run picks up exactly what is still pending.
Stores: `RAW_DB_URL`, `CLEAN_DB_URL`; MLflow: `MLFLOW_TRACKING_URI`, `MODEL_NAME`, `MLFLOW_EXPERIMENT_NAME`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, dag, get_current_context, task
from readmit_data.assets import CLEAN_ENCOUNTERS_ASSET


@dag(
    dag_id="preprocess_incremental",
    schedule=timedelta(minutes=30),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["readmission", "data"],
    doc_md=__doc__,
)
def preprocess_incremental():
    @task
    def find_pending_batches() -> list[str]:
        from readmit_data.preprocessing import pending_batches
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engines

        settings = DataSettings()
        with engines(settings.raw_db_url, settings.clean_db_url) as (raw, clean_store):
            pending = pending_batches(raw, clean_store)
        print(f"pending raw batches: {pending or 'none'}")
        return pending

    @task(max_active_tis_per_dagrun=1)
    def preprocess_batch(batch_id: str) -> dict:
        from dataclasses import asdict

        from readmit_data.preprocessing import preprocess_batch as run
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engines

        settings = DataSettings()
        run_id = get_current_context()["run_id"]
        with engines(settings.raw_db_url, settings.clean_db_url) as (raw, clean_store):
            lineage = run(raw, clean_store, batch_id, run_id=run_id)
        print(lineage)
        return asdict(lineage)

    @task
    def score_on_arrival(lineages: list[dict]) -> list[dict]:
        from readmit_data.arrival import score_on_arrival as score
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for

        batches = [item["batch_id"] for item in lineages if item["rows_out"]]
        if not batches:
            return []
        settings = DataSettings()
        try:
            with engine_for(settings.clean_db_url) as engine:
                results = score(settings, engine, batches)
        except Exception as exc:  # noqa: BLE001 - monitoring never holds back the Asset (and retraining)
            print(f"performance on arrival skipped: {type(exc).__name__}: {str(exc)[:300]}")
            return []
        for result in results:
            print(f"performance on arrival of {result.batch_id}: "
                  + (result.skipped or f"ROC-AUC {result.roc_auc}, observed {result.observed_rate:.3f} vs "
                                       f"predicted {result.predicted_rate:.3f} (champion v{result.model_version})"))
        return [r.to_dict() for r in results]

    @task(outlets=[Asset(CLEAN_ENCOUNTERS_ASSET)])
    def publish(lineages: list[dict], arrivals: list[dict]) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        lineages = list(lineages)
        added = sum(item["rows_out"] for item in lineages)
        if not added:
            raise AirflowSkipException("no new clean rows: the clean_encounters asset is not updated")
        summary = {"batches": [item["batch_id"] for item in lineages], "rows_out": added}
        print(f"clean_encounters updated: {summary}")
        return summary

    lineages = preprocess_batch.expand(batch_id=find_pending_batches())
    publish(lineages, score_on_arrival(lineages))


preprocess_incremental()
