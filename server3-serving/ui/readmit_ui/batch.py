"""Scoring a CSV of encounters through POST /predict/batch.

The CSV has the raw format of ``diabetic_data.csv``: the contract's column names, ``?``
(or an empty cell) for missing. Identifiers, the outcome (``readmitted``) and the fields
with a default may be absent; any other column is kept in the output untouched. Rows are
checked with the contract's validator first: rejected rows are reported with their
reasons and not sent; the others are sent (their features only) in chunks.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from readmit_contract import SchemaMismatchError, validate
from readmit_contract.columns import COLUMNS, MISSING
from readmit_contract.encounter import json_encounters
from readmit_contract.validate import REASON

from .client import ApiClient

SCORE_COLUMNS = ("probability", "risk_band", "scored", "reason", "model_version")
"""Columns appended to the uploaded rows."""
MAX_CHUNK = 1000


@dataclass(frozen=True)
class BatchResult:
    scored: pd.DataFrame
    """Every uploaded row, its columns as uploaded, then ``SCORE_COLUMNS`` (rejected rows: not scored)."""
    rejected: pd.DataFrame
    """One line per row the contract rejected: ``row`` (1 = first data row), ``reason``."""

    @property
    def n_sent(self) -> int:
        return len(self.scored) - len(self.rejected)

    def to_csv(self) -> bytes:
        return self.scored.to_csv(index=False).encode("utf-8")


def read_csv(data: bytes) -> pd.DataFrame:
    """The uploaded bytes as text cells, exactly as written (no NA guessing)."""
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8-sig")


def _for_validation(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with placeholders for the columns a scoring file may omit (never sent to the API)."""
    absent = [c for c in COLUMNS if c.name not in frame.columns]
    lacking = [c.name for c in absent if c.is_feature and c.required]
    if lacking:
        raise SchemaMismatchError(lacking)
    filled = frame.copy()
    for col in absent:
        if col.kind == "id":
            filled[col.name] = [str(i + 1) for i in range(len(frame))]
        elif col.kind == "outcome":
            filled[col.name] = (col.allowed or (MISSING,))[0]
        else:
            filled[col.name] = MISSING if col.default is None else str(col.default)
    return filled


def encounters_of(valid: pd.DataFrame) -> list[dict[str, Any]]:
    """Valid rows (typed by the validator) as JSON encounters: features only, null for missing."""
    return json_encounters(valid)


def score_frame(frame: pd.DataFrame, client: ApiClient, chunk_size: int = MAX_CHUNK,
                progress: Callable[[int, int], None] | None = None) -> BatchResult:
    """Validate, send the valid rows in chunks, and append the predictions to ``frame``."""
    chunk_size = max(1, min(chunk_size, MAX_CHUNK))
    frame = frame.reset_index(drop=True)
    checked = validate(_for_validation(frame))
    encounters = encounters_of(checked.valid)
    predictions: list[dict[str, Any]] = []
    for start in range(0, len(encounters), chunk_size):
        answer = client.predict_batch(encounters[start:start + chunk_size])
        predictions += answer["predictions"]
        if progress:
            progress(len(predictions), len(encounters))

    scored = frame.drop(columns=[c for c in SCORE_COLUMNS if c in frame.columns])
    scored["probability"] = pd.Series(float("nan"), index=scored.index, dtype="float64")
    for name in ("risk_band", "reason", "model_version"):
        scored[name] = pd.Series(None, index=scored.index, dtype="object")
    scored["scored"] = False
    if predictions:
        answers = pd.DataFrame(predictions, index=checked.valid.index)
        scored.loc[answers.index, "probability"] = answers["probability"].astype("float64")
        for name in ("risk_band", "reason", "model_version"):
            scored.loc[answers.index, name] = answers[name].astype("object")
        scored.loc[answers.index, "scored"] = answers["scored"].astype(bool)
    scored.loc[checked.rejected.index, "reason"] = "rejected by the contract: " + checked.rejected[REASON]
    scored = scored[[*frame.columns.drop(list(SCORE_COLUMNS), errors="ignore"), *SCORE_COLUMNS]]

    rejected = pd.DataFrame({"row": checked.rejected.index + 1, REASON: checked.rejected[REASON].to_numpy()})
    return BatchResult(scored=scored, rejected=rejected.reset_index(drop=True))


def score_csv(data: bytes, client: ApiClient, chunk_size: int = MAX_CHUNK,
              progress: Callable[[int, int], None] | None = None) -> BatchResult:
    """CSV bytes (raw format) -> every row with its prediction, and the rows the contract rejected."""
    return score_frame(read_csv(data), client, chunk_size, progress)
