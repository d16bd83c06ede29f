"""The backend store's schema, brought to MLflow's head revision before the server starts.

The same steps as `mlflow db upgrade` (mlflow/db.py), in-process so the store URI and its password
never reach a command line: an empty database gets MLflow's initial tables and every migration
(`_initialize_tables`), an older one the pending alembic migrations (`_upgrade_db`); a database
already at head is only read (its revision), nothing else. The basic-auth app's tables (auth.py) may
live in the same database: a database holding only those counts as empty. Log lines show the URI with its password
hidden.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

DATABASE_SCHEMES = frozenset({"mysql", "postgresql", "sqlite", "mssql"})
"""The SQLAlchemy dialects MLflow's SQL stores accept (mlflow.store.db.db_types.DATABASE_ENGINES)."""

AUTH_TABLES = frozenset({
    "users", "roles", "role_permissions", "user_role_assignments",
    # retained by MLflow's auth migrations after the move to roles (mlflow.server.auth.sqlalchemy_store)
    "experiment_permissions", "registered_model_permissions", "scorer_permissions", "workspace_permissions",
    "gateway_secret_permissions", "gateway_endpoint_permissions", "gateway_model_definition_permissions",
})
"""Tables of MLflow's basic-auth user store, which may share the backend store's database (auth.py):
they do not make a database non-empty for the tracking schema."""


class SchemaError(RuntimeError):
    """The database's schema cannot be brought to this MLflow's head revision."""


@dataclass(frozen=True)
class SchemaChange:
    """What the upgrade did: the revision found (None: none recorded), the one left, and whether the
    database was empty (no tables but alembic's)."""

    before: str | None
    after: str
    empty: bool = False

    @property
    def changed(self) -> bool:
        return self.empty or self.before != self.after

    def __str__(self) -> str:
        if self.empty:
            return f"empty database initialised at {self.after}"
        if not self.changed:
            return f"schema at head ({self.after}): nothing to upgrade"
        return f"upgraded from {self.before or 'an unversioned schema'} to {self.after}"


def is_database_uri(uri: str) -> bool:
    """True for a SQLAlchemy URI MLflow stores in a database (not a file store path)."""
    scheme = urllib.parse.urlsplit(uri).scheme
    return scheme.split("+", 1)[0].lower() in DATABASE_SCHEMES


def redacted(uri: str) -> str:
    """The URI with its password replaced by ***, for log lines."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URI>"


def upgrade_schema(uri: str) -> SchemaChange:
    """Bring the database at ``uri`` to MLflow's head schema revision (idempotent)."""
    from mlflow.store.db import utils as db

    engine = db.create_sqlalchemy_engine_with_retry(uri)
    try:
        if _is_empty_database(engine):
            db._initialize_tables(engine)
            return SchemaChange(None, db._get_schema_version(engine), empty=True)
        before = db._get_schema_version(engine)
        if before != db._get_latest_schema_revision():
            if before is not None:
                _check_known(before)
            db._upgrade_db(engine)
        return SchemaChange(before, db._get_schema_version(engine))
    finally:
        engine.dispose()


def _is_empty_database(engine) -> bool:
    """No tables but alembic's and the auth app's (mlflow.store.db.utils._is_empty_database ignores
    only alembic's)."""
    import sqlalchemy

    tables = sqlalchemy.inspect(engine).get_table_names()
    return all(table.startswith("alembic_") or table in AUTH_TABLES for table in tables)


def _check_known(revision: str) -> None:
    """Refuse a revision this MLflow's migrations do not know (written by a newer MLflow)."""
    import mlflow
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from mlflow.store.db import utils as db

    script = ScriptDirectory.from_config(db._get_alembic_config(""))
    try:
        script.get_revision(revision)
    except CommandError as exc:
        raise SchemaError(f"schema revision {revision} is not one of MLflow {mlflow.__version__}'s "
                          "migrations (a newer MLflow wrote it?): refusing to start") from exc
