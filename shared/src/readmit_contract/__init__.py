"""Feature contract of the diabetes 30-day readmission platform.

Declared once, imported by the DAGs, the API and the UI:

- ``columns``   the 50 columns of diabetic_data.csv (type, allowed values, range, ``?``)
- ``target``    readmitted == "<30"; encounters excluded (expired, hospice)
- ``validate``  raw frame -> (valid rows, rejected rows with a reason)
- ``cleaning``  exclusions, missing markers, target
- ``features``  the scikit-learn feature transform (trained and served)
- ``encounter`` the pydantic model of one encounter
- ``synthetic`` seeded generator with the real schema
- ``dataset``   download + checksum, or a local path
- ``reader``    the source streamed in chunks, malformed lines set aside with line number and reason
"""

from .cleaning import CleanResult, clean
from .columns import (
    BY_NAME,
    COLUMN_NAMES,
    COLUMNS,
    FEATURE_COLUMNS,
    ID_COLUMNS,
    MISSING,
    Column,
    column,
)
from .encounter import Encounter, example_encounter
from .features import EncounterFeatures
from .target import EXCLUDED_DISCHARGE_DISPOSITIONS, TARGET, is_excluded, target_from_outcome
from .validate import SchemaMismatchError, ValidationResult, validate

__all__ = [
    "BY_NAME",
    "COLUMN_NAMES",
    "COLUMNS",
    "FEATURE_COLUMNS",
    "ID_COLUMNS",
    "MISSING",
    "Column",
    "column",
    "CleanResult",
    "clean",
    "Encounter",
    "example_encounter",
    "EncounterFeatures",
    "EXCLUDED_DISCHARGE_DISPOSITIONS",
    "TARGET",
    "is_excluded",
    "target_from_outcome",
    "SchemaMismatchError",
    "ValidationResult",
    "validate",
]
