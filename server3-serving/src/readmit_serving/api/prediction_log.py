"""The prediction log: every answer of POST /predict and POST /predict/batch, written to the Predictions store.

One row per encounter answered (``readmit_contract.prediction_log``: a batch request gives one row per encounter,
sharing its ``request_id``, which the answer carries as ``X-Request-ID``). A request never waits for the store:

- the request path only appends ``(time, request id, position, caller, endpoint, record, prediction)`` to a
  bounded in-memory buffer (``PREDICTION_LOG_BUFFER_ROWS``): no I/O, no await, no JSON. A row that does not fit
  (the store has been away long enough to fill the buffer) is dropped and counted (``buffer_full``);
- one writer thread takes the rows in batches of up to ``PREDICTION_LOG_BATCH_ROWS`` (a batch is started once
  it is full, or when its oldest row has waited ``PREDICTION_LOG_FLUSH_MS``), builds them (the encounter's JSON
  among them) and inserts each batch with one executemany in one transaction. Its CPU (tens of microseconds per
  row, in this process) is the log's whole cost to the API: ``bench/prediction_log.py`` measures it;
- when the store is unreachable the batch is kept and retried after a pause (1 s, doubling up to 10 s) while
  new rows fill the buffer up to its bound. A batch the store refuses for another reason (a value it cannot
  take) is retried ``BATCH_ATTEMPTS`` times, then written in halves down to the single rows it refuses, which
  are dropped and counted (``store_error``): a bad row never blocks the log;
- at shutdown what is buffered is written within ``SHUTDOWN_SECONDS``; what is left is counted (``shutdown``).

The records are kept by reference: the history lookup adds history keys to them in place, but
``encounter_json`` reads only the contract's input columns, so the row holds the encounter as received.

The table is created when missing with ``CREATE TABLE IF NOT EXISTS`` and its indexes inline: in the cluster
the API's identity holds only INSERT and CREATE on ``prediction_log`` (``CREATE INDEX``, which
``metadata.create_all`` emits, would need INDEX too). Failures are logged in one line without the URL, the SQL
or its parameters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from readmit_contract.history import ENCOUNTER, PATIENT
from readmit_contract.prediction_log import encounter_json, prediction_log
from sqlalchemy import create_engine, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from . import metrics
from .history import _failure

log = logging.getLogger(__name__)

FIRST_PAUSE_SECONDS = 1.0
MAX_PAUSE_SECONDS = 10.0
BATCH_ATTEMPTS = 3
"""Tries of a batch the store refuses while reachable, before it is written in halves to isolate the bad rows."""
SHUTDOWN_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5
IO_TIMEOUT_SECONDS = 10
"""MySQL read/write timeouts: a hung store fails the write after this long instead of holding the writer."""
STORE_ERRNOS = frozenset({
    1021, 1030, 1040, 1044, 1045, 1049, 1053, 1054, 1064, 1114, 1142, 1146, 1152, 1158, 1159, 1160, 1161, 1205,
    1213, 1290, 1317, 1927, 4031,
})
"""MySQL/MariaDB errors of the store, not of the rows (disk or table full, too many connections, access denied,
unknown database, table or column — a table of another version of the contract —, a statement it cannot parse,
server shutting down, network read/write errors, lock wait timeout, deadlock, read-only, query interrupted,
connection killed); 2000-2999 are the client's (cannot connect, server gone, lost connection, timeouts). Such a
failure keeps the batch and pauses; splitting it into single rows would only repeat the failure row by row."""


def _store_problem(exc: BaseException) -> bool:
    """Whether a failed write is the store's problem (unreachable, down, misconfigured: retry the same rows later)
    rather than the rows' (a value the store refuses: retry a bounded number of times, then isolate)."""
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
        return False
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        code = orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], int) else None
        if code is not None:
            return 2000 <= code < 3000 or code in STORE_ERRNOS
        # SQLite (no error codes in args): locked, cannot open, disk I/O, no such table, read-only
        return isinstance(exc, sa_exc.OperationalError)
    return isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError | OSError)


def _engine(url: str) -> Engine:
    backend = make_url(url).get_backend_name()
    # hide_parameters: an error never carries the encounters being written
    if backend == "sqlite":  # the embedded default: a file beside the other stores
        return create_engine(url, hide_parameters=True, connect_args={"timeout": CONNECT_TIMEOUT_SECONDS})
    if backend == "mysql":  # one writer: one connection
        return create_engine(url, hide_parameters=True, pool_size=1, max_overflow=0, pool_pre_ping=True,
                             pool_recycle=3600,
                             connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS,
                                           "read_timeout": IO_TIMEOUT_SECONDS, "write_timeout": IO_TIMEOUT_SECONDS})
    return create_engine(url, hide_parameters=True, pool_size=1, max_overflow=0, pool_pre_ping=True)


def create_table(conn: Connection) -> None:
    """The contract's table when missing. MySQL: one ``CREATE TABLE IF NOT EXISTS`` with the indexes inline (needs
    only the CREATE privilege on the table; no lookup of the catalogue); elsewhere ``create_all``."""
    if conn.dialect.name != "mysql":
        prediction_log.metadata.create_all(conn, tables=[prediction_log], checkfirst=True)
        return
    quote = conn.dialect.identifier_preparer.quote
    ddl = str(CreateTable(prediction_log, if_not_exists=True).compile(dialect=conn.dialect)).strip()
    head, bracket, options = ddl.rpartition(")")
    indexes = "".join(f", \n\tINDEX {quote(str(index.name))} ({', '.join(quote(c.name) for c in index.columns)})"
                      for index in sorted(prediction_log.indexes, key=lambda i: str(i.name)))
    conn.exec_driver_sql(f"{head.rstrip()}{indexes}\n{bracket}{options}")


ROW_COLUMNS = ("request_id", "position", "predicted_at", "caller", "endpoint", "model_name", "model_version",
               "encounter_id", "patient_nbr", "encounter", "scored", "probability", "risk_band", "reason", "history")
"""The columns a row gives, in the order of ``_row``'s tuple (every column of the table but ``id``)."""


def _row(entry: tuple[Any, ...], binary_text: bool) -> tuple[Any, ...]:
    """A buffered entry as the values of ``ROW_COLUMNS`` (in the writer thread). ``binary_text``: the encounter's
    JSON as bytes, which PyMySQL sends as a hex literal instead of escaping ~1 KB character by character (a third
    of the writer's time per row); the JSON is ASCII, so MySQL stores the same text."""
    at, request_id, position, caller, endpoint, record, prediction = entry
    encounter, patient = record.get(ENCOUNTER), record.get(PATIENT)
    text = encounter_json(record)
    return (request_id, position, (EPOCH + timedelta(seconds=at)).isoformat(" ", "microseconds"), caller, endpoint,
            prediction["model_name"], prediction["model_version"],
            None if encounter is None else int(encounter), None if patient is None else int(patient),
            text.encode() if binary_text else text,
            prediction["scored"], prediction["probability"], prediction["risk_band"], prediction["reason"],
            prediction["history"])


EPOCH = datetime(1970, 1, 1)
"""``predicted_at`` is naive UTC, as text ``YYYY-MM-DD HH:MM:SS.ffffff``: how SQLAlchemy stores a DateTime in SQLite
and a DATETIME literal MySQL reads (built from the epoch: twice as fast as an aware datetime and strftime)."""


def _insert_sql(dialect: Any) -> str | None:
    """One INSERT of ``ROW_COLUMNS`` with the driver's positional placeholders, for ``executemany`` of tuples
    (SQLAlchemy's per-row parameter handling costs as much as the driver's own work); None: a driver with named
    placeholders, written through ``prediction_log.insert()``."""
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
    if mark is None:
        return None
    quote = dialect.identifier_preparer.quote
    names, marks = ", ".join(quote(c) for c in ROW_COLUMNS), ", ".join([mark] * len(ROW_COLUMNS))
    # names from the contract, quoted; every value a placeholder
    return f"INSERT INTO {quote(prediction_log.name)} ({names}) VALUES ({marks})"  # noqa: S608


@dataclass(eq=False)
class _Chunk:
    """Rows taken from the buffer and not yet written: one INSERT."""

    rows: list[tuple[Any, ...]]
    tries_left: int = BATCH_ATTEMPTS


class PredictionLog:
    """The buffer and its writer thread (see the module docstring). ``url`` None: logging off, ``add`` does
    nothing."""

    def __init__(self, url: str | None, buffer_rows: int = 20_000, batch_rows: int = 500, flush_ms: int = 200,
                 shutdown_seconds: float = SHUTDOWN_SECONDS, first_pause: float = FIRST_PAUSE_SECONDS,
                 max_pause: float = MAX_PAUSE_SECONDS) -> None:
        try:
            self.engine = _engine(url) if url else None
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:  # never the URL: a password
            raise ValueError(f"PREDICTIONS_DB_URL is not a usable SQLAlchemy URL ({type(exc).__name__}: {exc})") \
                from None
        self.where = _where(url) if url else None
        self._sql = _insert_sql(self.engine.dialect) if self.engine is not None else None
        self._binary_text = self.engine is not None and self.engine.dialect.name == "mysql"
        self.capacity = buffer_rows
        self.batch_rows = batch_rows
        self.flush_seconds = flush_ms / 1000
        self.shutdown_seconds = shutdown_seconds
        self.first_pause, self.max_pause = first_pause, max_pause
        self._queue: deque[tuple[Any, ...]] = deque()
        self._chunks: deque[_Chunk] = deque()
        self._held = 0  # rows the writer took from the queue and has not written or dropped yet
        self._wake = threading.Event()  # a row arrived in an empty buffer, a batch is full, or close()
        self._stop = threading.Event()
        self._deadline = float("inf")  # monotonic time the shutdown flush ends
        self._lock = threading.Lock()  # written/dropped counted once, even when close() gives up on the writer
        self._closed = False
        self._table_ready = False
        self._create_refused = False
        self._failing = False  # the last write failed (for a one-line "writing again" when it recovers)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._full = metrics.PREDICTION_LOG_DROPPED.labels(reason="buffer_full")
        self._store_error = metrics.PREDICTION_LOG_DROPPED.labels(reason="store_error")
        metrics.PREDICTION_LOG_BUFFERED.set_function(self.buffered)

    @property
    def enabled(self) -> bool:
        return self.engine is not None

    def buffered(self) -> int:
        """Rows waiting to be written (in the buffer or in the writer's hands)."""
        return len(self._queue) + self._held

    def start(self) -> None:
        if self.engine is None:
            log.warning("prediction log off: PREDICTIONS_DB_URL is not set, predictions are not recorded")
            return
        log.info("prediction log on: writing to %s (buffer %d rows, batches of %d, flushed within %.0f ms)",
                 self.where, self.capacity, self.batch_rows, self.flush_seconds * 1000)
        self._thread.start()

    # -- the request path: O(1) per row, never blocks ---------------------------------------------------------

    def add(self, request_id: str, endpoint: str, caller: str | None, record: dict[str, Any], prediction: Any,
            position: int = 0) -> None:
        """Buffer one answered encounter (``prediction``: the answer, a mapping of ``Prediction``'s fields; it and
        ``record`` are kept by reference); dropped and counted when the buffer is full."""
        if self.engine is None:
            return
        queue = self._queue
        if len(queue) + self._held >= self.capacity:
            self._full.inc()
            return
        queue.append((time.time(), request_id, position, caller, endpoint, record, prediction))
        size = len(queue)
        if size == 1 or size == self.batch_rows:
            self._wake.set()

    def add_many(self, request_id: str, endpoint: str, caller: str | None, records: list[dict[str, Any]],
                 predictions: list[Any]) -> None:
        """Buffer a batch request's answers, ``position`` their index in the request."""
        if self.engine is None:
            return
        for position, (record, prediction) in enumerate(zip(records, predictions, strict=True)):
            self.add(request_id, endpoint, caller, record, prediction, position)

    # -- shutdown -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Write what is buffered within ``shutdown_seconds``; count the rest as dropped (``shutdown``)."""
        if self.engine is None:
            return
        if self._thread.is_alive():
            self._deadline = time.monotonic() + self.shutdown_seconds
            self._stop.set()
            self._wake.set()  # after _stop: the writer reads _stop after clearing _wake
            self._thread.join(self.shutdown_seconds + 1.0)
        with self._lock:
            if not self._closed:  # the writer did not finish (stuck in a write): give up on it
                self._closed = True
                self._count_shutdown_drops()

    def _count_shutdown_drops(self) -> None:
        left = len(self._queue) + self._held
        self._queue.clear()
        self._chunks.clear()
        self._held = 0
        if left:
            metrics.PREDICTION_LOG_DROPPED.labels(reason="shutdown").inc(left)
            log.warning("prediction log: %d rows not written at shutdown (the store did not take them within %.0f s)",
                        left, self.shutdown_seconds)

    # -- the writer thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        pause = 0.0
        try:
            try:  # at start, so that a store the API cannot write to is in the log at once
                self._ensure_table()
                self._table_ready = True
            except Exception as exc:  # noqa: BLE001 - retried with the first write
                self._unavailable(exc)
            while not self._closed:
                if not self._chunks:
                    self._wake.clear()
                    stopping = self._stop.is_set()  # read after the clear: close() sets _stop, then _wake
                    waiting = len(self._queue)
                    if waiting == 0:
                        if stopping:
                            break
                        self._wake.wait(1.0)  # woken by the first row (the timeout is only a safety net)
                        continue
                    if waiting < self.batch_rows and not stopping:
                        due = self._queue[0][0] + self.flush_seconds - time.time()
                        if due > 0:
                            self._wake.wait(due)
                            continue
                    self._take()
                    if not self._chunks:  # every row of the batch failed to build
                        continue
                if self._write():
                    pause = 0.0
                    continue
                pause = min(max(pause * 2, self.first_pause), self.max_pause)
                if self._stop.is_set():
                    remaining = self._deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    pause = min(pause, remaining, 0.5)
                self._stop.wait(pause)  # close() cuts a pause short
        except Exception:  # noqa: BLE001 - the log must never take the API down; say so and stop logging
            log.exception("prediction log: the writer stopped unexpectedly; predictions are no longer recorded")
        finally:
            with self._lock:
                if not self._closed:
                    self._closed = True
                    self._count_shutdown_drops()
            self.engine.dispose()  # type: ignore[union-attr]  # in this thread: SQLite connections belong to it

    def _take(self) -> None:
        """Up to ``batch_rows`` rows from the buffer, built, as the next chunk."""
        rows = []
        for _ in range(min(self.batch_rows, len(self._queue))):
            self._held += 1  # before the pop: the request path never sees the row out of both
            entry = self._queue.popleft()
            try:
                rows.append(_row(entry, self._binary_text))
            except Exception as exc:  # noqa: BLE001 - a row that cannot be built is dropped, never the writer
                self._held -= 1
                self._store_error.inc()
                log.warning("prediction log: a row of request %s cannot be built (%s): dropped", entry[1],
                            type(exc).__name__)
        if rows:
            self._chunks.append(_Chunk(rows))

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        assert self.engine is not None
        if not self._table_ready:
            self._ensure_table()
        with self.engine.begin() as conn:
            started = time.perf_counter()
            if self._sql is not None:
                conn.exec_driver_sql(self._sql, rows)
            else:
                conn.execute(prediction_log.insert(), [dict(zip(ROW_COLUMNS, row, strict=True)) for row in rows])
        metrics.PREDICTION_LOG_WRITE_DURATION.observe(time.perf_counter() - started)
        self._table_ready = True

    def _ensure_table(self) -> None:
        assert self.engine is not None
        try:
            with self.engine.begin() as conn:
                create_table(conn)
        except Exception as exc:
            if _store_problem(exc) and not _denied(exc):
                raise
            # an identity without CREATE may still insert into a table that exists: try
            if not self._create_refused:
                self._create_refused = True
                log.warning("prediction log: the table cannot be created (%s); inserting into it anyway",
                            _failure(exc))

    def _write(self) -> bool:
        """Write the first chunk. True: it is done (written, or split, or its bad row dropped); False: pause."""
        chunk = self._chunks[0]
        try:
            self._insert(chunk.rows)
        except Exception as exc:  # noqa: BLE001 - every failure is either retried or counted
            return self._failed(chunk, exc)
        with self._lock:
            if self._closed:
                return True
            self._chunks.popleft()
            self._held -= len(chunk.rows)
            metrics.PREDICTION_LOG_WRITTEN.inc(len(chunk.rows))
        if self._failing:
            self._failing = False
            log.warning("prediction log: writing again (%d rows waiting)", self.buffered())
        return True

    def _unavailable(self, exc: Exception) -> None:
        """One line per outage (the first failure); ``_write`` says when writing works again."""
        if not self._failing:
            log.warning("prediction log: the store is unavailable (%s): %d rows kept and retried, new ones "
                        "buffered up to %d", _failure(exc), self.buffered(), self.capacity)
        self._failing = True

    def _failed(self, chunk: _Chunk, exc: Exception) -> bool:
        with self._lock:
            if self._closed:  # the shutdown gave up on this write and counted its rows already
                return True
        if _store_problem(exc):
            if _missing_table(exc):
                self._table_ready = False
            self._unavailable(exc)
            return False
        chunk.tries_left -= 1
        if chunk.tries_left > 0:
            log.warning("prediction log: the store refused %d rows (%s): retrying", len(chunk.rows), _failure(exc))
            return False
        self._chunks.popleft()
        if len(chunk.rows) > 1:  # isolate the rows refused: each half gets one try
            middle = len(chunk.rows) // 2
            self._chunks.extendleft([_Chunk(chunk.rows[middle:], 1), _Chunk(chunk.rows[:middle], 1)])
            return True
        with self._lock:
            if not self._closed:
                self._held -= 1
                self._store_error.inc()
        log.warning("prediction log: the store refused a row of request %s (%s): dropped", chunk.rows[0][0],
                    _failure(exc))
        return True


def _errno(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None)
    return orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], int) else None


def _denied(exc: BaseException) -> bool:
    return _errno(exc) in (1142, 1044)


def _missing_table(exc: BaseException) -> bool:
    return _errno(exc) == 1146 or "no such table" in str(getattr(exc, "orig", "") or "")


def _where(url: str) -> str:
    """The store named for the log: backend, host and database, never the user or password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite {parsed.database}"
    return f"{parsed.get_backend_name()} {parsed.host}:{parsed.port or ''}/{parsed.database}"
