from __future__ import annotations

import uuid
from contextlib import contextmanager

import pandas as pd
import pytest
from readmit_data.loading import read_source
from readmit_data.stores import engines
from sqlalchemy import Engine

SOURCE = "synthetic:8000:5"
BATCH_SIZE = 2_000


@pytest.fixture(scope="session")
def source_frame() -> pd.DataFrame:
    return read_source(SOURCE)


@pytest.fixture
def stores(store_urls):
    """(raw engine, clean engine) with schemas created, on SQLite or MariaDB."""
    with engines(*store_urls) as pair:
        yield pair


def add_refusal(engine: Engine, table: str, encounter_id: str | int,
                message: str = "refused by the test trigger") -> str:
    """A trigger that makes the database itself refuse inserting ``encounter_id`` into ``table`` (a real
    error in the middle of a batch, on SQLite and MariaDB alike); returns its name for ``drop_refusal``."""
    name = f"refuse_{uuid.uuid4().hex[:8]}"
    value = f"'{encounter_id}'" if isinstance(encounter_id, str) else str(int(encounter_id))
    if engine.dialect.name == "sqlite":
        ddl = (f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN NEW.encounter_id = {value} "
               f"BEGIN SELECT RAISE(ABORT, '{message}'); END")
    else:
        ddl = (f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW "
               f"IF NEW.encounter_id = {value} THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{message}'; END IF")
    with engine.begin() as conn:
        conn.exec_driver_sql(ddl)
    return name


def drop_refusal(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TRIGGER {name}")


@contextmanager
def refusing(engine: Engine, table: str, encounter_id: str | int):
    """``add_refusal`` for the duration of the block."""
    name = add_refusal(engine, table, encounter_id)
    try:
        yield
    finally:
        drop_refusal(engine, name)
