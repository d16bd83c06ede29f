"""The cleaning the contract defines, applied to validated rows.

1. encounters that cannot be readmitted (death, hospice) are set aside;
2. the ``?`` missing marker becomes a real missing value (NA);
3. the binary target ``readmitted_30d`` is added beside the original ``readmitted``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .columns import MISSING, NULLABLE_COLUMNS, OUTCOME_COLUMN
from .target import is_excluded, target_from_outcome


@dataclass(frozen=True)
class CleanResult:
    clean: pd.DataFrame
    """In-scope encounters, missing values as NA, with the target column."""
    excluded: pd.DataFrame
    """Valid encounters out of scope (expired or hospice), as they came in."""


def clean(valid: pd.DataFrame) -> CleanResult:
    """Clean validated rows (the ``valid`` frame of ``validate``)."""
    out_of_scope = is_excluded(valid["discharge_disposition_id"]).to_numpy()
    kept = valid[~out_of_scope].copy()
    for name in NULLABLE_COLUMNS:
        kept[name] = kept[name].mask(kept[name] == MISSING)
    if OUTCOME_COLUMN in kept.columns:
        kept[target_from_outcome(kept[OUTCOME_COLUMN]).name] = target_from_outcome(kept[OUTCOME_COLUMN])
    return CleanResult(clean=kept, excluded=valid[out_of_scope])
