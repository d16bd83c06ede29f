"""Bad input through the whole data path, on SQLite and MariaDB alike: nothing aborts, nothing is lost.

Every source line ends up in exactly one place: a raw row (then clean, excluded or rejected with its
reason) or an unreadable line (then rejected with its line number)."""

from __future__ import annotations

import json

import pandas as pd
from readmit_contract.columns import RAW_MAX_LENGTH, TEXT_MAX_LENGTH
from readmit_contract.synthetic import write_csv
from readmit_contract.target import is_excluded
from readmit_data.loading import assign_splits, load, open_source, raw_counts, unreadable_lines
from readmit_data.preprocessing import clean_counts, lineage_table, preprocess_pending
from readmit_data.stores import clean_encounters, rejected_rows
from sqlalchemy import select

from ..contract.test_reader import corrupt
from .conftest import BATCH_SIZE


def _rejected(clean_store) -> pd.DataFrame:
    with clean_store.connect() as conn:
        return pd.read_sql(select(rejected_rows).order_by(rejected_rows.c.id), conn)


def _every_line_accounted_for(clean_store, lines: int) -> None:
    lineage = lineage_table(clean_store)
    assert lineage["rows_in"].sum() == lines
    assert (lineage["rows_out"] + lineage["rows_rejected"] + lineage["rows_excluded"] == lineage["rows_in"]).all()
    assert sum(clean_counts(clean_store).values()) == lineage["rows_out"].sum()
    assert len(_rejected(clean_store)) == lineage["rows_rejected"].sum()


def test_over_long_values_are_rejected_with_their_reason_on_both_backends(stores, source_frame):
    """A value a little too long for the clean column reaches validation (raw columns are wider); one longer
    than the raw column sets its line aside at the load. Before, MariaDB failed the whole batch
    ("Data too long") where SQLite stored the value."""
    raw, clean_store = stores
    frame = source_frame.head(3_000).copy()
    frame.loc[5, "medical_specialty"] = "Surgery" + "x" * 100  # 107 characters: raw yes, clean no
    frame.loc[9, "payer_code"] = "P" * (RAW_MAX_LENGTH + 45)  # 300 characters: not even raw
    reports = load(raw, frame, source="long", batch="all", batch_size=BATCH_SIZE, progress=False)
    assert sum(r.rows_added for r in reports if r.split != "unreadable") == len(frame) - 1
    assert sum(raw_counts(raw).values()) == len(frame) - 1
    (line,) = unreadable_lines(raw).itertuples()
    assert (line.source_line, line.reason) == (11, f"payer_code: value too long (max {RAW_MAX_LENGTH})")

    preprocess_pending(raw, clean_store)
    rejected = _rejected(clean_store).set_index("source_line")
    assert rejected.loc[7, "reason"].startswith(f"medical_specialty: value too long (max {TEXT_MAX_LENGTH})")
    assert rejected.loc[7, "encounter_id"] == frame.loc[5, "encounter_id"]
    assert json.loads(rejected.loc[7, "row_json"])["medical_specialty"] == frame.loc[5, "medical_specialty"]
    assert rejected.loc[11, "reason"] == f"line 11: payer_code: value too long (max {RAW_MAX_LENGTH})"
    assert json.loads(rejected.loc[11, "row_json"])["source_line"] == 11
    assert len(rejected) == 2
    _every_line_accounted_for(clean_store, len(frame))


def test_malformed_csv_lines_land_in_rejected_rows_with_their_line_number(stores, tmp_path):
    """Ragged lines, a quote that never closes, a non-UTF-8 byte, an over-long field and a 1 MB line: the
    load streams on, the rest is loaded exactly, and preprocessing reports each line with its number."""
    raw, clean_store = stores
    path = write_csv(tmp_path / "diabetic_data.csv", 3_000, seed=11)
    expected = corrupt(path)
    reports = load(raw, open_source(str(path)), source=str(path), batch="all", batch_size=BATCH_SIZE,
                   progress=False, read_chunk=700)
    unreadable = [r for r in reports if r.batch_id == "unreadable"]
    assert len(unreadable) == 1 and unreadable[0].rows_added == len(expected)
    assert "line number and reason" in unreadable[0].message
    lines = unreadable_lines(raw)
    assert list(lines["source_line"]) == sorted(expected)
    for number, reason in expected.items():
        assert lines.set_index("source_line").loc[number, "reason"].startswith(reason)
    rows = 3_000 - len(expected) - 1  # and the blank line, which holds nothing
    assert sum(raw_counts(raw).values()) == rows

    done = {d.batch_id: d for d in preprocess_pending(raw, clean_store)}
    assert (done["unreadable"].rows_in, done["unreadable"].rows_rejected) == (len(expected), len(expected))
    rejected = _rejected(clean_store)
    from_lines = rejected[rejected["batch_id"] == "unreadable"].set_index("source_line")
    assert sorted(from_lines.index) == sorted(expected)
    assert from_lines.loc[13, "reason"].startswith("line 13: not UTF-8 text")
    assert from_lines["encounter_id"].isna().all()
    _every_line_accounted_for(clean_store, rows + len(expected))

    # a second load of the same file adds nothing and does not set the lines aside twice
    again = load(raw, open_source(str(path)), source=str(path), batch="all", batch_size=BATCH_SIZE, progress=False)
    assert [r.rows_added for r in again] == [0] and len(unreadable_lines(raw)) == len(expected)


def test_ids_with_leading_zeros_are_one_encounter_across_batches(stores, source_frame):
    """0123 repeating 123 in a later batch, and a verbatim repeat in the same batch, are rejected as duplicates
    instead of colliding in CleanData (before: the batch failed on the primary key, every run)."""
    raw, clean_store = stores
    frame = source_frame.head(5_000).copy()
    in_train = assign_splits(frame["patient_nbr"], 42) == "train"
    in_scope = ~is_excluded(frame["discharge_disposition_id"].astype(int)).to_numpy()
    first = int(frame.index[in_train & in_scope][0])  # clean, in train-0001
    later = len(frame) - 1  # as the same patient's: in the last train batch
    frame.loc[later, "patient_nbr"] = frame.loc[first, "patient_nbr"]  # same patient: same split
    frame.loc[later, "encounter_id"] = "000" + frame.loc[first, "encounter_id"]
    frame.loc[first + 1, "patient_nbr"] = frame.loc[first, "patient_nbr"]
    frame.loc[first + 1, "encounter_id"] = frame.loc[first, "encounter_id"]  # verbatim, same batch
    load(raw, frame, source="dups", batch="all", batch_size=BATCH_SIZE, progress=False)
    assert sum(raw_counts(raw).values()) == len(frame)  # raw keeps what it received

    preprocess_pending(raw, clean_store)
    with clean_store.connect() as conn:
        stored = pd.read_sql(select(clean_encounters.c.encounter_id, clean_encounters.c.batch_id), conn)
    assert stored["encounter_id"].is_unique
    rejected = _rejected(clean_store).set_index("source_line")
    assert rejected.loc[first + 3, "reason"].startswith("encounter_id: duplicate encounter_id")
    assert "already clean in batch" in rejected.loc[later + 2, "reason"]
    assert rejected.loc[later + 2, "encounter_id"] == "000" + frame.loc[first, "encounter_id"]
    assert len(rejected) == 2
    _every_line_accounted_for(clean_store, len(frame))
