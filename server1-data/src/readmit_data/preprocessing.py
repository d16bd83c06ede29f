"""RawData -> CleanData: validate each new raw batch with the contract and clean it.

A batch is pending when it is in RawData.raw_batches but not in
CleanData.batch_lineage. Each batch is processed in one CleanData transaction:
clean rows, rejected rows (with reasons) and the lineage record land together or
not at all, so a failed run leaves nothing behind and a re-run processes exactly
the batches still pending. With nothing new, nothing changes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import pandas as pd
from readmit_contract import clean, validate
from readmit_contract.columns import COLUMN_NAMES
from readmit_contract.validate import REASON
from sqlalchemy import Engine, delete, func, select

from .stores import (
    batch_lineage,
    clean_encounters,
    create_clean_schema,
    create_raw_schema,
    raw_batches,
    raw_encounters,
    bulk_insert,
    db_timestamp,
    frame_rows,
    rejected_rows,
    utcnow,
)


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
    order = {"validation": 0, "test": 1, "train": 2}
    pending = [row for row in loaded if row.batch_id not in done]
    return [row.batch_id for row in sorted(pending, key=lambda r: (order.get(r.split, 3), r.batch_number))]


def read_raw_batch(raw: Engine, batch_id: str) -> pd.DataFrame:
    """The rows of one raw batch, as text, in load order."""
    query = (
        select(*(raw_encounters.c[name] for name in COLUMN_NAMES), raw_encounters.c.split)
        .where(raw_encounters.c.batch_id == batch_id)
        .order_by(raw_encounters.c.row_id)
    )
    with raw.connect() as conn:
        return pd.read_sql(query, conn)


def preprocess_batch(raw: Engine, clean_store: Engine, batch_id: str, run_id: str | None = None) -> Lineage:
    """Validate and clean one raw batch into CleanData (one transaction); idempotent."""
    started = time.perf_counter()
    with clean_store.connect() as conn:
        done = conn.execute(select(batch_lineage).where(batch_lineage.c.batch_id == batch_id)).first()
    if done is not None:
        values = {k: getattr(done, k) for k in Lineage.__dataclass_fields__}
        return Lineage(**values)
    with raw.connect() as conn:
        split = conn.execute(select(raw_batches.c.split).where(raw_batches.c.batch_id == batch_id)).scalar_one()
    frame = read_raw_batch(raw, batch_id)
    result = validate(frame)
    cleaned = clean(result.valid)
    now = utcnow()

    clean_rows = cleaned.clean.assign(batch_id=batch_id, cleaned_at=db_timestamp(now))
    clean_columns = [c.name for c in clean_encounters.columns]
    rejected = [
        (batch_id, str(row["encounter_id"])[:64], row[REASON], json.dumps({k: row[k] for k in COLUMN_NAMES}),
         db_timestamp(now))
        for row in result.rejected.to_dict("records")
    ]
    lineage = Lineage(
        batch_id=batch_id,
        split=split,
        rows_in=len(frame),
        rows_out=len(clean_rows),
        rows_rejected=result.n_rejected,
        rows_excluded=len(cleaned.excluded),
        seconds=0.0,
        run_id=run_id,
    )
    with clean_store.begin() as conn:
        # a crashed earlier attempt cannot have left rows (one transaction), but be explicit
        conn.execute(delete(clean_encounters).where(clean_encounters.c.batch_id == batch_id))
        conn.execute(delete(rejected_rows).where(rejected_rows.c.batch_id == batch_id))
        bulk_insert(conn, clean_encounters, clean_columns, frame_rows(clean_rows[clean_columns]))
        bulk_insert(conn, rejected_rows, ["batch_id", "encounter_id", "reason", "row_json", "rejected_at"], rejected)
        seconds = time.perf_counter() - started
        lineage = Lineage(**{**asdict(lineage), "seconds": seconds})
        conn.execute(batch_lineage.insert().values(**asdict(lineage), processed_at=utcnow()))
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
