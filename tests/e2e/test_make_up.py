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
        # credentials drawn into the state folder (private), said in the summary
        credentials_file = tmp_path / "state" / "credentials.env"
        assert f"Credentials (drawn on the first run, mode 0600): {credentials_file}" in first
        assert credentials_file.stat().st_mode & 0o777 == 0o600
        dict_file_text = credentials_file.read_text()
        creds = dict(line.split("=", 1) for line in credentials_file.read_text().splitlines()
                     if line and not line.startswith("#"))
        assert not any(value in first for key, value in creds.items() if "PASSWORD" in key or "KEY" in key)
        # the API asks for a key; MLflow for a user: the reader reads, only training may move the alias
        assert httpx.post(f"{api}/predict", json=example_encounter()).status_code == 401
        answer = httpx.post(f"{api}/predict", json=example_encounter(),
                            headers={"X-API-Key": creds["API_KEY_HOSPITAL"]}).json()
        assert answer["model_version"] == "1" and 0 <= answer["probability"] <= 1
        mlflow = env["MLFLOW_TRACKING_URI"]
        alias = {"name": "diabetes-readmission", "alias": "champion", "version": "1"}
        assert httpx.get(f"{mlflow}/api/2.0/mlflow/registered-models/search").status_code == 401
        reader = (creds["MLFLOW_AUTH_READER_USERNAME"], creds["MLFLOW_AUTH_READER_PASSWORD"])
        assert httpx.get(f"{mlflow}/api/2.0/mlflow/registered-models/search", auth=reader).status_code == 200
        assert httpx.post(f"{mlflow}/api/2.0/mlflow/registered-models/alias", json=alias,
                          auth=reader).status_code == 403
        assert httpx.get(f"http://127.0.0.1:{ports['UI_PORT']}/_stcore/health").status_code == 200

        second = _run("up --source synthetic:6000", env)  # reuses what is there
        assert "mlflow: already running" in second and "api: already running" in second
        assert "already loaded, 0 rows added" in second
        assert "train_and_register not needed" in second
        assert "champion: diabetes-readmission v1" in second
        assert credentials_file.read_text() == dict_file_text  # kept, not drawn again
    finally:
        down = _run("down", env)
    assert "api: stopped" in down and "mlflow: stopped" in down
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)
