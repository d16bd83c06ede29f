import pandas as pd
import pytest
from readmit_contract import SchemaMismatchError, validate
from readmit_contract.columns import COLUMN_NAMES, COLUMNS, INTEGER_COLUMNS, TEXT_MAX_LENGTH
from readmit_contract.validate import (
    BAD_FORMAT,
    DUPLICATE,
    MISSING_REQUIRED,
    NOT_ALLOWED,
    OUT_OF_RANGE,
    REASON,
    TOO_LONG,
    WRONG_TYPE,
    canonical_ids,
)


def test_generated_frames_pass(synthetic_frame):
    result = validate(synthetic_frame)
    assert result.n_rejected == 0
    assert result.n_valid == len(synthetic_frame)
    for name in COLUMN_NAMES:
        expected = "int64" if name in INTEGER_COLUMNS else "str"
        assert str(result.valid[name].dtype) == expected, name


BAD_VALUES = [
    ("time_in_hospital", "abc", WRONG_TYPE),
    ("num_lab_procedures", "12.5", WRONG_TYPE),
    ("time_in_hospital", "99", OUT_OF_RANGE),
    ("number_inpatient", "-1", OUT_OF_RANGE),
    ("race", "Martian", NOT_ALLOWED),
    ("age", "[100-110)", NOT_ALLOWED),
    ("insulin", "Sometimes", NOT_ALLOWED),
    ("admission_type_id", "42", NOT_ALLOWED),
    ("readmitted", "YES", NOT_ALLOWED),
    ("gender", "?", MISSING_REQUIRED),
    ("age", "", MISSING_REQUIRED),
    ("num_medications", None, MISSING_REQUIRED),
    ("diag_1", "XYZ", BAD_FORMAT),
    ("diag_2", "250.123", BAD_FORMAT),
    ("medical_specialty", "DROP TABLE;", BAD_FORMAT),
]


@pytest.mark.parametrize(("column", "value", "kind"), BAD_VALUES)
def test_each_kind_of_bad_row_is_rejected_with_its_reason(synthetic_frame, column, value, kind):
    frame = synthetic_frame.head(20).copy()
    frame[column] = frame[column].astype(object)
    frame.loc[5, column] = value
    result = validate(frame)
    assert result.n_valid == 19
    assert list(result.rejected.index) == [5]
    reason = result.rejected.loc[5, REASON]
    assert reason.startswith(f"{column}: {kind}"), reason


def test_every_failing_column_is_named(synthetic_frame):
    frame = synthetic_frame.head(5).copy()
    frame.loc[2, "race"] = "X"
    frame.loc[2, "time_in_hospital"] = "0"
    reason = validate(frame).rejected.loc[2, REASON]
    assert reason.index("race:") < reason.index("time_in_hospital:")
    assert f"time_in_hospital: {OUT_OF_RANGE}" in reason


def test_duplicate_encounter_keeps_the_first(synthetic_frame):
    frame = synthetic_frame.head(10).copy()
    frame.loc[7, "encounter_id"] = frame.loc[2, "encounter_id"]
    result = validate(frame)
    assert list(result.rejected.index) == [7]
    assert DUPLICATE in result.rejected.loc[7, REASON]


def test_ids_are_normalised_once_here(synthetic_frame):
    """0123 and 123 are one id: the duplicate is found, the typed rows carry the integer, the rejected
    row keeps the text as received."""
    frame = synthetic_frame.head(10).copy()
    frame.loc[7, "encounter_id"] = "000" + frame.loc[2, "encounter_id"]
    frame.loc[4, "patient_nbr"] = "0" + frame.loc[4, "patient_nbr"]
    result = validate(frame)
    assert list(result.rejected.index) == [7]
    assert result.rejected.loc[7, REASON] == f"encounter_id: {DUPLICATE} ('{frame.loc[2, 'encounter_id']}')"
    assert result.rejected.loc[7, "encounter_id"] == frame.loc[7, "encounter_id"]  # as received
    assert result.valid.loc[4, "patient_nbr"] == int(frame.loc[4, "patient_nbr"])
    assert canonical_ids(pd.Series(["0456", "456", "000", "abc", "-05", "?"])).tolist() == [
        "456", "456", "0", "abc", "-05", "?"]


def test_an_over_long_text_value_is_rejected_with_its_reason(synthetic_frame):
    frame = synthetic_frame.head(6).copy()
    frame.loc[1, "medical_specialty"] = "Surgery" + "x" * TEXT_MAX_LENGTH  # the shape is fine, the length is not
    frame.loc[2, "race"] = "A" * 300
    frame.loc[3, "payer_code"] = "P" * TEXT_MAX_LENGTH  # exactly the maximum: legal
    result = validate(frame)
    assert list(result.rejected.index) == [1, 2]
    assert result.rejected.loc[1, REASON].startswith(f"medical_specialty: {TOO_LONG} (max {TEXT_MAX_LENGTH})")
    assert f"race: {TOO_LONG} (max {TEXT_MAX_LENGTH})" in result.rejected.loc[2, REASON]
    assert all(c.max_length == TEXT_MAX_LENGTH for c in COLUMNS if not c.is_integer)


def test_new_open_category_values_are_legal(synthetic_frame):
    frame = synthetic_frame.head(3).copy()
    frame.loc[0, "medical_specialty"] = "Telemedicine"
    frame.loc[1, "payer_code"] = "ZZ"
    assert validate(frame).n_rejected == 0


def test_typed_frames_validate_too(synthetic_frame):
    """Rows read back from a store (ints, NaN for missing) validate like text."""
    typed = validate(synthetic_frame).valid.head(50).copy()
    typed["time_in_hospital"] = typed["time_in_hospital"].astype(float)
    typed["race"] = typed["race"].mask(typed["race"] == "Caucasian")
    result = validate(typed)
    assert result.n_rejected == 0
    assert (result.valid["race"] != "Caucasian").all()


def test_index_is_kept_and_rows_partition(synthetic_frame):
    frame = synthetic_frame.head(30).copy()
    frame.index = range(1000, 1030)
    frame.loc[1010, "gender"] = "X"
    result = validate(frame)
    assert list(result.rejected.index) == [1010]
    assert sorted([*result.valid.index, *result.rejected.index]) == list(frame.index)


def test_missing_column_is_a_schema_error(synthetic_frame):
    with pytest.raises(SchemaMismatchError) as err:
        validate(synthetic_frame.drop(columns=["age", "insulin"]))
    assert err.value.missing == ["age", "insulin"]


def test_extra_columns_pass_through(synthetic_frame):
    frame = synthetic_frame.head(5).assign(batch_id=3)
    assert list(validate(frame).valid["batch_id"]) == [3] * 5


@pytest.mark.real_data
def test_contract_accepts_every_row_of_the_real_file(real_data_file):
    from readmit_contract.dataset import DATA_SHA256, EXPECTED_ROWS, read_raw_csv, sha256_of

    assert sha256_of(real_data_file) == DATA_SHA256
    frame = read_raw_csv(real_data_file)
    result = validate(frame)
    assert result.n_rejected == 0, result.rejected[REASON].head().tolist()
    assert result.n_valid == EXPECTED_ROWS
    assert isinstance(result.valid, pd.DataFrame)
