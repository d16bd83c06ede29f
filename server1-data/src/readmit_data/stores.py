"""The RawData and CleanData stores: SQLAlchemy tables derived from the contract.

RawData (as it arrived, every value text):
  raw_batches      one row per loaded batch (train-0001, ..., validation, test)
  raw_encounters   the rows, with split, batch_id and loaded_at; encounter_id unique

CleanData (typed, cleaned by preprocess_incremental):
  clean_encounters the in-scope rows, NULL for missing, with the target; encounter_id unique
  rejected_rows    rows the contract refused, with the reason
  batch_lineage    one row per cleaned batch: rows in / out / rejected / excluded, seconds
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from readmit_contract.columns import COLUMNS, ID_COLUMNS
from readmit_contract.target import TARGET
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    create_engine,
    event,
    make_url,
)

TEXT_LENGTH = 64
"""Width of a text value (the longest in the source is 36 characters)."""

raw_metadata = MetaData()
clean_metadata = MetaData()

raw_batches = Table(
    "raw_batches",
    raw_metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("split", String(16), nullable=False),
    Column("batch_number", Integer, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("source", String(255), nullable=False),
    Column("source_fingerprint", String(64), nullable=False),
    Column("split_seed", Integer, nullable=False),
    Column("loaded_at", DateTime, nullable=False),
)

raw_encounters = Table(
    "raw_encounters",
    raw_metadata,
    Column("row_id", Integer, primary_key=True, autoincrement=True),
    Column("encounter_id", String(TEXT_LENGTH), nullable=False, unique=True),
    *(Column(c.name, String(TEXT_LENGTH), nullable=True) for c in COLUMNS if c.name != "encounter_id"),
    Column("split", String(16), nullable=False, index=True),
    Column("batch_id", String(32), ForeignKey("raw_batches.batch_id"), nullable=False, index=True),
    Column("loaded_at", DateTime, nullable=False),
)


def _typed_column(c) -> Column:
    if c.name == "encounter_id":
        return Column(c.name, BigInteger, primary_key=True, autoincrement=False)
    if c.name in ID_COLUMNS:
        return Column(c.name, BigInteger, nullable=False, index=True)
    if c.is_integer:
        return Column(c.name, Integer, nullable=False)
    return Column(c.name, String(TEXT_LENGTH), nullable=c.nullable)


clean_encounters = Table(
    "clean_encounters",
    clean_metadata,
    *(_typed_column(c) for c in COLUMNS),
    Column(TARGET, SmallInteger, nullable=False),
    Column("split", String(16), nullable=False, index=True),
    Column("batch_id", String(32), nullable=False, index=True),
    Column("cleaned_at", DateTime, nullable=False),
)

rejected_rows = Table(
    "rejected_rows",
    clean_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_id", String(32), nullable=False, index=True),
    Column("encounter_id", String(TEXT_LENGTH), nullable=True),
    Column("reason", Text, nullable=False),
    Column("row_json", Text, nullable=False),
    Column("rejected_at", DateTime, nullable=False),
)

batch_lineage = Table(
    "batch_lineage",
    clean_metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("split", String(16), nullable=False),
    Column("rows_in", Integer, nullable=False),
    Column("rows_out", Integer, nullable=False),
    Column("rows_rejected", Integer, nullable=False),
    Column("rows_excluded", Integer, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("processed_at", DateTime, nullable=False),
    Column("run_id", String(255), nullable=True),
)


def utcnow() -> datetime:
    """Current UTC time, naive (stored as UTC in every backend: MySQL DATETIME has no zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


def db_timestamp(moment: datetime) -> str:
    """A naive UTC datetime as text every backend stores in a DATETIME column (SQLAlchemy's SQLite format)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def bulk_insert(conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                chunk: int = 5_000, on_chunk: Callable[[int], None] | None = None) -> None:
    """Insert row tuples with the driver's executemany (no per-row SQLAlchemy work), in chunks.

    Values must be plain Python values the driver takes (str, int, float, None).
    """
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join([placeholder] * len(columns))})"
    )
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        conn.exec_driver_sql(sql, list(part))
        if on_chunk is not None:
            on_chunk(start + len(part))


def frame_rows(frame: pd.DataFrame) -> list[tuple]:
    """A frame's rows as tuples of plain Python values, None for missing."""
    values = frame.astype(object).where(frame.notna(), None)
    return list(values.itertuples(index=False, name=None))


def make_engine(url: str) -> Engine:
    """An engine for a store URL; SQLite files get their folder, foreign keys and WAL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_recycle=3600)


def create_raw_schema(engine: Engine) -> None:
    raw_metadata.create_all(engine)


def create_clean_schema(engine: Engine) -> None:
    clean_metadata.create_all(engine)


@contextmanager
def engines(raw_url: str, clean_url: str) -> Iterator[tuple[Engine, Engine]]:
    """Both stores, schemas created, disposed on exit."""
    raw, clean = make_engine(raw_url), make_engine(clean_url)
    try:
        create_raw_schema(raw)
        create_clean_schema(clean)
        yield raw, clean
    finally:
        raw.dispose()
        clean.dispose()
