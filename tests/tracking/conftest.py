from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from ..support import S3_KEYS, mlflow_server, moto_s3

BUCKET = "readmit-mlflow"


@dataclass(frozen=True)
class Tracking:
    uri: str
    s3_endpoint: str | None = None
    bucket: str | None = None


@pytest.fixture(scope="session")
def sqlite_tracking(tmp_path_factory):
    """MLflow server: SQLite backend store, local artifacts (the embedded default)."""
    root = tmp_path_factory.mktemp("mlflow-sqlite")
    with mlflow_server(root, f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")) as uri:
        yield Tracking(uri)


@pytest.fixture(scope="session")
def s3_tracking(tmp_path_factory, mysql_databases):
    """MLflow server as in the cluster: MariaDB backend store, artifacts in an S3 bucket (moto)."""
    root = tmp_path_factory.mktemp("mlflow-s3")
    with moto_s3(root) as endpoint:
        backend = mysql_databases.create("mlflow")
        with mlflow_server(root, backend, f"s3://{BUCKET}/artifacts", s3_endpoint=endpoint) as uri:
            yield Tracking(uri, endpoint, BUCKET)


@pytest.fixture(params=["sqlite", "mariadb_s3"])
def tracking(request) -> Tracking:
    return request.getfixturevalue("sqlite_tracking" if request.param == "sqlite" else "s3_tracking")


@pytest.fixture
def model_name() -> str:
    """A registered-model name of this test's own (servers are shared across tests)."""
    return f"diabetes-readmission-{uuid.uuid4().hex[:8]}"


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
