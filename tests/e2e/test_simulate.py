"""`make simulate` end to end on this machine, small: a drifted batch arrives as live traffic through the real API
and as a load; the prediction log holds every answer, performance on arrival is recorded, both drift checks
fire, retraining is triggered with the reason, and `simulate down` stops what it started.

Opt-in (`make simulate-test`, or READMIT_SIMULATE_TEST=1): it runs five DAGs and two trainings, about 7
minutes on 2 cores, which `make test` cannot afford; the parts it strings together are tested in `make test`
(the prediction log under load, both drift checks and the retraining they trigger through `airflow dags
test monitor_drift`, performance on arrival)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ..support import free_port

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("READMIT_SIMULATE_TEST") != "1",
                                 reason="opt-in: make simulate-test (or READMIT_SIMULATE_TEST=1)"),
              pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parents[2]


def _simulate(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "embedded" / "simulate.py"), *args], env=env,
                          capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-4000:]
    return done.stdout


def test_simulate_sees_drift_and_retrains(tmp_path):
    ports = {name: str(free_port()) for name in ("MLFLOW_PORT", "API_PORT", "UI_PORT")}
    state = tmp_path / "state"
    env = {**os.environ, **ports, "READMIT_STATE_DIR": str(state),
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
           "API_URL": f"http://127.0.0.1:{ports['API_PORT']}",
           "CANDIDATES": "logistic_regression", "PROMOTION_BOOTSTRAP_SAMPLES": "200",
           "MODEL_CARD_BOOTSTRAP_SAMPLES": "100"}
    try:
        # 5,000 rows, the later half drifted: train batches of 1,200, 1,200 and ~1,100; the third (all drifted)
        # arrives
        out = _simulate(["--rows", "5000", "--batch-size", "1200", "--initial-batches", "2", "--drift-from", "0.5"],
                        env)
    finally:
        down = _simulate(["down"], env)
    assert "api: stopped" in down and "mlflow: stopped" in down
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{env['API_URL']}/health", timeout=2)

    # the replayed batch: every answer logged
    (line,) = [x for x in out.splitlines() if "scored by the API" in x]
    assert line.startswith("train-0003: ")
    answered = int(line.split()[1])
    assert answered > 1000 and f", {answered} logged;" in line
    with sqlite3.connect(state / "predictions.db") as db:
        logged, scored, versions = db.execute(
            "SELECT count(*), sum(scored), group_concat(DISTINCT model_version) FROM prediction_log").fetchone()
    assert logged == answered and 0 < scored <= answered and versions == "1"
    with sqlite3.connect(state / "clean.db") as db:
        arrival = db.execute("SELECT roc_auc, model_version FROM arrival_performance WHERE batch_id = 'train-0003'"
                             ).fetchall()
        checks = dict(db.execute("SELECT population, retrain FROM drift_checks").fetchall())
        triggered = db.execute("SELECT count(*) FROM drift_checks WHERE triggered = 1").fetchone()[0]
    assert len(arrival) == 1 and arrival[0][1] == "1" and 0 < arrival[0][0] < 1  # performance on arrival
    assert checks == {"batches": 1, "predictions": 1} and triggered == 2  # both drifted; retraining asked once
    assert "monitoring asks for retraining: data drift in the batches that arrived:" in out
    assert "; data drift in the encounters scored:" in out
    assert "train_and_register: success" in out.split("monitoring asks for retraining")[1]
    table = out.split("3/3 what monitoring saw")[1]
    (row,) = [x.split() for x in table.splitlines() if x.strip().startswith("train-0003")]
    assert row[1] == "100%" and row[2].endswith("%") and row[3].endswith("%") and row[6] == "yes"
