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
when drift or performance on arrival asks for retraining; tagged on every run as `trigger.reason`), `mode`:

- `retrain` (default): the above;
- `warm_start`: `train_candidate` continues the champion with the clean train batches it has not learnt from
  (`readmit_data.warm_start`: more boosting iterations for hist_gradient_boosting, more trees for the random
  forest; logistic regression and the prior baseline are refused, with the reason) instead of training the
  candidates from scratch; the continued model is logged with its lineage and goes through `register_best`'s
  gate and model card like any candidate;
- `learning_curve`: `train_candidate` trains the candidate (`candidates`, else the champion's) on batches 1..N for
  every N, with the warm-started model next to each (`readmit_data.learning_curve`), and logs validation ROC-AUC
  against training rows as one run (plot, table, metrics); `register_best` and `record_test_metrics` are
  skipped: nothing is registered, no alias moves.

Settings: `CLEAN_DB_URL`, `MLFLOW_TRACKING_URI`, `MLFLOW_EXPERIMENT_NAME`, `MODEL_NAME`, `MODEL_ALIAS`,
`WARM_START_ITERATIONS`, `PROMOTION_MIN_DELTA`, `PROMOTION_CONFIDENCE`, `PROMOTION_BOOTSTRAP_SAMPLES`,
`PROMOTION_MAX_SUBGROUP_AUC_DROP`, `PROMOTION_MAX_CALIBRATION_WORSENING`, `MODEL_CARD_MIN_GROUP_ROWS`,
`MODEL_CARD_BOOTSTRAP_SAMPLES`,
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
        "mode": Param(
            "retrain", type="string", enum=["retrain", "warm_start", "learning_curve"],
            description="retrain: the candidates from scratch (default); warm_start: the champion continued with the "
                        "batches it has not learnt from, then the same gate; learning_curve: validation ROC-AUC of "
                        "the candidate (candidates, else the champion's) trained on batches 1..N, full retraining "
                        "and warm start, logged to MLflow; registers nothing.",
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
        from readmit_data.settings import DataSettings
        from readmit_data.training import mode_candidates

        params = get_current_context()["params"]
        return mode_candidates(DataSettings(), params.get("mode") or "retrain", params.get("candidates"))

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
        tags = {"airflow.dag_run": context["run_id"], "airflow.dag": "train_and_register",
                "trigger.reason": reason[:5000]}
        mode = context["params"].get("mode") or "retrain"
        with engine_for(settings.clean_db_url) as engine:
            if mode == "learning_curve":
                from readmit_data.learning_curve import run_learning_curve

                curve = run_learning_curve(settings, engine, candidate, Snapshot(**data), tags=tags)
                print(f"{candidate}: learning curve in run {curve.run_id}: {curve.verdict}; warm start: "
                      f"{curve.warm_start}")
                return {"mode": mode, "candidate": candidate, "run_id": curve.run_id, "verdict": curve.verdict}
            if mode == "warm_start":
                from readmit_data.warm_start import continue_champion

                result = continue_champion(settings, engine, Snapshot(**data), tags=tags)
            else:
                result = train(settings, engine, candidate, Snapshot(**data), tags=tags)
        print(f"{candidate}: run {result.run_id}, validation {result.metrics}")
        return result.to_dict()

    # idempotent (a retry completes what an earlier attempt registered): retried when MLflow is back
    @task(retries=2, retry_delay=timedelta(minutes=1), retry_exponential_backoff=True)
    def register_best(results: list[dict]) -> dict:
        from readmit_data.registry import best_candidate, register_and_promote
        from readmit_data.settings import DataSettings
        from readmit_data.stores import engine_for
        from readmit_data.training import CandidateResult

        if get_current_context()["params"].get("mode") == "learning_curve":
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("mode learning_curve registers nothing: the curves are runs of the experiment")
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
