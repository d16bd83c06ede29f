"""Running the project's DAGs for real: `airflow dags test` in a throwaway AIRFLOW_HOME."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO_ROOT / "server1-data" / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow_env(home: Path, sql_alchemy_conn: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for an Airflow CLI call: own home, the project's DAGs, no examples."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn or f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "0",
    }
    env.update(extra)
    return env


def migrate(home: Path, sql_alchemy_conn: str | None = None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [AIRFLOW, "db", "migrate"], env=airflow_env(home, sql_alchemy_conn), check=True,
        capture_output=True, stdin=subprocess.DEVNULL, timeout=300,
    )


def clone_home(template: Path, home: Path) -> Path:
    """A new AIRFLOW_HOME whose SQLite metadata DB is a copy of an already migrated one."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(template / "airflow.db", home / "airflow.db")
    return home


def dags_test(home: Path, dag_id: str, env: dict[str, str], sql_alchemy_conn: str | None = None,
              conf: dict | None = None) -> subprocess.CompletedProcess:
    """`airflow dags test DAG_ID` (exit code 0 on success, 1 when the run failed)."""
    cmd = [AIRFLOW, "dags", "test", dag_id]
    if conf is not None:
        cmd += ["--conf", json.dumps(conf)]
    return subprocess.run(
        cmd, env=airflow_env(home, sql_alchemy_conn, **env), capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=900,
    )


def task_states(home: Path, dag_id: str) -> list[dict[str, str]]:
    """Task instance states of every run of ``dag_id``, oldest run first (SQLite metadata DB)."""
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT ti.run_id, ti.task_id, ti.map_index, ti.state FROM task_instance ti "
            "JOIN dag_run dr ON dr.run_id = ti.run_id AND dr.dag_id = ti.dag_id "
            "WHERE ti.dag_id = ? ORDER BY dr.id, ti.task_id, ti.map_index", (dag_id,),
        ).fetchall()
    return [dict(zip(("run_id", "task_id", "map_index", "state"), r, strict=True)) for r in rows]


def asset_events(home: Path, asset_name: str) -> int:
    with sqlite3.connect(home / "airflow.db") as db:
        return db.execute(
            "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?", (asset_name,)
        ).fetchone()[0]


def unpause(home: Path, dag_id: str, env: dict[str, str] | None = None) -> None:
    """Register every DAG of the folder in the metadata DB and unpause ``dag_id`` (as the scheduler would see it)."""
    for cmd in (["dags", "reserialize"], ["dags", "unpause", dag_id]):
        subprocess.run([AIRFLOW, *cmd], env=airflow_env(home, **(env or {})), check=True, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=300)


def queued_asset_triggers(home: Path) -> list[str]:
    """DAG ids waiting in the asset-triggered run queue (the scheduler would start them)."""
    with sqlite3.connect(home / "airflow.db") as db:
        return [row[0] for row in db.execute("SELECT target_dag_id FROM asset_dag_run_queue").fetchall()]
