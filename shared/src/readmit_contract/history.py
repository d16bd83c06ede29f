"""Patient history: what was known about a patient from their earlier encounters, declared once.

For an encounter, its history summarises the same patient's encounters that came before it, in
``encounter_id`` order (the source's encounter ids grow with time): how many, how many of them were
followed by a readmission within 30 days, days spent in hospital, emergency admissions, primary
diagnosis groups, and the last one's utilisation. Nothing of the encounter itself, or of any later
encounter, enters its history.

Why an earlier encounter's outcome may be used: it is known by the time of any later encounter of the
same patient. Either the later encounter came within 30 days (then it *is* that readmission, and the
earlier outcome is "<30"), or it came later (then the 30-day window closed before it began).

The same code computes history everywhere:

- preprocessing stores ``history_table`` of every clean encounter in CleanData (``patient_history``),
  which training reads;
- serving computes ``cumulative_history`` of the patient's clean encounters and takes the row of the last
  one before the encounter it scores
  scores (``earlier`` rows looked up by ``patient_nbr``).

History may be missing (no lookup possible): every history column is then ``None``/NaN and the
feature transform sets its ``history_known`` indicator to 0; training blanks the history of a share of
its rows so models learn that case (``DataSettings.history_dropout``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .icd9 import DIAGNOSIS_GROUPS, diagnosis_group
from .target import TARGET

EMERGENCY_ADMISSION_TYPE = 1
"""admission_type_id of an emergency admission (IDs_mapping.csv)."""
INSULIN_GIVEN = ("Steady", "Up", "Down")
HISTORY_DIAGNOSIS_GROUPS: tuple[str, ...] = tuple(g for g in DIAGNOSIS_GROUPS if g != "missing")


@dataclass(frozen=True)
class HistoryColumn:
    name: str
    description: str
    """Clinical words, for the model card, explanations and the UI."""


HISTORY_COLUMNS: tuple[HistoryColumn, ...] = (
    HistoryColumn("hist_encounters", "earlier encounters of this patient"),
    HistoryColumn("hist_readmit_30", "earlier encounters followed by a readmission within 30 days"),
    HistoryColumn("hist_last_readmit_30", "the last earlier encounter was followed by a readmission within 30 days"),
    HistoryColumn("hist_days", "days in hospital over earlier encounters"),
    HistoryColumn("hist_emergency", "earlier emergency admissions"),
    HistoryColumn("hist_insulin", "earlier encounters with insulin"),
    HistoryColumn("hist_last_days", "days in hospital at the last earlier encounter"),
    HistoryColumn("hist_last_inpatient", "inpatient visits in the year before the last earlier encounter"),
    HistoryColumn("hist_last_emergency", "emergency visits in the year before the last earlier encounter"),
    HistoryColumn("hist_last_medications", "medications given at the last earlier encounter"),
    HistoryColumn("hist_max_inpatient", "most inpatient visits in a prior year over earlier encounters"),
    *(HistoryColumn(f"hist_diag_{g}", f"earlier encounters with a {g} primary diagnosis")
      for g in HISTORY_DIAGNOSIS_GROUPS),
)
HISTORY_NAMES: tuple[str, ...] = tuple(c.name for c in HISTORY_COLUMNS)
HISTORY_DESCRIPTIONS: dict[str, str] = {c.name: c.description for c in HISTORY_COLUMNS}

CLEAN_ENCOUNTERS_TABLE = "clean_encounters"
"""CleanData's table of clean encounters, where serving reads a patient's earlier encounters."""
PATIENT = "patient_nbr"
ENCOUNTER = "encounter_id"
HISTORY_INPUTS: tuple[str, ...] = (
    ENCOUNTER, PATIENT, TARGET, "time_in_hospital", "admission_type_id", "number_inpatient",
    "number_emergency", "num_medications", "insulin", "diag_1",
)
"""The clean columns history is computed from (what serving reads of a patient's earlier encounters)."""

_SUMS = ("hist_encounters", "hist_readmit_30", "hist_days", "hist_emergency", "hist_insulin",
         *(f"hist_diag_{g}" for g in HISTORY_DIAGNOSIS_GROUPS))
_LAST = {"hist_last_readmit_30": TARGET, "hist_last_days": "time_in_hospital",
         "hist_last_inpatient": "number_inpatient", "hist_last_emergency": "number_emergency",
         "hist_last_medications": "num_medications"}


def empty_history() -> dict[str, float]:
    """The history of a patient's first encounter: no earlier encounter."""
    return dict.fromkeys(HISTORY_NAMES, 0.0)


def missing_history() -> dict[str, None]:
    """History that could not be looked up (the transform's ``history_known`` = 0)."""
    return dict.fromkeys(HISTORY_NAMES)


def _contributions(rows: pd.DataFrame) -> pd.DataFrame:
    """What each encounter adds to its patient's history, once it is over."""
    out = pd.DataFrame(index=rows.index)
    out["hist_encounters"] = 1.0
    out["hist_readmit_30"] = pd.to_numeric(rows[TARGET]).astype(float)
    out["hist_days"] = pd.to_numeric(rows["time_in_hospital"]).astype(float)
    out["hist_emergency"] = (pd.to_numeric(rows["admission_type_id"]) == EMERGENCY_ADMISSION_TYPE).astype(float)
    out["hist_insulin"] = rows["insulin"].isin(INSULIN_GIVEN).astype(float)
    groups = rows["diag_1"].map(lambda v: diagnosis_group(None if v is None or v != v else str(v)))
    for g in HISTORY_DIAGNOSIS_GROUPS:
        out[f"hist_diag_{g}"] = (groups == g).astype(float)
    return out


def _after(rows: pd.DataFrame) -> pd.DataFrame:
    """For rows sorted by (patient, encounter): each patient's history once each encounter is over."""
    patients = rows[PATIENT].to_numpy()
    added = _contributions(rows)
    after = added.groupby(patients, sort=False).cumsum()
    for name, source in _LAST.items():
        after[name] = pd.to_numeric(rows[source]).astype(float).to_numpy()
    inpatient = pd.to_numeric(rows["number_inpatient"]).astype(float)
    after["hist_max_inpatient"] = inpatient.groupby(patients, sort=False).cummax().to_numpy()
    return after[list(HISTORY_NAMES)]


def _sorted(encounters: pd.DataFrame) -> pd.DataFrame:
    absent = [c for c in HISTORY_INPUTS if c not in encounters.columns]
    if absent:
        raise KeyError(f"history needs the columns {absent}")
    return encounters[list(HISTORY_INPUTS)].sort_values([PATIENT, ENCOUNTER], kind="stable")


def history_table(encounters: pd.DataFrame) -> pd.DataFrame:
    """For every encounter of ``encounters`` (clean rows with ``HISTORY_INPUTS``), its history: the same
    patient's encounters with a smaller ``encounter_id`` among these rows. Columns ``encounter_id``,
    ``patient_nbr`` and ``HISTORY_NAMES``, in the input's row order."""
    rows = _sorted(encounters)
    after = _after(rows)
    before = after.groupby(rows[PATIENT].to_numpy(), sort=False).shift(1)
    first = before["hist_encounters"].isna().to_numpy()
    before.loc[first, list(HISTORY_NAMES)] = 0.0
    before.insert(0, PATIENT, rows[PATIENT].to_numpy())
    before.insert(0, ENCOUNTER, rows[ENCOUNTER].to_numpy())
    return before.loc[encounters.index]


def cumulative_history(encounters: pd.DataFrame) -> pd.DataFrame:
    """Sorted by (patient, encounter): ``encounter_id``, ``patient_nbr`` and each patient's history once each
    encounter is over (so the history of a later encounter is the row of the last one before it)."""
    rows = _sorted(encounters)
    after = _after(rows)
    after.insert(0, PATIENT, rows[PATIENT].to_numpy())
    after.insert(0, ENCOUNTER, rows[ENCOUNTER].to_numpy())
    return after.reset_index(drop=True)
