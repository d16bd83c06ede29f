"""The feature transform: one scikit-learn transformer, fitted once, trained and served.

``EncounterFeatures`` turns encounters (a DataFrame, a list of records, or one
record: mappings of contract column name -> value) into a float matrix:

- ID columns and the outcome are dropped;
- counts pass through; prior utilisation is totalled;
- age bracket -> years (bracket midpoint); weight bracket -> pounds + a "known" flag;
- ICD-9 diagnoses -> clinical groups (one-hot per diagnosis slot) + "any diabetes";
- medications -> counts prescribed / changed / up / down, plus one-hot status
  for the drugs used often enough in the training data;
- closed categories -> one-hot over the contract's allowed values (binary ones
  -> a single indicator);
- hospital codes and open categories (payer, specialty) -> one-hot over the
  values seen at least ``min_category_count`` times when fitted; rarer and
  unseen values share an "other" column, ``?`` has its own "missing" column;
- patient history (``readmit_contract.history``), when the transform was fitted on
  rows that carry it: the history columns, ``history_known`` (0 when a row's history
  is missing: its columns then read 0) and the change in prior-year inpatient visits
  since the last earlier encounter.

The transform never builds a DataFrame: each column is mapped with precomputed
dictionaries, so one record costs microseconds, and a DataFrame and the same
rows sent as records give identical features.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .columns import (
    AGE_BRACKETS,
    COLUMNS,
    MEDICATION_STATUSES,
    MEDICATIONS,
    MISSING,
    WEIGHT_BRACKETS,
)
from .history import HISTORY_NAMES
from .icd9 import DIAGNOSIS_GROUPS, diagnosis_group

MISSING_LABEL = "missing"
OTHER_LABEL = "other"

COUNT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind == "integer")
PRIOR_VISIT_COLUMNS: tuple[str, ...] = ("number_outpatient", "number_emergency", "number_inpatient")
DIAGNOSIS_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind == "icd9")
LEARNED_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind in ("code", "open_category"))
_ORDINAL_COLUMNS = ("age", "weight")
CLOSED_COLUMNS: tuple[str, ...] = tuple(
    c.name
    for c in COLUMNS
    if c.kind == "category" and c.name not in _ORDINAL_COLUMNS and c.name not in MEDICATIONS
)
INPUT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.is_feature)

_AGE_YEARS = {bracket: 5.0 + 10.0 * i for i, bracket in enumerate(AGE_BRACKETS)}
_WEIGHT_LBS = {bracket: 12.5 + 25.0 * i for i, bracket in enumerate(WEIGHT_BRACKETS)}
_STATUS_CODE = {status: i for i, status in enumerate(MEDICATION_STATUSES)}  # No=0, Steady, Up, Down
_CHANGED_STATUSES = ("Up", "Down")
HISTORY_FEATURES: tuple[str, ...] = (*HISTORY_NAMES, "history_known", "hist_inpatient_trend")
"""Features of the history block (the last two derived: see ``EncounterFeatures._history``)."""
DERIVED_DESCRIPTIONS: dict[str, str] = {
    "prior_visits_total": "Visits of any kind in the year before the encounter",
    "meds_prescribed": "Diabetes medications given at this encounter",
    "meds_changed": "Diabetes medications whose dose changed",
    "meds_up": "Diabetes medications increased",
    "meds_down": "Diabetes medications decreased",
    "diag_any_diabetes": "A diabetes diagnosis among the three coded",
    "history_known": "Earlier encounters of this patient could be looked up",
    "hist_inpatient_trend": "Change in prior-year inpatient visits since the last earlier encounter",
}
"""Clinical words for the features the transform derives (not columns of the contract), for explanations."""
DERIVED_FROM: dict[str, str] = {"age_years": "age", "weight_known": "weight", "weight_lbs": "weight"}
"""Features that re-express one column (explained as that column)."""


def _is_missing(value: Any) -> bool:
    return value is None or value == MISSING or (isinstance(value, float) and value != value)


def column_values(X: Any, names: Sequence[str]) -> tuple[int, dict[str, Sequence[Any]]]:
    """Row count and, per column name, the values of ``X`` (missing as None or ``?``)."""
    if isinstance(X, pd.DataFrame):
        absent = [n for n in names if n not in X.columns]
        if absent:
            raise KeyError(f"columns missing from the frame: {absent}")
        values: dict[str, Sequence[Any]] = {}
        for name in names:
            series = X[name]
            array = series.to_numpy(dtype=object)
            if series.hasnans:
                array = np.where(series.isna().to_numpy(), None, array)
            values[name] = array
        return len(X), values
    records = [X] if isinstance(X, Mapping) else X
    # v == v is False only for NaN: a record taken from a frame may carry NaN for missing
    return len(records), {name: [v if v == v else None for v in (r.get(name) for r in records)] for name in names}


def history_matrix(X: Any, n: int) -> np.ndarray:
    """The history columns of ``X`` as an (n, len(HISTORY_NAMES)) float matrix, NaN where missing (a column
    absent from a frame, a key absent from a record, None)."""
    if isinstance(X, pd.DataFrame):
        out = np.full((n, len(HISTORY_NAMES)), np.nan)
        for j, name in enumerate(HISTORY_NAMES):
            if name in X.columns:
                out[:, j] = pd.to_numeric(X[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        return out
    records = [X] if isinstance(X, Mapping) else X
    rows = [[np.nan if (v := r.get(name)) is None else v for name in HISTORY_NAMES] for r in records]
    return np.asarray(rows, dtype=np.float64).reshape(n, len(HISTORY_NAMES))


RECORD_PATH_MAX_ROWS = 64
"""Records (not a DataFrame) up to this many are transformed row by row (``EncounterFeatures._transform_records``)."""
_GROUP_INDEX = {g: i for i, g in enumerate(DIAGNOSIS_GROUPS)}
_PRIOR_POSITIONS = tuple(COUNT_COLUMNS.index(c) for c in PRIOR_VISIT_COLUMNS)


def _present(value: Any) -> Any:
    """A record's value as ``column_values`` reads it: NaN (a value taken from a frame) is None."""
    return None if value != value else value


def _number(value: Any) -> float:
    """A count as ``np.asarray(..., dtype=float64)`` reads it (None and NaN: NaN)."""
    return np.nan if value is None else float(value)


def _with_missing(lookup: dict[Any, int], index: int) -> dict[Any, int]:
    lookup[None] = index
    lookup[MISSING] = index
    return lookup


class EncounterFeatures(TransformerMixin, BaseEstimator):
    """The contract's feature transform (see the module docstring)."""

    def __init__(self, min_category_count: int = 20, min_medication_count: int = 50) -> None:
        self.min_category_count = min_category_count
        self.min_medication_count = min_medication_count

    # -- fitting -----------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> EncounterFeatures:
        n, cols = column_values(X, INPUT_COLUMNS)
        if n == 0:
            raise ValueError("cannot fit the feature transform on zero rows")
        learned: dict[str, tuple[str, ...]] = {}
        for name in LEARNED_COLUMNS:
            counts = Counter(str(v) for v in cols[name] if not _is_missing(v))
            learned[name] = tuple(
                sorted(v for v, c in counts.items() if c >= self.min_category_count)
            )
        self.learned_categories_ = learned
        self.one_hot_medications_ = tuple(
            m
            for m in MEDICATIONS
            if sum(1 for v in cols[m] if v not in ("No", None, MISSING)) >= self.min_medication_count
        )
        # history is part of the model when the rows it learns from carry it (training's frames do)
        self.history_ = isinstance(X, pd.DataFrame) and all(name in X.columns for name in HISTORY_NAMES)
        self._build()
        self.n_features_in_ = len(INPUT_COLUMNS)
        return self

    def _build(self) -> None:
        """Feature names and the lookup tables of every one-hot block."""
        names: list[str] = [*COUNT_COLUMNS, "prior_visits_total", "age_years", "weight_known", "weight_lbs"]
        names += ["meds_prescribed", "meds_changed", "meds_up", "meds_down", "diag_any_diabetes"]
        blocks: list[tuple[str, int, dict[Any, int]]] = []

        def add_block(column: str, labels: Sequence[str], lookup: dict[Any, int]) -> None:
            blocks.append((column, len(names), lookup))
            names.extend(f"{column}={label}" for label in labels)

        for c in COLUMNS:
            if c.name not in CLOSED_COLUMNS:
                continue
            allowed = [str(v) for v in c.allowed or ()]
            if len(allowed) == 2 and not c.nullable:
                add_block(c.name, [allowed[1]], {allowed[1]: 0})
                continue
            labels = allowed + ([MISSING_LABEL] if c.nullable else [])
            lookup = {v: i for i, v in enumerate(allowed)}
            add_block(c.name, labels, _with_missing(lookup, len(allowed)) if c.nullable else lookup)
        for name in LEARNED_COLUMNS:
            categories = self.learned_categories_[name]
            lookup: dict[Any, int] = {}
            for i, v in enumerate(categories):
                lookup[v] = i
                if v.isdigit():  # hospital codes arrive as int or as text
                    lookup[int(v)] = i
            other = len(categories)
            add_block(name, [*categories, OTHER_LABEL, MISSING_LABEL], _with_missing(lookup, other + 1))
        for name in self.one_hot_medications_:
            statuses = MEDICATION_STATUSES[1:]
            add_block(name, list(statuses), {s: i for i, s in enumerate(statuses)})
        self._blocks = blocks
        self._other_index = {name: len(self.learned_categories_[name]) for name in LEARNED_COLUMNS}
        self._diag_offsets = {}
        for name in DIAGNOSIS_COLUMNS:
            self._diag_offsets[name] = len(names)
            names.extend(f"{name}={g}" for g in DIAGNOSIS_GROUPS)
        self._history_offset = len(names)
        self._record_plan = ([(name, self._diag_offsets[name]) for name in DIAGNOSIS_COLUMNS],
                             [(column, offset, lookup, self._other_index.get(column, -1))
                              for column, offset, lookup in blocks])
        if self.history_:
            names.extend(HISTORY_FEATURES)
        self.feature_names_ = tuple(names)

    _DERIVED = ("_blocks", "_other_index", "_diag_offsets", "_history_offset", "_record_plan")

    def __getstate__(self) -> dict[str, Any]:
        """Fitted state without the lookup tables (rebuilt on load): plain, skops-safe values."""
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in self._DERIVED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "learned_categories_" in state:
            if "history_" not in state:  # fitted before history existed: a model without it
                self.history_ = False
            self._build()

    # -- transforming --------------------------------------------------------------
    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return self._features(X)

    def transform_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``transform`` of a list of records, for a caller that checked once that the transform is fitted (the
        API, when it loads a model): without scikit-learn's per-call checks and output wrapper, which cost more
        than transforming one encounter."""
        return self._features(records)

    def _features(self, X: Any) -> np.ndarray:
        if not isinstance(X, pd.DataFrame) and (isinstance(X, Mapping) or len(X) <= RECORD_PATH_MAX_ROWS):
            return self._transform_records([X] if isinstance(X, Mapping) else X)
        n, cols = column_values(X, INPUT_COLUMNS)
        out = np.zeros((n, len(self.feature_names_)), dtype=np.float64)
        if n == 0:
            return out
        rows = np.arange(n)

        for j, name in enumerate(COUNT_COLUMNS):
            out[:, j] = np.asarray(cols[name], dtype=np.float64)
        j = len(COUNT_COLUMNS)
        out[:, j] = out[:, [COUNT_COLUMNS.index(c) for c in PRIOR_VISIT_COLUMNS]].sum(axis=1)
        out[:, j + 1] = [_AGE_YEARS.get(v, np.nan) for v in cols["age"]]
        weights = np.array([_WEIGHT_LBS.get(v, 0.0) for v in cols["weight"]])
        out[:, j + 2] = weights > 0
        out[:, j + 3] = weights

        statuses = np.array([[_STATUS_CODE.get(v, 0) for v in cols[m]] for m in MEDICATIONS])
        out[:, j + 4] = (statuses > 0).sum(axis=0)
        out[:, j + 5] = (statuses >= _STATUS_CODE["Up"]).sum(axis=0)
        out[:, j + 6] = (statuses == _STATUS_CODE["Up"]).sum(axis=0)
        out[:, j + 7] = (statuses == _STATUS_CODE["Down"]).sum(axis=0)

        any_diabetes = np.zeros(n, dtype=bool)
        group_index = {g: i for i, g in enumerate(DIAGNOSIS_GROUPS)}
        for name in DIAGNOSIS_COLUMNS:
            groups = [group_index[diagnosis_group(v)] for v in cols[name]]
            idx = np.fromiter(groups, dtype=np.intp, count=n)
            out[rows, self._diag_offsets[name] + idx] = 1.0
            any_diabetes |= idx == group_index["diabetes"]
        out[:, j + 8] = any_diabetes

        for column, offset, lookup in self._blocks:
            default = self._other_index.get(column, -1)
            idx = np.fromiter((lookup.get(v, default) for v in cols[column]), dtype=np.intp, count=n)
            hit = idx >= 0
            out[rows[hit], offset + idx[hit]] = 1.0
        if self.history_:
            self._history(X, n, out)
        return out

    def _transform_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``transform`` of a few records, row by row in plain Python: the same features as the column-wise path
        (a test holds them equal), without its hundred-odd numpy calls per call, which cost more than the rows
        themselves below a few hundred rows (what the API scores: one encounter, a micro-batch, a slice)."""
        n = len(records)
        out = np.zeros((n, len(self.feature_names_)), dtype=np.float64)
        if n == 0:
            return out
        dense: list[list[float]] = []
        hits: list[int] = []  # flat indices of the one-hot ones
        width = out.shape[1]
        diagnoses, blocks = self._record_plan
        prior = _PRIOR_POSITIONS
        up, down = _STATUS_CODE["Up"], _STATUS_CODE["Down"]
        status = _STATUS_CODE.get
        for i, record in enumerate(records):
            get = record.get
            base = i * width
            values = [_number(get(name)) for name in COUNT_COLUMNS]
            values.append(values[prior[0]] + values[prior[1]] + values[prior[2]])
            values.append(_AGE_YEARS.get(_present(get("age")), np.nan))
            weight = _WEIGHT_LBS.get(_present(get("weight")), 0.0)
            values.append(float(weight > 0))
            values.append(weight)
            codes = [status(_present(get(m)), 0) for m in MEDICATIONS]
            values.append(float(sum(1 for c in codes if c > 0)))
            values.append(float(sum(1 for c in codes if c >= up)))
            values.append(float(sum(1 for c in codes if c == up)))
            values.append(float(sum(1 for c in codes if c == down)))
            any_diabetes = False
            for name, offset in diagnoses:
                group = diagnosis_group(_present(get(name)))
                hits.append(base + offset + _GROUP_INDEX[group])
                any_diabetes = any_diabetes or group == "diabetes"
            values.append(float(any_diabetes))
            dense.append(values)
            for column, offset, lookup, default in blocks:
                index = lookup.get(_present(get(column)), default)
                if index >= 0:
                    hits.append(base + offset + index)
        out[:, : len(dense[0])] = dense
        out.flat[hits] = 1.0
        if self.history_:
            self._history(records, n, out)
        return out

    def _history(self, X: Any, n: int, out: np.ndarray) -> None:
        """The history block: a row whose history is missing (any history column NaN) gets zeros and
        ``history_known`` 0; the trend is this encounter's prior-year inpatient visits minus the last earlier
        encounter's (0 without an earlier encounter)."""
        history = history_matrix(X, n)
        known = ~np.isnan(history).any(axis=1)
        history[~known] = 0.0
        k = self._history_offset
        width = len(HISTORY_NAMES)
        out[:, k : k + width] = history
        out[:, k + width] = known
        earlier = history[:, HISTORY_NAMES.index("hist_encounters")] > 0
        inpatient = out[:, COUNT_COLUMNS.index("number_inpatient")]
        last = history[:, HISTORY_NAMES.index("hist_last_inpatient")]
        out[:, k + width + 1] = np.where(earlier, inpatient - last, 0.0)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)
