"""Streaming the source: chunks, line numbers, every malformed line set aside with its reason."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from readmit_contract import SchemaMismatchError
from readmit_contract.columns import COLUMN_NAMES, RAW_MAX_LENGTH
from readmit_contract.dataset import DatasetError, read_raw_csv
from readmit_contract.reader import MAX_LINE_BYTES, SOURCE_LINE, FrameSource, open_path
from readmit_contract.synthetic import write_csv


def corrupt(path: Path) -> dict[int, str]:
    """Break some lines of a well-formed CSV in place; line number -> the reason expected for it."""
    lines = path.read_bytes().split(b"\n")
    expected: dict[int, str] = {}

    def line(number: int, content: bytes, reason: str | None) -> None:
        lines[number - 1] = content
        if reason:
            expected[number] = reason

    line(3, lines[2].rsplit(b",", 1)[0], "ragged line: 49 fields, the header has 50")
    line(5, lines[4] + b",extra", "ragged line: 51 fields, the header has 50")
    line(8, lines[7].replace(b",", b',"', 1), "malformed CSV")  # a quote that never closes
    line(13, lines[12].replace(b"Caucasian", b"Caucasi\xe9n").replace(b"AfricanAmerican", b"Afric\xe9n"),
         "not UTF-8 text (byte 0xE9")
    line(21, b"", None)  # a blank line: nothing to load, nothing to report
    fields = lines[33].split(b",")
    fields[1] = b"9" * (RAW_MAX_LENGTH + 1)
    line(34, b",".join(fields), f"patient_nbr: value too long (max {RAW_MAX_LENGTH})")
    line(55, b"x" * (MAX_LINE_BYTES + 10), f"line too long (over {MAX_LINE_BYTES} bytes)")
    fields = lines[59].split(b",")
    fields[COLUMN_NAMES.index("medical_specialty")] = b'"Surgery, General"'
    line(60, b",".join(fields), None)  # a well-formed quoted field holding a comma: a row like any other
    path.write_bytes(b"\n".join(lines))
    return expected


def test_a_clean_file_streams_in_chunks_as_read_raw_csv_reads_it(tmp_path):
    path = write_csv(tmp_path / "d.csv", 2_500, seed=3)
    source = open_path(path)
    chunks = list(source.chunks(1_000))
    assert [len(c.rows) for c in chunks] == [1_000, 1_000, 500]
    assert [c.done for c in chunks] == sorted(c.done for c in chunks) and chunks[-1].done == source.total
    streamed = pd.concat([c.rows for c in chunks], ignore_index=True)
    assert list(streamed[SOURCE_LINE]) == list(range(2, 2_502))
    whole = read_raw_csv(path)
    pd.testing.assert_frame_equal(streamed[list(COLUMN_NAMES)], whole[list(COLUMN_NAMES)])
    assert not any(c.rejected for c in chunks)


def test_malformed_lines_come_back_with_their_number_and_reason(tmp_path):
    path = write_csv(tmp_path / "d.csv", 100, seed=4)
    good = read_raw_csv(path)
    expected = corrupt(path)
    chunks = list(open_path(path).chunks(16))
    rejected = {r.line: r for c in chunks for r in c.rejected}
    assert sorted(rejected) == sorted(expected)
    for number, reason in expected.items():
        assert rejected[number].reason.startswith(reason), (number, rejected[number].reason)
        assert len(rejected[number].text) <= 1_000
    assert "\ufffd" in rejected[13].text  # the bad byte is shown, the line kept
    rows = pd.concat([c.rows for c in chunks], ignore_index=True)
    # every other line is a row, with its line number; line 60's quoted field reads as the value
    kept = [n for n in range(2, 102) if n not in expected and n != 21]
    assert list(rows[SOURCE_LINE]) == kept
    assert len(rows) + len(rejected) + 1 == 100  # + the blank line
    untouched = [n for n in kept if n != 60]
    by_line = rows.set_index(SOURCE_LINE)
    assert by_line.loc[60, "medical_specialty"] == "Surgery, General"
    original = good.assign(**{SOURCE_LINE: range(2, 102)}).set_index(SOURCE_LINE)
    columns = list(COLUMN_NAMES)
    pd.testing.assert_frame_equal(by_line.loc[untouched, columns], original.loc[untouched, columns])


def test_a_frame_source_numbers_rows_as_lines_and_sets_aside_over_long_fields(synthetic_frame):
    frame = synthetic_frame.head(30).copy()
    frame.loc[4, "diag_1"] = "9" * (RAW_MAX_LENGTH + 1)
    chunks = list(FrameSource(frame).chunks(10))
    assert [len(c.rows) for c in chunks] == [9, 10, 10]
    (line,) = [r for c in chunks for r in c.rejected]
    assert (line.line, line.reason) == (6, f"diag_1: value too long (max {RAW_MAX_LENGTH})")


def test_a_header_without_the_contract_columns_is_refused(tmp_path):
    path = tmp_path / "short.csv"
    write_csv(path, 5, seed=1)
    read_raw_csv(path).drop(columns=["age"]).to_csv(path, index=False)
    with pytest.raises(SchemaMismatchError, match="age"):
        open_path(path)
    path.write_bytes(b"\xff\xfe" + path.read_bytes())
    with pytest.raises(DatasetError, match="not a CSV header"):
        open_path(path)
