"""Scoring a CSV of encounters through POST /predict/batch.

The CSV has the raw format of ``diabetic_data.csv``: the contract's column names, ``?``
(or an empty cell) for missing. Identifiers, the outcome (``readmitted``) and the fields
with a default may be absent; any other column is kept in the output untouched. The file is
read by ``upload.read_upload`` (size, encodings, separators, header, ragged lines: its doc);
rows are then checked with the contract's validator: rejected rows are reported with their
row and line numbers and reasons and not sent; the others are sent (their features only) in
chunks of at most the API's batch size, with progress.

A chunk the API does not answer (busy after the client's retries, unreachable, timed out, failed) stops
the sending: the chunks already answered keep their predictions, and every row of that chunk and of
the chunks after it is marked not scored with the reason (``BatchResult.interruption``): no row is lost,
and the download says which rows to score again. A refused key (``ApiRefused``) or a refused input
(``ApiRejected``) is raised instead: no chunk can succeed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from readmit_contract import SchemaMismatchError, validate
from readmit_contract.columns import COLUMNS, MISSING
from readmit_contract.encounter import json_encounters
from readmit_contract.validate import REASON

from .client import UNEXPECTED, ApiClient, ApiRefused, ApiUnavailable
from .upload import ParsedCsv, read_upload

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("probability", "risk_band", "scored", "reason", "model_version")
"""Columns appended to the uploaded rows."""
ANSWER_FIELDS = frozenset(SCORE_COLUMNS)
"""Fields each prediction of the API carries (they fill ``SCORE_COLUMNS``)."""
MAX_CHUNK = 1000
DEFAULT_LIMIT_BYTES = 25 * 1024 * 1024
"""Largest upload read when no limit is given (the page passes its configured one)."""
REJECTED_COLUMNS = ("row", "line", REASON)
NOT_ANSWERED = "not scored (score this row again): "
"""Prefix of the ``reason`` of a valid row whose chunk the API did not answer, before the API's message."""


@dataclass(frozen=True)
class BatchResult:
    scored: pd.DataFrame
    """Every uploaded row, its columns as uploaded, then ``SCORE_COLUMNS`` (rejected rows: not scored)."""
    rejected: pd.DataFrame
    """One line per row not sent: ``row`` (1 = first data row), ``line`` (in the file), ``reason``; rows that could
    not be read (not in ``scored``) and rows the contract rejected."""
    n_sent: int = 0
    """Valid rows, sent (or, after an interruption, to be sent) to the API."""
    n_unanswered: int = 0
    """Valid rows without an answer because the API stopped answering (``interruption``): not scored."""
    interruption: str | None = None
    """Why the API left rows unanswered (a sentence for the page), or None when every chunk was answered."""
    n_unreadable: int = 0
    """Rows of the file that could not be read (in ``rejected``, not in ``scored``)."""
    notes: list[str] = field(default_factory=list)
    """How the file was read (encoding, columns not sent, defaults used), for the page."""

    @property
    def n_rows(self) -> int:
        """Data rows of the file."""
        return len(self.scored) + self.n_unreadable

    @property
    def n_answered(self) -> int:
        """Valid rows the API answered (scored or out of scope)."""
        return self.n_sent - self.n_unanswered

    def to_csv(self) -> bytes:
        return self.scored.to_csv(index=False).encode("utf-8")


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
    """Validate, send the valid rows in chunks, and append the predictions to ``frame`` (rows numbered from 1)."""
    return score_parsed(ParsedCsv.of_frame(frame), client, chunk_size, progress)


def score_parsed(parsed: ParsedCsv, client: ApiClient, chunk_size: int = MAX_CHUNK,
                 progress: Callable[[int, int], None] | None = None) -> BatchResult:
    """Validate the rows read, send the valid ones in chunks, and append the predictions to them."""
    chunk_size = max(1, min(chunk_size, MAX_CHUNK))
    frame = parsed.frame.reset_index(drop=True)
    checked = validate(_for_validation(frame))
    valid = checked.valid
    predictions: list[dict[str, Any]] = []
    interruption: str | None = None
    for start in range(0, len(valid), chunk_size):  # JSON bodies a chunk at a time: memory stays flat
        chunk = valid.iloc[start:start + chunk_size]
        try:
            predictions += _answers(client.predict_batch(encounters_of(chunk)), len(chunk))
        except ApiRefused:
            raise
        except ApiUnavailable as exc:
            interruption = str(exc)
            log.warning("batch scoring stopped after %d of %d valid rows: %s", len(predictions), len(valid),
                        type(exc).__name__)
            break
        if progress:
            progress(len(predictions), len(valid))

    scored = frame.drop(columns=[c for c in SCORE_COLUMNS if c in frame.columns])
    scored["probability"] = pd.Series(float("nan"), index=scored.index, dtype="float64")
    for name in ("risk_band", "reason", "model_version"):
        scored[name] = pd.Series(None, index=scored.index, dtype="object")
    scored["scored"] = False
    if predictions:
        answers = pd.DataFrame(predictions, index=valid.index[:len(predictions)])
        scored.loc[answers.index, "probability"] = answers["probability"].astype("float64")
        for name in ("risk_band", "reason", "model_version"):
            scored.loc[answers.index, name] = answers[name].astype("object")
        scored.loc[answers.index, "scored"] = answers["scored"].astype(bool)
    unanswered = valid.index[len(predictions):]
    if len(unanswered):
        scored.loc[unanswered, "reason"] = NOT_ANSWERED + (interruption or UNEXPECTED)
    scored.loc[checked.rejected.index, "reason"] = "rejected by the contract: " + checked.rejected[REASON]
    scored = scored[[*frame.columns.drop(list(SCORE_COLUMNS), errors="ignore"), *SCORE_COLUMNS]]

    positions = checked.rejected.index.to_numpy()
    by_contract = pd.DataFrame({"row": [parsed.rows[i] for i in positions],
                                "line": [parsed.lines[i] for i in positions],
                                REASON: checked.rejected[REASON].to_numpy()})
    rejected = pd.concat([parsed.unreadable, by_contract], ignore_index=True) if len(parsed.unreadable) else by_contract
    rejected = rejected.astype({"row": "int64", "line": "int64"}).sort_values("row", kind="stable")
    return BatchResult(scored=scored, rejected=rejected[list(REJECTED_COLUMNS)].reset_index(drop=True),
                       n_sent=len(valid), n_unreadable=len(parsed.unreadable), notes=list(parsed.notes),
                       n_unanswered=len(unanswered), interruption=interruption)


def _answers(answer: Any, expected: int) -> list[dict[str, Any]]:
    """A chunk's predictions, one per row sent (any other answer is ``ApiUnavailable``: no row mismatched)."""
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if (not isinstance(predictions, list) or len(predictions) != expected
            or not all(isinstance(p, dict) and p.keys() >= ANSWER_FIELDS for p in predictions)):
        raise ApiUnavailable(UNEXPECTED)
    return predictions


def score_csv(data: bytes, client: ApiClient, chunk_size: int = MAX_CHUNK,
              progress: Callable[[int, int], None] | None = None,
              limit_bytes: int = DEFAULT_LIMIT_BYTES) -> BatchResult:
    """CSV bytes (raw format) -> every readable row with its prediction, and the rows not sent with the reason
    (``upload.UploadRefused`` when the file cannot be scored at all)."""
    return score_parsed(read_upload(data, limit_bytes), client, chunk_size, progress)
