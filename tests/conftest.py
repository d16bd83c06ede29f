"""Shared fixtures: synthetic data from the contract's generator, and the real file when present."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from readmit_contract import synthetic

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
        import uuid

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
