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

import pandas as pd
from readmit_contract import clean, validate
from readmit_contract.columns import COLUMN_NAMES, TEXT_MAX_LENGTH
from readmit_contract.reader import SOURCE_LINE
from readmit_contract.validate import DUPLICATE, REASON
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import DBAPIError

from .history_store import refresh_history
from .stores import (
    UNREADABLE,
    batch_lineage,
    bulk_insert,
    clean_encounters,
    create_clean_schema,
    create_raw_schema,
    db_timestamp,
    frame_rows,
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


def read_raw_batch(raw: Engine, batch_id: str) -> pd.DataFrame:
    """The rows of one raw batch, as text, in load order."""
    query = (
        select(*(raw_encounters.c[name] for name in COLUMN_NAMES), raw_encounters.c.source_line, raw_encounters.c.split)
        .where(raw_encounters.c.batch_id == batch_id)
        .order_by(raw_encounters.c.row_id)
    )
    with raw.connect() as conn:
        return pd.read_sql(query, conn)


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

    ``on_chunk(rows_done)`` is called after each INSERT of clean rows, inside the transaction. A store
    failing mid-batch raises ``PreprocessError``: nothing of the batch is kept and it stays pending.
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
    clean_columns = [c.name for c in clean_encounters.columns]
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
        clean_rows = cleaned.clean.assign(batch_id=batch_id, cleaned_at=at)
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
        with clean_store.begin() as conn:
            # a crashed earlier attempt cannot have left rows (one transaction), but be explicit
            conn.execute(delete(clean_encounters).where(clean_encounters.c.batch_id == batch_id))
            conn.execute(delete(rejected_rows).where(rejected_rows.c.batch_id == batch_id))
            bulk_insert(conn, clean_encounters, clean_columns, frame_rows(clean_rows[clean_columns]),
                        chunk=insert_chunk, on_chunk=on_chunk)
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
