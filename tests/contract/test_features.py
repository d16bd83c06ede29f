import pickle

import numpy as np
import pytest

from readmit_contract import Encounter, EncounterFeatures, clean, validate
from readmit_contract.icd9 import diagnosis_group


@pytest.fixture(scope="module")
def cleaned(synthetic_frame):
    return clean(validate(synthetic_frame).valid).clean


@pytest.fixture(scope="module")
def fitted(cleaned):
    return EncounterFeatures().fit(cleaned)


def test_frame_and_one_by_one_records_give_the_same_features(fitted, cleaned):
    rows = cleaned.head(300)
    batch = fitted.transform(rows)
    api_rows = rows.drop(columns=["readmitted", "readmitted_30d"]).to_dict("records")
    one_by_one = np.vstack([fitted.transform(Encounter.model_validate(r).to_record()) for r in api_rows])
    np.testing.assert_array_equal(batch, one_by_one)
    # raw (validated, '?' kept) and clean (NA) frames agree too
    raw_valid = validate(rows.drop(columns=["readmitted_30d"]).astype(object).fillna("?")).valid
    assert (raw_valid == "?").any().any()
    np.testing.assert_array_equal(fitted.transform(raw_valid), batch)


def test_shape_names_and_no_ids(fitted, cleaned):
    X = fitted.transform(cleaned)
    names = list(fitted.get_feature_names_out())
    assert X.shape == (len(cleaned), len(names))
    assert len(set(names)) == len(names)
    assert not any(n.startswith(("encounter_id", "patient_nbr", "readmitted")) for n in names)
    assert np.isfinite(X).all()


def test_derived_features(fitted, cleaned):
    row = cleaned.iloc[[0]].copy()
    row["age"] = "[70-80)"
    row["number_outpatient"], row["number_emergency"], row["number_inpatient"] = 1, 2, 3
    row["insulin"], row["metformin"] = "Up", "Down"
    for m in ("repaglinide", "glipizide", "glyburide"):
        row[m] = "Steady"
    row["diag_1"], row["diag_2"], row["diag_3"] = "250.83", "V57", "?"
    x = dict(zip(fitted.get_feature_names_out(), fitted.transform(row)[0], strict=True))
    assert x["age_years"] == 75
    assert x["prior_visits_total"] == 6
    assert x["meds_changed"] == 2 and x["meds_up"] == 1 and x["meds_down"] == 1
    assert x["meds_prescribed"] >= 5
    assert x["diag_1=diabetes"] == 1 and x["diag_2=other"] == 1 and x["diag_3=missing"] == 1
    assert x["diag_any_diabetes"] == 1


def test_rare_and_unseen_categories_share_other(fitted, cleaned):
    specialties = fitted.learned_categories_["medical_specialty"]
    assert "InternalMedicine" in specialties
    assert "Speech" not in specialties  # seen < min_category_count times
    row = cleaned.iloc[[0]].copy()
    row["medical_specialty"] = "Telemedicine"
    x = dict(zip(fitted.get_feature_names_out(), fitted.transform(row)[0], strict=True))
    assert x["medical_specialty=other"] == 1
    row["medical_specialty"] = None
    x = dict(zip(fitted.get_feature_names_out(), fitted.transform(row)[0], strict=True))
    assert x["medical_specialty=missing"] == 1 and x["medical_specialty=other"] == 0


def test_hospital_codes_as_int_or_text_agree(fitted, cleaned):
    rows = cleaned.head(50)
    as_text = rows.astype({"admission_type_id": str, "discharge_disposition_id": str, "admission_source_id": str})
    np.testing.assert_array_equal(fitted.transform(rows), fitted.transform(as_text))


def test_pickle_round_trip_and_clone(fitted, cleaned):
    from sklearn.base import clone

    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.transform(cleaned), fitted.transform(cleaned))
    assert clone(fitted).get_params() == fitted.get_params()


def test_diagnosis_groups():
    assert diagnosis_group("428") == "circulatory"
    assert diagnosis_group("785") == "circulatory"
    assert diagnosis_group("486") == "respiratory"
    assert diagnosis_group("250.83") == "diabetes"
    assert diagnosis_group("996.81") == "injury"
    assert diagnosis_group("715") == "musculoskeletal"
    assert diagnosis_group("599") == "genitourinary"
    assert diagnosis_group("174") == "neoplasms"
    assert diagnosis_group("V57") == "other"
    assert diagnosis_group("E888") == "other"
    assert diagnosis_group("?") == "missing" and diagnosis_group(None) == "missing"


def test_unfitted_transform_raises(cleaned):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        EncounterFeatures().transform(cleaned)


def test_skops_round_trip_trusts_only_the_transform(fitted, cleaned):
    """MLflow saves sklearn models with skops: the fitted transform must persist with plain values."""
    import skops.io as sio

    blob = sio.dumps(fitted)
    assert sio.get_untrusted_types(data=blob) == ["readmit_contract.features.EncounterFeatures"]
    restored = sio.loads(blob, trusted=["readmit_contract.features.EncounterFeatures"])
    np.testing.assert_array_equal(restored.transform(cleaned), fitted.transform(cleaned))


def test_records_with_nan_for_missing_match_the_frame(fitted, cleaned):
    """Records taken straight from a frame carry NaN for missing values: same features as the frame."""
    rows = cleaned.head(100)
    records = rows.to_dict("records")
    assert any(isinstance(v, float) and v != v for r in records for v in r.values())
    np.testing.assert_array_equal(fitted.transform(records), fitted.transform(rows))


def test_the_records_path_gives_the_column_paths_features(fitted, cleaned, monkeypatch):
    """A few records are transformed row by row (``_transform_records``), many column by column: same features,
    whatever the values (missing as None, NaN or ``?``, unknown codes, absent keys, hospital codes as text)."""
    from readmit_contract import features

    records = cleaned.drop(columns=["readmitted"]).head(300).to_dict("records")
    records += [{}, {"age": float("nan"), "weight": None, "num_lab_procedures": float("nan"), "A1Cresult": "?",
                     "payer_code": "ZZ", "admission_type_id": 99, "admission_source_id": "7", "diag_1": "V45",
                     "diag_2": "?", "metformin": "Up", "insulin": "Down", "num_medications": 3.0}]
    monkeypatch.setattr(features, "RECORD_PATH_MAX_ROWS", 10**9)
    by_row = fitted.transform(records)
    assert np.array_equal(fitted.transform_records(records), by_row, equal_nan=True)
    monkeypatch.setattr(features, "RECORD_PATH_MAX_ROWS", 0)
    by_column = fitted.transform(records)
    assert np.array_equal(by_row, by_column, equal_nan=True)
    assert np.array_equal(by_row[:300], fitted.transform(cleaned.head(300)), equal_nan=True)
