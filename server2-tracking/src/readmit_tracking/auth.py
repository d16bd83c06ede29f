"""MLflow basic authentication on node 2, prepared in-process before `mlflow server --app-name
basic-auth` starts: the auth app's user store (schema and identities) and its config file.

The user store is MLflow's own (mlflow.server.auth.sqlalchemy_store.SqlAlchemyStore and its alembic
migrations, version table ``alembic_version_auth``); by default its tables live in the backend
store's database beside MLflow's (no name is shared). Provisioning talks to that store directly, no
HTTP: the admin, the training identity and the reader identity are created, or their password is
brought to the configured one (that is how rotation works), and the training identity gets MANAGE
on the registered model and on the experiment of the platform. Everything else authenticated gets
``default_permission = READ``. A second run changes nothing. Log lines name users and resources,
never a password.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from .schema import is_database_uri
from .settings import AuthSettings

_log = logging.getLogger("readmit_tracking.auth")

AUTH_VERSION_TABLE = "alembic_version_auth"
DEFAULT_PERMISSION = "READ"
TRAINING_PERMISSION = "MANAGE"
CONFIG_FILE_NAME = "basic_auth.ini"


class AuthSetupError(RuntimeError):
    """The auth store cannot be prepared (the message holds no secret)."""


@dataclass(frozen=True)
class Identity:
    role: str
    """admin, training or reader"""
    username: str
    password: SecretStr
    is_admin: bool


@dataclass(frozen=True)
class Action:
    """One provisioning step: what it concerned and what it did (``changed``: it wrote)."""

    subject: str
    outcome: str
    changed: bool

    def __str__(self) -> str:
        return f"{self.subject}: {self.outcome}"


@dataclass(frozen=True)
class AuthSchemaChange:
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def __str__(self) -> str:
        if self.before is None:
            return f"auth tables created at {self.after}"
        if not self.changed:
            return f"auth schema at head ({self.after}): nothing to upgrade"
        return f"auth schema upgraded from {self.before} to {self.after}"


def identities(auth: AuthSettings) -> list[Identity]:
    """The three users of the platform (settings already checked by ``AuthSettings.problems``)."""
    assert auth.admin_password and auth.training_username and auth.training_password
    assert auth.reader_username and auth.reader_password
    return [Identity("admin", auth.admin_username, auth.admin_password, True),
            Identity("training", auth.training_username, auth.training_password, False),
            Identity("reader", auth.reader_username, auth.reader_password, False)]


# -- the auth store's schema ----------------------------------------------------------------------


def _revision(engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": AUTH_VERSION_TABLE}).get_current_revision()


def _create_initial_tables_on_mysql(engine) -> None:
    """MLflow's first auth migration (8606fa83a998), with distinct foreign-key names.

    That migration names the foreign keys of both experiment_permissions and
    registered_model_permissions ``fk_user_id``; MySQL and MariaDB want constraint names unique in
    a database, so it fails there ("errno: 121 Duplicate key", mlflow/mlflow#9642) and leaves a
    half-made schema. Creating the missing tables here and stamping the revision lets MLflow's own
    migrations do the rest. Tables that exist already (a failed earlier attempt) are kept.
    """
    import sqlalchemy as sa

    metadata = sa.MetaData()
    sa.Table("users", metadata,
             sa.Column("id", sa.Integer(), nullable=False, primary_key=True),
             sa.Column("username", sa.String(length=255), nullable=True),
             sa.Column("password_hash", sa.String(length=255), nullable=True),
             sa.Column("is_admin", sa.Boolean(), nullable=True),
             sa.UniqueConstraint("username"))
    sa.Table("experiment_permissions", metadata,
             sa.Column("id", sa.Integer(), nullable=False, primary_key=True),
             sa.Column("experiment_id", sa.String(length=255), nullable=False),
             sa.Column("user_id", sa.Integer(), nullable=False),
             sa.Column("permission", sa.String(length=255), nullable=True),
             sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_user_id"),
             sa.UniqueConstraint("experiment_id", "user_id", name="unique_experiment_user"))
    sa.Table("registered_model_permissions", metadata,
             sa.Column("id", sa.Integer(), nullable=False, primary_key=True),
             sa.Column("name", sa.String(length=255), nullable=False),
             sa.Column("user_id", sa.Integer(), nullable=False),
             sa.Column("permission", sa.String(length=255), nullable=True),
             sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_registered_model_perm_user_id"),
             sa.UniqueConstraint("name", "user_id", name="unique_name_user"))
    metadata.create_all(engine, checkfirst=True)


def upgrade_auth_schema(uri: str) -> AuthSchemaChange:
    """Bring the auth store at ``uri`` to the installed MLflow's head revision (idempotent)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from mlflow.server.auth.db import utils as auth_db
    from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry

    script = ScriptDirectory.from_config(auth_db._get_alembic_config(""))
    engine = create_sqlalchemy_engine_with_retry(uri)
    try:
        before = _revision(engine)
        if before is not None and before != script.get_current_head():
            try:
                script.get_revision(before)
            except CommandError as exc:
                raise AuthSetupError(f"auth schema revision {before} is not one of this MLflow's migrations "
                                     "(a newer MLflow wrote it?): refusing to start") from exc
        if before is None and engine.dialect.name == "mysql":
            _create_initial_tables_on_mysql(engine)
            auth_db._stamp_legacy_database(engine, auth_db.INITIAL_REVISION)
        auth_db.migrate_if_needed(engine, "head")
        return AuthSchemaChange(before, _revision(engine) or "")
    finally:
        engine.dispose()


# -- identities and permissions -------------------------------------------------------------------


def _ensure_user(store, identity: Identity) -> Action:
    subject = f"user '{identity.username}' ({identity.role})"
    password = identity.password.get_secret_value()
    if not store.has_user(identity.username, use_primary=True):
        store.create_user(identity.username, password, is_admin=identity.is_admin)
        return Action(subject, "created" + (" as admin" if identity.is_admin else ""), True)
    done = []
    if not store.authenticate_user(identity.username, password, use_primary=True):
        store.update_user(identity.username, password=password)
        done.append("password updated")
    if store.get_user(identity.username).is_admin != identity.is_admin:
        store.update_user(identity.username, is_admin=identity.is_admin)
        done.append("made admin" if identity.is_admin else "admin rights removed")
    return Action(subject, ", ".join(done) or "unchanged", bool(done))


def _current_permission(store, resource_type: str, resource_id: str, username: str) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        if resource_type == "experiment":
            return store.get_experiment_permission(resource_id, username).permission
        return store.get_registered_model_permission(resource_id, username).permission
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        return None


def _ensure_grant(store, username: str, resource_type: str, resource_id: str, label: str) -> Action:
    subject = f"{TRAINING_PERMISSION} on {label} for '{username}'"
    current = _current_permission(store, resource_type, resource_id, username)
    if current == TRAINING_PERMISSION:
        return Action(subject, "unchanged", False)
    store.grant_user_permission(username, resource_type, resource_id, TRAINING_PERMISSION)
    return Action(subject, "granted" if current is None else f"granted (was {current})", True)


def find_experiment(backend_store_uri: str, name: str) -> str | None:
    """The id of the experiment called ``name`` in the tracking store (None: none, or no database)."""
    if not is_database_uri(backend_store_uri):
        return None
    from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry
    from mlflow.store.tracking.dbmodels.models import SqlExperiment
    from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME
    from sqlalchemy import select

    engine = create_sqlalchemy_engine_with_retry(backend_store_uri)
    try:
        with engine.connect() as conn:
            found = conn.execute(select(SqlExperiment.experiment_id).where(
                SqlExperiment.name == name, SqlExperiment.workspace == DEFAULT_WORKSPACE_NAME)).first()
    finally:
        engine.dispose()
    return None if found is None else str(found[0])


def provision(auth: AuthSettings, store_uri: str, backend_store_uri: str) -> list[Action]:
    """Users and grants of the platform in the auth store at ``store_uri`` (schema at head)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(store_uri)
    try:
        actions = [_ensure_user(store, identity) for identity in identities(auth)]
        training = auth.training_username
        assert training is not None
        # By name: it holds before the model exists, so whoever creates it, training manages it.
        actions.append(_ensure_grant(store, training, "registered_model", auth.model_name,
                                     f"registered model '{auth.model_name}'"))
        experiment_id = find_experiment(backend_store_uri, auth.experiment_name)
        if experiment_id is None:
            actions.append(Action(f"experiment '{auth.experiment_name}'",
                                  "not there yet: MLflow grants MANAGE to the user who creates it", False))
        else:
            actions.append(_ensure_grant(store, training, "experiment", experiment_id,
                                         f"experiment '{auth.experiment_name}' ({experiment_id})"))
        return actions
    finally:
        store.engine.dispose()


# -- the auth app's config file -------------------------------------------------------------------


def config_text(auth: AuthSettings, store_uri: str) -> str:
    """The [mlflow] section MLflow's basic-auth app reads (mlflow.server.auth.config).

    No user password: the admin exists before the server starts (``provision``), and MLflow reads
    MLFLOW_AUTH_ADMIN_USERNAME / _PASSWORD from the environment anyway. database_uri has no
    environment variable of its own in MLflow, so it is here, with the database's password when
    the URI has one (the same the server's environment holds): the file is private to its user.
    """
    values = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": store_uri,
        "admin_username": auth.admin_username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        "auth_cache_ttl_seconds": str(auth.cache_ttl_seconds),
    }
    lines = ["[mlflow]"]
    for key, value in values.items():
        if "\n" in value or "\r" in value:
            raise AuthSetupError(f"{key} must be one line")
        lines.append(f"{key} = {value.replace('%', '%%')}")  # configparser's interpolation
    return "\n".join(lines) + "\n"


def write_config(auth: AuthSettings, store_uri: str, directory: Path | None = None) -> Path:
    """The config file, mode 0600 in a new private (0700) directory; it outlives this process,
    because every server worker reads it when it starts."""
    folder = Path(tempfile.mkdtemp(prefix="readmit-mlflow-auth-", dir=directory))
    path = folder / CONFIG_FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(config_text(auth, store_uri))
    return path


def prepare(auth: AuthSettings, backend_store_uri: str) -> Path:
    """Schema, identities and config file of the auth app; returns the config file's path."""
    from .schema import redacted

    store_uri = auth.store_uri(backend_store_uri)
    if not is_database_uri(store_uri):
        raise AuthSetupError("the auth store must be a database: set MLFLOW_AUTH_DATABASE_URI "
                             "(the backend store is not one)")
    _log.info("auth store %s: %s", redacted(store_uri), upgrade_auth_schema(store_uri))
    for action in provision(auth, store_uri, backend_store_uri):
        _log.info("auth: %s", action)
    path = write_config(auth, store_uri)
    _log.info("auth: config %s (default permission %s)", path, DEFAULT_PERMISSION)
    return path
