import pytest
from pydantic import ValidationError

from readmit_contract import Encounter, example_encounter, validate
from readmit_contract.columns import BY_NAME, COLUMNS, MEDICATIONS


def test_model_fields_derive_from_the_contract():
    fields = Encounter.model_fields
    assert {f.alias for f in fields.values()} == {c.name for c in COLUMNS if c.kind != "outcome"}
    schema = Encounter.model_json_schema()
    props = schema["properties"]
    assert props["glyburide-metformin"]["default"] == "No"
    assert set(props["age"]["enum"]) == set(BY_NAME["age"].allowed)
    assert props["time_in_hospital"]["minimum"] == 1 and props["time_in_hospital"]["maximum"] == 14
    required = set(schema["required"])
    assert "age" in required and "race" not in required and "insulin" not in required


def test_every_generated_row_is_a_valid_encounter(synthetic_frame):
    valid = validate(synthetic_frame).valid
    records = valid.drop(columns=["readmitted"]).to_dict("records")
    for record in records[:500]:
        encounter = Encounter.model_validate(record)
        assert encounter.to_record()["encounter_id"] == record["encounter_id"]


def test_missing_marker_reads_as_none_and_dashed_names_round_trip():
    data = example_encounter() | {"race": "?", "glyburide-metformin": "Up"}
    encounter = Encounter.model_validate(data)
    assert encounter.race is None
    assert encounter.glyburide_metformin == "Up"
    record = encounter.to_record()
    assert record["glyburide-metformin"] == "Up" and record["race"] is None
    assert set(MEDICATIONS) <= set(record)
    assert Encounter.model_validate_json(encounter.model_dump_json()) == encounter


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("age", "[100-110)"),
        ("time_in_hospital", 0),
        ("time_in_hospital", "abc"),
        ("insulin", "Sometimes"),
        ("admission_type_id", 42),
        ("diag_1", "XYZ"),
        ("gender", None),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValidationError) as err:
        Encounter.model_validate(example_encounter() | {field: value})
    assert any(e["loc"][0] == field for e in err.value.errors())


def test_required_field_and_unknown_field():
    data = example_encounter()
    del data["age"]
    with pytest.raises(ValidationError) as err:
        Encounter.model_validate(data)
    assert err.value.errors()[0]["type"] == "missing"
    with pytest.raises(ValidationError):
        Encounter.model_validate(example_encounter() | {"readmitted": "<30"})
