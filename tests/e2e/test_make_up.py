"""`make up` end to end on this machine (synthetic data), twice, then `make down`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from readmit_contract import example_encounter

from ..support import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _run(command: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "embedded" / "run.py"), *command.split()], env=env,
                          capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_make_up_twice_then_down(tmp_path):
    ports = {name: str(free_port()) for name in ("MLFLOW_PORT", "API_PORT", "UI_PORT")}
    env = {
        **os.environ, **ports,
        "READMIT_STATE_DIR": str(tmp_path / "state"),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
        "API_URL": f"http://127.0.0.1:{ports['API_PORT']}",
        "CANDIDATES": "logistic_regression,hist_gradient_boosting",
    }
    api = env["API_URL"]
    try:
        first = _run("up --source synthetic:6000", env)
        for expected in ("1/5 MLflow", "2/5 raw data", "preprocess_incremental: success", "train_and_register: success",
                         "CleanData rows per split", "champion: diabetes-readmission v1", "Streamlit UI"):
            assert expected in first, expected
        answer = httpx.post(f"{api}/predict", json=example_encounter()).json()
        assert answer["model_version"] == "1" and 0 <= answer["probability"] <= 1
        assert httpx.get(f"http://127.0.0.1:{ports['UI_PORT']}/_stcore/health").status_code == 200

        second = _run("up --source synthetic:6000", env)  # reuses what is there
        assert "mlflow: already running" in second and "api: already running" in second
        assert "already loaded, 0 rows added" in second
        assert "train_and_register not needed" in second
        assert "champion: diabetes-readmission v1" in second
    finally:
        down = _run("down", env)
    assert "api: stopped" in down and "mlflow: stopped" in down
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)
