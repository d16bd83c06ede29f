"""The RawData and CleanData stores: SQLAlchemy tables derived from the contract.

RawData (as it arrived, every value text):
  raw_batches      one row per loaded batch (validation, test, train-0001, ...); a train batch records
                   the range of train rows it holds (first_row, rows), so no later setting can
                   change what a batch is; "unreadable" holds the source's malformed lines
  raw_encounters   the rows as received, with their source line, split, batch_id and loaded_at
  raw_rejected     lines of the source that are not a row (ragged, bad quoting, not UTF-8, a field
                   longer than the raw columns), with line number and reason

CleanData (typed, cleaned by preprocess_incremental):
  clean_encounters the in-scope rows, NULL for missing, with the target; encounter_id unique
  rejected_rows    rows the contract refused and the source's unreadable lines, with the reason
                   and the source line
  batch_lineage    one row per cleaned batch: rows in / out / rejected / excluded, seconds
  patient_history  per clean encounter, what its patient's earlier encounters tell
                   (readmit_contract.history; refreshed for the patients of each cleaned batch)
  arrival_performance  per cleaned batch and champion version, what the champion achieved on it
                   before any retraining (readmit_data.arrival)
  drift_checks     one row per drift check (readmit_data.monitor): champion, population (new batches or
                   live predictions), rows compared, share of drifted features, whether it asked for
                   retraining and why
  feature_drift    per check and feature: Evidently's method, score, threshold, drifted

Widths come from the contract: raw values hold ``RAW_MAX_LENGTH`` characters (the raw load rejects a
longer field), clean text columns ``Column.max_length`` (validation rejects a longer value), so SQLite
and MySQL store and refuse the same rows. Stores made by the previous version are migrated in place
(``create_raw_schema`` / ``create_clean_schema``): see ``migrate_raw``.

Loads and preprocessing write their rows with ``bulk_insert``: on MySQL / MariaDB ``LOAD DATA LOCAL INFILE``
inside the caller's transaction (on connections of ``bulk_engine``), storing exactly what an INSERT stores;
multi-row INSERTs where the server or client refuses it, and on SQLite.
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from readmit_contract.columns import COLUMN_NAMES, COLUMNS, ID_COLUMNS, RAW_MAX_LENGTH, TEXT_MAX_LENGTH
from readmit_contract.history import CLEAN_ENCOUNTERS_TABLE, HISTORY_NAMES
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
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

UNREADABLE = "unreadable"
"""batch_id and split of the raw batch holding the source's malformed lines (raw_rejected)."""

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
    Column("first_row", Integer, nullable=True),
    # train batches: index of their first train row (train rows counted in source order from 0)
)

raw_encounters = Table(
    "raw_encounters",
    raw_metadata,
    Column("row_id", Integer, primary_key=True, autoincrement=True),
    # as received: not unique (validation rejects duplicates, on the normalised id, with a reason)
    Column("encounter_id", String(RAW_MAX_LENGTH), nullable=False, index=True),
    *(Column(c.name, String(RAW_MAX_LENGTH), nullable=True) for c in COLUMNS if c.name != "encounter_id"),
    Column("source_line", Integer, nullable=True),
    Column("split", String(16), nullable=False, index=True),
    Column("batch_id", String(32), ForeignKey("raw_batches.batch_id"), nullable=False, index=True),
    Column("loaded_at", DateTime, nullable=False),
)

raw_rejected = Table(
    "raw_rejected",
    raw_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_id", String(32), ForeignKey("raw_batches.batch_id"), nullable=False, index=True),
    Column("source_line", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("line_text", Text, nullable=False),
    Column("rejected_at", DateTime, nullable=False),
)


def _typed_column(c) -> Column:
    if c.name == "encounter_id":
        return Column(c.name, BigInteger, primary_key=True, autoincrement=False)
    if c.name in ID_COLUMNS:
        return Column(c.name, BigInteger, nullable=False, index=True)
    if c.is_integer:
        return Column(c.name, Integer, nullable=False)
    return Column(c.name, String(c.max_length), nullable=c.nullable)


clean_encounters = Table(
    CLEAN_ENCOUNTERS_TABLE,
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
    Column("encounter_id", String(TEXT_MAX_LENGTH), nullable=True),  # the first characters as received
    Column("reason", Text, nullable=False),
    Column("row_json", Text, nullable=False),
    Column("rejected_at", DateTime, nullable=False),
    Column("source_line", Integer, nullable=True),
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


patient_history = Table(
    "patient_history",
    clean_metadata,
    Column("encounter_id", BigInteger, primary_key=True, autoincrement=False),
    Column("patient_nbr", BigInteger, nullable=False, index=True),
    *(Column(name, Float, nullable=False) for name in HISTORY_NAMES),
)


arrival_performance = Table(
    "arrival_performance",
    clean_metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("model_name", String(191), primary_key=True),
    Column("model_version", String(32), primary_key=True),
    Column("split", String(16), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("positives", Integer, nullable=False),
    Column("new_patient_rows", Integer, nullable=False),
    Column("roc_auc", Float, nullable=True),
    Column("roc_auc_new_patients", Float, nullable=True),
    Column("pr_auc", Float, nullable=True),
    Column("brier", Float, nullable=False),
    Column("observed_rate", Float, nullable=False),
    Column("predicted_rate", Float, nullable=False),
    Column("champion_val_roc_auc", Float, nullable=True),
    Column("scored_at", DateTime, nullable=False, index=True),
    Column("mlflow_run_id", String(64), nullable=True),
)


drift_checks = Table(
    "drift_checks",
    clean_metadata,
    Column("check_id", Integer, primary_key=True, autoincrement=True),
    Column("checked_at", DateTime, nullable=False, index=True),
    Column("model_name", String(191), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("population", String(16), nullable=False, server_default="batches"),
    # "batches": the clean batches that arrived after the champion; "predictions": the live traffic of the
    # prediction log (readmit_contract.prediction_log)
    Column("current_source", String(255), nullable=False),
    Column("current_key", String(64), nullable=False, index=True),
    # sha256 of the full list of batches that arrived after the champion (what a retraining would add; the
    # same for both populations of one monitor_drift run; current_source is cut to 255 characters)
    Column("reference_rows", Integer, nullable=False),
    Column("current_rows", Integer, nullable=False),
    Column("features", Integer, nullable=False),
    Column("drifted", Integer, nullable=False),
    Column("share", Float, nullable=False),
    Column("retrain", SmallInteger, nullable=False),
    Column("reason", Text, nullable=True),
    Column("triggered", SmallInteger, nullable=False, default=0),
    Column("mlflow_run_id", String(64), nullable=True),
)

feature_drift = Table(
    "feature_drift",
    clean_metadata,
    Column("check_id", Integer, ForeignKey("drift_checks.check_id"), primary_key=True),
    Column("feature", String(64), primary_key=True),
    Column("method", String(64), nullable=False),
    Column("score", Float, nullable=True),
    Column("threshold", Float, nullable=False),
    Column("drifted", SmallInteger, nullable=False),
)


def utcnow() -> datetime:
    """Current UTC time, naive (stored as UTC in every backend: MySQL DATETIME has no zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


def db_timestamp(moment: datetime) -> str:
    """A naive UTC datetime as text every backend stores in a DATETIME column (SQLAlchemy's SQLite format)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


LOAD_REFUSED = frozenset({1148, 2068, 3948, 4166})
"""MySQL / MariaDB errors of a refused ``LOAD DATA LOCAL INFILE``: 1148 not allowed (client or server without
local_infile), 2068 rejected by the client library, 3948 local data disabled (MySQL 8), 4166 the local infile
capability disabled (MariaDB)."""
LOAD_MIN_ROWS = 200
"""Fewer rows are one multi-row INSERT: a file, a LOAD and its warnings check cost more than they save."""
_SAVEPOINT = "readmit_bulk_load"
_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\x00", "\\0"))
"""LOAD DATA's escapes (``ESCAPED BY '\\'``), the escape character first; ``\\N`` is NULL."""
_ESCAPED_BYTES = tuple(raw.encode() for raw, _ in _ESCAPES)
_insert_only: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
"""Bulk engines whose server or client refused LOAD DATA LOCAL INFILE, with the reason (logged once)."""
_bulk_engines: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def bulk_insert(conn: Connection, table: Table, columns: Sequence[str], rows: pd.DataFrame | Sequence[Sequence[Any]],
                chunk: int = 5_000, on_chunk: Callable[[int], None] | None = None,
                constants: Mapping[str, Any] | None = None, lines: pa.Array | None = None) -> None:
    """Insert ``rows`` into ``table`` inside the caller's transaction, in chunks of ``chunk`` rows;
    ``on_chunk(rows_done)`` after each chunk.

    ``rows`` is a frame holding ``columns``, or row tuples in ``columns`` order of plain Python values (str, int,
    float, None; a frame's missing values are NULL); ``constants`` are columns with one value for every row.

    MySQL / MariaDB (PyMySQL, mysqlclient), on a connection of ``bulk_engine``: each chunk is one ``LOAD DATA LOCAL
    INFILE`` of a temporary file (removed afterwards, also on failure), under a savepoint. LOCAL makes the server
    take what an INSERT refuses (a value too long, a duplicate key, a malformed number) with a warning instead, so a
    chunk it warned about (or did not store whole) is rolled back to the savepoint and INSERTed: the INSERT then
    stores or refuses it exactly as always. A server or client that refuses LOCAL INFILE (``LOAD_REFUSED``), or no
    temporary file, means multi-row INSERTs from then on for that engine, logged once. ``lines``: ``load_lines`` of
    these rows, when the caller made them already (on another thread, say). Elsewhere (SQLite): the driver's
    executemany (no per-row SQLAlchemy work).
    """
    columns, constants = list(columns), dict(constants or {})
    done = 0
    if len(rows) >= LOAD_MIN_ROWS and _may_load(conn):
        done = _load_data(conn, table, columns, rows, constants, chunk, on_chunk, lines)
    if done < len(rows):
        _insert(conn, table, columns, rows, constants, chunk, on_chunk, done, len(rows))


def frame_rows(frame: pd.DataFrame) -> list[tuple]:
    """A frame's rows as tuples of plain Python values, None for missing (column by column: fast)."""
    columns = [frame.iloc[:, i].to_numpy(dtype=object, na_value=None) for i in range(frame.shape[1])]
    return list(zip(*columns, strict=True)) if columns else []


def bulk_engine(engine: Engine) -> Engine:
    """The engine of bulk write transactions (``bulk_insert``): ``engine`` itself, except on MySQL / MariaDB through
    PyMySQL or mysqlclient, where it is a sibling of ``engine`` (same URL, its own pool, disposed with ``engine``)
    whose connections may send ``LOAD DATA LOCAL INFILE``. Only those have the client's ``local_infile``: a server
    may ask a client that has it for any file the client can read. A URL that sets ``local_infile`` itself decides
    for both (``?local_infile=0``: bulk writes are INSERTs)."""
    if not _mysql_driver(engine):
        return engine
    sibling = _bulk_engines.get(engine)
    if sibling is None:
        options = {} if "local_infile" in engine.url.query else {"connect_args": {"local_infile": True}}
        sibling = create_engine(engine.url, pool_size=2, pool_pre_ping=True, pool_recycle=3600, **options)
        event.listen(engine, "engine_disposed", lambda _engine: sibling.dispose())
        _bulk_engines[engine] = sibling
    return sibling


def _mysql_driver(engine: Engine | Connection) -> bool:
    return engine.dialect.name in ("mysql", "mariadb") and engine.dialect.driver in ("pymysql", "mysqldb")


def _may_load(conn: Connection) -> bool:
    return _mysql_driver(conn) and conn.engine not in _insert_only


def _insert_only_from_now(conn: Connection, reason: str) -> None:
    if conn.engine not in _insert_only:
        _insert_only[conn.engine] = reason
        log.warning("database %s: bulk writes are multi-row INSERTs, not LOAD DATA LOCAL INFILE: %s",
                    conn.engine.url.database, reason)


def _records(rows: pd.DataFrame | Sequence[Sequence[Any]], columns: list[str], start: int, stop: int,
             constants: tuple) -> list[tuple]:
    part = frame_rows(rows[columns].iloc[start:stop]) if isinstance(rows, pd.DataFrame) else rows[start:stop]
    return [(*row, *constants) for row in part] if constants else list(part)


def _insert(conn: Connection, table: Table, columns: list[str], rows: pd.DataFrame | Sequence[Sequence[Any]],
            constants: dict[str, Any], chunk: int, on_chunk: Callable[[int], None] | None, start: int,
            stop: int) -> None:
    """Rows ``start`` .. ``stop`` - 1 with the driver's executemany (PyMySQL makes it multi-row INSERTs)."""
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
    names = [*columns, *constants]
    targets, values = ", ".join(quote(c) for c in names), ", ".join([placeholder] * len(names))
    sql = f"INSERT INTO {quote(table.name)} ({targets}) VALUES ({values})"  # noqa: S608 - quoted own names
    records = _records(rows, columns, start, stop, tuple(constants.values()))
    for begin in range(0, len(records), chunk):
        part = records[begin : begin + chunk]
        conn.exec_driver_sql(sql, part)
        if on_chunk is not None:
            on_chunk(start + begin + len(part))


class _NotLoadable(Exception):
    """Values a LOAD DATA file would not carry exactly as the INSERT path sends them (these rows are INSERTed)."""


def _load_data(conn: Connection, table: Table, columns: list[str], rows: pd.DataFrame | Sequence[Sequence[Any]],
               constants: dict[str, Any], chunk: int, on_chunk: Callable[[int], None] | None,
               lines: pa.Array | None) -> int:
    """``bulk_insert`` by LOAD DATA LOCAL INFILE; returns the rows written (fewer than all: INSERT the rest)."""
    lines = load_lines(table, columns, rows) if lines is None else lines
    if lines is None:
        return 0
    try:
        fd, path = tempfile.mkstemp(prefix="readmit-load-", suffix=".tsv")
    except OSError as exc:
        _insert_only_from_now(conn, f"no temporary file ({type(exc).__name__}: {exc.strerror})")
        return 0
    quote = conn.dialect.identifier_preparer.quote
    sql = (
        f"LOAD DATA LOCAL INFILE %s INTO TABLE {quote(table.name)} CHARACTER SET utf8mb4 "
        f"FIELDS TERMINATED BY X'09' ESCAPED BY X'5C' LINES TERMINATED BY X'0A' "
        f"({', '.join(quote(c) for c in columns)})"
        + (f" SET {', '.join(f'{quote(c)} = %s' for c in constants)}" if constants else "")
    )
    params = (path, *constants.values())
    total = len(rows)
    try:
        with os.fdopen(fd, "wb") as file:
            for begin in range(0, total, chunk):
                end = min(begin + chunk, total)
                file.seek(0)
                file.truncate()
                file.write(_line_bytes(lines, begin, end))
                file.flush()
                conn.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
                try:
                    result = conn.exec_driver_sql(sql, params)
                except DBAPIError as exc:
                    if _error_code(exc) not in LOAD_REFUSED:
                        raise
                    conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                    _insert_only_from_now(conn, f"LOAD DATA LOCAL INFILE refused ({store_failure(exc)})")
                    return begin
                warnings = getattr(result.context.cursor, "warning_count", None)  # PyMySQL's and mysqlclient's
                if result.rowcount != end - begin or (warnings != 0 and _warned(conn)):
                    conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                    _insert(conn, table, columns, rows, constants, chunk, None, begin, end)
                if on_chunk is not None:
                    on_chunk(end)
    finally:
        with suppress(OSError):
            os.unlink(path)
    return total


def _error_code(exc: DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _warned(conn: Connection) -> bool:
    """Whether the last statement left a warning or an error (notes, which an INSERT leaves too, do not count)."""
    return any(level != "Note" for level, *_ in conn.exec_driver_sql("SHOW WARNINGS").all())


def load_lines(table: Table, columns: Sequence[str], rows: pd.DataFrame | Sequence[Sequence[Any]]) -> pa.Array | None:
    """``rows`` (as ``bulk_insert`` takes them) as the lines of a LOAD DATA file, or None when a value would not
    reach the table exactly as an INSERT sends it (those rows are INSERTed)."""
    try:
        return _tsv_lines(table, list(columns), rows)
    except _NotLoadable:
        return None


def _tsv_lines(table: Table, columns: list[str], rows: pd.DataFrame | Sequence[Sequence[Any]]) -> pa.Array:
    """One line per row in LOAD DATA's format (tab between fields, escapes, ``\\N`` for NULL), each ending in a
    newline."""
    if isinstance(rows, pd.DataFrame):
        values: list[Any] = [rows[name] for name in columns]
    else:
        try:
            values = list(zip(*rows, strict=True))
        except ValueError as exc:
            raise _NotLoadable("rows of different lengths") from exc
    fields = []
    for name, column in zip(columns, values, strict=True):
        try:
            array = pa.array(column, from_pandas=isinstance(rows, pd.DataFrame))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise _NotLoadable(name) from exc
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        fields.append(_field_text(array, table.c[name].type))
    text = pa.large_string()
    lines = pc.binary_join_element_wise(*fields, pa.scalar("\t", text))
    return pc.binary_join_element_wise(lines, pa.scalar("", text), pa.scalar("\n", text))


def _field_text(array: pa.Array, sql_type: Any) -> pa.Array:
    """A column's values as LOAD DATA reads them into a column of ``sql_type`` exactly as the INSERT path stores
    them: text escaped, integers in decimal, floats (into float columns only) in their shortest exact form."""
    kind = array.type
    if pa.types.is_integer(kind) or (pa.types.is_floating(kind) and isinstance(sql_type, Float)):
        text = pc.cast(array, pa.large_string())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        text = array.cast(pa.large_string())
        data = text.buffers()[2]
        content = b"" if data is None else data.to_pybytes()
        if any(raw in content for raw in _ESCAPED_BYTES):
            for raw, escaped in _ESCAPES:
                text = pc.replace_substring(text, raw, escaped)
    else:
        raise _NotLoadable(str(kind))
    return pc.fill_null(text, "\\N") if text.null_count else text


def _line_bytes(lines: pa.Array, start: int, stop: int) -> memoryview:
    """Lines ``start`` .. ``stop`` - 1 as the bytes of one file, without copying."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    return memoryview(lines.buffers()[2])[offsets[lines.offset + start] : offsets[lines.offset + stop]]


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
    """The RawData tables; a store made by the previous version is migrated (see ``migrate_raw``)."""
    raw_metadata.create_all(engine)
    _migrating(engine, migrate_raw)


def create_clean_schema(engine: Engine) -> None:
    """The CleanData tables; rejected_rows of the previous version gets its source_line column."""
    clean_metadata.create_all(engine)
    _migrating(engine, migrate_clean)


class StoreMigrationError(RuntimeError):
    """A store of the previous version that cannot be migrated safely."""


def _migrating(engine: Engine, migrate: Callable[[Engine], None]) -> None:
    try:
        migrate(engine)
    except DBAPIError:  # another process migrating at the same moment: look again once
        migrate(engine)


def _columns(engine: Engine, table: str) -> dict[str, dict]:
    return {c["name"]: c for c in inspect(engine).get_columns(table)}


def _add_column(engine: Engine, table: str, column: str, sql_type: str) -> None:
    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column)} {sql_type}"))


def derive_first_rows(train_batches: Sequence[tuple[str, int, int]]) -> dict[str, int]:
    """first_row of train batches (batch_id, batch_number, rows) loaded by the previous version, which
    made batch N the train rows (N-1)*size .. N*size-1 for one fixed size: every batch but the
    highest-numbered one is full, the highest at most full. Anything else cannot be derived."""
    if not train_batches:
        return {}
    ordered = sorted(train_batches, key=lambda b: b[1])
    *full, last = ordered
    sizes = {rows for _, _, rows in full}
    if full and (len(sizes) > 1 or last[2] > next(iter(sizes))):
        raise StoreMigrationError(
            "RawData was loaded by an earlier version with train batches of different sizes "
            f"({', '.join(f'{b}: {rows} rows' for b, _, rows in ordered)}): which train rows each batch holds "
            "cannot be derived, and some rows were skipped or loaded twice. Load into a fresh store."
        )
    if not full and last[1] != 1:
        raise StoreMigrationError(
            f"RawData was loaded by an earlier version and holds only {last[0]} ({last[2]} rows): the batch size "
            "it was loaded with, hence its train rows, cannot be derived. Load into a fresh store."
        )
    size = next(iter(sizes)) if full else last[2]
    return {batch_id: (number - 1) * size for batch_id, number, _ in ordered}


def migrate_raw(engine: Engine) -> None:
    """Bring a RawData store of the previous version up to date, idempotently:

    - raw_batches.first_row, derived for its train batches (``derive_first_rows``: checked before
      anything changes; a store whose batches cannot be derived is refused, untouched);
    - raw_encounters.source_line (NULL for rows loaded before) and, on MySQL, value columns widened to
      ``RAW_MAX_LENGTH`` (SQLite does not enforce widths);
    - raw_rejected is a new table (``create_all``).

    Such a store keeps its UNIQUE encounter_id of raw_encounters (dropping it would rebuild the table):
    a source repeating an encounter_id verbatim fails its load there, as before; fresh stores take it
    and validation rejects the repeat.
    """
    batch_columns = _columns(engine, "raw_batches")
    encounter_columns = _columns(engine, "raw_encounters")
    query = select(raw_batches.c.batch_id, raw_batches.c.batch_number, raw_batches.c.rows).where(
        raw_batches.c.split == "train"
    )
    if "first_row" in batch_columns:
        query = query.where(raw_batches.c.first_row.is_(None))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    first_rows = derive_first_rows([(r[0], int(r[1]), int(r[2])) for r in rows])
    if "first_row" not in batch_columns:
        _add_column(engine, "raw_batches", "first_row", "INTEGER")
    if "source_line" not in encounter_columns:
        _add_column(engine, "raw_encounters", "source_line", "INTEGER")
    if engine.dialect.name in ("mysql", "mariadb"):
        narrow = [name for name in COLUMN_NAMES
                  if (getattr(encounter_columns[name]["type"], "length", None) or RAW_MAX_LENGTH) < RAW_MAX_LENGTH]
        if narrow:
            quote = engine.dialect.identifier_preparer.quote
            changes = ", ".join(
                f"MODIFY {quote(name)} VARCHAR({RAW_MAX_LENGTH}) {'NOT NULL' if name == 'encounter_id' else 'NULL'}"
                for name in narrow
            )
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE raw_encounters {changes}"))
    if first_rows:
        with engine.begin() as conn:
            for batch_id, first_row in first_rows.items():
                conn.execute(raw_batches.update().where(raw_batches.c.batch_id == batch_id).values(first_row=first_row))


def migrate_clean(engine: Engine) -> None:
    """A CleanData store of a previous version: rejected_rows.source_line (NULL for rows before),
    drift_checks.population ("batches" for checks before), and patient_history built for the clean rows it
    holds."""
    if "source_line" not in _columns(engine, "rejected_rows"):
        _add_column(engine, "rejected_rows", "source_line", "INTEGER")
    if "population" not in _columns(engine, "drift_checks"):
        _add_column(engine, "drift_checks", "population", "VARCHAR(16) NOT NULL DEFAULT 'batches'")
    from .history_store import backfill_history

    backfill_history(engine)


def store_failure(exc: BaseException) -> str:
    """A database error in one line, for the messages of failed loads and batches (no traceback)."""
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}"[:300]


@contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    """``make_engine(url)``, disposed on exit (no schema created: for stores another step created)."""
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


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
