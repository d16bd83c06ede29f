"""Raw loads into the RawData store: the patient split and the train batches.

The source is streamed in chunks (``readmit_contract.reader``), never read whole, with a progress
bar; a line that cannot be a row (ragged, bad quoting, not UTF-8, a field longer than the raw
columns) is set aside with its line number and reason instead of stopping the load.

The first load assigns every encounter to train / validation / test (70/15/15) by patient,
deterministically from a seed (a patient's split is a hash of seed and the normalised patient_nbr,
so ``456`` and ``0456`` never cross splits), and stores validation and test whole, with the source's
unreadable lines (batch ``unreadable``, table raw_rejected), in one transaction.

Train rows, counted in source order, are loaded in batches, one batch per run, as new data arriving
over time. A batch records the train rows it holds (``first_row``, ``rows``): "next" loads the next
``batch_size`` train rows that no batch holds yet, so a batch size changed between runs changes the
size of later batches, never which rows get loaded. An explicit batch number names a recorded batch
(or the next one); batches are numbered in load order.

Each batch is one transaction: a failure leaves no partial batch, and loading a batch that is
already there adds 0 rows and says so. A load checks the source first: a store holding batches of
another source (content fingerprint, computed while streaming) or another split seed is refused.

On MySQL / MariaDB a batch's rows go in by ``LOAD DATA LOCAL INFILE`` inside its transaction
(``stores.bulk_insert``), each chunk while the stream reads and parses the next one (``_Writer``).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from readmit_contract import dataset, reader, synthetic
from readmit_contract.columns import COLUMN_NAMES
from readmit_contract.reader import SOURCE_LINE, FrameSource, RawSource, RejectedLine
from readmit_contract.validate import canonical_ids
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import DBAPIError
from tqdm.auto import tqdm

from .stores import (
    UNREADABLE,
    bulk_engine,
    bulk_insert,
    create_raw_schema,
    db_timestamp,
    load_lines,
    raw_batches,
    raw_encounters,
    raw_rejected,
    store_failure,
    utcnow,
)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_FRACTIONS: tuple[float, ...] = (0.70, 0.15, 0.15)
WHOLE_SPLITS: tuple[str, ...] = ("validation", "test")
INSERT_CHUNK = 2_000
READ_CHUNK = reader.CHUNK_ROWS
TRAIN_ROW = "train_row"
"""Column of a streamed chunk: the row's index among the source's train rows (-1 for other splits)."""


class SourceMismatchError(RuntimeError):
    """The store holds batches of another source or split seed than this load's."""


class LoadError(RuntimeError):
    """The store failed while a batch was being written. A batch is all or nothing, so re-running the
    load completes it (a batch whose commit went through is found loaded)."""


def train_batch_id(number: int) -> str:
    return f"train-{number:04d}"


def assign_splits(patient_nbr: pd.Series, seed: int) -> np.ndarray:
    """Split name per row, from a seeded hash of the normalised patient_nbr (same patient, same split)."""
    key = hashlib.sha256(str(seed).encode()).hexdigest()[:16]
    hashed = pd.util.hash_pandas_object(canonical_ids(patient_nbr), index=False, hash_key=key).to_numpy()
    u = hashed / float(2**64)
    bounds = np.cumsum(SPLIT_FRACTIONS)[:-1]
    return np.asarray(SPLITS, dtype=object)[np.searchsorted(bounds, u, side="right")]


class Fingerprint:
    """Content hash of a raw source, fed chunk by chunk (the same value however it is chunked): pandas row
    hashes of the contract's columns, and the unreadable lines when there are any."""

    def __init__(self) -> None:
        self._rows = hashlib.sha256()
        self._rejected = hashlib.sha256()
        self._any_rejected = False

    def add(self, rows: pd.DataFrame) -> None:
        self._rows.update(pd.util.hash_pandas_object(rows[list(COLUMN_NAMES)], index=False).to_numpy().tobytes())

    def add_rejected(self, line: RejectedLine) -> None:
        self._any_rejected = True
        self._rejected.update(f"{line.line}\x00{line.text}\x00".encode())

    def hexdigest(self) -> str:
        if not self._any_rejected:
            return self._rows.hexdigest()
        return hashlib.sha256(self._rows.digest() + self._rejected.digest()).hexdigest()


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a raw frame (cheap: pandas row hashes)."""
    digest = Fingerprint()
    digest.add(frame)
    return digest.hexdigest()


def read_source(source: str, cache_dir: str | Path = dataset.DEFAULT_CACHE_DIR) -> pd.DataFrame:
    """Raw frame (text, read whole) from "download", "synthetic:ROWS[:SEED[:DRIFT@FROM]]" or a local path."""
    if source.startswith("synthetic:"):
        return _synthetic(source)
    return dataset.load_raw(source, cache_dir=cache_dir)


def _synthetic(source: str) -> pd.DataFrame:
    """"synthetic:ROWS[:SEED[:DRIFT@FROM]]": e.g. "synthetic:30000:7:1.0@0.6", the rows from 60 % of the file on
    drifted by 1.0 (``readmit_contract.synthetic``): later train batches bring a shifted population."""
    parts = source.split(":")
    rows, seed = int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
    drift, drift_from = 0.0, 0.0
    if len(parts) > 3:
        amount, _, start = parts[3].partition("@")
        drift, drift_from = float(amount), float(start or 0)
    return synthetic.generate(rows, seed=seed, drift=drift, drift_from=drift_from)


def open_source(source: str, cache_dir: str | Path = dataset.DEFAULT_CACHE_DIR) -> RawSource:
    """The source to stream: "download" (the UCI archive, checksum-verified, cached), a local path, or
    "synthetic:ROWS[:SEED[:DRIFT@FROM]]" (generated in memory)."""
    if source.startswith("synthetic:"):
        return FrameSource(_synthetic(source), label=source)
    return reader.open_path(dataset.source_path(source, cache_dir), label=source)


@dataclass(frozen=True)
class SplitPlan:
    """An in-memory source with its split assignment, and the train batches that successive loads with one
    fixed ``batch_size`` make (the expected contents of train-0001, train-0002, ...)."""

    frame: pd.DataFrame
    batch_size: int
    seed: int
    fingerprint: str

    @classmethod
    def of(cls, frame: pd.DataFrame, batch_size: int, seed: int) -> SplitPlan:
        with_split = frame.assign(split=assign_splits(frame["patient_nbr"], seed))
        return cls(with_split, batch_size, seed, fingerprint(frame))

    def rows(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split]

    @property
    def n_train_batches(self) -> int:
        return -(-len(self.rows("train")) // self.batch_size)

    def train_batch(self, number: int) -> pd.DataFrame:
        if not 1 <= number <= self.n_train_batches:
            raise ValueError(f"train batch {number} does not exist: there are {self.n_train_batches}")
        start = (number - 1) * self.batch_size
        return self.rows("train").iloc[start : start + self.batch_size]

    def counts(self) -> dict[str, int]:
        return {s: int((self.frame["split"] == s).sum()) for s in SPLITS}


@dataclass(frozen=True)
class LoadReport:
    batch_id: str
    split: str
    rows_added: int
    already_loaded: bool
    seconds: float = 0.0

    @property
    def message(self) -> str:
        if self.already_loaded:
            return f"{self.batch_id}: already loaded, 0 rows added"
        if self.split == UNREADABLE:
            return (f"{self.batch_id}: {self.rows_added} line(s) of the source are not rows: set aside with their "
                    "line number and reason (raw_rejected; preprocessing reports them in rejected_rows)")
        rate = self.rows_added / self.seconds if self.seconds else float("inf")
        return (f"{self.batch_id}: {self.rows_added} {self.split} rows loaded in {self.seconds:.2f} s "
                f"({rate:,.0f} rows/s)")


@dataclass(frozen=True)
class TrainRange:
    """Train rows first_row .. first_row + rows - 1, to become batch ``number``."""

    number: int
    first_row: int
    rows: int

    @property
    def end(self) -> int:
        return self.first_row + self.rows

    @property
    def batch_id(self) -> str:
        return train_batch_id(self.number)


def loaded_batches(engine: Engine) -> pd.DataFrame:
    """The raw_batches table (one row per loaded batch)."""
    with engine.connect() as conn:
        return pd.read_sql(select(raw_batches).order_by(raw_batches.c.batch_id), conn)


def raw_counts(engine: Engine) -> dict[str, int]:
    """Rows per split in RawData."""
    with engine.connect() as conn:
        rows = conn.execute(select(raw_encounters.c.split, func.count()).group_by(raw_encounters.c.split)).all()
    return {split: int(n) for split, n in rows}


def unreadable_lines(engine: Engine) -> pd.DataFrame:
    """The source lines the loads set aside (line number, reason, the start of the line)."""
    with engine.connect() as conn:
        return pd.read_sql(
            select(raw_rejected.c.source_line, raw_rejected.c.reason, raw_rejected.c.line_text)
            .order_by(raw_rejected.c.source_line), conn,
        )


def _check_same_source(existing: pd.DataFrame, digest: str | None, seed: int) -> None:
    if existing.empty:
        return
    fingerprints = set(existing["source_fingerprint"])
    seeds = set(existing["split_seed"])
    if seeds != {seed} or (digest is not None and fingerprints != {digest}):
        raise SourceMismatchError(
            "RawData already holds batches of another source or split seed "
            f"(seeds {sorted(seeds)}); loading this one would mix splits. Use a fresh store."
        )


def _bar(source: RawSource, desc: str, progress: bool):
    """A progress bar over the source (bytes of a file, rows of a frame); off when not asked for or when
    stderr is not a terminal (then each step's report line is the progress)."""
    return tqdm(total=source.total, desc=desc, unit=source.unit, unit_scale=True, leave=False,
                disable=None if progress else True)


class _Stream:
    """One pass over the source: chunks of rows with their split and train row index, the chunk's
    unreadable lines; the fingerprint, rows per split and asked-for train rows' encounter_ids on the way."""

    def __init__(self, source: RawSource, seed: int, desc: str, progress: bool,
                 probes: frozenset[int] = frozenset(), read_chunk: int = READ_CHUNK,
                 fingerprinting: bool = True) -> None:
        self.source, self.seed, self.desc, self.progress = source, seed, desc, progress
        self.probe_positions, self.read_chunk = probes, read_chunk
        self.fingerprint, self.fingerprinting = Fingerprint(), fingerprinting
        self.counts = dict.fromkeys(SPLITS, 0)
        self.probes: dict[int, str] = {}

    def __iter__(self) -> Iterator[tuple[pd.DataFrame, list[RejectedLine]]]:
        with _bar(self.source, self.desc, self.progress) as bar:
            for chunk in self.source.chunks(self.read_chunk):
                rows = chunk.rows
                if self.fingerprinting:
                    self.fingerprint.add(rows)
                    for line in chunk.rejected:
                        self.fingerprint.add_rejected(line)
                split = assign_splits(rows["patient_nbr"], self.seed)
                is_train = split == "train"
                position = np.full(len(rows), -1, dtype="int64")
                position[is_train] = self.counts["train"] + np.arange(int(is_train.sum()))
                rows = rows.assign(split=split, **{TRAIN_ROW: position})
                for name in SPLITS:
                    self.counts[name] += int((split == name).sum())
                if self.probe_positions:
                    wanted = rows[rows[TRAIN_ROW].isin(self.probe_positions)]
                    self.probes.update(zip(wanted[TRAIN_ROW].tolist(), wanted["encounter_id"].tolist(), strict=True))
                bar.update(chunk.done - bar.n)
                yield rows, chunk.rejected


RAW_COLUMNS = [*COLUMN_NAMES, SOURCE_LINE, "split"]
"""The columns of raw_encounters a batch's rows bring (batch_id and loaded_at are the batch's)."""


class _Writer:
    """The writes of one transaction's connection, one at a time and in order. On MySQL / MariaDB each runs on a
    thread of its own while the stream reads and parses the next chunk (the server loads one chunk while the
    client prepares the next); the connection is never used by two threads at once: ``submit`` and every direct
    use of ``conn`` wait for the write in flight first (``drain``), and its error is raised there. Elsewhere
    (SQLite) a write runs at once."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.failed: str | None = None
        """The batch whose write failed (the error surfaces at the next drain, maybe in another batch's add)."""
        self.background = conn.dialect.name in ("mysql", "mariadb")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-load") if self.background else None
        self._pending: tuple[Future, str] | None = None

    def submit(self, batch_id: str, write: Callable[[], None]) -> None:
        self.drain()
        if self._thread is None:
            try:
                write()
            except BaseException:
                self.failed = batch_id
                raise
        else:
            self._pending = (self._thread.submit(write), batch_id)

    def drain(self) -> None:
        if self._pending is None:
            return
        (pending, batch_id), self._pending = self._pending, None
        try:
            pending.result()
        except BaseException:
            self.failed = batch_id
            raise

    def close(self) -> None:
        """Wait for the write in flight (its outcome no longer matters: the caller is failing) and end the thread."""
        with contextlib.suppress(Exception):
            self.drain()
        if self._thread is not None:
            self._thread.shutdown(wait=True)

    def abandon(self) -> None:
        """``close``, then roll the transaction back and close the connection."""
        self.close()
        _rollback_quietly(self.conn)


class _Batch:
    """One batch's transaction: its raw_batches row first (the rows refer to it), then its rows chunk by
    chunk; ``record`` then the caller's commit keep it (row count, fingerprint), anything else leaves nothing."""

    def __init__(self, writer: _Writer, batch_id: str, split: str, number: int, first_row: int | None,
                 source: str, seed: int, digest: str, insert_chunk: int,
                 on_chunk: Callable[[int], None] | None) -> None:
        self.writer, self.batch_id, self.insert_chunk, self.on_chunk = writer, batch_id, insert_chunk, on_chunk
        self.rows = 0
        self.started = time.perf_counter()
        self.loaded_at = db_timestamp(utcnow())
        writer.drain()
        writer.conn.execute(raw_batches.insert().values(
            batch_id=batch_id, split=split, batch_number=number, rows=0, source=source[:255],
            source_fingerprint=digest, split_seed=seed, loaded_at=utcnow(), first_row=first_row,
        ))

    def add(self, rows: pd.DataFrame, on_chunk: Callable[[int], None] | None = None) -> None:
        if rows.empty:
            return
        base = self.rows
        callback = on_chunk or self.on_chunk

        def chunk_done(done: int) -> None:  # rows of this batch so far
            if callback is not None:
                callback(base + done)

        constants = {"batch_id": self.batch_id, "loaded_at": self.loaded_at}
        lines = load_lines(raw_encounters, RAW_COLUMNS, rows) if self.writer.background else None  # here, not there
        self.writer.submit(self.batch_id, lambda: bulk_insert(
            self.writer.conn, raw_encounters, RAW_COLUMNS, rows, chunk=self.insert_chunk, on_chunk=chunk_done,
            constants=constants, lines=lines))
        self.rows += len(rows)

    def add_unreadable(self, lines: list[RejectedLine]) -> None:
        now = db_timestamp(utcnow())
        records = [(self.batch_id, line.line, line.reason, line.text, now) for line in lines]
        self.writer.submit(self.batch_id, lambda: bulk_insert(
            self.writer.conn, raw_rejected, ["batch_id", "source_line", "reason", "line_text", "rejected_at"],
            records, chunk=self.insert_chunk))
        self.rows += len(records)

    def record(self, digest: str | None = None) -> None:
        """Write the batch's row count (and fingerprint) once its rows are all written."""
        values = {"rows": self.rows} if digest is None else {"rows": self.rows, "source_fingerprint": digest}
        self.writer.drain()
        self.writer.conn.execute(
            raw_batches.update().where(raw_batches.c.batch_id == self.batch_id).values(**values))

    def report(self, split: str) -> LoadReport:
        return LoadReport(self.batch_id, split, self.rows, False, time.perf_counter() - self.started)


def _rollback_quietly(conn: Connection) -> None:
    """Roll back and close; a connection the server dropped has nothing left to undo."""
    with contextlib.suppress(Exception):  # the server is gone: its transaction died with the connection
        conn.rollback()
    with contextlib.suppress(Exception):
        conn.close()


def _failed(batch_id: str, exc: DBAPIError) -> LoadError:
    return LoadError(
        f"{batch_id} not loaded: the RawData store failed ({store_failure(exc)}). A batch is all or nothing: "
        "nothing partial is kept, and re-running the load completes it."
    )


def _load_whole_splits(
    engine: Engine, stream: _Stream, source: str, seed: int, missing: list[str],
    existing: pd.DataFrame, insert_chunk: int, on_chunk: Callable[[int], None] | None,
) -> list[LoadReport]:
    """Validation and test (and the unreadable lines), streamed into one transaction; the source is checked
    against the store once the pass has its fingerprint, before the commit."""
    conn = bulk_engine(engine).connect()
    writer = _Writer(conn)
    batches: dict[str, _Batch] = {}
    current = missing[0]
    try:
        conn.begin()
        for split in missing:
            batches[split] = _Batch(writer, split, split, 0, None, source, seed, "", insert_chunk, None)
        for rows, rejected in stream:
            for split in missing:
                current = split
                others = sum(b.rows for name, b in batches.items() if name != split)
                callback = None if on_chunk is None else (lambda done, others=others: on_chunk(others + done))
                batches[split].add(rows[rows["split"] == split], on_chunk=callback)
            if rejected:
                current = UNREADABLE
                if UNREADABLE not in batches:
                    batches[UNREADABLE] = _Batch(writer, UNREADABLE, UNREADABLE, 0, None, source, seed, "",
                                                 insert_chunk, None)
                batches[UNREADABLE].add_unreadable(rejected)
        writer.drain()
        digest = stream.fingerprint.hexdigest()
        _check_same_source(existing, digest, seed)
        for batch in batches.values():
            batch.record(digest)
        conn.commit()
        writer.close()
        conn.close()
    except DBAPIError as exc:
        writer.abandon()
        raise _failed(writer.failed or current, exc) from exc
    except BaseException:
        writer.abandon()
        raise
    return [batch.report(split) for split, batch in batches.items()]


def _load_train(
    engine: Engine, src: RawSource, ranges: list[TrainRange], source: str, seed: int, digest: str,
    progress: bool, read_chunk: int, insert_chunk: int, on_chunk: Callable[[int], None] | None,
) -> list[LoadReport]:
    """The train batches of ``ranges``, in one pass: one transaction per batch, committed as soon as the
    stream has gone past its last row."""
    reports: list[LoadReport] = []
    queue = list(ranges)
    desc = ranges[0].batch_id if len(ranges) == 1 else f"{ranges[0].batch_id}..{ranges[-1].batch_id}"
    stream = _Stream(src, seed, desc, progress, read_chunk=read_chunk, fingerprinting=False)  # load() has the digest
    writer: _Writer | None = None
    batch: _Batch | None = None
    try:
        for rows, _ in stream:
            train = rows[rows["split"] == "train"]
            while queue:
                target = queue[0]
                if batch is None:
                    writer = _Writer(bulk_engine(engine).connect())
                    writer.conn.begin()
                    batch = _Batch(writer, target.batch_id, "train", target.number, target.first_row, source, seed,
                                   digest, insert_chunk, on_chunk)
                positions = train[TRAIN_ROW]
                batch.add(train[(positions >= target.first_row) & (positions < target.end)])
                if stream.counts["train"] < target.end:
                    break  # the rest of this batch is further on
                if batch.rows != target.rows:
                    raise SourceMismatchError(f"{target.batch_id}: the source changed during the load")
                batch.record()
                writer.conn.commit()
                writer.close()
                writer.conn.close()
                reports.append(batch.report("train"))
                queue.pop(0)
                writer, batch = None, None
            if not queue:
                break
        if queue:
            raise SourceMismatchError(
                f"{queue[0].batch_id}: the source ended before train row {queue[0].end} (it changed during the load)"
            )
    except DBAPIError as exc:
        if writer is not None:
            writer.abandon()
        raise _failed(queue[0].batch_id if queue else "train", exc) from exc
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    return reports


def _recorded_train(existing: pd.DataFrame) -> list[TrainRange]:
    train = existing[existing["split"] == "train"]
    return sorted(
        (TrainRange(int(r.batch_number), int(r.first_row), int(r.rows)) for r in train.itertuples()),
        key=lambda r: r.first_row,
    )


def _pending(recorded: list[TrainRange], n_train: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(first_row, rows) of the train rows no batch holds, in order, cut at ``batch_size`` and at the next
    recorded batch."""
    cursor = 0
    for held in [*recorded, TrainRange(0, n_train, 0)]:
        while cursor < held.first_row:
            end = min(cursor + batch_size, held.first_row)
            yield cursor, end - cursor
            cursor = end
        cursor = max(cursor, held.end)


def _edges(engine: Engine, recorded: list[TrainRange]) -> dict[int, tuple[str, str]]:
    """Train row index -> (batch_id, encounter_id as stored) of the first and last row of each recorded batch."""
    if not recorded:
        return {}
    by_id = {r.batch_id: r for r in recorded}
    first = func.min(raw_encounters.c.row_id)
    last = func.max(raw_encounters.c.row_id)
    with engine.connect() as conn:
        ends = conn.execute(
            select(raw_encounters.c.batch_id, first, last)
            .where(raw_encounters.c.batch_id.in_(list(by_id))).group_by(raw_encounters.c.batch_id)
        ).all()
        row_ids = [row_id for _, lo, hi in ends for row_id in (lo, hi)]
        ids = dict(conn.execute(
            select(raw_encounters.c.row_id, raw_encounters.c.encounter_id).where(raw_encounters.c.row_id.in_(row_ids))
        ).all()) if row_ids else {}
    edges: dict[int, tuple[str, str]] = {}
    for batch_id, lo, hi in ends:
        held = by_id[batch_id]
        edges[held.first_row] = (batch_id, ids[lo])
        edges[held.end - 1] = (batch_id, ids[hi])
    return edges


def _check_recorded(edges: dict[int, tuple[str, str]], stream: _Stream) -> None:
    for position, (batch_id, stored) in sorted(edges.items()):
        if stream.probes.get(position) != stored:
            raise SourceMismatchError(
                f"{batch_id} does not hold the train rows its record names (train row {position} of this source is "
                f"{stream.probes.get(position)!r}, the batch has {stored!r}): the store was loaded otherwise, e.g. by "
                "an earlier version with another batch size. Use a fresh store."
            )


def _train_ranges(batch: int | str, recorded: list[TrainRange], n_train: int, batch_size: int) -> list[TrainRange]:
    number = max((r.number for r in recorded), default=0)
    pending = list(_pending(recorded, n_train, batch_size))
    if batch != "all":  # "next", or the number of the next batch
        pending = pending[:1]
    return [TrainRange(number + i, first, rows) for i, (first, rows) in enumerate(pending, start=1)]


def _check_batch_argument(batch: int | str, recorded: list[TrainRange]) -> int | None:
    """The recorded batch number asked for (None for "next", "all" and the next number); ValueError otherwise."""
    if batch in ("next", "all"):
        return None
    try:
        number = int(batch)
    except ValueError:
        raise ValueError(f'batch must be "next", "all" or a batch number, not {batch!r}') from None
    numbers = {r.number for r in recorded}
    if number in numbers:
        return number
    following = max(numbers, default=0) + 1
    if number != following:
        raise ValueError(
            f"train batch {number} does not exist: batches are numbered in load order, "
            f"{len(numbers)} are loaded and the next one is {following}"
        )
    return None


def load(
    engine: Engine,
    data: pd.DataFrame | RawSource,
    *,
    source: str,
    batch: int | str = "next",
    seed: int = 42,
    batch_size: int = 15_000,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    read_chunk: int = READ_CHUNK,
    insert_chunk: int = INSERT_CHUNK,
) -> list[LoadReport]:
    """Load validation and test (first time only) and train batch ``batch`` ("next", "all" or a number).

    ``data`` is a source to stream (``open_source``) or a frame of it; ``source`` names it in raw_batches.
    ``on_chunk(rows_done)`` is called after each ``insert_chunk`` rows written (one INSERT or LOAD DATA: see
    ``stores.bulk_insert``), inside the batch's transaction (on MySQL / MariaDB from the thread that writes; what
    it raises fails the batch). Raises ``SourceMismatchError`` (another source or seed: nothing written),
    ``LoadError`` (the store failed mid-batch: that batch is not kept) and ``ValueError`` (no such batch).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    src = data if isinstance(data, RawSource) else FrameSource(data, label=source)
    create_raw_schema(engine)
    existing = loaded_batches(engine)
    _check_same_source(existing, None, seed)
    recorded = _recorded_train(existing)
    asked = _check_batch_argument(batch, recorded)
    edges = _edges(engine, recorded)
    loaded = set(existing["batch_id"])
    missing = [split for split in WHOLE_SPLITS if split not in loaded]

    reports: list[LoadReport] = []
    if missing:
        stream = _Stream(src, seed, "split: " + ", ".join(missing), progress, frozenset(edges), read_chunk)
        reports += _load_whole_splits(engine, stream, source, seed, missing, existing, insert_chunk, on_chunk)
    else:
        stream = _Stream(src, seed, "checking the source", progress, frozenset(edges), read_chunk)
        for _ in stream:
            pass
        _check_same_source(existing, stream.fingerprint.hexdigest(), seed)
    _check_recorded(edges, stream)
    digest = stream.fingerprint.hexdigest()

    if asked is not None:
        return [*reports, LoadReport(train_batch_id(asked), "train", 0, True)]
    ranges = _train_ranges(batch, recorded, stream.counts["train"], batch_size)
    if not ranges and batch not in ("next", "all"):
        raise ValueError(f"train batch {batch} does not exist: the {len(recorded)} loaded batches hold all "
                         f"{stream.counts['train']} train rows")
    if not ranges:
        return [*reports, LoadReport(f"all {len(recorded)} train batches", "train", 0, True)]
    return [*reports, *_load_train(engine, src, ranges, source, seed, digest, progress, read_chunk, insert_chunk,
                                   on_chunk)]


def class_balance(engine: Engine) -> pd.DataFrame:
    """Rows per split and ``readmitted`` value in RawData (split x outcome table)."""
    query = select(raw_encounters.c.split, raw_encounters.c.readmitted, func.count().label("rows")).group_by(
        raw_encounters.c.split, raw_encounters.c.readmitted
    )
    with engine.connect() as conn:
        counts = pd.read_sql(query, conn)
    if counts.empty:
        return pd.DataFrame()
    return counts.pivot(index="split", columns="readmitted", values="rows").fillna(0).astype(int)
