"""
### monitor_drift

Watches the champion between trainings. Runs every 6 hours and after each update of the
`clean_encounters` Asset:

1. `catch_up_arrivals` — performance on arrival for the cleaned train batches the current champion has not
   scored yet (those `preprocess_incremental` skipped while MLflow was away, or that arrived before this
   champion was promoted);
2. `check` — Evidently's data drift against the champion's training rows of (a) the encounters that arrived
   after the champion (`batches`) and (b) those the API scored in the last `DRIFT_PREDICTION_HOURS`, from the
   prediction log (`predictions`, when `PREDICTIONS_DB_URL` is set); recorded in CleanData (`drift_checks`,
   `feature_drift`) and MLflow (`<experiment>-monitoring`, with the HTML report), pushed to Prometheus'
   Pushgateway when `PUSHGATEWAY_URL` is set (alerts `ReadmitDataDrift`, `ReadmitModelRetrainAdvised`,
   `ReadmitMonitorStale`), and whether to retrain: at least `DRIFT_SHARE_THRESHOLD` of the features drifted,
   or performance on arrival below the champion's validation ROC-AUC by more than `ARRIVAL_MAX_AUC_DROP`,
   while batches the champion has not learnt from exist;
3. `should_retrain` — on a scheduled run that advises retraining, once per champion and set of arrived
   batches (an Asset-triggered run leaves it to `train_and_register`, which that Asset already starts);
4. `retrain` — triggers `train_and_register` with the reason in its conf; its runs carry it as the tag
   `trigger.reason`;
5. `prune_prediction_log` — deletes logged predictions older than `PREDICTION_LOG_RETENTION_DAYS`.

Settings: `CLEAN_DB_URL`, `MLFLOW_TRACKING_URI`, `MODEL_NAME`, `MLFLOW_EXPERIMENT_NAME`, `DRIFT_SHARE_THRESHOLD`,
`DRIFT_REFERENCE_ROWS`, `ARRIVAL_MAX_AUC_DROP`, `PUSHGATEWAY_URL`, `PREDICTIONS_DB_URL`, `DRIFT_PREDICTION_HOURS`,
`PREDICTION_LOG_RETENTION_DAYS`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, AssetOrTimeSchedule, dag, get_current_context, task
from airflow.timetables.trigger import CronTriggerTimetable
from readmit_data.assets import CLEAN_ENCOUNTERS_ASSET


@dag(
    dag_id="monitor_drift",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 */6 * * *", timezone="UTC"),
                                 assets=[Asset(CLEAN_ENCOUNTERS_ASSET)]),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["readmission", "monitoring"],
    doc_md=__doc__,
)
def monitor_drift():
    @task
    def catch_up_arrivals() -> list[dict]:
        from readmit_data.arrival import score_on_arrival
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for

        settings = DataSettings()
        with engine_for(settings.clean_db_url) as engine:
            results = score_on_arrival(settings, engine)
        for result in results:
            if result.skipped is None:
                print(f"performance on arrival of {result.batch_id}: ROC-AUC {result.roc_auc} "
                      f"(v{result.model_version})")
        return [r.to_dict() for r in results]

    @task(retries=2, retry_delay=timedelta(minutes=1))
    def check(arrivals: list[dict]) -> dict:
        from readmit_data.monitor import monitor
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for

        settings = DataSettings()
        with engine_for(settings.clean_db_url) as engine:
            checks = monitor(settings, engine)
        for result in checks:
            print(f"{result.population}: " + (result.skipped or f"drift share {result.share:.2f}, drifted "
                                                               f"{result.drifted_features or 'none'}"))
            print(f"{result.population}: retrain {result.retrain} {result.reason}")
        advising = [r for r in checks if r.retrain]
        return {"retrain": bool(advising), "reason": "; ".join(r.reason for r in advising),
                "model_version": checks[0].model_version, "arrived": checks[0].arrived,
                "check_ids": [r.check_id for r in advising if r.check_id is not None],
                "checks": [r.to_dict() for r in checks]}

    @task
    def prune_prediction_log() -> int:
        from readmit_data.monitor import prune_predictions
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for

        settings = DataSettings()
        if not settings.predictions_db_url:
            print("PREDICTIONS_DB_URL is not set: no prediction log to prune")
            return 0
        with engine_for(settings.predictions_db_url) as engine:
            deleted = prune_predictions(settings, engine)
        print(f"deleted {deleted} logged predictions older than {settings.prediction_log_retention_days:g} days")
        return deleted

    @task.short_circuit
    def should_retrain(result: dict) -> bool:
        from readmit_data.monitor import already_triggered, mark_triggered
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for

        run_type = str(get_current_context()["dag_run"].run_type)
        if not result["retrain"]:
            return False
        by_asset = "asset" in run_type.lower()
        settings = DataSettings()
        with engine_for(settings.clean_db_url) as engine:
            if already_triggered(settings, engine, result["model_version"], result["arrived"]):
                print("retraining was already asked for this champion and these batches")
                return False
            # an Asset run: the same Asset starts train_and_register on these batches; marked, so a scheduled run
            # does not retrain on them again when that candidate is not promoted
            for check_id in result["check_ids"]:
                mark_triggered(settings, engine, check_id)
        if by_asset:
            print("new clean data: train_and_register is started by the same Asset; not triggered again")
            return False
        return True

    decision = check(catch_up_arrivals())
    retrain = TriggerDagRunOperator(
        task_id="retrain", trigger_dag_id="train_and_register",
        conf={"reason": "{{ ti.xcom_pull(task_ids='check')['reason'] }}"},
        wait_for_completion=False,
    )
    should_retrain(decision) >> retrain
    prune_prediction_log()


monitor_drift()
