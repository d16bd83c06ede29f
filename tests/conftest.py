"""Shared fixtures: synthetic data from the contract's generator, the real file when present, MariaDB
databases, MLflow servers."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from readmit_contract import synthetic

from .support import S3_KEYS, mlflow_server, moto_s3

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_path() -> Path:
    """The real diabetic_data.csv: $READMIT_REAL_DATA, else ../shared/data beside the checkout."""
    configured = os.environ.get("READMIT_REAL_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "diabetic_data.csv"


@pytest.fixture(scope="session")
def real_data_file() -> Path:
    path = real_data_path()
    if not path.exists():
        pytest.skip(f"real data set not present at {path}")
    return path


@pytest.fixture(scope="session")
def synthetic_frame() -> pd.DataFrame:
    """3,000 synthetic encounters as text (never modify: copy first)."""
    return synthetic.generate(3000, seed=7)


# -- Order: the longest modules first ----------------------------------------------------------------
# `make test` runs on two pytest-xdist workers, one module per worker at a time (--dist loadfile, so a
# module's servers start once). Started last, a long module would leave one worker idle while it runs;
# started first, the short ones fill the other worker around it. Sequential runs are not affected.

LONG_MODULES = (
    "tests/e2e/test_three_hosts.py",
    "tests/e2e/test_make_up.py",
    "tests/tracking/test_train_and_register.py",
    "tests/data/test_dags.py",
    "tests/serving/test_loadtest.py",
    "tests/serving/test_serving_faults.py",
    "tests/tracking/test_auth.py",
    "tests/serving/test_ui_browser.py",
    "tests/e2e/test_loadtest_embedded.py",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parent.parent

    def rank(item: pytest.Item) -> int:
        module = item.path.resolve().relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        return LONG_MODULES.index(module) if module in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the order within and between the other modules stays


# -- MariaDB: tests create and drop their own databases -------------------------------------------

MYSQL_URL = os.environ.get("TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
"""Server URL (no database) of the MariaDB the tests use; CI starts it (see .ci/run)."""


class MySQLDatabases:
    """Creates uniquely named databases on the test MariaDB and drops them at the end."""

    def __init__(self) -> None:
        import sqlalchemy

        self._server = sqlalchemy.create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
        self._created: list[str] = []

    def create(self, label: str) -> str:
        import sqlalchemy

        name = f"readmit_test_{label}_{uuid.uuid4().hex[:10]}"
        with self._server.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        self._created.append(name)
        return f"{MYSQL_URL}/{name}"

    def drop_all(self) -> None:
        import sqlalchemy

        with self._server.connect() as conn:
            for name in self._created:
                conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS `{name}`"))
        self._server.dispose()


@pytest.fixture(scope="session")
def mysql_databases():
    databases = MySQLDatabases()
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(params=["sqlite", "mariadb"])
def store_urls(request, tmp_path) -> tuple[str, str]:
    """(RAW_DB_URL, CLEAN_DB_URL) on SQLite files or on fresh MariaDB databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'raw.db'}", f"sqlite:///{tmp_path / 'clean.db'}"
    databases = request.getfixturevalue("mysql_databases")
    return databases.create("raw"), databases.create("clean")


# -- MLflow tracking servers (node 2), shared by the tracking and serving tests ----------------------

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


# -- an MLflow server with basic authentication (node 2 as in the cluster) --------------------------


@dataclass(frozen=True)
class Identity:
    """A user of the authenticated tracking server."""

    username: str
    password: str

    @property
    def client_env(self) -> dict[str, str]:
        """What an MLflow client reads its credentials from."""
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


def auth_environment(admin: Identity, training: Identity, reader: Identity, secret_key: str) -> dict[str, str]:
    """The server-side authentication variables (interface names) for these identities."""
    return {
        "MLFLOW_AUTH_ADMIN_USERNAME": admin.username, "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
        "MLFLOW_AUTH_TRAINING_USERNAME": training.username, "MLFLOW_AUTH_TRAINING_PASSWORD": training.password,
        "MLFLOW_AUTH_READER_USERNAME": reader.username, "MLFLOW_AUTH_READER_PASSWORD": reader.password,
        "MODEL_NAME": "diabetes-readmission", "MLFLOW_EXPERIMENT_NAME": "diabetes-readmission",
    }


def generated_identities() -> tuple[Identity, Identity, Identity, str]:
    """Fresh admin, training and reader identities and a CSRF key, with random passwords."""
    import secrets

    suffix = uuid.uuid4().hex[:6]
    return (Identity(f"admin-{suffix}", secrets.token_urlsafe(24)),
            Identity(f"training-{suffix}", secrets.token_urlsafe(24)),
            Identity(f"reader-{suffix}", secrets.token_urlsafe(24)),
            secrets.token_urlsafe(48))


AUTH_CACHE_TTL_SECONDS = 3
"""The test server's MLFLOW_AUTH_CACHE_TTL_SECONDS (60 by default)."""


@dataclass(frozen=True)
class AuthTracking:
    uri: str
    backend_store_uri: str
    artifacts_destination: str
    s3_endpoint: str
    root: Path
    """the folder of the server's log (mlflow-PORT.log)"""
    admin: Identity
    training: Identity
    reader: Identity
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        """The server's authentication variables."""
        return auth_environment(self.admin, self.training, self.reader, self.secret_key)

    @property
    def log(self) -> Path:
        return self.root / f"mlflow-{self.uri.rsplit(':', 1)[1]}.log"


@pytest.fixture(scope="session")
def auth_tracking(tmp_path_factory, mysql_databases):
    """MLflow server with basic authentication, as in the cluster: MariaDB backend store (the auth
    tables beside MLflow's), artifacts in an S3 bucket (moto), generated credentials."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    admin, training, reader, secret_key = generated_identities()
    with moto_s3(root) as endpoint:
        backend = mysql_databases.create("mlflow_auth")
        artifacts = f"s3://{BUCKET}/artifacts"
        env = auth_environment(admin, training, reader, secret_key)
        # TMPDIR: the auth app's config file lands in the test's folder, not in /tmp; checked passwords are reused
        # for AUTH_CACHE_TTL_SECONDS (the rotation test waits that long for another server to see a new password)
        with mlflow_server(root, backend, artifacts, s3_endpoint=endpoint,
                           auth=env | {"TMPDIR": str(root),
                                       "MLFLOW_AUTH_CACHE_TTL_SECONDS": str(AUTH_CACHE_TTL_SECONDS)}) as uri:
            yield AuthTracking(uri, backend, artifacts, endpoint, root, admin, training, reader, secret_key)
