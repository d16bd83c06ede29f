"""The prediction log: every answer the API gives, as the data node stores it (the Predictions store).

Declared once here, because two nodes meet on it: the API (node 3) appends rows, with an identity
that may only insert (``PREDICTIONS_DB_URL``), and the data node (node 1) reads them for drift of live
traffic and deletes what is older than the retention (``readmit_data.monitor``).

One row per encounter answered (a batch request gives one row per encounter, sharing its
``request_id``, in ``position`` order): when, who asked, which model version answered, the encounter as
received (``encounter``: JSON of the contract's input columns, by their contract names, null for
missing), and what was answered (probability and band, or ``scored`` false with the reason).
Requests refused (401, 413, 422, 503) are not predictions and are not logged: the API's metrics count
them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

from .encounter import ENCOUNTER_COLUMNS

PREDICTION_LOG_TABLE = "prediction_log"
ENDPOINTS = ("predict", "batch")
"""``endpoint``: ``POST /predict`` or ``POST /predict/batch``."""
ENCOUNTER_NAMES: tuple[str, ...] = tuple(c.name for c in ENCOUNTER_COLUMNS)
"""The keys of ``encounter`` (the input columns of the contract: what a request carries)."""

metadata = MetaData()

prediction_log = Table(
    PREDICTION_LOG_TABLE,
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(32), nullable=False),
    Column("position", Integer, nullable=False),
    # UTC, naive (MySQL DATETIME has no zone), microseconds: when the answer was given
    Column("predicted_at", DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
    Column("caller", String(64), nullable=True),
    Column("endpoint", String(16), nullable=False),
    Column("model_name", String(191), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("encounter_id", BigInteger, nullable=True),
    Column("patient_nbr", BigInteger, nullable=True),
    Column("encounter", Text, nullable=False),
    Column("scored", Boolean, nullable=False),
    Column("probability", Float(53), nullable=True),  # double precision (MySQL's FLOAT keeps 6 digits)
    Column("risk_band", String(16), nullable=True),
    Column("reason", Text, nullable=True),
    Column("history", String(32), nullable=True),
    Index("ix_prediction_log_predicted_at", "predicted_at"),
    Index("ix_prediction_log_request", "request_id", "position"),
)
"""The Predictions store's one table (``id`` increases with insertion: readers page by it)."""


def encounter_json(record: Mapping[str, Any]) -> str:
    """The ``encounter`` column of a request's record: its input columns only (history the API attached is not
    part of what was received), compact JSON."""
    return json.dumps({name: record.get(name) for name in ENCOUNTER_NAMES}, separators=(",", ":"),
                      allow_nan=False)


def encounters_frame(texts: Iterable[str]) -> pd.DataFrame:
    """``encounter`` values as a frame of the contract's input columns (None where missing): the encounters
    as the API received them, for comparison with clean rows."""
    rows = [json.loads(text) for text in texts]
    return pd.DataFrame.from_records(rows, columns=list(ENCOUNTER_NAMES))
