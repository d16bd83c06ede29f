import pandas as pd

from readmit_contract import EXCLUDED_DISCHARGE_DISPOSITIONS, TARGET, clean, validate


def test_clean_excludes_sets_missing_and_target(synthetic_frame):
    valid = validate(synthetic_frame).valid
    result = clean(valid)
    assert len(result.clean) + len(result.excluded) == len(valid)
    assert set(result.excluded["discharge_disposition_id"]) <= EXCLUDED_DISCHARGE_DISPOSITIONS
    assert not result.clean["discharge_disposition_id"].isin(EXCLUDED_DISCHARGE_DISPOSITIONS).any()
    assert len(result.excluded) > 0
    assert (result.clean == "?").sum().sum() == 0
    assert result.clean["weight"].isna().mean() > 0.9
    expected = (result.clean["readmitted"] == "<30").astype("int8")
    pd.testing.assert_series_equal(result.clean[TARGET], expected, check_names=False)
    assert set(result.clean["readmitted"]) <= {"NO", ">30", "<30"}
