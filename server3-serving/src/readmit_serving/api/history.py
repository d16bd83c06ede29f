"""The patient-history lookup: a served encounter gets its patient's history from CleanData.

Before scoring, the API reads the patient's clean encounters (``HISTORY_DB_URL``, CleanData's
``clean_encounters``, by ``patient_nbr``: a read-only identity) and computes the history of the
encounter with the contract's code (``readmit_contract.history.history_after``): the same features
training read from ``patient_history``. The lookup never holds a prediction up for long:

- each patient's rows are cached for ``HISTORY_CACHE_SECONDS`` (new batches arrive in hours, not seconds);
- one query per request (every uncached patient of a batch at once) is given ``HISTORY_TIMEOUT_MS``;
- after a failure (store down, timeout), lookups pause for ``PAUSE_SECONDS``: requests do not queue up
  behind a dead database, and the one after the pause tries again.

When the lookup fails the model still answers, with history marked missing (the model was trained with
such rows), and the answer says so: each prediction's ``history`` is one of ``HISTORY_STATUSES``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from cachetools import TTLCache
from readmit_contract.history import (
    CLEAN_ENCOUNTERS_TABLE,
    ENCOUNTER,
    HISTORY_INPUTS,
    PATIENT,
    history_after,
    missing_history,
)
from sqlalchemy import column, create_engine, make_url, select, table
from sqlalchemy.engine import Engine

from . import metrics

log = logging.getLogger(__name__)

HistoryStatus = Literal["found", "first_encounter", "unavailable", "no_patient", "off", "not_used"]
HISTORY_STATUSES: dict[str, str] = {
    "found": "the patient's earlier encounters were found and used",
    "first_encounter": "the store holds no earlier encounter of this patient: scored as a first encounter",
    "unavailable": "the history store did not answer in time: scored without history (less accurate)",
    "no_patient": "no patient_nbr in the request: scored without history (less accurate)",
    "off": "this API has no history store configured (HISTORY_DB_URL): scored without history",
    "not_used": "the model being served does not use patient history",
}
PAUSE_SECONDS = 5.0
PATIENTS_PER_QUERY = 1_000
_ENCOUNTERS = table(CLEAN_ENCOUNTERS_TABLE, *(column(name) for name in HISTORY_INPUTS))


@dataclass(frozen=True)
class PatientRows:
    """A patient's clean encounters as the store held them, and their history after the last one."""

    rows: pd.DataFrame
    last_encounter: int | None
    after_all: dict[str, float]

    @classmethod
    def of(cls, rows: pd.DataFrame) -> PatientRows:
        last = int(rows[ENCOUNTER].max()) if len(rows) else None
        return cls(rows, last, history_after(rows))

    def history_before(self, encounter_id: Any) -> dict[str, float]:
        """History of the encounter ``encounter_id`` (None: a new encounter, after every known one)."""
        if encounter_id is None or self.last_encounter is None or int(encounter_id) > self.last_encounter:
            return self.after_all
        return history_after(self.rows[self.rows[ENCOUNTER] < int(encounter_id)])


def _engine(url: str, timeout_seconds: float) -> Engine:
    backend = make_url(url).get_backend_name()
    wait = max(1, round(timeout_seconds + 0.5))
    if backend == "sqlite":  # the embedded default: CleanData's file, read-only
        return create_engine(url, connect_args={"timeout": wait})
    if backend == "mysql":
        return create_engine(url, pool_size=4, max_overflow=0, pool_pre_ping=True, pool_recycle=3600,
                             connect_args={"connect_timeout": wait, "read_timeout": wait, "write_timeout": wait})
    return create_engine(url, pool_size=4, max_overflow=0, pool_pre_ping=True)


class HistoryLookup:
    """Patient history for served encounters (see the module docstring)."""

    def __init__(self, url: str | None, timeout_ms: int, cache_seconds: float, cache_patients: int = 50_000,
                 pause_seconds: float = PAUSE_SECONDS) -> None:
        self.timeout = timeout_ms / 1000
        self.pause_seconds = pause_seconds
        self.engine = _engine(url, self.timeout) if url else None
        self.cache: TTLCache[int, PatientRows] = TTLCache(maxsize=cache_patients, ttl=cache_seconds)
        self.paused_until = 0.0
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="history")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.dispose()

    def _query(self, patients: list[int]) -> dict[int, PatientRows]:
        assert self.engine is not None
        found: dict[int, PatientRows] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(patients), PATIENTS_PER_QUERY):
                part = patients[start : start + PATIENTS_PER_QUERY]
                query = select(*_ENCOUNTERS.c).where(_ENCOUNTERS.c[PATIENT].in_(part))
                frame = pd.DataFrame(conn.execute(query).all(), columns=list(HISTORY_INPUTS))
                for patient, rows in frame.groupby(PATIENT, sort=False):
                    found[int(patient)] = PatientRows.of(rows)
        empty = pd.DataFrame(columns=list(HISTORY_INPUTS))
        return {p: found.get(p) or PatientRows.of(empty) for p in patients}

    async def _fetch(self, patients: list[int]) -> dict[int, PatientRows] | None:
        """The patients' rows from the store, or None when it failed or took longer than the timeout."""
        if time.monotonic() < self.paused_until:
            return None
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            fetched = await asyncio.wait_for(loop.run_in_executor(self._executor, self._query, patients),
                                             self.timeout)
        except Exception as exc:  # noqa: BLE001 - any store failure means "no history", never an error answer
            self.paused_until = time.monotonic() + self.pause_seconds
            metrics.HISTORY_FAILURES.labels(reason="timeout" if isinstance(exc, TimeoutError) else "error").inc()
            log.warning("patient history unavailable for %.0f s: %s", self.pause_seconds,
                        "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}")
            return None
        metrics.HISTORY_QUERY_DURATION.observe(time.perf_counter() - started)
        for patient, rows in fetched.items():
            self.cache[patient] = rows
        return fetched

    async def attach(self, records: list[dict[str, Any]], model_uses_history: bool) -> list[str]:
        """Add each record's history (or missing history) to it, in place; returns each one's status."""
        if not model_uses_history:
            return self._count(["not_used"] * len(records))
        statuses: list[str | None] = [None] * len(records)
        known: dict[int, PatientRows] = {}
        wanted: list[int] = []
        for i, record in enumerate(records):
            patient = record.get(PATIENT)
            if patient is None:
                statuses[i] = "no_patient"
            elif self.engine is None:
                statuses[i] = "off"
            elif (cached := self.cache.get(int(patient))) is not None:
                known[int(patient)] = cached
            else:
                wanted.append(int(patient))
        if wanted:
            fetched = await self._fetch(sorted(set(wanted)))
            if fetched is not None:
                known.update(fetched)
        for i, record in enumerate(records):
            if statuses[i] is not None:
                record.update(missing_history())
                continue
            rows = known.get(int(record[PATIENT]))
            if rows is None:
                statuses[i] = "unavailable"
                record.update(missing_history())
                continue
            history = rows.history_before(record.get(ENCOUNTER))
            record.update(history)
            statuses[i] = "found" if history["hist_encounters"] > 0 else "first_encounter"
        return self._count([s for s in statuses if s is not None])

    @staticmethod
    def _count(statuses: list[str]) -> list[str]:
        for status in statuses:
            metrics.HISTORY_LOOKUPS.labels(status=status).inc()
        return statuses
