"""The contract's words for people (``Column.label``, ``hint``) and its typical encounter (``Column.typical``):
declared once, legal, and (marker ``real_data``) the most common values of the real diabetic_data.csv."""

from __future__ import annotations

import pandas as pd
import pytest
from readmit_contract import Encounter, example_encounter, validate
from readmit_contract.columns import COLUMNS, MISSING, typical_record

FEATURES = [c for c in COLUMNS if c.is_feature]


def test_every_column_has_a_label_in_words_not_its_name():
    for c in COLUMNS:
        assert c.label.strip() and c.label != c.name, c.name
        assert "_" not in c.label, c.name  # words, not an identifier
    labels = [c.label for c in FEATURES]
    assert len(set(labels)) == len(labels), "two fields of the form would carry the same label"


def test_the_typical_encounter_is_legal():
    record = typical_record()
    assert list(record) == [c.name for c in FEATURES]
    for c in FEATURES:
        if c.typical is None:
            assert c.nullable, f"{c.name}: only a column that may be missing is typically missing"
        elif c.kind == "integer":
            assert isinstance(c.typical, int) and c.minimum <= c.typical <= c.maximum, c.name
        elif c.kind in ("code", "category"):
            assert c.typical in c.allowed, c.name
    Encounter.model_validate(record)
    row = {"encounter_id": "1", "patient_nbr": "1", "readmitted": "NO"} | {
        name: MISSING if value is None else str(value) for name, value in record.items()}
    assert validate(pd.DataFrame([row])[[c.name for c in COLUMNS]]).n_valid == 1


def test_typical_values_are_not_defaults():
    """The API keeps filling an absent field with ``default`` (or refusing it), and ``example_encounter`` (what a
    new model version must score) keeps the first allowed values and minima."""
    fields = {f.alias: f for f in Encounter.model_fields.values()}
    for c in FEATURES:
        if c.required:
            assert fields[c.name].is_required(), c.name
        else:
            assert fields[c.name].default == c.default, c.name
    example = example_encounter()
    assert example["age"] == "[0-10)" and example["num_lab_procedures"] == 0 and example["admission_type_id"] == 1
    assert typical_record()["age"] != example["age"]


@pytest.mark.real_data
def test_typical_values_are_the_modes_of_the_real_file(real_data_file):
    from readmit_contract.dataset import read_raw_csv

    frame = read_raw_csv(real_data_file)
    for c in FEATURES:
        counts = frame[c.name].value_counts()
        declared = MISSING if c.typical is None else str(c.typical)
        assert counts.index[0] == declared, f"{c.name}: the mode is {counts.index[0]!r}, declared {declared!r}"
        assert len(counts) == 1 or counts.iloc[0] > counts.iloc[1], f"{c.name}: two values are equally common"
