import os
import subprocess

import httpx
import pytest
from pydantic import ValidationError

from readmit_tracking.cli import server_command, server_environment
from readmit_tracking.settings import TrackingSettings

from ..support import BIN, S3_KEYS, moto_s3
from ..conftest import s3_client


def test_bucket_creation_is_idempotent(tmp_path):
    with moto_s3(tmp_path) as endpoint:
        env = {**os.environ, **S3_KEYS, "MLFLOW_ARTIFACTS_DESTINATION": "s3://new-bucket/prefix",
               "MLFLOW_S3_ENDPOINT_URL": endpoint}
        first = subprocess.run([str(BIN / "readmit-tracking"), "create-bucket"], env=env, capture_output=True,
                               text=True, check=True)
        second = subprocess.run([str(BIN / "readmit-tracking"), "create-bucket"], env=env, capture_output=True,
                                text=True, check=True)
        assert "bucket new-bucket created" in first.stdout
        assert "already exists" in second.stdout
        assert [b["Name"] for b in s3_client(endpoint).list_buckets()["Buckets"]] == ["new-bucket"]


def test_s3_artifacts_refuse_missing_or_placeholder_keys(monkeypatch):
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", "s3://bucket")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(ValidationError, match="AWS_ACCESS_KEY_ID"):
        TrackingSettings()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "changeme")
    with pytest.raises(ValidationError):
        TrackingSettings()


def test_server_serves_artifacts_through_itself(monkeypatch):
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "mysql+pymysql://mlflow:secret@mysql-tracking:3306/mlflow")
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", "s3://readmit-mlflow")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-real-secret")
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", "mlflow,mlflow.readmit.svc.cluster.local")
    settings = TrackingSettings()
    cmd = server_command(settings)
    assert "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://readmit-mlflow"
    assert cmd[cmd.index("--allowed-hosts") + 1] == "mlflow,mlflow.readmit.svc.cluster.local"
    # The backend store URI (with its password) goes by environment only, never on a command line.
    assert not any("secret" in part for part in cmd) and "--backend-store-uri" not in cmd
    assert server_environment(settings)["MLFLOW_BACKEND_STORE_URI"] == os.environ["MLFLOW_BACKEND_STORE_URI"]
    printed = subprocess.run([str(BIN / "readmit-tracking"), "command"], capture_output=True, text=True,
                             env={**os.environ}, check=True).stdout
    assert printed.split()[1:4] == ["-m", "mlflow", "server"] and "secret" not in printed


@pytest.mark.slow
def test_servers_answer(tracking):
    assert httpx.get(f"{tracking.uri}/health").text == "OK"
