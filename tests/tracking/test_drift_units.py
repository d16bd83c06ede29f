"""Evidently's data drift as the platform reads it: undrifted synthetic batches do not drift, the generator's
drift setting does, in the features it shifts (no server)."""

from __future__ import annotations

import pandas as pd
import pytest
from readmit_contract import clean, synthetic, validate
from readmit_data.drift import DRIFT_COLUMNS, MIN_ROWS, compare


def _clean(n: int, seed: int, drift: float = 0.0) -> pd.DataFrame:
    return clean(validate(synthetic.generate(n, seed=seed, drift=drift)).valid).clean


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return _clean(12_000, seed=1)


def test_an_undrifted_batch_does_not_drift(reference):
    result = compare(reference, _clean(4000, seed=2), html=False)
    assert result.drifted == 0 and result.share == 0.0
    assert {f.feature for f in result.features} == set(DRIFT_COLUMNS)
    assert all(f.score < f.threshold for f in result.features)


def test_a_drifted_batch_drifts_in_the_features_the_generator_shifts(reference):
    result = compare(reference, _clean(4000, seed=3, drift=1.0))
    assert set(result.drifted_features()) == {"age", "admission_source_id", "number_inpatient", "number_emergency"}
    assert result.share == pytest.approx(4 / len(DRIFT_COLUMNS))
    by_name = {f.feature: f for f in result.features}
    assert by_name["age"].method == "Jensen-Shannon distance" and by_name["age"].score >= 0.1
    assert by_name["number_inpatient"].method.startswith("Wasserstein")
    assert result.features[0].drifted  # drifted first
    assert "<html" in result.html.lower() and "number_inpatient" in result.html


def test_too_few_current_rows_are_not_compared(reference):
    with pytest.raises(ValueError, match=str(MIN_ROWS)):
        compare(reference, reference.head(MIN_ROWS - 1))
