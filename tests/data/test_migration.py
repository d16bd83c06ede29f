"""A RawData store made by the previous version (train batches identified by number and a batch size) is
migrated in place when its batches' rows can be derived, and refused untouched when they cannot."""

from __future__ import annotations

import pytest
from readmit_contract.columns import COLUMN_NAMES, RAW_MAX_LENGTH
from readmit_data.loading import SourceMismatchError, SplitPlan, load, loaded_batches
from readmit_data.stores import StoreMigrationError, derive_first_rows, raw_batches, raw_encounters
from sqlalchemy import inspect, select

from .conftest import SOURCE


def _as_previous_version(raw) -> None:
    """What the previous version's schema looked like: no first_row, no source_line, no raw_rejected, and on
    MySQL value columns 64 characters wide."""
    with raw.begin() as conn:
        conn.exec_driver_sql("DROP TABLE raw_rejected")
        conn.exec_driver_sql("ALTER TABLE raw_batches DROP COLUMN first_row")
        conn.exec_driver_sql("ALTER TABLE raw_encounters DROP COLUMN source_line")
        if raw.dialect.name != "sqlite":
            narrow = ", ".join(f"MODIFY `{name}` VARCHAR(64) {'NOT NULL' if name == 'encounter_id' else 'NULL'}"
                               for name in COLUMN_NAMES)
            conn.exec_driver_sql(f"ALTER TABLE raw_encounters {narrow}")


def _columns(raw, table: str) -> dict:
    return {c["name"]: c for c in inspect(raw).get_columns(table)}


def _load(raw, frame, batch_size: int, **kwargs):
    return load(raw, frame, source=SOURCE, batch_size=batch_size, seed=42, progress=False, **kwargs)


def test_batches_of_one_size_are_migrated_and_loading_continues(stores, source_frame):
    raw, _ = stores
    _load(raw, source_frame, 2_000)
    _load(raw, source_frame, 2_000)
    _as_previous_version(raw)

    train = SplitPlan.of(source_frame, 2_000, 42).rows("train")
    (third,) = _load(raw, source_frame, 2_000)
    assert third.batch_id == "train-0003" and third.rows_added == len(train) - 4_000
    table = loaded_batches(raw).set_index("batch_id")
    assert [int(table.loc[f"train-000{n}", "first_row"]) for n in (1, 2, 3)] == [0, 2_000, 4_000]
    with raw.connect() as conn:
        query = select(raw_encounters.c.encounter_id).where(raw_encounters.c.split == "train")
        stored = list(conn.execute(query.order_by(raw_encounters.c.row_id)).scalars())
    assert stored == list(train["encounter_id"])
    columns = _columns(raw, "raw_encounters")
    assert "source_line" in columns
    if raw.dialect.name != "sqlite":
        assert {columns[name]["type"].length for name in COLUMN_NAMES} == {RAW_MAX_LENGTH}


def test_batches_of_different_sizes_are_refused_and_left_untouched(stores, source_frame):
    raw, _ = stores
    _load(raw, source_frame, 2_000)
    _load(raw, source_frame, 3_000)  # what the previous version would have put at train rows 3,000-5,999
    _as_previous_version(raw)
    with pytest.raises(StoreMigrationError, match="different sizes.*fresh store"):
        _load(raw, source_frame, 2_000)
    assert "first_row" not in _columns(raw, "raw_batches")


def test_a_batch_that_does_not_hold_its_recorded_rows_is_refused(stores, source_frame):
    raw, _ = stores
    _load(raw, source_frame, 2_000)
    with raw.begin() as conn:
        conn.execute(raw_batches.update().where(raw_batches.c.batch_id == "train-0001").values(first_row=1))
    with pytest.raises(SourceMismatchError, match="train-0001 does not hold the train rows"):
        _load(raw, source_frame, 2_000)
    assert set(loaded_batches(raw)["batch_id"]) == {"validation", "test", "train-0001"}


@pytest.mark.parametrize(("batches", "expected"), [
    ([("a", 1, 2_000), ("b", 2, 2_000), ("c", 3, 500)], {"a": 0, "b": 2_000, "c": 4_000}),
    ([("c", 3, 2_000), ("a", 1, 2_000)], {"a": 0, "c": 4_000}),  # a gap: loaded later by "next"
    ([("a", 1, 700)], {"a": 0}),
    ([], {}),
])
def test_derived_first_rows(batches, expected):
    assert derive_first_rows(batches) == expected


@pytest.mark.parametrize("batches", [
    [("a", 1, 1_500), ("b", 2, 3_000)],  # batch size raised: rows 1,500-2,999 were skipped
    [("a", 1, 2_000), ("b", 2, 1_000), ("c", 3, 2_000)],
    [("b", 2, 1_500)],  # alone and not the first: its size is unknown
])
def test_underivable_first_rows(batches):
    with pytest.raises(StoreMigrationError, match="fresh store"):
        derive_first_rows(batches)
