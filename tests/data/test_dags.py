"""preprocess_incremental run for real with `airflow dags test`, after notebook loads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from readmit_data.assets import CLEAN_ENCOUNTERS_ASSET
from readmit_data.loading import SplitPlan, load, raw_counts
from readmit_data.preprocessing import clean_counts, lineage_table
from readmit_data.stores import engines

from ..airflow_support import (
    DAGS_FOLDER,
    airflow_env,
    asset_events,
    clone_home,
    dags_test,
    migrate,
    queued_asset_triggers,
    task_states,
    unpause,
)
from ..support import free_port
from .conftest import BATCH_SIZE, SOURCE, add_refusal, drop_refusal
from .test_notebook import _run as run_notebook

pytestmark = pytest.mark.slow
EXPECTED_DAGS = {"preprocess_incremental", "train_and_register", "monitor_drift"}


@pytest.fixture(scope="session")
def airflow_template(tmp_path_factory) -> Path:
    """An AIRFLOW_HOME with a migrated SQLite metadata DB, copied by each test."""
    home = tmp_path_factory.mktemp("airflow-template")
    migrate(home)
    return home


def test_dag_integrity(tmp_path):
    script = Path(__file__).resolve().parents[1] / "airflow_support" / "inspect_dags.py"
    done = subprocess.run(
        [sys.executable, str(script), str(DAGS_FOLDER)], env=airflow_env(tmp_path), capture_output=True,
        text=True, check=True, timeout=300,
    )
    report = json.loads(done.stdout.split("JSON:", 1)[1])
    assert report["import_errors"] == {}
    assert EXPECTED_DAGS <= set(report["dags"])
    for dag_id, dag in report["dags"].items():
        assert Path(dag["fileloc"]).stem == dag_id  # filename = dag_id
        assert dag["catchup"] is False and dag["has_doc"] and dag["tags"], dag_id
        assert dag["start_date_tz"] in ("UTC", "utc", "+00:00"), dag_id
    pre = report["dags"]["preprocess_incremental"]
    assert pre["tasks"] == ["find_pending_batches", "preprocess_batch", "publish", "score_on_arrival"]
    assert pre["outlets"] == [CLEAN_ENCOUNTERS_ASSET]
    train = report["dags"]["train_and_register"]
    assert train["tasks"] == ["candidate_names", "record_test_metrics", "register_best", "snapshot", "train_candidate"]
    assert train["schedule"] == "AssetTriggeredTimetable"
    monitor = report["dags"]["monitor_drift"]
    assert monitor["tasks"] == ["catch_up_arrivals", "check", "prune_prediction_log", "retrain", "should_retrain"]
    assert monitor["schedule"] == "AssetOrTimeSchedule"


def _states(home: Path, run_index: int) -> dict[str, list[str]]:
    runs: dict[str, dict[str, list[str]]] = {}
    for row in task_states(home, "preprocess_incremental"):
        runs.setdefault(row["run_id"], {}).setdefault(row["task_id"], []).append(row["state"])
    return list(runs.values())[run_index]


def test_preprocess_incremental_runs_for_real(airflow_template, tmp_path, store_urls, source_frame):
    raw_url, clean_url = store_urls
    home = clone_home(airflow_template, tmp_path / "airflow")
    # no MLflow here: performance on arrival is skipped with its reason, the cleaning goes on
    env = {"RAW_DB_URL": raw_url, "CLEAN_DB_URL": clean_url, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}

    run_notebook(tmp_path, raw_url, "load1")  # validation, test, train-0001
    unpause(home, "train_and_register")
    first = dags_test(home, "preprocess_incremental", env)
    assert first.returncode == 0, first.stdout[-3000:]
    assert queued_asset_triggers(home) == ["train_and_register"]  # the asset chains the two DAGs
    assert _states(home, 0) == {
        "find_pending_batches": ["success"], "preprocess_batch": ["success"] * 3, "score_on_arrival": ["success"],
        "publish": ["success"],
    }
    assert "performance on arrival of train-0001: MLflow could not be asked" in first.stdout
    assert asset_events(home, CLEAN_ENCOUNTERS_ASSET) == 1

    run_notebook(tmp_path, raw_url, "load2")  # train-0002
    second = dags_test(home, "preprocess_incremental", env)
    assert second.returncode == 0, second.stdout[-3000:]
    assert _states(home, 1)["preprocess_batch"] == ["success"]
    assert asset_events(home, CLEAN_ENCOUNTERS_ASSET) == 2

    with engines(raw_url, clean_url) as (raw, clean_store):
        lineage = lineage_table(clean_store)
        counts = clean_counts(clean_store)
        plan = SplitPlan.of(source_frame, BATCH_SIZE, 42)
        assert raw_counts(raw)["train"] == 2 * BATCH_SIZE
    assert sorted(lineage["batch_id"]) == ["test", "train-0001", "train-0002", "validation"]
    from readmit_contract import clean, validate

    for batch_id, rows in {"validation": plan.rows("validation"), "train-0002": plan.train_batch(2)}.items():
        expected = clean(validate(rows).valid)
        row = lineage.set_index("batch_id").loc[batch_id]
        assert (row["rows_in"], row["rows_out"], row["rows_excluded"]) == (
            len(rows), len(expected.clean), len(expected.excluded),
        )
        assert str(row["run_id"]).startswith("manual__")
    assert counts["train"] == lineage.set_index("batch_id").loc[["train-0001", "train-0002"], "rows_out"].sum()

    # nothing new: the run succeeds, cleans nothing, does not update the asset
    third = dags_test(home, "preprocess_incremental", env)
    assert third.returncode == 0, third.stdout[-3000:]
    assert _states(home, 2)["publish"] == ["skipped"]
    assert asset_events(home, CLEAN_ENCOUNTERS_ASSET) == 2
    with engines(raw_url, clean_url) as (_, clean_store):
        assert clean_counts(clean_store) == counts
        assert len(lineage_table(clean_store)) == 4


def test_failed_task_then_rerun(airflow_template, tmp_path, source_frame):
    """A batch that fails leaves nothing; the next run cleans exactly what is pending."""
    from readmit_contract import clean, validate

    raw_url, clean_url = f"sqlite:///{tmp_path / 'raw.db'}", f"sqlite:///{tmp_path / 'clean.db'}"
    home = clone_home(airflow_template, tmp_path / "airflow")
    env = {"RAW_DB_URL": raw_url, "CLEAN_DB_URL": clean_url}
    with engines(raw_url, clean_url) as (raw, clean_store):
        load(raw, source_frame, source=SOURCE, batch_size=BATCH_SIZE, seed=42, progress=False)
        plan = SplitPlan.of(source_frame, BATCH_SIZE, 42)
        victim = clean(validate(plan.train_batch(1).iloc[1000:]).valid).clean["encounter_id"].iloc[0]
        refusal = add_refusal(clean_store, "clean_encounters", int(victim))  # the database refuses one row

    failed = dags_test(home, "preprocess_incremental", env)
    assert failed.returncode != 0
    assert "DagRun failed" in failed.stdout + failed.stderr
    with engines(raw_url, clean_url) as (_, clean_store):
        assert set(lineage_table(clean_store)["batch_id"]) == {"validation", "test"}
        assert set(clean_counts(clean_store)) == {"validation", "test"}  # no partial train-0001
        drop_refusal(clean_store, refusal)

    rerun = dags_test(home, "preprocess_incremental", env)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert _states(home, 1)["preprocess_batch"] == ["success"]  # only train-0001 was pending
    with engines(raw_url, clean_url) as (_, clean_store):
        assert set(lineage_table(clean_store)["batch_id"]) == {"validation", "test", "train-0001"}


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_cluster_airflow_settings_on_a_mysql_metadata_db(tmp_path, mysql_databases, source_frame):
    """The cluster's Airflow settings (LocalExecutor, MySQL metadata DB) migrate and run the DAG."""
    cluster = _env_file(DAGS_FOLDER.parent / "config" / "airflow.env")
    assert cluster["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    metadata_url = mysql_databases.create("airflow")
    raw_url, clean_url = mysql_databases.create("raw"), mysql_databases.create("clean")
    home = tmp_path / "airflow"
    local = {k: v for k, v in cluster.items() if not k.endswith(("_FOLDER", "_URL"))}
    migrate(home, metadata_url)
    with engines(raw_url, clean_url) as (raw, _):
        load(raw, source_frame, source=SOURCE, batch_size=BATCH_SIZE, seed=42, progress=False)
    done = dags_test(home, "preprocess_incremental", {**local, "RAW_DB_URL": raw_url, "CLEAN_DB_URL": clean_url},
                     sql_alchemy_conn=metadata_url)
    assert done.returncode == 0, done.stdout[-3000:]
    with engines(raw_url, clean_url) as (_, clean_store):
        assert set(lineage_table(clean_store)["batch_id"]) == {"validation", "test", "train-0001"}
