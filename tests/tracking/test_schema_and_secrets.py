"""`readmit-tracking serve` upgrades an older MLflow schema before the server starts, and no process of
the server shows the database password on its command line.

Real MariaDB (a database user with a password of its own), MLflow's own migrations, real
`readmit-tracking serve` processes (one server for the module, started on the old schema).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from ..conftest import MYSQL_URL
from ..support import BIN, free_port, started, stop

OLD_REVISION = "0584bdc529eb"
"""An older MLflow schema (migration "add cascading deletion to datasets from experiments", 2024-11):
migrations up to it are what an older MLflow left in its database."""
LEGACY_MODEL = "registered-by-an-older-mlflow"


def head_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def migrate_to(uri: str, revision: str) -> None:
    """What an older MLflow did to an empty database: MLflow's initial tables, then its alembic
    migrations up to ``revision`` (mlflow.store.db.utils._initialize_tables stops at head instead)."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config, create_sqlalchemy_engine_with_retry
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = create_sqlalchemy_engine_with_retry(uri)
    try:
        InitialBase.metadata.create_all(engine)
        config = _get_alembic_config(uri)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class PasswordStore:
    """A MariaDB database and a user of its own, with a random password."""

    uri: str
    """mysql+pymysql://USER:PASSWORD@HOST:PORT/DATABASE (what the cluster's Secret makes)"""
    admin_uri: str
    """the same database as the tests' root user, to look inside"""
    password: str

    def query(self, sql: str, **params) -> list[tuple]:
        engine = sqlalchemy.create_engine(self.admin_uri)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sqlalchemy.text(sql), params)]
        finally:
            engine.dispose()

    def revision(self) -> str:
        return self.query("SELECT version_num FROM alembic_version")[0][0]

    def schema(self) -> dict[str, str]:
        """Every table's CREATE TABLE statement."""
        tables = [row[0] for row in self.query("SHOW TABLES")]
        return {table: self.query(f"SHOW CREATE TABLE `{table}`")[0][1] for table in tables}


@pytest.fixture(scope="module")
def old_store(mysql_databases) -> Iterator[PasswordStore]:
    """A database an older MLflow left (schema at OLD_REVISION, one registered model), owned by a
    user with a password."""
    admin_uri = mysql_databases.create("mlflow_old")
    database = make_url(admin_uri).database
    user, password = f"rt_{uuid.uuid4().hex[:10]}", secrets.token_hex(16)
    server = sqlalchemy.create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        conn.execute(sqlalchemy.text(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'%'"))
    uri = make_url(admin_uri).set(username=user, password=password).render_as_string(hide_password=False)
    store = PasswordStore(uri, admin_uri, password)
    try:
        migrate_to(uri, OLD_REVISION)
        now = int(time.time() * 1000)
        engine = sqlalchemy.create_engine(admin_uri)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("INSERT INTO registered_models (name, creation_time, last_updated_time) "
                                         "VALUES (:name, :now, :now)"), {"name": LEGACY_MODEL, "now": now})
        engine.dispose()
        assert store.revision() == OLD_REVISION != head_revision()
        yield store
    finally:
        with server.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        server.dispose()


@dataclass(frozen=True)
class Server:
    uri: str
    process: subprocess.Popen
    log: Path


def serve(store: PasswordStore, folder: Path, workers: int):
    """`readmit-tracking serve` on ``store``, as in the cluster (URI with the password in the environment)."""
    port = free_port()
    env = {"MLFLOW_BACKEND_STORE_URI": store.uri, "MLFLOW_ARTIFACTS_DESTINATION": str(folder / "artifacts"),
           "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": str(workers)}
    uri = f"http://127.0.0.1:{port}"
    log = folder / f"serve-{port}.log"
    return uri, log, started([str(BIN / "readmit-tracking"), "serve"], env, log, ready_url=f"{uri}/health",
                             timeout=180)


@pytest.fixture(scope="module")
def upgraded(old_store, tmp_path_factory) -> Iterator[Server]:
    """The first start on the old schema: two workers, as in the cluster."""
    uri, log, context = serve(old_store, tmp_path_factory.mktemp("mlflow-upgrade"), workers=2)
    with context as process:
        yield Server(uri, process, log)


@pytest.mark.slow
def test_serve_upgrades_an_old_schema_before_the_server_starts(upgraded, old_store):
    head = head_revision()
    log = upgraded.log.read_text(errors="replace")
    assert f"upgraded from {OLD_REVISION} to {head}" in log
    # The server found the schema at head: it did not have to create or migrate anything itself.
    assert "Creating initial MLflow database tables" not in log
    assert old_store.password not in log
    assert old_store.revision() == head

    assert httpx.get(f"{upgraded.uri}/health").text == "OK"
    legacy = httpx.get(f"{upgraded.uri}/api/2.0/mlflow/registered-models/get", params={"name": LEGACY_MODEL})
    assert legacy.status_code == 200, legacy.text
    assert legacy.json()["registered_model"]["name"] == LEGACY_MODEL
    new = httpx.post(f"{upgraded.uri}/api/2.0/mlflow/registered-models/create",
                     json={"name": f"new-{uuid.uuid4().hex[:8]}"})
    assert new.status_code == 200, new.text


def process_table() -> dict[int, tuple[int, int, list[str]]]:
    """pid -> (parent pid, session id, argv) of every process this user can see."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), argv)
    return table


def process_tree(root: int) -> dict[int, list[str]]:
    """argv of ``root``, its descendants and whatever else runs in its session (it leads one)."""
    table = process_table()
    tree = {root} | {pid for pid, (_, session, _) in table.items() if session == root}
    grown = True
    while grown:
        children = {pid for pid, (parent, _, _) in table.items() if parent in tree}
        grown = not children <= tree
        tree |= children
    return {pid: table[pid][2] for pid in tree if pid in table}


def server_processes(root: int, timeout: float = 90.0) -> dict[int, list[str]]:
    """The server's whole process tree, once every kind of process MLflow starts is running. MLflow's job runner
    and its huey consumers are not among them: `serve` turns job execution off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION)
    unless it is set."""
    kinds = {"mlflow server": ("mlflow", "server"), "uvicorn": ("uvicorn",)}
    deadline = time.monotonic() + timeout
    while True:
        tree = process_tree(root)
        found = {kind for kind, words in kinds.items()
                 if any(all(word in argv for word in words) for argv in tree.values())}
        workers = [argv for argv in tree.values() if any("multiprocessing.spawn" in part for part in argv)]
        if found == set(kinds) and len(workers) >= 2:
            jobs = [argv for argv in tree.values() if any("_job_runner" in part or "huey" in part for part in argv)]
            assert jobs == [], jobs
            return tree
        if time.monotonic() > deadline:
            raise AssertionError(f"missing {set(kinds) - found}, {len(workers)} workers in {len(tree)} processes")
        time.sleep(1)


@pytest.mark.slow
def test_no_process_of_the_server_has_the_password_on_its_command_line(upgraded, old_store):
    tree = server_processes(upgraded.process.pid)
    assert upgraded.process.pid in tree
    leaks = [" ".join(argv).replace(old_store.password, "<PASSWORD>") for argv in tree.values()
             if any(old_store.password in part for part in argv)]
    assert leaks == []

    # ... and yet the server works on the MariaDB store with that password.
    name = f"proof-{uuid.uuid4().hex[:8]}"
    created = httpx.post(f"{upgraded.uri}/api/2.0/mlflow/registered-models/create", json={"name": name})
    assert created.status_code == 200, created.text
    assert old_store.query("SELECT name FROM registered_models WHERE name = :name", name=name) == [(name,)]


@pytest.mark.slow
def test_a_second_start_on_the_same_database_is_a_no_op(upgraded, old_store, tmp_path):
    """The module's last test: it stops the first server (a restart, and no contention for the 2 cores)."""
    head = head_revision()
    stop(upgraded.process)
    before = old_store.schema()
    uri, log, context = serve(old_store, tmp_path, workers=1)
    with context:
        assert httpx.get(f"{uri}/health").text == "OK"
        legacy = httpx.get(f"{uri}/api/2.0/mlflow/registered-models/get", params={"name": LEGACY_MODEL})
        assert legacy.status_code == 200, legacy.text
    text = log.read_text(errors="replace")
    step = re.search(rf"schema at head \({head}\): nothing to upgrade \((\d+\.\d) s\)", text)
    assert step, text[-3000:]
    assert float(step.group(1)) < 2.0
    assert old_store.password not in text
    assert "Updating database tables" not in text and "Running upgrade" not in text
    assert old_store.revision() == head
    assert old_store.schema() == before


# -- in-process, on SQLite ------------------------------------------------------------------------


def test_an_empty_database_is_initialised_and_a_second_upgrade_changes_nothing(tmp_path):
    from readmit_tracking.schema import SchemaChange, upgrade_schema

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    head = head_revision()
    assert upgrade_schema(uri) == SchemaChange(None, head, empty=True)
    started_at = time.perf_counter()
    again = upgrade_schema(uri)
    assert again == SchemaChange(head, head) and not again.changed
    assert time.perf_counter() - started_at < 2.0
    assert str(again) == f"schema at head ({head}): nothing to upgrade"


def test_a_schema_from_a_newer_mlflow_is_refused_before_the_server_starts(tmp_path):
    db = tmp_path / "newer.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY)"))
        conn.execute(sqlalchemy.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sqlalchemy.text("INSERT INTO alembic_version VALUES ('ffffffffffff')"))
    engine.dispose()
    env = {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{db}", "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
           "MLFLOW_PORT": str(free_port())}
    done = subprocess.run([str(BIN / "readmit-tracking"), "serve"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "schema revision ffffffffffff is not one of MLflow" in done.stderr
    assert "starting:" not in done.stderr


def test_log_lines_hide_the_password():
    from readmit_tracking.schema import is_database_uri, redacted

    assert redacted("mysql+pymysql://mlflow:s3cr3t@mysql-tracking:3306/mlflow") == \
        "mysql+pymysql://mlflow:***@mysql-tracking:3306/mlflow"
    assert is_database_uri("mysql+pymysql://h/db") and is_database_uri("sqlite:///var/mlflow.db")
    assert not is_database_uri("./mlruns") and not is_database_uri("file:///tmp/mlruns")
