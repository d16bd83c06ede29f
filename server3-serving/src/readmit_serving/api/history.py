"""The patient-history lookup: a served encounter gets its patient's history from CleanData.

Before scoring, the API reads the patient's clean encounters (``HISTORY_DB_URL``, CleanData's
``clean_encounters``, by ``patient_nbr``: a read-only identity) and computes the history of the
encounter with the contract's code (``readmit_contract.history.cumulative_history``): the same features
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from cachetools import TTLCache
from readmit_contract.history import (
    CLEAN_ENCOUNTERS_TABLE,
    ENCOUNTER,
    HISTORY_INPUTS,
    HISTORY_NAMES,
    PATIENT,
    cumulative_history,
    empty_history,
    missing_history,
)
from sqlalchemy import column, create_engine, make_url, select, table
from sqlalchemy.engine import Engine

from . import metrics

log = logging.getLogger(__name__)

HistoryStatus = Literal["found", "first_encounter", "unavailable", "no_patient", "no_encounter", "off", "not_used"]
HISTORY_STATUSES: dict[str, str] = {
    "found": "the patient's earlier encounters were found and used",
    "first_encounter": "the store holds no earlier encounter of this patient: scored as a first encounter",
    "unavailable": "the history store did not answer in time: scored without history (less accurate)",
    "no_patient": "no patient_nbr in the request: scored without history (less accurate)",
    "no_encounter": "no encounter_id in the request (history is what came before that encounter): scored "
                    "without history (less accurate)",
    "off": "this API has no history store configured (HISTORY_DB_URL): scored without history",
    "not_used": "the model being served does not use patient history",
}
PAUSE_SECONDS = 5.0
PATIENTS_PER_QUERY = 1_000
_ENCOUNTERS = table(CLEAN_ENCOUNTERS_TABLE, *(column(name) for name in HISTORY_INPUTS))


@dataclass(frozen=True)
class PatientRows:
    """A patient's clean encounter ids (ascending) and the history once each of them was over: the history of
    an encounter is the row of the last stored encounter before it, found by binary search (no pandas on the
    request path)."""

    encounters: np.ndarray
    after: np.ndarray

    def history_before(self, encounter_id: int) -> dict[str, float]:
        earlier = int(np.searchsorted(self.encounters, encounter_id, side="left"))
        if earlier == 0:
            return empty_history()
        return dict(zip(HISTORY_NAMES, self.after[earlier - 1].tolist(), strict=True))


NO_ROWS = PatientRows(np.empty(0, dtype=np.int64), np.empty((0, len(HISTORY_NAMES))))


def patient_rows(frame: pd.DataFrame) -> dict[int, PatientRows]:
    """Per patient of ``frame`` (clean rows with ``HISTORY_INPUTS``), their ``PatientRows``: one vectorised
    pass for all of them."""
    if frame.empty:
        return {}
    table = cumulative_history(frame)
    patients = table[PATIENT].to_numpy(dtype=np.int64)
    encounters = table[ENCOUNTER].to_numpy(dtype=np.int64)
    after = table[list(HISTORY_NAMES)].to_numpy(dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, patients[1:] != patients[:-1]])
    ends = np.r_[starts[1:], len(patients)]
    return {int(patients[a]): PatientRows(encounters[a:b], after[a:b]) for a, b in zip(starts, ends, strict=True)}


def _failure(exc: BaseException) -> str:
    """A store failure in one line for the log: the driver's error, never the SQL or its parameters (patient
    numbers) nor the URL (its password)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).splitlines()[0] if str(orig) else ""
    return f"{type(orig).__name__}: {text}"[:300]


def _engine(url: str, timeout_seconds: float) -> Engine:
    backend = make_url(url).get_backend_name()
    wait = max(1, round(timeout_seconds + 0.5))
    # hide_parameters: an error never carries the patient numbers queried
    if backend == "sqlite":  # the embedded default: CleanData's file
        return create_engine(url, hide_parameters=True, connect_args={"timeout": wait})
    if backend == "mysql":
        return create_engine(url, hide_parameters=True, pool_size=4, max_overflow=0, pool_pre_ping=True,
                             pool_recycle=3600,
                             connect_args={"connect_timeout": wait, "read_timeout": wait, "write_timeout": wait})
    return create_engine(url, hide_parameters=True, pool_size=4, max_overflow=0, pool_pre_ping=True)


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
        parts = []
        with self.engine.connect() as conn:
            for start in range(0, len(patients), PATIENTS_PER_QUERY):
                query = select(*_ENCOUNTERS.c).where(
                    _ENCOUNTERS.c[PATIENT].in_(patients[start : start + PATIENTS_PER_QUERY]))
                parts.append(pd.DataFrame(conn.execute(query).all(), columns=list(HISTORY_INPUTS)))
        found = patient_rows(pd.concat(parts, ignore_index=True))
        return {p: found.get(p, NO_ROWS) for p in patients}

    def _keep(self, done: asyncio.Future) -> None:
        """Cache what a query fetched, also when it finished after its request stopped waiting."""
        if not done.cancelled() and done.exception() is None:
            metrics.HISTORY_QUERY_DURATION.observe(time.perf_counter() - done.started)  # type: ignore[attr-defined]
            for patient, rows in done.result().items():
                self.cache[patient] = rows

    async def _fetch(self, patients: list[int]) -> dict[int, PatientRows] | None:
        """The patients' rows from the store, or None when it failed or took longer than the timeout."""
        if time.monotonic() < self.paused_until:
            return None
        loop = asyncio.get_running_loop()
        query = loop.run_in_executor(self._executor, self._query, patients)
        query.started = time.perf_counter()  # type: ignore[attr-defined]
        query.add_done_callback(self._keep)
        try:
            return await asyncio.wait_for(asyncio.shield(query), self.timeout)
        except Exception as exc:  # noqa: BLE001 - any store failure means "no history", never an error answer
            self.paused_until = time.monotonic() + self.pause_seconds
            metrics.HISTORY_FAILURES.labels(reason="timeout" if isinstance(exc, TimeoutError) else "error").inc()
            log.warning("patient history unavailable for %.0f s: %s", self.pause_seconds,
                        "timed out" if isinstance(exc, TimeoutError) else _failure(exc))
            return None

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
            elif record.get(ENCOUNTER) is None:
                statuses[i] = "no_encounter"
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
            history = rows.history_before(int(record[ENCOUNTER]))
            record.update(history)
            statuses[i] = "found" if history["hist_encounters"] > 0 else "first_encounter"
        return self._count([s for s in statuses if s is not None])

    @staticmethod
    def _count(statuses: list[str]) -> list[str]:
        if len(statuses) == 1:
            metrics.HISTORY_LOOKUP_COUNTERS[statuses[0]].inc()
            return statuses
        for status, n in Counter(statuses).items():
            metrics.HISTORY_LOOKUP_COUNTERS[status].inc(n)
        return statuses
