"""The UI's CSV upload under bad input: every way a file can be wrong gives a sentence on the page, never an
exception. First the reading function (``readmit_ui.upload.read_upload``) on a corpus of real byte strings
(encodings, ragged lines, quotes, headers, binary data, a 100 MB file on disk), then the scoring against the
real API, then what a person sees on the page (Streamlit's AppTest, in front of the running API)."""

from __future__ import annotations

import codecs
import io
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from readmit_contract import synthetic
from readmit_contract.columns import COLUMN_NAMES

from .conftest import AUTH

APP = Path(__file__).resolve().parents[2] / "server3-serving" / "ui" / "app.py"
sys.path.insert(0, str(APP.parent))  # the UI's modules live beside app.py (not an installed package)

from readmit_ui.batch import SCORE_COLUMNS, encounters_of, score_csv  # noqa: E402
from readmit_ui.client import ApiClient  # noqa: E402
from readmit_ui.upload import MIB, REQUIRED_FEATURES, UploadRefused, read_upload  # noqa: E402

from .test_ui import UI_KEY, assert_no_internal_detail, page_text, run_app  # noqa: E402

LIMIT = 25 * MIB
FRAME = synthetic.generate(8, seed=11)
"""8 encounters in the raw format (text cells)."""
TEXT = FRAME.to_csv(index=False)
LINES = TEXT.splitlines(keepends=True)
"""LINES[0] is the header (line 1), LINES[i] the i-th data row (line i + 1)."""
UTF8_ADVICE = "save the file as “CSV UTF-8”"


def refused(data: bytes, limit: int = LIMIT) -> str:
    with pytest.raises(UploadRefused) as caught:
        read_upload(data, limit)
    message = str(caught.value)
    for needle in ("Traceback", "Error", "codec", "_csv", "0x00"):  # no library text
        assert needle not in message, (needle, message)
    return message


def with_field(line: str, value: str) -> str:
    """A data line with ``value`` as its race cell (third field)."""
    fields = line.rstrip("\r\n").split(",")
    fields[2] = value
    return ",".join(fields) + "\n"


# -- files that are read whole ----------------------------------------------------------------------------------

ENCODED = {
    "utf-8": (TEXT.encode(), "UTF-8"),
    "utf-8 with BOM": (codecs.BOM_UTF8 + TEXT.encode(), "UTF-8 with BOM"),
    "utf-16 LE with BOM": (TEXT.encode("utf-16"), "UTF-16 with BOM"),
    "utf-16 BE with BOM": (codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "UTF-16 with BOM"),
    "utf-16 LE without BOM": (TEXT.encode("utf-16-le"), "UTF-16 LE without BOM"),
    "utf-16 BE without BOM": (TEXT.encode("utf-16-be"), "UTF-16 BE without BOM"),
    "CRLF line ends": (TEXT.replace("\n", "\r\n").encode(), "UTF-8"),
    "CR line ends": (TEXT.replace("\n", "\r").encode(), "UTF-8"),
    "semicolons": (FRAME.to_csv(index=False, sep=";").encode(), "UTF-8"),
    "tabs, UTF-16 (Excel's Unicode text)": (FRAME.to_csv(index=False, sep="\t").encode("utf-16"), "UTF-16 with BOM"),
    "no final line break": (TEXT.rstrip("\n").encode(), "UTF-8"),
}


@pytest.mark.parametrize("case", list(ENCODED))
def test_accepted_encodings_and_separators_read_every_cell(case):
    data, encoding = ENCODED[case]
    parsed = read_upload(data, LIMIT)
    pd.testing.assert_frame_equal(parsed.frame, FRAME)
    assert parsed.unreadable.empty and parsed.encoding == encoding
    assert parsed.rows == list(range(1, 9)) and parsed.lines == list(range(2, 10))
    assert parsed.notes[0].startswith(f"Read as {encoding} text")


def test_blank_lines_are_skipped_and_lines_still_counted():
    data = ("\n" + LINES[0] + "\n" + "".join(LINES[1:4]) + "   \n\n" + "".join(LINES[4:])).encode()
    parsed = read_upload(data, LIMIT)
    pd.testing.assert_frame_equal(parsed.frame, FRAME)
    assert parsed.lines == [4, 5, 6, 9, 10, 11, 12, 13]  # header on line 2, blank lines 1, 3, 7, 8


def test_extra_columns_are_kept_named_and_not_sent():
    extra = FRAME.assign(ward="B2", notes="first line\nsecond line, with a comma")  # a quoted cell over two lines
    parsed = read_upload(extra.to_csv(index=False).encode(), LIMIT)
    pd.testing.assert_frame_equal(parsed.frame, extra)
    assert parsed.ignored_columns == ("ward", "notes") and parsed.lines == list(range(2, 18, 2))
    assert any("2 column(s) are not part of the contract and are not sent" in n and "ward, notes" in n
               for n in parsed.notes)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    from readmit_contract import validate

    return validate(frame).valid


def test_absent_optional_columns_are_named_with_their_default():
    lean = FRAME.drop(columns=["encounter_id", "patient_nbr", "readmitted", "race", "insulin"])
    parsed = read_upload(lean.to_csv(index=False).encode(), LIMIT)
    assert parsed.defaulted_columns == ("race", "insulin") and len(parsed.frame) == 8
    assert any("their default is sent: race, insulin" in n for n in parsed.notes)


def test_header_names_are_trimmed_and_unknown_repeats_suffixed():
    header = " " + LINES[0].rstrip("\n").replace(",age,", ", age ,") + ",note,note,\n"
    rows = "".join(line.rstrip("\n") + ",a,b,\n" for line in LINES[1:])
    parsed = read_upload((header + rows).encode(), LIMIT)
    assert list(parsed.frame.columns) == [*COLUMN_NAMES, "note", "note.2", "unnamed_53"]
    assert parsed.frame["age"].tolist() == FRAME["age"].tolist()


# -- rows that cannot be read: named with their line, the others kept -----------------------------------------------

def test_ragged_lines_are_rejected_with_their_line_and_field_count():
    too_many = LINES[2].rstrip("\n") + ",surplus\n"
    too_few = ",".join(LINES[4].rstrip("\n").split(",")[:-3]) + "\n"
    data = (LINES[0] + LINES[1] + too_many + LINES[3] + too_few + "".join(LINES[5:])).encode()
    parsed = read_upload(data, LIMIT)
    assert parsed.unreadable.to_dict("records") == [
        {"row": 2, "line": 3, "reason": "line 3: 51 fields where the header has 50"},
        {"row": 4, "line": 5, "reason": "line 5: 47 fields where the header has 50"},
    ]
    assert parsed.rows == [1, 3, 5, 6, 7, 8] and parsed.lines == [2, 4, 6, 7, 8, 9]
    pd.testing.assert_frame_equal(parsed.frame, FRAME.drop(index=[1, 3]).reset_index(drop=True))


@pytest.mark.parametrize(("encoding", "value", "byte"), [("latin-1", "Caucasién", "0xE9"),
                                                          ("cp1252", "“Other”", "0x93")])
def test_non_utf8_bytes_reject_their_line_only(encoding, value, byte):
    bad = with_field(LINES[3], value).encode(encoding)
    data = (LINES[0] + LINES[1] + LINES[2]).encode() + bad + "".join(LINES[4:]).encode()
    parsed = read_upload(data, LIMIT)
    (record,) = parsed.unreadable.to_dict("records")
    assert record["row"] == 3 and record["line"] == 4
    assert record["reason"].startswith(f"line 4: not UTF-8 text (byte {byte}); {UTF8_ADVICE}")
    assert len(parsed.frame) == 7 and parsed.rows == [1, 2, 4, 5, 6, 7, 8]
    assert any("1 row(s) hold bytes that are not UTF-8" in n for n in parsed.notes)


def test_a_whole_latin1_file_is_rejected_line_by_line_with_advice():
    text = LINES[0] + "".join(with_field(line, "Hispánico") for line in LINES[1:])
    message = refused(text.encode("latin-1"))
    assert message.startswith("None of the 8 rows could be read, e.g. line 2: not UTF-8 text (byte 0xE1)")


def test_a_header_that_is_not_utf8_refuses_the_file():
    message = refused(("Patiént," + TEXT).encode("latin-1"))
    assert message.startswith("The header line (line 1) is not UTF-8 text (byte 0xE9)") and UTF8_ADVICE in message


def test_a_quote_closed_lines_later_rejects_the_merged_record():
    opened = '"' + LINES[3]
    closed = LINES[4].replace(",", '",', 1)
    parsed = read_upload((LINES[0] + "".join(LINES[1:3]) + opened + closed + "".join(LINES[5:])).encode(), LIMIT)
    (record,) = parsed.unreadable.to_dict("records")
    assert record["row"] == 3 and record["line"] == 4
    assert record["reason"].startswith("lines 4–5 were read as one record") and "quote in line 4" in record["reason"]
    assert parsed.lines == [2, 3, 6, 7, 8, 9]


def test_a_quote_never_closed_refuses_the_file_naming_its_line():
    message = refused((LINES[0] + LINES[1] + '"' + "".join(LINES[2:])).encode())
    assert message.startswith('Line 3 opens a quote (") that is never closed') and "lines 3 to 9" in message


def test_a_quote_never_closed_in_a_large_file_refuses_it_naming_its_line():
    rows = synthetic.generate(1500, seed=2).to_csv(index=False).splitlines(keepends=True)
    message = refused((rows[0] + "".join(rows[1:10]) + '"' + "".join(rows[10:])).encode())
    assert message.startswith("From line 11 on, the file cannot be read: a quote (\") opened there is not closed")


def test_all_rows_unreadable_refuses_the_file():
    message = refused((LINES[0] + "1,2,3\n4,5\n").encode())
    assert message.startswith("None of the 2 rows could be read, e.g. line 2: 3 fields where the header has 50")


# -- files refused as a whole -------------------------------------------------------------------------------------

def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")
    return buffer.getvalue()


REFUSED = {
    "empty": (b"", "The file is empty"),
    "blank lines only": (b"\r\n \n\t\n", "The file is empty"),
    "a UTF-8 BOM only": (codecs.BOM_UTF8, "The file is empty"),
    "a UTF-16 BOM only": (codecs.BOM_UTF16_LE, "The file is empty"),
    "header only": (LINES[0].encode(), "The file has a header (line 1) but no data rows"),
    "header and blank lines": ((LINES[0] + "\n\n,\n").encode(), "None of the 1 rows could be read"),
    "no header": ("".join(LINES[1:]).encode(), "Line 1 is not a header line with the contract's column names"),
    "missing columns": (FRAME.drop(columns=["age", "change", "weight"]).to_csv(index=False).encode(),
                        "The file lacks 2 required column(s) of the contract: age, change."),
    "a column in the wrong case": (TEXT.replace(",gender,", ",Gender,", 1).encode(),
                                   "lacks 1 required column(s) of the contract: gender. Names are case-sensitive: the "
                                   "file has Gender for gender."),
    "a column twice": ((LINES[0].rstrip("\n") + ",age\n" + "".join(line.rstrip("\n") + ",x\n" for line in LINES[1:]))
                       .encode(), "The header names column(s) age more than once"),
    "an Excel workbook (zip)": (_zip(), "This file is an Excel workbook or a zip archive, not a CSV text file"),
    "an old Excel workbook": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500), "an old Excel workbook (.xls)"),
    "gzip": (b"\x1f\x8b\x08\x00" + bytes(100), "a gzip-compressed file"),
    "a PDF": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "a PDF document"),
    "random bytes": (np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                     "The file holds binary data (NUL bytes)"),
    "random bytes without NUL": (np.random.default_rng(6).integers(1, 256, 4096, dtype=np.uint8).tobytes(),
                                 "The header line (line 1) is not UTF-8 text"),
    "a PNG image": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), "binary data"),
    "NUL inside UTF-16 text": (("race,age\x00\n" + TEXT).encode("utf-16"), "binary data (NUL characters)"),
    "broken UTF-16": (codecs.BOM_UTF16_LE + "race".encode("utf-16-le") + b"\x00\xdc" + b"a", "not valid UTF-16"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_files_that_cannot_be_scored_are_refused_with_a_sentence(case):
    data, expected = REFUSED[case]
    assert expected in refused(data)


def test_a_100_mb_file_is_refused_from_its_size_before_it_is_read(tmp_path):
    path = tmp_path / "huge.csv"
    row = "".join(LINES[1:]).encode()
    with open(path, "wb") as out:
        out.write(LINES[0].encode())
        while out.tell() < 100 * MIB:
            out.write(row * 1000)
    size = path.stat().st_size
    assert size >= 100 * MIB
    with open(path, "rb") as handle:
        with pytest.raises(UploadRefused) as caught:
            read_upload(handle, LIMIT)
        assert handle.tell() == 0  # not a byte of it was read
    assert str(caught.value) == (f"This file is {size / MIB:,.1f} MB; files up to 25 MB can be scored here. Split it "
                                 "into smaller files, each starting with the header line, and upload them one by one.")
    data = path.read_bytes()  # the same as bytes (what Streamlit hands the page)
    assert "files up to 25 MB" in refused(data)


def test_the_limit_is_inclusive():
    assert len(read_upload(TEXT.encode(), len(TEXT.encode())).frame) == 8
    assert "files up to 1,000 bytes" in refused(TEXT.encode(), 1000)
    assert REQUIRED_FEATURES[:2] == ("gender", "age")


# -- scoring against the real API ------------------------------------------------------------------------------------

def messy_upload() -> tuple[bytes, pd.DataFrame]:
    """20 encounters with a ``ward`` column: line 4 has a field too many, line 6 is latin-1, line 9 is outside the
    contract. Returns the bytes and the rows that can be read."""
    frame = synthetic.generate(20, seed=4).assign(ward="A1")
    frame.loc[7, "time_in_hospital"] = "99"  # row 8, line 9
    lines = frame.to_csv(index=False).splitlines(keepends=True)
    lines[3] = lines[3].rstrip("\n") + ",surplus\n"  # row 3, line 4
    data = ("".join(lines[:5]).encode() + with_field(lines[5], "Caucasién").encode("latin-1")  # row 5, line 6
            + "".join(lines[6:]).encode())
    return data, frame.drop(index=[2, 4]).reset_index(drop=True)


@pytest.mark.slow
def test_a_messy_file_is_scored_except_its_bad_rows(api):
    data, readable = messy_upload()
    with ApiClient(api, UI_KEY) as client:
        result = score_csv(data, client)
    assert result.rejected[["row", "line"]].to_numpy().tolist() == [[3, 4], [5, 6], [8, 9]]
    reasons = result.rejected["reason"].tolist()
    assert reasons[0] == "line 4: 52 fields where the header has 51"
    assert reasons[1].startswith("line 6: not UTF-8 text (byte 0xE9)")
    assert reasons[2].startswith("time_in_hospital: value out of range")
    assert result.n_rows == 20 and result.n_unreadable == 2 and len(result.scored) == 18 and result.n_sent == 17
    assert list(result.scored.columns) == [*readable.columns, *SCORE_COLUMNS]
    pd.testing.assert_frame_equal(result.scored[list(readable.columns)], readable)  # cells as uploaded
    assert result.scored.loc[5, "reason"].startswith("rejected by the contract: time_in_hospital")
    sent = _typed(readable)
    expected = httpx.post(f"{api}/predict/batch", json={"encounters": encounters_of(sent)}, headers=AUTH,
                          timeout=60).raise_for_status().json()["predictions"]
    np.testing.assert_allclose(result.scored.drop(index=5)["probability"].to_numpy(dtype=float),
                               [np.nan if p["probability"] is None else p["probability"] for p in expected],
                               rtol=0, atol=1e-9)
    assert any("1 column(s) are not part of the contract and are not sent" in n for n in result.notes)


@pytest.mark.slow
def test_more_rows_than_the_batch_limit_go_in_chunks_with_progress(api):
    frame = synthetic.generate(2300, seed=9)
    calls: list[tuple[int, int]] = []
    with ApiClient(api, UI_KEY) as client:
        result = score_csv(frame.to_csv(index=False).encode(), client, chunk_size=5000,  # capped at the API's 1,000
                           progress=lambda done, total: calls.append((done, total)))
    n_valid = result.n_sent
    assert calls == [(1000, n_valid), (2000, n_valid), (n_valid, n_valid)] and n_valid > 2200
    assert result.scored["probability"].notna().sum() > 2000 and len(result.scored) == 2300


# -- what a person sees ----------------------------------------------------------------------------------------------

def upload(at, name: str, data: bytes):
    at.file_uploader(key="csv").set_value((name, data, "text/csv")).run()
    if at.button and any(b.key == "score" for b in at.button):
        at.button(key="score").click().run()
    return at


@pytest.mark.slow
def test_the_page_scores_a_messy_file_and_lists_what_it_did_not_send(api, monkeypatch):
    data, _ = messy_upload()
    at = upload(run_app(monkeypatch, api), "messy.csv", data)
    assert not at.exception and not at.main.error
    (success,) = at.main.success
    assert success.value.startswith("20 rows: ") and "1 rejected by the contract" in success.value
    assert "2 unreadable (not sent)" in success.value
    assert any("3 row(s) rejected" in w.value for w in at.warning)
    table = at.main.dataframe[0].value
    assert table["line"].tolist() == [4, 6, 9] and "byte 0xE9" in table["reason"].iloc[1]
    captions = " ".join(c.value for c in at.main.caption)
    assert "Read as UTF-8 text, comma-separated" in captions
    assert "not sent (they are kept in the download): ward" in captions
    assert_no_internal_detail(at, api)


BAD_ON_THE_PAGE = {
    "binary.csv": (np.random.default_rng(8).integers(0, 256, 2048, dtype=np.uint8).tobytes(), "binary data"),
    "lacking.csv": (FRAME.drop(columns=["age"]).to_csv(index=False).encode(), "lacks 1 required column(s) of the "
                                                                             "contract: age."),
    "header.csv": (LINES[0].encode(), "but no data rows"),
    "quote.csv": ((LINES[0] + '"' + "".join(LINES[1:])).encode(), "Line 2 opens a quote"),
    "empty.csv": (b"", "The file is empty"),
}


@pytest.mark.slow
def test_the_page_says_why_a_file_cannot_be_scored(api, monkeypatch):
    at = run_app(monkeypatch, api)
    for name, (data, expected) in BAD_ON_THE_PAGE.items():
        upload(at, name, data)
        assert not at.exception, name
        assert [e.value for e in at.main.error if expected in e.value], (name, [e.value for e in at.main.error])
        assert at.session_state["batch"][1].refused and not at.main.success and not at.main.dataframe, name
        assert_no_internal_detail(at, api)
    upload(at, "utf16.csv", TEXT.encode("utf-16"))  # and a good file after them is scored
    assert not at.main.error and at.main.success[0].value.startswith("8 rows:")


@pytest.mark.slow
def test_the_page_refuses_a_file_above_its_limit_before_reading_it(api, monkeypatch):
    monkeypatch.setenv("STREAMLIT_SERVER_MAX_UPLOAD_SIZE", "1")  # the one setting of the server and the page
    at = run_app(monkeypatch, api)
    assert at.file_uploader(key="csv").proto.max_upload_size_mb == 1
    big = LINES[0].encode() + "".join(LINES[1:]).encode() * 900
    assert len(big) > MIB
    at.file_uploader(key="csv").set_value(("big.csv", big, "text/csv")).run()
    assert not at.exception and not any(b.key == "score" for b in at.button)  # nothing to click: refused at once
    (error,) = at.main.error
    assert error.value.startswith(f"This file is {len(big) / MIB:.1f} MB; files up to 1 MB can be scored here.")
    assert "batch" not in at.session_state
    assert "Traceback" not in page_text(at)
