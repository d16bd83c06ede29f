"""Reading an uploaded CSV of encounters: every way a file can be wrong becomes a sentence for the page.

``read_upload(source, limit_bytes)`` returns the rows it could read (``ParsedCsv``) or raises
``UploadRefused`` whose text tells a person what is wrong and what to do. The rules:

Size
    Above ``limit_bytes`` the file is refused from its size alone, before any of it is read.
Encoding
    UTF-8, with or without a byte-order mark (BOM); UTF-16 with a BOM (LE or BE, Excel's
    "Unicode text"); UTF-16 without a BOM when its first KiB shows the pattern of ASCII text in
    UTF-16 (every other byte NUL). Nothing else is guessed: a UTF-8 file with bytes that are not UTF-8
    (latin-1/cp1252 "é" as 0xE9, …) keeps its other lines, each line holding such a byte is rejected with
    its line number and the first bad byte; a header line with such bytes refuses the file.
    NUL bytes outside UTF-16, a spreadsheet workbook, a compressed file or a PDF are refused as not text.
Separator
    Comma; a semicolon or a tab when the header line holds no comma but one of those (the contract's
    names hold none of the three).
Header
    The first non-blank line; names trimmed of blanks. Every required feature of the contract must be a
    column (the missing ones are named); the identifiers, ``readmitted`` and the features with a default
    may be absent (placeholders and the contract's defaults are used, and the page says which). Other
    columns are not sent to the API, kept in the download, and named. A contract column named twice
    refuses the file; other repeated names get a ``.2``, ``.3`` suffix.
Lines
    Blank lines are skipped. A record with more or fewer fields than the header is rejected with its line
    (a record running over several lines is named as a probably unclosed quote). A quote opened and never
    closed before the end of the file (or a field longer than 128 KiB) refuses the file with the line
    where it opens. No data row at all refuses the file.

Rows are numbered from 1 (the first data record) and carry the file line where they start (the header
is line 1 when the file has no blank line before it).
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import pandas as pd
from readmit_contract.columns import BY_NAME, COLUMNS

log = logging.getLogger(__name__)

MIB = 1024 * 1024
FIELD_LIMIT = csv.field_size_limit()
"""Longest field the reader accepts (Python's default, 128 KiB): longer is an unclosed quote or not a CSV."""
DELIMITERS = (",", ";", "\t")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
REQUIRED_FEATURES = tuple(c.name for c in COLUMNS if c.is_feature and c.required)
DEFAULTED_FEATURES = tuple(c.name for c in COLUMNS if c.is_feature and not c.required)
SAVE_AS_UTF8 = "save the file as “CSV UTF-8” (Excel: File › Save as › CSV UTF-8) and upload it again"
SIGNATURES = (
    (b"PK\x03\x04", "an Excel workbook or a zip archive"),
    (b"\xd0\xcf\x11\xe0", "an old Excel workbook (.xls)"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"%PDF", "a PDF document"),
)
_UNDECODED = re.compile("[\udc80-\udcff]")
"""Bytes that were not UTF-8, as ``surrogateescape`` decoding keeps them (U+DC80 + byte)."""
NAMES_SHOWN = 12
CHUNK_ROWS = 10_000
"""Rows turned into a frame at a time while reading (Python lists of cells take ~5x the frame's memory)."""


class UploadRefused(ValueError):
    """The file cannot be scored at all; the text is for the page (what is wrong, what to do)."""


@dataclass(frozen=True)
class ParsedCsv:
    frame: pd.DataFrame
    """The readable data rows, every cell as written (text), columns as in the header; index 0..n-1."""
    rows: list[int]
    """Row number (1 = first data record) of each row of ``frame``."""
    lines: list[int]
    """File line where each row of ``frame`` starts."""
    unreadable: pd.DataFrame
    """Records that could not be read as a row: ``row``, ``line``, ``reason``."""
    encoding: str
    delimiter: str = ","
    ignored_columns: tuple[str, ...] = ()
    """Columns that are not the contract's: not sent, kept in the download."""
    defaulted_columns: tuple[str, ...] = ()
    """Features of the contract with a default that the file does not have (the default is used)."""
    notes: list[str] = field(default_factory=list)
    """Sentences for the page about how the file was read."""

    @property
    def n_records(self) -> int:
        return len(self.frame) + len(self.unreadable)

    @classmethod
    def of_frame(cls, frame: pd.DataFrame) -> ParsedCsv:
        """A frame read by other means (every row readable, rows numbered from 1, lines from 2)."""
        frame = frame.reset_index(drop=True)
        return cls(frame=frame, rows=list(range(1, len(frame) + 1)), lines=list(range(2, len(frame) + 2)),
                   unreadable=_unreadable_frame([]), encoding="UTF-8")


def size_refusal(size: int, limit_bytes: int) -> str | None:
    """The page's sentence for a file of ``size`` bytes when that is above ``limit_bytes``, else None."""
    if size <= limit_bytes:
        return None
    return (f"This file is {_megabytes(size)}; files up to {_megabytes(limit_bytes)} can be scored here. "
            "Split it into smaller files, each starting with the header line, and upload them one by one.")


def _megabytes(size: int) -> str:
    if size < MIB:
        return f"{size:,} bytes"
    return f"{size / MIB:,.1f} MB" if size % MIB else f"{size // MIB:,} MB"


def _size(source: bytes | BinaryIO) -> int:
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    position = source.tell()
    size = source.seek(0, io.SEEK_END)
    source.seek(position)
    return size - position


def read_upload(source: bytes | BinaryIO, limit_bytes: int) -> ParsedCsv:
    """The rows of an uploaded CSV (``UploadRefused`` when it cannot be scored at all). A file object is
    read only once its size is known to be within ``limit_bytes``."""
    refusal = size_refusal(_size(source), limit_bytes)
    if refusal:
        raise UploadRefused(refusal)
    data = bytes(source) if isinstance(source, bytes | bytearray | memoryview) else source.read()
    text, encoding = decode(data)
    return parse_text(text, encoding)


# -- bytes -> text ---------------------------------------------------------------------------------------------

def _utf16_without_bom(head: bytes) -> str | None:
    """``utf-16-le`` / ``utf-16-be`` when ``head`` looks like ASCII text in UTF-16 without a BOM, else None."""
    pairs = len(head) // 2
    if pairs < 2:
        return None
    even_nul = sum(1 for i in range(0, 2 * pairs, 2) if head[i] == 0)
    odd_nul = sum(1 for i in range(1, 2 * pairs, 2) if head[i] == 0)
    if odd_nul >= 0.9 * pairs and even_nul == 0:
        return "utf-16-le"
    if even_nul >= 0.9 * pairs and odd_nul == 0:
        return "utf-16-be"
    return None


def decode(data: bytes) -> tuple[str, str]:
    """The file's text and the name of its encoding for the page (rules in the module's doc). Bytes that are
    not UTF-8 in a UTF-8 file are kept as U+DC80+byte (``surrogateescape``) for ``parse_text`` to reject their
    lines."""
    if not data.strip():
        raise UploadRefused("The file is empty: upload a CSV with a header line and at least one row.")
    for signature, what in SIGNATURES:
        if data.startswith(signature):
            raise UploadRefused(f"This file is {what}, not a CSV text file: {SAVE_AS_UTF8}.")
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):].decode("utf-8", "surrogateescape"), "UTF-8 with BOM"
    utf16 = None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        utf16 = ("utf-16", "UTF-16 with BOM")
    elif b"\x00" in data[:1024] and (guess := _utf16_without_bom(data[:1024])):
        utf16 = (guess, f"UTF-16 {guess[-2:].upper()} without BOM")
    if utf16:
        try:
            text = data.decode(utf16[0])
        except UnicodeDecodeError as exc:
            raise UploadRefused(f"The file starts like UTF-16 text but is not valid UTF-16 (at byte {exc.start:,}): "
                                f"{SAVE_AS_UTF8}.") from None
        if "\x00" in text:
            raise UploadRefused(f"The file holds binary data (NUL characters), not CSV text: {SAVE_AS_UTF8}.")
        return text.removeprefix("\ufeff"), utf16[1]
    if b"\x00" in data:
        raise UploadRefused("The file holds binary data (NUL bytes), not CSV text: upload the CSV itself, "
                            "in UTF-8.")
    return data.decode("utf-8", "surrogateescape"), "UTF-8"


# -- text -> rows ----------------------------------------------------------------------------------------------

class _Lines:
    """The text's physical lines for ``csv.reader``, remembering those of the record being read."""

    def __init__(self, text: str) -> None:
        self._lines = iter(io.StringIO(text, newline=""))
        self.current: list[str] = []

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.current.append(line)
        return line


def _delimiter(header_line: str) -> str:
    if "," in header_line:
        return ","
    counts = {d: header_line.count(d) for d in DELIMITERS[1:]}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _first_bad_byte(fields: list[str]) -> str | None:
    for value in fields:
        found = _UNDECODED.search(value)
        if found:
            return f"0x{ord(found.group()) - 0xDC00:02X}"
    return None


def _names(names: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _unclosed(raw: str, delimiter: str) -> bool:
    """Whether ``raw`` (one record's lines) ends inside a quoted field."""
    try:
        for _ in csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _unreadable_frame(records: list[tuple[int, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=["row", "line", "reason"]).astype({"row": "int64", "line": "int64",
                                                                            "reason": "object"})


def _header(fields: list[str], line: int) -> list[str]:
    bad = _first_bad_byte(fields)
    if bad:
        raise UploadRefused(f"The header line (line {line}) is not UTF-8 text (byte {bad}): {SAVE_AS_UTF8}.")
    names = [f.strip() for f in fields]
    known = [n for n in names if n in BY_NAME]
    if not known:
        raise UploadRefused(
            f"Line {line} is not a header line with the contract's column names (such as "
            f"{', '.join(REQUIRED_FEATURES[:4])}): the first line of the file must name its columns, "
            "as in diabetic_data.csv.")
    repeated = sorted({n for n in known if known.count(n) > 1}, key=names.index)
    if repeated:
        raise UploadRefused(f"The header names column(s) {_names(repeated)} more than once: keep one of each.")
    lacking = [n for n in REQUIRED_FEATURES if n not in names]
    if lacking:
        by_lower = {n.lower(): n for n in names}
        misspelt = [f"{by_lower[n.lower()]} for {n}" for n in lacking if n.lower() in by_lower]
        hint = f" Names are case-sensitive: the file has {_names(misspelt)}." if misspelt else ""
        raise UploadRefused(f"The file lacks {len(lacking)} required column(s) of the contract: {_names(lacking)}."
                            f"{hint} Add them (with “?” where a value is unknown, if the column allows it) and upload "
                            "again.")
    unique: list[str] = []
    for i, name in enumerate(names, start=1):
        name = name or f"unnamed_{i}"
        candidate, n = name, 1
        while candidate in unique:
            n += 1
            candidate = f"{name}.{n}"
        unique.append(candidate)
    return unique


def parse_text(text: str, encoding: str = "UTF-8") -> ParsedCsv:
    """The rows of a decoded CSV (``UploadRefused`` when it cannot be scored at all)."""
    source = _Lines(text)
    first = next((line for line in io.StringIO(text, newline="") if line.strip()), "")
    delimiter = _delimiter(first)
    reader = csv.reader(source, delimiter=delimiter)
    header: list[str] | None = None
    header_line = 0
    parts: list[pd.DataFrame] = []  # the rows read so far, a chunk at a time: text cells stay compact
    records: list[list[str]] = []
    rows: list[int] = []
    lines: list[int] = []
    unreadable: list[tuple[int, int, str]] = []
    bad_bytes = 0
    check_bytes = _UNDECODED.search(text) is not None
    end = 0  # the last physical line read
    contract_positions: list[int] = []
    while True:
        source.current = []
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            start = end + 1
            if "field larger than field limit" in str(exc):
                raise UploadRefused(
                    f"From line {start:,} on, the file cannot be read: a quote (\") opened there is not closed, or a "
                    f"cell is longer than {FIELD_LIMIT // 1024} KiB. Fix that line and upload again.") from None
            log.warning("CSV upload: line %s unreadable: %s", start, exc)
            raise UploadRefused(f"Line {start:,} cannot be read as CSV: fix it and upload again.") from None
        start, end = end + 1, reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line
        if header is None:
            header, header_line = _header(fields, start), start
            contract_positions = [i for i, name in enumerate(header) if name in BY_NAME]
            continue
        row = len(rows) + len(unreadable) + 1
        if end > start:  # a record over several lines: a quoted cell holds line breaks
            span = f"lines {start:,}–{end:,}"
            if _unclosed("".join(source.current), delimiter):
                raise UploadRefused(
                    f"Line {start:,} opens a quote (\") that is never closed: the rest of the file (lines {start:,} "
                    f"to {end:,}) cannot be read. Fix that line and upload again.")
        else:
            span = f"line {start:,}"
        if len(fields) != len(header):
            reason = f"{span}: {len(fields)} fields where the header has {len(header)}"
            if end > start:
                reason += f" (read as one record: a quote in line {start:,} is probably not closed)"
            unreadable.append((row, start, reason))
            continue
        if end > start and any("\n" in fields[i] or "\r" in fields[i] for i in contract_positions):
            unreadable.append((row, start, f"{span} were read as one record, with a line break inside a column of "
                                           f"the contract: a quote in line {start:,} is probably not closed"))
            continue
        if check_bytes and (bad := _first_bad_byte(fields)):
            bad_bytes += 1
            unreadable.append((row, start, f"{span}: not UTF-8 text (byte {bad}); {SAVE_AS_UTF8}"))
            continue
        records.append(fields)
        rows.append(row)
        lines.append(start)
        if len(records) == CHUNK_ROWS:
            parts.append(pd.DataFrame(records, columns=header, dtype="str"))
            records = []
    if header is None:
        raise UploadRefused("The file is empty: upload a CSV with a header line and at least one row.")
    if not rows and not unreadable:
        raise UploadRefused(f"The file has a header (line {header_line}) but no data rows: add the encounters below "
                            "the header and upload again.")
    if not rows:
        raise UploadRefused(f"None of the {len(unreadable):,} rows could be read, e.g. {unreadable[0][2]}. "
                            "Fix the file and upload it again.")
    if records:
        parts.append(pd.DataFrame(records, columns=header, dtype="str"))
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    ignored = tuple(n for n in header if n not in BY_NAME)
    defaulted = tuple(n for n in DEFAULTED_FEATURES if n not in header)
    notes = [f"Read as {encoding} text, {DELIMITER_NAMES[delimiter]}-separated: {len(header)} columns, "
             f"{len(rows) + len(unreadable):,} rows."]
    if ignored:
        notes.append(f"{len(ignored)} column(s) are not part of the contract and are not sent (they are kept in the "
                     f"download): {_names(list(ignored))}.")
    if defaulted:
        notes.append(f"{len(defaulted)} column(s) of the contract are not in the file, their default is sent: "
                     f"{_names(list(defaulted))}.")
    if bad_bytes:
        notes.append(f"{bad_bytes:,} row(s) hold bytes that are not UTF-8 and were not sent (see the table): "
                     f"{SAVE_AS_UTF8}.")
    return ParsedCsv(frame=frame, rows=rows, lines=lines, unreadable=_unreadable_frame(unreadable),
                     encoding=encoding, delimiter=delimiter, ignored_columns=ignored, defaulted_columns=defaulted,
                     notes=notes)
