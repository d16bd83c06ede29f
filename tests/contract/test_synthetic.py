import numpy as np
import pandas as pd
import pytest
from readmit_contract import TARGET, EncounterFeatures, clean, validate
from readmit_contract.columns import COLUMN_NAMES, ICD9_PATTERN, MISSING
from readmit_contract.icd9 import diagnosis_group
from readmit_contract.synthetic import generate
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score


def test_exact_schema_as_text(synthetic_frame):
    assert tuple(synthetic_frame.columns) == COLUMN_NAMES
    assert all(pd.api.types.is_string_dtype(t) for t in synthetic_frame.dtypes)
    assert synthetic_frame["encounter_id"].is_unique


def test_seeded_and_reproducible():
    pd.testing.assert_frame_equal(generate(500, seed=3), generate(500, seed=3))
    assert not generate(500, seed=3).equals(generate(500, seed=4))


def test_any_size():
    assert len(generate(1, seed=0)) == 1
    assert len(generate(12_345, seed=0)) == 12_345


def test_realistic_marginals(synthetic_frame):
    df = synthetic_frame
    # repeat patients: about 0.7 patients per encounter, some with several encounters
    assert 0.65 <= df["patient_nbr"].nunique() / len(df) <= 0.75
    assert df["patient_nbr"].value_counts().max() >= 4
    # "?" rates near the real file's (weight 97 %, payer 40 %, specialty 49 %, race 2 %)
    rate = (df == MISSING).mean()
    assert 0.94 <= rate["weight"] <= 0.99
    assert 0.35 <= rate["payer_code"] <= 0.45
    assert 0.44 <= rate["medical_specialty"] <= 0.54
    assert 0.005 <= rate["race"] <= 0.04
    assert df["age"].value_counts().index[0] == "[70-80)"
    codes = pd.concat([df["diag_1"], df["diag_2"], df["diag_3"]])
    assert codes[codes != MISSING].map(lambda c: bool(ICD9_PATTERN.match(c))).all()
    assert codes.str.fullmatch(r"250\.\d{1,2}").any()
    assert codes.str.startswith("V").any() and codes.str.startswith("E").any()
    groups = df["diag_1"].map(diagnosis_group).value_counts(normalize=True)
    assert groups.index[0] == "circulatory"


def test_consistent_medication_flags(synthetic_frame):
    from readmit_contract.columns import MEDICATIONS

    meds = synthetic_frame[list(MEDICATIONS)]
    changed = meds.isin(["Up", "Down"]).any(axis=1)
    on_drug = (meds != "No").any(axis=1)
    assert ((synthetic_frame["change"] == "Ch") == changed).all()
    assert ((synthetic_frame["diabetesMed"] == "Yes") == on_drug).all()


def test_about_eleven_percent_positive_and_learnable():
    cleaned = clean(validate(generate(20_000, seed=11)).valid).clean
    rate = cleaned[TARGET].mean()
    assert 0.095 <= rate <= 0.125, rate
    X = EncounterFeatures().fit_transform(cleaned)
    y = cleaned[TARGET].to_numpy()
    half = len(y) // 2
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(X[:half], y[:half])
    auc = roc_auc_score(y[half:], model.predict_proba(X[half:])[:, 1])
    assert auc >= 0.65, auc
    # and the signal is not trivially perfect
    assert auc <= 0.9, auc
    assert np.isfinite(X).all()


def test_drift_shifts_age_admission_source_and_utilisation_only_when_asked():
    from readmit_contract import synthetic
    from readmit_contract.columns import AGE_BRACKETS

    base = synthetic.generate(20_000, seed=8)
    assert synthetic.generate(20_000, seed=8, drift=0.0).equals(base)
    drifted = synthetic.generate(20_000, seed=8, drift=1.0)
    assert drifted["age"].map(AGE_BRACKETS.index).mean() > base["age"].map(AGE_BRACKETS.index).mean() + 0.5
    assert (drifted["admission_source_id"] == "7").mean() > (base["admission_source_id"] == "7").mean() + 0.2
    assert drifted["number_inpatient"].astype(int).mean() > 1.5 * base["number_inpatient"].astype(int).mean()
    assert list(drifted.columns) == list(base.columns)
    with pytest.raises(ValueError):
        synthetic.generate(10, drift=-0.1)


def test_drift_from_shifts_only_the_later_rows_and_keeps_the_ids():
    from readmit_contract import synthetic

    base = synthetic.generate(5000, seed=6)
    later = synthetic.generate(5000, seed=6, drift=1.0, drift_from=0.6)
    assert later.iloc[:3000].equals(base.iloc[:3000])
    assert later["encounter_id"].equals(base["encounter_id"]) and later["patient_nbr"].equals(base["patient_nbr"])
    assert later.iloc[3000:]["number_inpatient"].astype(int).mean() > 1.5 * base.iloc[3000:]["number_inpatient"].astype(
        int).mean()
