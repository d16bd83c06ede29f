"""RawData -> CleanData: validate each new raw batch with the contract and clean it.

A batch is pending when it is in RawData.raw_batches but not in
CleanData.batch_lineage. Each batch is processed in one CleanData transaction:
clean rows, rejected rows (with reasons and source lines), the patient history of the batch's
patients (``history_store``) and the lineage record land
together or not at all, so a failed run (a database gone mid-batch included) leaves
nothing behind and a re-run processes exactly the batches still pending. With nothing
new, nothing changes.

Rejected rows: what the contract refuses (reason per column), an encounter_id already
clean in another batch (the normalised id: ``0123`` repeats ``123``), and the batch
``unreadable``: the source lines the raw load could not read as rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from readmit_contract import clean, validate
from readmit_contract.columns import COLUMN_NAMES, TEXT_MAX_LENGTH
from readmit_contract.reader import SOURCE_LINE
from readmit_contract.validate import DUPLICATE, REASON
from sqlalchemy import Connection, Engine, delete, func, select
from sqlalchemy.exc import DBAPIError

from .history_store import refresh_history
from .stores import (
    UNREADABLE,
    batch_lineage,
    bulk_engine,
    bulk_insert,
    clean_encounters,
    create_clean_schema,
    create_raw_schema,
    db_timestamp,
    raw_batches,
    raw_encounters,
    raw_rejected,
    rejected_rows,
    store_failure,
    utcnow,
)

INSERT_CHUNK = 5_000
REJECTED_COLUMNS = ["batch_id", "encounter_id", "reason", "row_json", "rejected_at", "source_line"]


class PreprocessError(RuntimeError):
    """A store failed while a batch was being cleaned: nothing of the batch is kept, it stays pending."""


@dataclass(frozen=True)
class Lineage:
    batch_id: str
    split: str
    rows_in: int
    rows_out: int
    rows_rejected: int
    rows_excluded: int
    seconds: float
    run_id: str | None = None


def pending_batches(raw: Engine, clean_store: Engine) -> list[str]:
    """Raw batch ids not yet cleaned, validation and test first, then train in order."""
    create_raw_schema(raw)
    create_clean_schema(clean_store)
    with raw.connect() as conn:
        loaded = conn.execute(select(raw_batches.c.batch_id, raw_batches.c.split, raw_batches.c.batch_number)).all()
    with clean_store.connect() as conn:
        done = set(conn.execute(select(batch_lineage.c.batch_id)).scalars())
    order = {"validation": 0, "test": 1, "train": 2, UNREADABLE: 3}
    pending = [row for row in loaded if row.batch_id not in done]
    return [row.batch_id for row in sorted(pending, key=lambda r: (order.get(r.split, 3), r.batch_number))]


RAW_READ = [*COLUMN_NAMES, SOURCE_LINE, "split"]
_FIELD_END = 31
"""Joined reads: the character (unit separator) between a row's fields."""
_NULL_FIELD = 30
"""Joined reads: the character (record separator) standing for NULL."""


def read_raw_batch(raw: Engine, batch_id: str) -> pd.DataFrame:
    """The rows of one raw batch, as text, in load order (``pd.read_sql``'s frame: str columns, missing as NaN)."""
    with raw.connect() as conn:
        if conn.dialect.name in ("mysql", "mariadb"):
            joined = _read_joined(conn, batch_id)
            if joined is not None:
                return joined
        query = (
            select(*(raw_encounters.c[name] for name in RAW_READ))
            .where(raw_encounters.c.batch_id == batch_id)
            .order_by(raw_encounters.c.row_id)
        )
        return pd.read_sql(query, conn)


def _read_joined(conn: Connection, batch_id: str) -> pd.DataFrame | None:
    """``read_raw_batch`` on MySQL / MariaDB: each row comes as one value, its fields joined by the server
    (``CONCAT_WS``, a mark for NULL), and is split by Arrow: the driver's per-field work (most of a plain read) is
    gone. None when the rows cannot be told apart that way (a value holding the separator, or being the NULL mark,
    or a column all NULL): read them plainly then."""
    quote = conn.dialect.identifier_preparer.quote
    nullable = [raw_encounters.c[name].nullable for name in RAW_READ]
    fields = ", ".join(f"IFNULL({quote(name)}, CHAR({_NULL_FIELD} USING utf8mb4))" if can_be_null else quote(name)
                       for name, can_be_null in zip(RAW_READ, nullable, strict=True))
    joined = f"CONCAT_WS(CHAR({_FIELD_END} USING utf8mb4), {fields})"
    # the SQL's names are the table's own columns, quoted; the batch is a parameter
    values = conn.exec_driver_sql(
        f"SELECT {joined} FROM raw_encounters WHERE batch_id = %s ORDER BY row_id", (batch_id,)).scalars().all()  # noqa: S608
    if not values or not isinstance(values[0], str):
        return None
    rows, width = len(values), len(RAW_READ)
    parts = pc.split_pattern(pa.array(values, type=pa.large_string()), chr(_FIELD_END))
    if not pc.all(pc.equal(pc.list_value_length(parts), width)).as_py():
        return None
    flat = pc.list_flatten(parts)
    columns: dict[str, pa.Array] = {}
    marked: dict[str, int] = {}
    for position, (name, can_be_null) in enumerate(zip(RAW_READ, nullable, strict=True)):
        column = flat.take(pa.array(np.arange(position, rows * width, width)))
        if can_be_null:
            is_null = pc.equal(column, chr(_NULL_FIELD))
            if marks := pc.sum(is_null).as_py():
                marked[name] = marks
                column = pc.if_else(is_null, pa.scalar(None, column.type), column)
        columns[name] = column
    if marked:  # the marks must be the column's NULLs, not values equal to the mark
        counts = ", ".join(f"COUNT(*) - COUNT({quote(name)})" for name in marked)
        nulls = conn.exec_driver_sql(
            f"SELECT {counts} FROM raw_encounters WHERE batch_id = %s", (batch_id,)).one()  # noqa: S608
        if list(nulls) != list(marked.values()) or rows in marked.values():
            return None
    return pd.DataFrame({
        name: (pc.cast(column, pa.float64() if name in marked else pa.int64()).to_numpy(zero_copy_only=False)
               if name == SOURCE_LINE else column.to_pandas())
        for name, column in columns.items()
    })


def _already_clean(clean_store: Engine, ids: pd.Series, batch_id: str) -> dict[int, str]:
    """encounter_id -> batch of those ``ids`` already clean in another batch."""
    found: dict[int, str] = {}
    values = sorted({int(v) for v in ids})
    with clean_store.connect() as conn:
        for start in range(0, len(values), 5_000):
            part = values[start : start + 5_000]
            found.update(conn.execute(
                select(clean_encounters.c.encounter_id, clean_encounters.c.batch_id)
                .where(clean_encounters.c.encounter_id.in_(part), clean_encounters.c.batch_id != batch_id)
            ).all())
    return found


def _plain(value: object) -> object:
    """A value for JSON and the driver: None for every kind of missing (None, NaN, pd.NA)."""
    return None if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)) else value


def _source_line(value: object) -> int | None:
    value = _plain(value)
    return None if value is None else int(value)


def _rejected_records(batch_id: str, rejected: pd.DataFrame, at: str) -> list[tuple]:
    return [
        (batch_id, None if _plain(row["encounter_id"]) is None else str(row["encounter_id"])[:TEXT_MAX_LENGTH],
         row[REASON], json.dumps({k: _plain(row[k]) for k in COLUMN_NAMES}), at, _source_line(row.get(SOURCE_LINE)))
        for row in rejected.to_dict("records")
    ]


def _unreadable_records(raw: Engine, batch_id: str, at: str) -> list[tuple]:
    query = select(raw_rejected.c.source_line, raw_rejected.c.reason, raw_rejected.c.line_text).where(
        raw_rejected.c.batch_id == batch_id).order_by(raw_rejected.c.source_line)
    with raw.connect() as conn:
        lines = conn.execute(query).all()
    return [(batch_id, None, f"line {line}: {reason}", json.dumps({"source_line": line, "line": text}), at, line)
            for line, reason, text in lines]


def preprocess_batch(
    raw: Engine,
    clean_store: Engine,
    batch_id: str,
    run_id: str | None = None,
    on_chunk: Callable[[int], None] | None = None,
    insert_chunk: int = INSERT_CHUNK,
) -> Lineage:
    """Validate and clean one raw batch into CleanData (one transaction); idempotent.

    ``on_chunk(rows_done)`` is called after each ``insert_chunk`` clean rows written (one INSERT or LOAD DATA: see
    ``stores.bulk_insert``), inside the transaction. A store failing mid-batch raises ``PreprocessError``: nothing
    of the batch is kept and it stays pending.
    """
    started = time.perf_counter()
    with clean_store.connect() as conn:
        done = conn.execute(select(batch_lineage).where(batch_lineage.c.batch_id == batch_id)).first()
    if done is not None:
        values = {k: getattr(done, k) for k in Lineage.__dataclass_fields__}
        return Lineage(**values)
    with raw.connect() as conn:
        split = conn.execute(select(raw_batches.c.split).where(raw_batches.c.batch_id == batch_id)).scalar_one()
    at = db_timestamp(utcnow())
    clean_columns = [c.name for c in clean_encounters.columns if c.name not in ("batch_id", "cleaned_at")]
    if split == UNREADABLE:
        rejected = _unreadable_records(raw, batch_id, at)
        clean_rows = pd.DataFrame(columns=clean_columns)
        rows_in, excluded = len(rejected), 0
    else:
        frame = read_raw_batch(raw, batch_id)
        result = validate(frame)
        valid = result.valid
        elsewhere = _already_clean(clean_store, valid["encounter_id"], batch_id)
        repeated = valid["encounter_id"].isin(list(elsewhere)).to_numpy()
        duplicates = frame.loc[valid.index[repeated]].assign(**{REASON: [
            f"encounter_id: {DUPLICATE} (already clean in batch {elsewhere[int(i)]}) ({str(i)!r})"
            for i in valid.loc[repeated, "encounter_id"]
        ]})
        cleaned = clean(valid[~repeated])
        clean_rows = cleaned.clean
        rejected = _rejected_records(batch_id, pd.concat([result.rejected, duplicates]).sort_index(), at)
        rows_in, excluded = len(frame), len(cleaned.excluded)
    lineage = Lineage(
        batch_id=batch_id,
        split=split,
        rows_in=rows_in,
        rows_out=len(clean_rows),
        rows_rejected=len(rejected),
        rows_excluded=excluded,
        seconds=0.0,
        run_id=run_id,
    )
    try:
        with bulk_engine(clean_store).begin() as conn:
            # a crashed earlier attempt cannot have left rows (one transaction), but be explicit
            conn.execute(delete(clean_encounters).where(clean_encounters.c.batch_id == batch_id))
            conn.execute(delete(rejected_rows).where(rejected_rows.c.batch_id == batch_id))
            bulk_insert(conn, clean_encounters, clean_columns, clean_rows, chunk=insert_chunk, on_chunk=on_chunk,
                        constants={"batch_id": batch_id, "cleaned_at": at})
            bulk_insert(conn, rejected_rows, REJECTED_COLUMNS, rejected, chunk=insert_chunk)
            if len(clean_rows):
                refresh_history(conn, clean_rows["patient_nbr"].to_numpy())
            seconds = time.perf_counter() - started
            lineage = Lineage(**{**asdict(lineage), "seconds": seconds})
            conn.execute(batch_lineage.insert().values(**asdict(lineage), processed_at=utcnow()))
    except DBAPIError as exc:
        raise PreprocessError(
            f"{batch_id} not cleaned: the CleanData store failed ({store_failure(exc)}). The batch is all or "
            "nothing: nothing of it is kept, it stays pending and the next run cleans it."
        ) from exc
    return lineage


def preprocess_pending(raw: Engine, clean_store: Engine, run_id: str | None = None) -> list[Lineage]:
    """Process every pending batch, oldest first."""
    return [preprocess_batch(raw, clean_store, b, run_id) for b in pending_batches(raw, clean_store)]


def clean_counts(clean_store: Engine) -> dict[str, int]:
    """Clean rows per split."""
    with clean_store.connect() as conn:
        rows = conn.execute(
            select(clean_encounters.c.split, func.count()).group_by(clean_encounters.c.split)
        ).all()
    return {split: int(n) for split, n in rows}


def lineage_table(clean_store: Engine) -> pd.DataFrame:
    with clean_store.connect() as conn:
        return pd.read_sql(select(batch_lineage).order_by(batch_lineage.c.processed_at), conn)
