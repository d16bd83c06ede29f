"""Patient history: built only from a patient's earlier encounters, identical however it is computed
(the stored table, serving's lookup), never crossing the patient split, and optional in the transform."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from readmit_contract import TARGET, clean, synthetic, validate
from readmit_contract.features import HISTORY_FEATURES, EncounterFeatures
from readmit_contract.history import (
    HISTORY_NAMES,
    cumulative_history,
    empty_history,
    history_table,
    missing_history,
)
from readmit_data.loading import assign_splits


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return clean(validate(synthetic.generate(6000, seed=3)).valid).clean.reset_index(drop=True)


@pytest.fixture(scope="module")
def table(rows) -> pd.DataFrame:
    return history_table(rows)


def _repeat_patients(rows: pd.DataFrame, least: int = 3) -> list[int]:
    counts = rows["patient_nbr"].value_counts()
    return counts[counts >= least].index.tolist()


def test_the_synthetic_data_has_patients_with_several_encounters(rows, table):
    assert len(_repeat_patients(rows)) >= 50
    assert (table["hist_encounters"] > 0).mean() > 0.2
    assert (table["hist_readmit_30"] > 0).any() and (table["hist_last_readmit_30"] == 1).any()


def test_history_counts_exactly_the_earlier_encounters(rows, table):
    """Recomputed by hand for every encounter of patients with several: counts and sums of the strictly
    earlier encounters, and the last one's values."""
    for patient in _repeat_patients(rows)[:40]:
        mine = rows[rows["patient_nbr"] == patient].sort_values("encounter_id")
        for position, (index, encounter) in enumerate(mine.iterrows()):
            earlier = mine.iloc[:position]
            got = table.loc[index]
            assert got["encounter_id"] == encounter["encounter_id"]
            assert got["hist_encounters"] == position
            assert got["hist_readmit_30"] == earlier[TARGET].sum()
            assert got["hist_days"] == earlier["time_in_hospital"].sum()
            assert got["hist_emergency"] == (earlier["admission_type_id"] == 1).sum()
            if position:
                assert got["hist_last_readmit_30"] == earlier[TARGET].iloc[-1]
                assert got["hist_last_inpatient"] == earlier["number_inpatient"].iloc[-1]
                assert got["hist_max_inpatient"] == earlier["number_inpatient"].max()
            else:
                assert got[list(HISTORY_NAMES)].to_dict() == empty_history()


def test_later_encounters_do_not_change_an_earlier_ones_history(rows, table):
    """No leakage from the future: shuffling the rows, removing each patient's later encounters, or changing
    their outcomes and values leaves every earlier encounter's history as it was."""
    shuffled = history_table(rows.sample(frac=1.0, random_state=7))
    pd.testing.assert_frame_equal(shuffled.loc[table.index], table)

    rank = rows.groupby("patient_nbr")["encounter_id"].rank(method="first")
    last = rank == rows.groupby("patient_nbr")["encounter_id"].transform("count")
    kept = rows[~last]
    pd.testing.assert_frame_equal(history_table(kept), table.loc[kept.index])

    altered = rows.copy()
    altered.loc[last, TARGET] = 1 - altered.loc[last, TARGET]
    altered.loc[last, ["time_in_hospital", "number_inpatient"]] = 14
    pd.testing.assert_frame_equal(history_table(altered), table)  # the altered rows' own history included


def test_no_patient_of_another_split_contributes(rows, table):
    """Splits are by patient, and history never crosses patients: the history of every train encounter
    computed from the train rows alone equals the one computed from all rows (validation and test included)."""
    split = assign_splits(rows["patient_nbr"], seed=42)
    for name in ("train", "validation", "test"):
        part = rows[split == name]
        assert len(part)
        pd.testing.assert_frame_equal(history_table(part), table.loc[part.index])


def test_serving_history_equals_the_stored_one(rows, table):
    """What serving computes for a new encounter from the patient's earlier rows (in any order): the last row of
    their cumulative history, which is what the table holds for that encounter."""
    for patient in _repeat_patients(rows)[:40]:
        mine = rows[rows["patient_nbr"] == patient].sort_values("encounter_id")
        newest = mine.index[-1]
        expected = table.loc[newest, list(HISTORY_NAMES)].to_dict()
        after = cumulative_history(mine.iloc[:-1].sample(frac=1.0, random_state=1))
        assert after["encounter_id"].tolist() == sorted(mine["encounter_id"].iloc[:-1])
        assert after.iloc[-1][list(HISTORY_NAMES)].to_dict() == expected


def test_the_transform_reads_history_when_fitted_with_it(rows, table):
    frame = pd.concat([rows, table[list(HISTORY_NAMES)]], axis=1)
    with_history = EncounterFeatures().fit(frame)
    assert with_history.history_ and with_history.feature_names_[-len(HISTORY_FEATURES):] == HISTORY_FEATURES
    X = with_history.transform(frame)
    known = with_history.feature_names_.index("history_known")
    assert (X[:, known] == 1).all()
    records = [{**r, **h} for r, h in zip(rows.to_dict("records"), table[list(HISTORY_NAMES)].to_dict("records"),
                                          strict=True)]
    np.testing.assert_array_equal(with_history.transform(records[:50]), X[:50])

    # missing history (no columns in a frame; None in a record): history_known 0 and zeros, nothing else changes
    blank = with_history.transform(rows)
    assert (blank[:, known] == 0).all()
    assert (blank[:, known - len(HISTORY_NAMES):known] == 0).all()
    np.testing.assert_array_equal(blank[:, :known - len(HISTORY_NAMES)], X[:, :known - len(HISTORY_NAMES)])
    one = with_history.transform([{**records[0], **missing_history()}])
    np.testing.assert_array_equal(one, blank[:1])

    trend = with_history.feature_names_.index("hist_inpatient_trend")
    earlier = frame["hist_encounters"].to_numpy() > 0
    expected = np.where(earlier, frame["number_inpatient"] - frame["hist_last_inpatient"], 0)
    np.testing.assert_array_equal(X[:, trend], expected)


def test_a_transform_fitted_without_history_ignores_it(rows, table):
    """Fitted on rows without history (and a transform saved before history existed, restored from its
    state): no history features, and history in the input changes nothing."""
    plain = EncounterFeatures().fit(rows)
    assert not plain.history_ and "history_known" not in plain.feature_names_
    frame = pd.concat([rows, table[list(HISTORY_NAMES)]], axis=1)
    np.testing.assert_array_equal(plain.transform(frame), plain.transform(rows))
    state = {k: v for k, v in plain.__getstate__().items() if k != "history_"}
    restored = EncounterFeatures.__new__(EncounterFeatures)
    restored.__setstate__(state)
    assert restored.history_ is False
    np.testing.assert_array_equal(restored.transform(rows), plain.transform(rows))
