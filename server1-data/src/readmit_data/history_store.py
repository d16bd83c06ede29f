"""CleanData's patient_history table: kept in step with clean_encounters, read by training.

Each cleaned batch refreshes the history of the patients it holds, inside the batch's own transaction
(``refresh_history``): a patient's encounters may arrive in any batch order, so every encounter of a
touched patient is recomputed from all of that patient's clean encounters, and the table always equals
``readmit_contract.history.history_table`` of clean_encounters (the store's tests check it).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from readmit_contract.history import HISTORY_INPUTS, HISTORY_NAMES, history_table
from sqlalchemy import Connection, Engine, delete, func, select

from .stores import bulk_insert, clean_encounters, frame_rows, patient_history

PATIENT_CHUNK = 1_000
"""Patients per SELECT / DELETE (an IN list every backend takes)."""
HISTORY_COLUMNS = ["encounter_id", "patient_nbr", *HISTORY_NAMES]


def _encounters_of(conn: Connection, patients: list[int]) -> pd.DataFrame:
    columns = [clean_encounters.c[name] for name in HISTORY_INPUTS]
    query = select(*columns).where(clean_encounters.c.patient_nbr.in_(patients))
    return pd.DataFrame(conn.execute(query).all(), columns=list(HISTORY_INPUTS))


def refresh_history(conn: Connection, patients: Iterable[int]) -> int:
    """Recompute patient_history for every clean encounter of ``patients`` (in the caller's transaction);
    returns the rows written."""
    unique = sorted({int(p) for p in patients})
    written = 0
    for start in range(0, len(unique), PATIENT_CHUNK):
        chunk = unique[start : start + PATIENT_CHUNK]
        conn.execute(delete(patient_history).where(patient_history.c.patient_nbr.in_(chunk)))
        encounters = _encounters_of(conn, chunk)
        if encounters.empty:
            continue
        table = history_table(encounters)
        bulk_insert(conn, patient_history, HISTORY_COLUMNS, frame_rows(table[HISTORY_COLUMNS]))
        written += len(table)
    return written


def backfill_history(engine: Engine) -> None:
    """Build patient_history for a store whose clean rows predate it (empty table, clean rows present)."""
    with engine.connect() as conn:
        has_history = conn.execute(select(func.count()).select_from(patient_history)).scalar_one()
        if has_history:
            return
        patients = [row[0] for row in conn.execute(select(clean_encounters.c.patient_nbr).distinct())]
    if patients:
        with engine.begin() as conn:
            refresh_history(conn, patients)
