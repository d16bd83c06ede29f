from readmit_contract import synthetic
from readmit_contract.columns import BY_NAME, COLUMN_NAMES, COLUMNS, MEDICATIONS, MISSING, REQUIRED


def test_fifty_columns_in_source_order():
    assert len(COLUMNS) == 50
    assert len(set(COLUMN_NAMES)) == 50
    assert COLUMN_NAMES[:3] == ("encounter_id", "patient_nbr", "race")
    assert COLUMN_NAMES[-3:] == ("change", "diabetesMed", "readmitted")
    assert len(MEDICATIONS) == 23 and all(m in BY_NAME for m in MEDICATIONS)


def test_every_column_is_fully_specified():
    for c in COLUMNS:
        if c.kind in ("category", "code", "outcome", "open_category"):
            assert c.allowed, c.name
        if c.kind in ("integer", "id"):
            assert c.minimum is not None and c.maximum is not None and c.minimum < c.maximum, c.name
        if c.kind == "code":
            assert set(c.labels) == set(c.allowed), c.name
        if c.nullable:
            assert c.default is None, c.name
        assert c.default is REQUIRED or not c.kind == "outcome"


def test_synthetic_marginals_only_use_contract_values():
    for name, weights in synthetic.MARGINALS.items():
        c = BY_NAME[name]
        for value in weights:
            if value == MISSING:
                assert c.nullable, name
            elif c.is_integer and c.kind == "integer":
                assert c.minimum <= int(value) <= c.maximum, (name, value)
            else:
                allowed = {str(v) for v in c.allowed}
                assert value in allowed, (name, value)
    assert set(synthetic.MEDICATION_USE) == set(MEDICATIONS)
