"""Validation of raw data frames against the contract.

``validate(frame)`` returns the good rows, typed (integers as int64, text as str
with ``?`` kept as the missing marker), and the rejected rows, as text, with one
reason per row naming every failing column, e.g.
``time_in_hospital: wrong type (not an integer: 'abc'); race: value outside the allowed set ('Martian')``.

Ids are normalised here, once: an integer-shaped ``encounter_id`` or ``patient_nbr`` is read
as its canonical integer (``0123`` is ``123``), so duplicates are found on the normalised id and the
typed rows carry it (``canonical_ids`` is what the raw load's patient split hashes too). Rejected
rows keep the text as received.

The checks are a pandera schema built once from ``COLUMNS``; every check is
vectorised, so 100k rows validate in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from .columns import (
    COLUMN_NAMES,
    COLUMNS,
    ICD9_PATTERN,
    ID_COLUMNS,
    INTEGER_COLUMNS,
    MISSING,
    OPEN_CATEGORY_PATTERN,
    Column,
)

REASON = "reason"

WRONG_TYPE = "wrong type"
NOT_ALLOWED = "value outside the allowed set"
OUT_OF_RANGE = "value out of range"
MISSING_REQUIRED = "missing required field"
BAD_FORMAT = "malformed value"
DUPLICATE = "duplicate encounter_id"
TOO_LONG = "value too long"


class SchemaMismatchError(ValueError):
    """The frame lacks columns of the contract."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(f"the data lacks {len(missing)} column(s) of the contract: {', '.join(missing)}")


@dataclass(frozen=True)
class ValidationResult:
    valid: pd.DataFrame
    """Rows that satisfy the contract, typed."""
    rejected: pd.DataFrame
    """Rows that do not, as text, with a ``reason`` column."""

    @property
    def n_valid(self) -> int:
        return len(self.valid)

    @property
    def n_rejected(self) -> int:
        return len(self.rejected)


def as_text(series: pd.Series) -> pd.Series:
    """A column as the source writes it: text, missing (None, NaN, empty) as ``?``."""
    text = series.astype("str")
    if pd.api.types.is_float_dtype(series.dtype):  # 17.0 is the integer 17; 3.5 stays "3.5"
        integral = (series.notna() & (series == series.round())).to_numpy()
        text[integral] = series[integral].astype("int64").astype("str")
    missing = series.isna().to_numpy() | (text == "").to_numpy()
    return text.where(~missing, MISSING).astype("str")


def canonical_ids(series: pd.Series) -> pd.Series:
    """Ids as text in canonical form: an integer-shaped value loses its leading zeros (``0123`` -> ``123``,
    ``000`` -> ``0``); anything else (missing, ``abc``, ``-5``) is left as it is for validation to judge."""
    text = series.astype("str")
    digits = text.str.fullmatch(r"\d+").fillna(False).to_numpy(dtype=bool)
    if not digits.any():
        return text
    stripped = text[digits].str.lstrip("0")
    return text.mask(digits, stripped.where(stripped != "", "0"))


def _is_missing(s: pd.Series) -> pd.Series:
    return s == MISSING


def _integer_checks(col: Column) -> list[pa.Check]:
    lo = -np.inf if col.minimum is None else col.minimum
    hi = np.inf if col.maximum is None else col.maximum

    def integer_shaped(s: pd.Series) -> pd.Series:
        return _is_missing(s) | s.str.fullmatch(r"-?\d{1,19}")

    def within_bounds(s: pd.Series) -> pd.Series:
        number = pd.to_numeric(s.where(s.str.fullmatch(r"-?\d{1,19}"), None), errors="coerce")
        return number.isna() | number.between(lo, hi)

    checks = [pa.Check(integer_shaped, name=WRONG_TYPE, error=f"{WRONG_TYPE}: not an integer")]
    if col.kind == "code":
        allowed = {str(v) for v in col.allowed or ()}
        checks.append(
            pa.Check(lambda s: ~s.str.fullmatch(r"-?\d{1,19}") | s.isin(allowed), name=NOT_ALLOWED, error=NOT_ALLOWED)
        )
    else:
        checks.append(pa.Check(within_bounds, name=OUT_OF_RANGE, error=f"{OUT_OF_RANGE}: outside [{lo}, {hi}]"))
    return checks


def _checks(col: Column) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if not col.nullable:
        checks.append(pa.Check(lambda s: ~_is_missing(s), name=MISSING_REQUIRED, error=MISSING_REQUIRED))
    if col.max_length is not None:
        longest = col.max_length
        checks.append(
            pa.Check(lambda s: s.str.len() <= longest, name=TOO_LONG, error=f"{TOO_LONG} (max {longest})")
        )
    if col.is_integer:
        checks += _integer_checks(col)
    elif col.kind in ("category", "outcome"):
        allowed = set(col.allowed or ())
        checks.append(pa.Check(lambda s: _is_missing(s) | s.isin(allowed), name=NOT_ALLOWED, error=NOT_ALLOWED))
    elif col.kind == "open_category":
        checks.append(
            pa.Check(lambda s: _is_missing(s) | s.str.fullmatch(OPEN_CATEGORY_PATTERN.pattern),
                     name=BAD_FORMAT, error=f"{BAD_FORMAT}: not a category name")
        )
    elif col.kind == "icd9":
        checks.append(
            pa.Check(lambda s: _is_missing(s) | s.str.fullmatch(ICD9_PATTERN.pattern),
                     name=BAD_FORMAT, error=f"{BAD_FORMAT}: not an ICD-9 code")
        )
    if col.name == "encounter_id":
        checks.append(pa.Check(lambda s: ~s.duplicated(keep="first"), name=DUPLICATE, error=DUPLICATE))
    return checks


@lru_cache(maxsize=1)
def raw_schema() -> pa.DataFrameSchema:
    """The pandera schema of a raw frame in text form (see ``as_text``)."""
    return pa.DataFrameSchema(
        {c.name: pa.Column(checks=_checks(c), nullable=False) for c in COLUMNS},
        strict=False,
        name="diabetic_data",
    )


def to_typed(text: pd.DataFrame) -> pd.DataFrame:
    """Contract dtypes for valid rows in text form: int64 integers, str text (``?`` kept)."""
    typed = text.copy()
    for name in COLUMN_NAMES:
        typed[name] = text[name].astype("int64") if name in INTEGER_COLUMNS else text[name].astype("str")
    return typed


def validate(frame: pd.DataFrame) -> ValidationResult:
    """Split ``frame`` into valid rows (typed) and rejected rows (text + reason)."""
    missing = [c for c in COLUMN_NAMES if c not in frame.columns]
    if missing:
        raise SchemaMismatchError(missing)
    text = frame.reset_index(drop=True)  # positional labels: failure cases map back to one row each
    for name in COLUMN_NAMES:
        text[name] = as_text(text[name])
    received = text.copy()
    for name in ID_COLUMNS:
        text[name] = canonical_ids(text[name])
    reasons = pd.Series(None, index=text.index, dtype="object")
    try:
        raw_schema().validate(text, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
        crashed = cases[cases["index"].isna()]
        if len(crashed):  # a check that raised has not judged the rows: never let them through
            failed = crashed[["column", "check", "failure_case"]]
            raise RuntimeError(f"contract checks failed to run: {failed}") from exc
        order = {name: i for i, name in enumerate(COLUMN_NAMES)}
        cases = cases.assign(_order=cases["column"].map(order)).sort_values(["index", "_order"], kind="stable")
        messages = (
            cases["column"].astype(str) + ": " + cases["check"].astype(str)
            + " (" + cases["failure_case"].map(repr) + ")"
        )
        reasons = messages.groupby(cases["index"].astype(int)).agg("; ".join).reindex(text.index)
    bad = reasons.notna().to_numpy()
    text.index = received.index = frame.index
    rejected = received[bad].assign(**{REASON: reasons[bad].astype("str").to_numpy()})
    return ValidationResult(valid=to_typed(text[~bad]), rejected=rejected)
