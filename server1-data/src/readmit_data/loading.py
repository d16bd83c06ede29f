"""Raw loads into the RawData store: the patient split and the train batches.

The first load assigns every encounter to train / validation / test (70/15/15) by
patient, deterministically from a seed (a patient's split is a hash of seed and
patient_nbr, so a patient never crosses splits), and stores validation and test
whole. Train rows, in source order, are loaded in batches of ``batch_size`` rows
(the last one smaller), one batch per run, as new data arriving over time.

Each batch is one transaction: a failure leaves no partial batch. Loading a batch
that is already there adds 0 rows and says so.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from readmit_contract import dataset, synthetic
from readmit_contract.columns import COLUMN_NAMES
from sqlalchemy import Engine, func, select
from tqdm.auto import tqdm

from .stores import bulk_insert, create_raw_schema, db_timestamp, frame_rows, raw_batches, raw_encounters, utcnow

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_FRACTIONS: tuple[float, ...] = (0.70, 0.15, 0.15)
WHOLE_SPLITS: tuple[str, ...] = ("validation", "test")
INSERT_CHUNK = 2_000


class SourceMismatchError(RuntimeError):
    """The store holds batches of another source or split seed than this load's."""


def train_batch_id(number: int) -> str:
    return f"train-{number:04d}"


def assign_splits(patient_nbr: pd.Series, seed: int) -> np.ndarray:
    """Split name per row, from a seeded hash of patient_nbr (same patient, same split)."""
    key = hashlib.sha256(str(seed).encode()).hexdigest()[:16]
    hashed = pd.util.hash_pandas_object(patient_nbr.astype("str"), index=False, hash_key=key).to_numpy()
    u = hashed / float(2**64)
    bounds = np.cumsum(SPLIT_FRACTIONS)[:-1]
    return np.asarray(SPLITS, dtype=object)[np.searchsorted(bounds, u, side="right")]


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a raw frame (cheap: pandas row hashes)."""
    hashes = pd.util.hash_pandas_object(frame[list(COLUMN_NAMES)], index=False).to_numpy()
    return hashlib.sha256(hashes.tobytes()).hexdigest()


def read_source(source: str, cache_dir: str | Path = dataset.DEFAULT_CACHE_DIR) -> pd.DataFrame:
    """Raw frame (text) from "download", "synthetic:ROWS[:SEED]" or a local path."""
    if source.startswith("synthetic:"):
        parts = source.split(":")
        rows, seed = int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
        return synthetic.generate(rows, seed=seed)
    return dataset.load_raw(source, cache_dir=cache_dir)


@dataclass(frozen=True)
class SplitPlan:
    """The source with its split assignment, and the train batches it makes."""

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
        rate = self.rows_added / self.seconds if self.seconds else float("inf")
        return f"{self.batch_id}: {self.rows_added} {self.split} rows loaded in {self.seconds:.2f} s ({rate:,.0f} rows/s)"


def loaded_batches(engine: Engine) -> pd.DataFrame:
    """The raw_batches table (one row per loaded batch)."""
    with engine.connect() as conn:
        return pd.read_sql(select(raw_batches).order_by(raw_batches.c.batch_id), conn)


def raw_counts(engine: Engine) -> dict[str, int]:
    """Rows per split in RawData."""
    with engine.connect() as conn:
        rows = conn.execute(select(raw_encounters.c.split, func.count()).group_by(raw_encounters.c.split)).all()
    return {split: int(n) for split, n in rows}


def _check_same_source(existing: pd.DataFrame, plan: SplitPlan) -> None:
    if existing.empty:
        return
    fingerprints = set(existing["source_fingerprint"])
    seeds = set(existing["split_seed"])
    if fingerprints != {plan.fingerprint} or seeds != {plan.seed}:
        raise SourceMismatchError(
            "RawData already holds batches of another source or split seed "
            f"(seeds {sorted(seeds)}); loading this one would mix splits. Use a fresh store."
        )


def insert_batch(
    engine: Engine,
    batch_id: str,
    split: str,
    number: int,
    rows: pd.DataFrame,
    source: str,
    plan: SplitPlan,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> LoadReport:
    """Insert one batch in one transaction (nothing of it stays if any part fails)."""
    started = time.perf_counter()
    now = utcnow()
    columns = [*COLUMN_NAMES, "split", "batch_id", "loaded_at"]
    records = frame_rows(rows[[*COLUMN_NAMES, "split"]].assign(batch_id=batch_id, loaded_at=db_timestamp(now)))
    with engine.begin() as conn:
        conn.execute(
            raw_batches.insert().values(
                batch_id=batch_id, split=split, batch_number=number, rows=len(records), source=source[:255],
                source_fingerprint=plan.fingerprint, split_seed=plan.seed, loaded_at=now,
            )
        )
        with tqdm(total=len(records), desc=batch_id, unit="rows", disable=not progress, leave=False) as bar:

            def chunk_done(rows_done: int) -> None:
                bar.update(rows_done - bar.n)
                if on_chunk is not None:
                    on_chunk(rows_done)

            bulk_insert(conn, raw_encounters, columns, records, chunk=INSERT_CHUNK, on_chunk=chunk_done)
    return LoadReport(batch_id, split, len(records), False, time.perf_counter() - started)


def _train_numbers(batch: int | str, plan: SplitPlan, loaded: set[str]) -> Iterable[int]:
    all_numbers = range(1, plan.n_train_batches + 1)
    if batch == "all":
        return [n for n in all_numbers if train_batch_id(n) not in loaded]
    if batch == "next":
        pending = [n for n in all_numbers if train_batch_id(n) not in loaded]
        return pending[:1]
    number = int(batch)
    if number not in all_numbers:
        raise ValueError(f"train batch {number} does not exist: there are {plan.n_train_batches}")
    return [number]


def load(
    engine: Engine,
    frame: pd.DataFrame,
    *,
    source: str,
    batch: int | str = "next",
    seed: int = 42,
    batch_size: int = 15_000,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> list[LoadReport]:
    """Load validation and test (first time only) and train batch ``batch`` ("next", "all" or a number)."""
    create_raw_schema(engine)
    plan = SplitPlan.of(frame, batch_size, seed)
    existing = loaded_batches(engine)
    _check_same_source(existing, plan)
    loaded = set(existing["batch_id"])
    reports: list[LoadReport] = []
    for split in WHOLE_SPLITS:
        if split in loaded:
            continue
        reports.append(insert_batch(engine, split, split, 0, plan.rows(split), source, plan, progress, on_chunk))
    numbers = list(_train_numbers(batch, plan, loaded))
    if not numbers:
        reports.append(LoadReport(f"all {plan.n_train_batches} train batches", "train", 0, True))
    for number in numbers:
        batch_id = train_batch_id(number)
        if batch_id in loaded:
            reports.append(LoadReport(batch_id, "train", 0, True))
            continue
        reports.append(
            insert_batch(engine, batch_id, "train", number, plan.train_batch(number), source, plan, progress, on_chunk)
        )
    return reports


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
