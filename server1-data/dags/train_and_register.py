"""
### train_and_register

Runs when `preprocess_incremental` updates the `clean_encounters` Asset (or by hand):

1. `snapshot` — the clean train batches so far and the validation/test row counts (lineage);
2. `train_candidate` (one mapped task per candidate) — fits a full Pipeline (contract transform +
   estimator) on those batches, evaluates it on the validation split, and logs parameters, lineage,
   ROC-AUC / PR-AUC / Brier / log loss / F1 / recall at the chosen threshold, a calibration plot, a
   confusion matrix and the model (signature, input example) to MLflow;
3. `register_best` — registers the best candidate as `MODEL_NAME` and moves the `champion` alias to
   it only if it beats the current champion on the same validation set; otherwise it becomes
   `challenger`, with the reason recorded;
4. `record_test_metrics` — the champion's test-set metrics, computed once.

Params: `candidates` (default from `CANDIDATES`). Settings: `CLEAN_DB_URL`, `MLFLOW_TRACKING_URI`,
`MLFLOW_EXPERIMENT_NAME`, `MODEL_NAME`, `MODEL_ALIAS`, `PROMOTION_MIN_DELTA`.
"""

from __future__ import annotations

from datetime import UTC, datetime

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
    },
    doc_md=__doc__,
)
def train_and_register():
    @task
    def snapshot() -> dict:
        from dataclasses import asdict

        from readmit_data.settings import DataSettings
        from readmit_data.stores import make_engine
        from readmit_data.training import take_snapshot

        settings = DataSettings()
        engine = make_engine(settings.clean_db_url)
        try:
            snap = take_snapshot(engine)
        finally:
            engine.dispose()
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
        from readmit_data.stores import make_engine
        from readmit_data.training import Snapshot, train_candidate as train

        settings = DataSettings()
        context = get_current_context()
        engine = make_engine(settings.clean_db_url)
        try:
            result = train(settings, engine, candidate, Snapshot(**data),
                           tags={"airflow.dag_run": context["run_id"], "airflow.dag": "train_and_register"})
        finally:
            engine.dispose()
        print(f"{candidate}: run {result.run_id}, validation {result.metrics}")
        return result.to_dict()

    @task
    def register_best(results: list[dict]) -> dict:
        from readmit_data.registry import best_candidate, register_and_promote
        from readmit_data.settings import DataSettings
        from readmit_data.stores import make_engine
        from readmit_data.training import CandidateResult

        settings = DataSettings()
        best = best_candidate([CandidateResult(**r) for r in results])
        engine = make_engine(settings.clean_db_url)
        try:
            promotion = register_and_promote(settings, engine, best)
        finally:
            engine.dispose()
        print(promotion.reason)
        return promotion.to_dict()

    @task
    def record_test_metrics(promotion: dict) -> dict | None:
        from readmit_data.registry import record_champion_test_metrics
        from readmit_data.settings import DataSettings
        from readmit_data.stores import make_engine

        settings = DataSettings()
        engine = make_engine(settings.clean_db_url)
        try:
            metrics = record_champion_test_metrics(settings, engine)
        finally:
            engine.dispose()
        print(f"champion test metrics: {metrics or 'already recorded'}")
        return metrics

    data = snapshot()
    results = train_candidate.partial(data=data).expand(candidate=candidate_names())
    record_test_metrics(register_best(results))


train_and_register()
