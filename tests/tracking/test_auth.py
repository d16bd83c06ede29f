"""Node 2's MLflow server with basic authentication (`readmit-tracking serve` with
MLFLOW_AUTH_ADMIN_PASSWORD): anonymous requests refused, the reader reads, training writes, rotation
by restart, provisioning idempotent, no password on a command line or in a log.

Real servers (the session's `auth_tracking`: MariaDB + moto S3; a second start on its database for
the rotation), MLflow's real auth store on SQLite and MariaDB for the in-process provisioning tests.
"""

from __future__ import annotations

import configparser
import os
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from readmit_tracking.auth import AuthSchemaChange, config_text, provision, upgrade_auth_schema
from readmit_tracking.schema import AUTH_TABLES, upgrade_schema
from readmit_tracking.settings import AuthSettings

from ..conftest import AUTH_CACHE_TTL_SECONDS, Identity, auth_environment, generated_identities
from ..support import BIN, mlflow_server
from .test_schema_and_secrets import process_tree

AUTH_STORE_TABLES = ("users", "roles", "role_permissions", "user_role_assignments", "alembic_version_auth")


@contextmanager
def as_user(identity: Identity | None, uri: str) -> Iterator[None]:
    """MLflow's client and fluent API against ``uri`` with ``identity``'s credentials (None: anonymous)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with pytest.MonkeyPatch.context() as patch, _use_tracking_uri(uri):
        for name, value in (identity.client_env if identity else {}).items():
            patch.setenv(name, value)
        if identity is None:
            patch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
            patch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        yield


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """HTTP with room for a loaded machine (each request checks a password hash in the database)."""
    with httpx.Client(timeout=60.0) as client:
        yield client


def basic(identity: Identity) -> tuple[str, str]:
    return identity.username, identity.password


def auth_store(uri: str):
    """MLflow's own auth store on ``uri`` (schema at head already: init_db only reads the revision)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(uri)
    return store


def server_pid(uri: str) -> int:
    """The pid of the `mlflow server` process listening on ``uri``'s port (what `serve` exec'd into)."""
    port = uri.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "mlflow" in argv and "server" in argv and "--port" in argv and argv[argv.index("--port") + 1] == port:
            return int(entry.name)
    raise AssertionError(f"no mlflow server process on port {port}")


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


# -- anonymous requests ---------------------------------------------------------------------------


@pytest.mark.slow
def test_anonymous_requests_are_refused_but_health(auth_tracking, http):
    uri = auth_tracking.uri
    health = http.get(f"{uri}/health")
    assert health.status_code == 200 and health.text == "OK"

    api = f"{uri}/api/2.0/mlflow"
    name = f"anonymous-{uuid.uuid4().hex[:8]}"
    refused = [
        http.get(f"{api}/experiments/search", params={"max_results": 10}),
        http.get(f"{api}/registered-models/search"),
        http.post(f"{api}/registered-models/create", json={"name": name}),
        http.post(f"{api}/registered-models/alias", json={"name": name, "alias": "champion", "version": "1"}),
        http.get(f"{api}/model-versions/get-download-uri", params={"name": name, "version": "1"}),
        http.get(f"{uri}/api/2.0/mlflow-artifacts/artifacts", params={"path": "1"}),
        http.get(f"{uri}/ajax-api/2.0/mlflow/registered-models/search"),
        http.get(f"{uri}/version"),
        http.get(f"{uri}/"),
        # a wrong password is no better than none
        http.get(f"{api}/registered-models/search", auth=(auth_tracking.reader.username, "not-the-password")),
    ]
    assert [r.status_code for r in refused] == [401] * len(refused)
    assert all(r.headers["WWW-Authenticate"] == 'Basic realm="mlflow"' for r in refused)

    # ... and nothing happened: the admin finds no such model
    found = http.get(f"{api}/registered-models/get", params={"name": name}, auth=basic(auth_tracking.admin))
    assert found.status_code == 404, found.text


@pytest.mark.slow
def test_what_mlflow_leaves_open(auth_tracking, http):
    """MLflow's basic-auth app exempts /health, /static*, /favicon.ico and server-info (README)."""
    info = http.get(f"{auth_tracking.uri}/api/3.0/mlflow/server-info")
    assert info.status_code == 200
    assert set(info.json()) >= {"store_type", "workspaces_enabled"}
    assert auth_tracking.backend_store_uri.rsplit("/", 1)[1] not in info.text  # no database name, no URI
    shell = http.get(f"{auth_tracking.uri}/static-files/index.html")
    assert shell.status_code == 200 and "<html" in shell.text.lower()  # the UI's static shell, no data
    assert http.get(f"{auth_tracking.uri}/static-files/does-not-exist.js").status_code == 404


# -- training writes, the reader reads --------------------------------------------------------------


@dataclass(frozen=True)
class Champion:
    experiment_id: str
    model_name: str
    version: str
    run_id: str


@pytest.fixture(scope="module")
def champion(auth_tracking) -> Champion:
    """What train_and_register does, as the training identity: a new experiment, a run with a model,
    a registered version, the champion alias."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    suffix = uuid.uuid4().hex[:8]
    experiment_name, model_name = f"readmit-auth-{suffix}", f"diabetes-readmission-auth-{suffix}"
    with as_user(auth_tracking.training, auth_tracking.uri):
        experiment_id = mlflow.create_experiment(experiment_name)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_metric("val_roc_auc", 0.71)
            info = mlflow.sklearn.log_model(LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1]),
                                            name="model")
        version = mlflow.register_model(info.model_uri, model_name).version
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(model_name, "champion", version)
        client.set_model_version_tag(model_name, version, "promotion", "first model")
    return Champion(experiment_id, model_name, str(version), run.info.run_id)


@pytest.mark.slow
def test_training_logs_registers_and_moves_the_champion(auth_tracking, champion):
    from mlflow import MlflowClient

    with as_user(auth_tracking.training, auth_tracking.uri):
        client = MlflowClient()
        version = client.get_model_version_by_alias(champion.model_name, "champion")
        assert version.version == champion.version and version.run_id == champion.run_id
        assert version.tags["promotion"] == "first model"
        assert client.get_run(champion.run_id).data.metrics["val_roc_auc"] == 0.71

    # MLflow made the creator the manager of what it created (training had no grant on these before)
    store = auth_store(auth_tracking.backend_store_uri)
    try:
        training = auth_tracking.training.username
        assert store.get_experiment_permission(champion.experiment_id, training).permission == "MANAGE"
        assert store.get_registered_model_permission(champion.model_name, training).permission == "MANAGE"
        # ... and the platform's model, provisioned by name before it exists
        assert store.get_registered_model_permission("diabetes-readmission", training).permission == "MANAGE"
        assert store.list_registered_model_permissions(auth_tracking.reader.username) == []
        assert not store.get_user(auth_tracking.reader.username).is_admin
        assert not store.get_user(training).is_admin
        assert store.get_user(auth_tracking.admin.username).is_admin
    finally:
        store.engine.dispose()


@pytest.mark.slow
def test_reader_reads_the_champion_but_cannot_change_the_registry(auth_tracking, http, champion, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = champion.model_name
    with as_user(auth_tracking.reader, auth_tracking.uri):
        client = MlflowClient()
        assert client.get_model_version_by_alias(name, "champion").version == champion.version
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@champion", dst_path=str(tmp_path))
        assert (Path(local) / "MLmodel").is_file()
        assert client.get_run(champion.run_id).info.run_id == champion.run_id
        with pytest.raises(MlflowException) as refused:
            client.set_registered_model_alias(name, "champion", champion.version)
        assert refused.value.get_http_status_code() == 403

    api, reader = f"{auth_tracking.uri}/api/2.0/mlflow", basic(auth_tracking.reader)
    source = f"models:/{name}/{champion.version}"
    attempts = {
        "set alias": http.post(f"{api}/registered-models/alias", auth=reader,
                                json={"name": name, "alias": "champion", "version": champion.version}),
        "delete alias": http.request("DELETE", f"{api}/registered-models/alias", auth=reader,
                                      json={"name": name, "alias": "champion"}),
        "create version": http.post(f"{api}/model-versions/create", auth=reader,
                                     json={"name": name, "source": source, "run_id": champion.run_id}),
        "tag version": http.post(f"{api}/model-versions/set-tag", auth=reader,
                                  json={"name": name, "version": champion.version, "key": "k", "value": "v"}),
        "delete version": http.request("DELETE", f"{api}/model-versions/delete", auth=reader,
                                        json={"name": name, "version": champion.version}),
        "delete model": http.request("DELETE", f"{api}/registered-models/delete", auth=reader, json={"name": name}),
        "log to the run": http.post(f"{api}/runs/log-metric", auth=reader,
                                     json={"run_id": champion.run_id, "key": "m", "value": 1.0, "timestamp": 0}),
        "delete the experiment": http.post(f"{api}/experiments/delete", auth=reader,
                                            json={"experiment_id": champion.experiment_id}),
    }
    assert {what: r.status_code for what, r in attempts.items()} == {what: 403 for what in attempts}

    # the registry is as training left it
    admin = basic(auth_tracking.admin)
    model = http.get(f"{api}/registered-models/get", params={"name": name}, auth=admin).json()["registered_model"]
    assert {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": champion.version}
    versions = http.get(f"{api}/model-versions/search", params={"filter": f"name='{name}'"}, auth=admin).json()
    assert [v["version"] for v in versions["model_versions"]] == [champion.version]
    assert http.get(f"{api}/users/get", params={"username": reader[0]}, auth=reader).json()["user"]["is_admin"] is False


# -- rotation, idempotency, secrets -----------------------------------------------------------------


@pytest.mark.slow
def test_a_restart_with_a_new_reader_password_rotates_it(auth_tracking, http, tmp_path):
    """A second `serve` on the same database with another reader password: the old one stops working,
    the new one works, nothing else changes. The old password is put back in-process at the end."""
    import secrets

    new_reader = Identity(auth_tracking.reader.username, secrets.token_urlsafe(24))
    env = auth_environment(auth_tracking.admin, auth_tracking.training, new_reader, auth_tracking.secret_key)
    try:
        with mlflow_server(tmp_path, auth_tracking.backend_store_uri, auth_tracking.artifacts_destination,
                           s3_endpoint=auth_tracking.s3_endpoint, auth=env | {"TMPDIR": str(tmp_path)}) as uri:
            search = f"{uri}/api/2.0/mlflow/registered-models/search"
            assert http.get(search, auth=basic(auth_tracking.reader)).status_code == 401
            assert http.get(search, auth=basic(new_reader)).status_code == 200
            assert http.get(search, auth=basic(auth_tracking.training)).status_code == 200
            # the first server reads the same store: the rotation holds there too, once the old password's check
            # has left its cache (at most MLFLOW_AUTH_CACHE_TTL_SECONDS later)
            first = f"{auth_tracking.uri}/api/2.0/mlflow/registered-models/search"
            deadline = time.monotonic() + AUTH_CACHE_TTL_SECONDS + 2
            while http.get(first, auth=basic(auth_tracking.reader)).status_code != 401 and time.monotonic() < deadline:
                time.sleep(0.25)
            assert http.get(first, auth=basic(auth_tracking.reader)).status_code == 401
            assert http.get(first, auth=basic(new_reader)).status_code == 200
        log = next(tmp_path.glob("mlflow-*.log")).read_text(errors="replace")
        reader, training, admin = (new_reader.username, auth_tracking.training.username,
                                   auth_tracking.admin.username)
        assert f"user '{reader}' (reader): password updated" in log
        assert f"user '{admin}' (admin): unchanged" in log
        assert f"user '{training}' (training): unchanged" in log
        assert f"MANAGE on registered model 'diabetes-readmission' for '{training}': unchanged" in log
        assert "auth schema at head" in log
        for secret in (new_reader.password, auth_tracking.reader.password, auth_tracking.admin.password,
                       auth_tracking.training.password, auth_tracking.secret_key):
            assert secret not in log
    finally:
        settings = AuthSettings(**auth_tracking.env)
        provision(settings, auth_tracking.backend_store_uri, auth_tracking.backend_store_uri)
    assert http.get(f"{auth_tracking.uri}/api/2.0/mlflow/registered-models/search",
                     auth=basic(auth_tracking.reader)).status_code == 200


@pytest.mark.slow
def test_no_password_in_the_log_the_command_line_or_the_environment(auth_tracking):
    secrets_ = [auth_tracking.admin.password, auth_tracking.training.password, auth_tracking.reader.password,
                auth_tracking.secret_key]
    log = auth_tracking.log.read_text(errors="replace")
    assert "--app-name basic-auth" in log and "auth: user" in log
    assert [s for s in secrets_ if s in log] == []

    printed = subprocess.run([str(BIN / "readmit-tracking"), "command"], capture_output=True, text=True, check=True,
                             env={**os.environ, "MLFLOW_BACKEND_STORE_URI": auth_tracking.backend_store_uri,
                                  **auth_tracking.env})
    assert printed.stdout.split()[1:4] == ["-m", "mlflow", "server"]
    assert printed.stdout.split()[-2:] == ["--app-name", "basic-auth"]
    assert [s for s in secrets_ if s in printed.stdout + printed.stderr] == []

    pid = server_pid(auth_tracking.uri)
    tree = process_tree(pid)
    assert len(tree) >= 2  # the server and its uvicorn worker at least
    leaks = [pid for pid, argv in tree.items() if any(s in part for s in secrets_ for part in argv)]
    assert leaks == []

    # the identities' passwords stay with `serve`: the server's environment has the CSRF key only
    env = environ(pid)
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == auth_tracking.secret_key
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_TRAINING_PASSWORD", "MLFLOW_AUTH_READER_PASSWORD"):
        assert name not in env
    assert [s for s in secrets_[:3] if s in "\n".join(env.values())] == []

    # the auth app's config file: private, no user password, the store next to MLflow's tables
    config = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert config.parent.parent == auth_tracking.root  # TMPDIR: a private folder of its own
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    text = config.read_text()
    assert [s for s in secrets_ if s in text] == []
    parsed = configparser.ConfigParser()
    parsed.read(config)
    assert parsed["mlflow"]["default_permission"] == "READ"
    assert parsed["mlflow"]["auth_cache_ttl_seconds"] == str(AUTH_CACHE_TTL_SECONDS)  # MLFLOW_AUTH_CACHE_TTL_SECONDS
    assert "auth_cache_ttl_seconds = 60\n" in config_text(AuthSettings.model_construct(), "sqlite:///x.db")  # default
    assert parsed["mlflow"]["database_uri"] == auth_tracking.backend_store_uri
    assert parsed["mlflow"]["admin_username"] == auth_tracking.admin.username


def test_serve_refuses_to_start_without_the_secret_key_or_with_a_weak_password(tmp_path):
    admin, training, reader, secret_key = generated_identities()
    env = {**os.environ, **auth_environment(admin, training, reader, secret_key),
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts")}
    del env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    missing = subprocess.run([str(BIN / "readmit-tracking"), "serve"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY is required when MLFLOW_AUTH_ADMIN_PASSWORD is set" in missing.stderr

    weak = subprocess.run([str(BIN / "readmit-tracking"), "serve"], capture_output=True, text=True, timeout=120,
                          env={**env, "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
                               "MLFLOW_AUTH_READER_PASSWORD": "short-pw"})
    assert weak.returncode == 2
    assert "MLFLOW_AUTH_READER_PASSWORD must be a real secret of at least 12 characters" in weak.stderr
    for done in (missing, weak):
        assert "starting:" not in done.stderr
        assert [s for s in (admin.password, training.password, reader.password, secret_key, "short-pw")
                if s in done.stdout + done.stderr] == []
    assert not (tmp_path / "mlflow.db").exists()  # refused before touching any store


# -- provisioning in-process, on SQLite and MariaDB -----------------------------------------------------


def auth_rows(uri: str) -> dict[str, list[tuple]]:
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as conn:
            return {table: sorted(tuple(row) for row in conn.execute(sqlalchemy.text(f"SELECT * FROM {table}")))
                    for table in AUTH_STORE_TABLES}
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "mariadb"])
def empty_store(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    return request.getfixturevalue("mysql_databases").create("mlflow_auth_unit")


def test_provisioning_twice_changes_nothing(empty_store, tmp_path):
    """The auth tables beside MLflow's in one database; the existing experiment gets its grant; a
    second run writes nothing."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    upgrade_schema(empty_store)
    tracking = TrackingStore(empty_store, str(tmp_path / "artifacts"))
    experiment_id = tracking.create_experiment("diabetes-readmission")
    tracking.engine.dispose()

    admin, training, reader, secret_key = generated_identities()
    settings = AuthSettings(**auth_environment(admin, training, reader, secret_key))
    assert settings.problems() == []
    created = upgrade_auth_schema(empty_store)
    assert created.before is None and created.changed
    first = provision(settings, empty_store, empty_store)
    assert [str(a) for a in first] == [
        f"user '{admin.username}' (admin): created as admin",
        f"user '{training.username}' (training): created",
        f"user '{reader.username}' (reader): created",
        f"MANAGE on registered model 'diabetes-readmission' for '{training.username}': granted",
        f"MANAGE on experiment 'diabetes-readmission' ({experiment_id}) for '{training.username}': granted",
    ]
    before = auth_rows(empty_store)

    again = upgrade_auth_schema(empty_store)
    assert again == AuthSchemaChange(created.after, created.after) and not again.changed
    second = provision(settings, empty_store, empty_store)
    assert [a.outcome for a in second] == ["unchanged"] * 5 and not any(a.changed for a in second)
    assert auth_rows(empty_store) == before  # not even a re-hashed password

    store = auth_store(empty_store)
    try:
        assert store.authenticate_user(reader.username, reader.password)
        assert not store.get_user(reader.username).is_admin
        assert store.get_experiment_permission(experiment_id, training.username).permission == "MANAGE"
    finally:
        store.engine.dispose()
    # MLflow's tracking schema is untouched by its neighbours
    assert upgrade_schema(empty_store).changed is False


def test_provisioning_restores_what_someone_changed_by_hand(tmp_path):
    """Env is the truth: a reader made admin, a changed admin password, a lowered grant are put back."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    upgrade_schema(uri)
    upgrade_auth_schema(uri)
    admin, training, reader, secret_key = generated_identities()
    settings = AuthSettings(**auth_environment(admin, training, reader, secret_key))
    provision(settings, uri, uri)
    store = auth_store(uri)
    try:
        store.update_user(reader.username, is_admin=True)
        store.update_user(admin.username, password="changed-through-the-ui")
        store.grant_user_permission(training.username, "registered_model", "diabetes-readmission", "READ")
    finally:
        store.engine.dispose()
    outcomes = {a.subject: a.outcome for a in provision(settings, uri, uri)}
    assert outcomes[f"user '{reader.username}' (reader)"] == "admin rights removed"
    assert outcomes[f"user '{admin.username}' (admin)"] == "password updated"
    assert outcomes[f"MANAGE on registered model 'diabetes-readmission' for '{training.username}'"] == \
        "granted (was READ)"
    store = auth_store(uri)
    try:
        assert not store.get_user(reader.username).is_admin
        assert store.authenticate_user(admin.username, admin.password)
    finally:
        store.engine.dispose()


def test_mariadb_recovers_from_mlflows_own_failed_auth_migration(mysql_databases):
    """MLflow's first auth migration names two foreign keys alike, which MariaDB refuses
    (mlflow/mlflow#9642), leaving half a schema; `serve` completes it and MLflow's later migrations run."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    uri = mysql_databases.create("mlflow_auth_broken")
    mlflows_own = SqlAlchemyStore()
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="registered_model_permissions"):
            mlflows_own.init_db(uri)
    finally:
        mlflows_own.engine.dispose()
    assert upgrade_schema(uri).empty  # the half-made auth tables do not count as MLflow's
    change = upgrade_auth_schema(uri)
    assert change.before is None and change.changed
    admin, training, reader, secret_key = generated_identities()
    actions = provision(AuthSettings(**auth_environment(admin, training, reader, secret_key)), uri, uri)
    assert [a.outcome for a in actions[:3]] == ["created as admin", "created", "created"]


def test_an_auth_schema_from_a_newer_mlflow_is_refused(tmp_path):
    from readmit_tracking.auth import AuthSetupError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    engine = sqlalchemy.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE alembic_version_auth (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sqlalchemy.text("INSERT INTO alembic_version_auth VALUES ('ffffffffffff')"))
    engine.dispose()
    with pytest.raises(AuthSetupError, match="auth schema revision ffffffffffff is not one of this MLflow's"):
        upgrade_auth_schema(uri)


def test_the_auth_tables_the_tracking_schema_ignores_are_mlflows():
    from mlflow.server.auth.db.models import Base
    from mlflow.server.auth.sqlalchemy_store import _RETAINED_LEGACY_PERMISSION_TABLES
    from mlflow.store.db.base_sql_model import Base as TrackingBase

    assert AUTH_TABLES == set(Base.metadata.tables) | set(_RETAINED_LEGACY_PERMISSION_TABLES)
    assert not AUTH_TABLES & set(TrackingBase.metadata.tables)


def test_the_config_file_survives_a_percent_in_the_database_password(tmp_path, monkeypatch):
    """configparser interpolates '%': the file escapes it, and MLflow reads the URI back unchanged."""
    from readmit_tracking.auth import write_config

    uri = "mysql+pymysql://mlflow:p%40ss%25word@mysql-tracking:3306/mlflow"
    admin, training, reader, secret_key = generated_identities()
    path = write_config(AuthSettings(**auth_environment(admin, training, reader, secret_key)), uri, tmp_path)
    assert path.parent.parent == tmp_path
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    from mlflow.server.auth.config import read_auth_config

    config = read_auth_config()
    assert config.database_uri == uri
    assert config.default_permission == "READ"
    assert config.admin_username == admin.username
    assert config.admin_password is None  # the file holds no user password
