"""The prediction target and the encounters that are out of scope.

Target: readmission within 30 days, ``readmitted == "<30"``. The original
three-valued ``readmitted`` stays in raw data; clean data carries both.

Encounters that end in death or hospice cannot be readmitted; they are excluded
from training and scoring (Strack et al., 2014).
"""

from __future__ import annotations

import pandas as pd

from .columns import BY_NAME, OUTCOME_COLUMN

TARGET = "readmitted_30d"
"""Name of the binary target column in clean data (1: readmitted within 30 days)."""

POSITIVE_OUTCOME = "<30"

EXCLUDED_DISCHARGE_DISPOSITIONS: frozenset[int] = frozenset({11, 13, 14, 19, 20, 21})
"""Expired (11, 19, 20, 21) or discharged to hospice (13, 14)."""


def target_from_outcome(readmitted: pd.Series) -> pd.Series:
    """Binary target (int8) from the three-valued ``readmitted`` column."""
    return (readmitted.astype("str") == POSITIVE_OUTCOME).astype("int8").rename(TARGET)


def is_excluded(discharge_disposition_id: pd.Series) -> pd.Series:
    """True for encounters that cannot be readmitted (death, hospice)."""
    return pd.to_numeric(discharge_disposition_id, errors="coerce").isin(EXCLUDED_DISCHARGE_DISPOSITIONS)


def excluded_reason(discharge_disposition_id: int) -> str:
    label = BY_NAME["discharge_disposition_id"].labels.get(int(discharge_disposition_id), "?")
    return f"discharge_disposition_id {discharge_disposition_id} ({label}): cannot be readmitted"


def is_scorable(record: dict) -> bool:
    """Whether one encounter (a mapping of column -> value) is in scope for a prediction."""
    value = record.get("discharge_disposition_id")
    return value is None or int(value) not in EXCLUDED_DISCHARGE_DISPOSITIONS


__all__ = [
    "TARGET",
    "POSITIVE_OUTCOME",
    "OUTCOME_COLUMN",
    "EXCLUDED_DISCHARGE_DISPOSITIONS",
    "target_from_outcome",
    "is_excluded",
    "excluded_reason",
    "is_scorable",
]
