"""The template CSV the page offers: the header a file to score needs, and one typical encounter as its row.

The columns are the contract's encounter columns in the order of ``diabetic_data.csv`` (the identifiers, then the
features; ``readmitted``, the outcome, is what the model predicts); the row is the typical encounter of the
contract (``Column.typical``; ``?`` where it is most often missing) with identifiers 1, to be replaced.
"""

from __future__ import annotations

import csv
import io

from readmit_contract.columns import MISSING, typical_record
from readmit_contract.encounter import ENCOUNTER_COLUMNS

TEMPLATE_NAME = "encounters-template.csv"
TEMPLATE_COLUMNS: tuple[str, ...] = tuple(c.name for c in ENCOUNTER_COLUMNS)
EXAMPLE_IDS = {"encounter_id": 1, "patient_nbr": 1}


def template_row() -> dict[str, str]:
    """The template's one row, as text (``?`` for missing)."""
    record = EXAMPLE_IDS | typical_record()
    return {name: MISSING if record[name] is None else str(record[name]) for name in TEMPLATE_COLUMNS}


def template_csv() -> bytes:
    """The template file: UTF-8, comma-separated, a header line and one row."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(TEMPLATE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerow(template_row())
    return out.getvalue().encode("utf-8")
