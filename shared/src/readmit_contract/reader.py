"""Raw rows in chunks, from ``diabetic_data.csv`` or a frame of it, every line accounted for.

A file is streamed, never read whole: chunks of ``chunk_rows`` lines, each a text frame of the
contract's columns (``str``, exactly as ``read_raw_csv`` reads them) plus ``source_line``, the line
number in the file (the header is line 1). A line that cannot be one row is not a reason to stop:
it comes back as a ``RejectedLine`` with its number and reason, and the next line is read.

- not UTF-8 text                     "not UTF-8 text (byte 0xE9 at offset 35)"
- a field count other than the header's ("ragged line: 49 fields, the header has 50")
- a quote that does not close, or text after a closing quote ("malformed CSV: ...")
- a field longer than ``RAW_MAX_LENGTH`` ("medical_specialty: value too long (max 255)")
- a line longer than ``MAX_LINE_BYTES`` (read in pieces, never held whole)

The format is line-oriented: no value of the contract can hold a line break, so a record is one
physical line and one bad line never swallows the next ones. Blank lines carry nothing and are
skipped. Good lines go through pandas' C parser (the same dialect as the csv module that vetted them); a chunk
whose lines hold no quote (nor a byte-order mark) is split at its commas by Arrow's CSV reader with quoting off,
which is the same and several times faster.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

try:
    import pyarrow as pa
    from pyarrow import compute as arrow_compute
    from pyarrow import csv as arrow_csv
except ImportError:  # pragma: no cover - pandas does all then
    pa = arrow_compute = arrow_csv = None

from .columns import COLUMN_NAMES, RAW_MAX_LENGTH
from .dataset import DatasetError
from .validate import SchemaMismatchError

SOURCE_LINE = "source_line"
"""Column of a chunk's rows: the row's line number in the source (header = line 1)."""
CHUNK_ROWS = 10_000
MAX_LINE_BYTES = 1 << 20
"""A longer line is rejected without being held in memory (a good one is about 400 bytes)."""
REJECTED_TEXT_CHARS = 1_000
"""How much of a rejected line is kept with it (the start of the line; the reason says what is wrong)."""


@dataclass(frozen=True)
class RejectedLine:
    line: int
    reason: str
    text: str
    """The start of the line as received (undecodable bytes shown as U+FFFD)."""


@dataclass
class RawChunk:
    rows: pd.DataFrame
    """The contract's columns as text, plus ``source_line``."""
    rejected: list[RejectedLine] = field(default_factory=list)
    done: int = 0
    """Progress so far in the source's unit (bytes of a file, rows of a frame)."""


class RawSource:
    """Where raw rows come from; ``chunks`` may be called again for another pass."""

    label: str = "source"
    unit: str = "rows"
    total: int | None = None

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawChunk]:  # pragma: no cover - interface
        raise NotImplementedError


def _too_long(rows: pd.DataFrame) -> list[str | None]:
    """Per row: the reason naming every field longer than ``RAW_MAX_LENGTH``, or None."""
    reasons: list[str | None] = [None] * len(rows)
    for name in COLUMN_NAMES:
        long = _longer_than_raw(rows[name])
        for position in np.flatnonzero(long):
            message = f"{name}: value too long (max {RAW_MAX_LENGTH})"
            reasons[position] = message if reasons[position] is None else f"{reasons[position]}; {message}"
    return reasons


def _longer_than_raw(column: pd.Series) -> np.ndarray:
    """Per row: whether the value as text is longer than ``RAW_MAX_LENGTH`` (missing: no). Arrow-backed text is
    measured by Arrow at once (what ``.str.len()`` does for it), anything else as text first."""
    if pa is not None and isinstance(column.dtype, pd.StringDtype) and column.dtype.storage == "pyarrow":
        lengths = arrow_compute.utf8_length(pa.array(column))
        if (arrow_compute.max(lengths).as_py() or 0) <= RAW_MAX_LENGTH:
            return np.zeros(len(column), dtype=bool)
        long = arrow_compute.fill_null(arrow_compute.greater(lengths, RAW_MAX_LENGTH), False)
        return long.to_numpy(zero_copy_only=False).astype(bool)
    return (column.astype("str").str.len() > RAW_MAX_LENGTH).fillna(False).to_numpy(dtype=bool)


def _split_off_too_long(rows: pd.DataFrame, texts: list[str] | None) -> tuple[pd.DataFrame, list[RejectedLine]]:
    reasons = _too_long(rows)
    bad = np.array([r is not None for r in reasons], dtype=bool)
    if not bad.any():
        return rows, []
    rejected = []
    for position in np.flatnonzero(bad):
        row = rows.iloc[position]
        text = texts[position] if texts is not None else ",".join(str(row[c]) for c in COLUMN_NAMES)
        rejected.append(RejectedLine(int(row[SOURCE_LINE]), str(reasons[position]), text[:REJECTED_TEXT_CHARS]))
    return rows[~bad], rejected


class FrameSource(RawSource):
    """An in-memory frame of the source (synthetic data, tests): row ``i`` is line ``i + 2``."""

    def __init__(self, frame: pd.DataFrame, label: str = "frame") -> None:
        missing = [c for c in COLUMN_NAMES if c not in frame.columns]
        if missing:
            raise SchemaMismatchError(missing)
        self.frame = frame
        self.label = label
        self.unit = "rows"
        self.total = len(frame)

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawChunk]:
        for start in range(0, len(self.frame), chunk_rows):
            part = self.frame.iloc[start : start + chunk_rows][list(COLUMN_NAMES)]
            rows = part.assign(**{SOURCE_LINE: np.arange(start + 2, start + 2 + len(part))})
            rows, rejected = _split_off_too_long(rows, None)
            yield RawChunk(rows.reset_index(drop=True), rejected, start + len(part))


def _read_line(fh: BinaryIO) -> tuple[bytes, bool]:
    """The next line (b"" at the end) and whether it was longer than ``MAX_LINE_BYTES`` (then the line
    returned is only its start; the rest has been read past)."""
    line = fh.readline(MAX_LINE_BYTES)
    if len(line) < MAX_LINE_BYTES or line.endswith(b"\n"):
        return line, False
    while True:  # skip the rest of the over-long line piece by piece
        more = fh.readline(MAX_LINE_BYTES)
        if not more or more.endswith(b"\n"):
            return line, True


def _fields(text: str) -> list[str]:
    """The fields of one line; ``csv.Error`` when it is not one well-formed CSV record."""
    fields = _quoted_fields(text)
    return text.split(",") if fields is None else fields


def _quoted_fields(text: str) -> list[str] | None:
    """The fields of a line holding a quote, None for a line without (its fields are ``text.split(",")``);
    ``csv.Error`` when it is not one well-formed CSV record."""
    if "\r" in text or "\x00" in text:
        raise csv.Error("a carriage return or NUL inside the line")
    if '"' not in text:
        return None
    return next(csv.reader([text], strict=True))


class CsvSource(RawSource):
    """A CSV file as ``diabetic_data.csv`` is written, streamed line by line."""

    def __init__(self, path: str | Path, label: str | None = None) -> None:
        self.path = Path(path)
        self.label = label or str(path)
        self.unit = "B"
        self.total = self.path.stat().st_size
        self.header = self._header()

    def _header(self) -> list[str]:
        with open(self.path, "rb") as fh:
            first, _ = _read_line(fh)
        try:
            header = _fields(first.decode("utf-8-sig").rstrip("\r\n"))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(f"{self.path.name}: the first line is not a CSV header ({exc})") from exc
        missing = [c for c in COLUMN_NAMES if c not in header]
        if missing:
            raise SchemaMismatchError(missing)
        return header

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawChunk]:
        width = len(self.header)
        positions = [self.header.index(c) for c in COLUMN_NAMES]
        with open(self.path, "rb") as fh:
            _read_line(fh)
            number = 1
            at_end = False
            while not at_end:
                good: list[str] = []
                lines: list[int] = []
                rejected: list[RejectedLine] = []
                plain = True  # no good line holds a quote or a byte-order mark
                while len(good) + len(rejected) < chunk_rows:
                    raw, over_long = _read_line(fh)
                    if not raw:
                        at_end = True
                        break
                    number += 1
                    if over_long:
                        shown = raw[:REJECTED_TEXT_CHARS].decode("utf-8", errors="replace")
                        rejected.append(RejectedLine(number, f"line too long (over {MAX_LINE_BYTES} bytes)", shown))
                        continue
                    try:
                        text = raw.decode("utf-8").rstrip("\r\n")
                    except UnicodeDecodeError as exc:
                        shown = raw.decode("utf-8", errors="replace").rstrip("\r\n")[:REJECTED_TEXT_CHARS]
                        reason = f"not UTF-8 text (byte 0x{raw[exc.start]:02X} at offset {exc.start})"
                        rejected.append(RejectedLine(number, reason, shown))
                        continue
                    if not text.strip():
                        continue
                    try:
                        fields = _quoted_fields(text)
                    except csv.Error as exc:
                        rejected.append(RejectedLine(number, f"malformed CSV: {exc}", text[:REJECTED_TEXT_CHARS]))
                        continue
                    count = text.count(",") + 1 if fields is None else len(fields)
                    if count != width:
                        reason = f"ragged line: {count} fields, the header has {width}"
                        rejected.append(RejectedLine(number, reason, text[:REJECTED_TEXT_CHARS]))
                        continue
                    if len(text) > RAW_MAX_LENGTH:  # only then can a field be too long
                        fields = text.split(",") if fields is None else fields
                        long = [f"{self.header[i]}: value too long (max {RAW_MAX_LENGTH})"
                                for i in positions if len(fields[i]) > RAW_MAX_LENGTH]
                        if long:
                            rejected.append(RejectedLine(number, "; ".join(long), text[:REJECTED_TEXT_CHARS]))
                            continue
                    good.append(text)
                    lines.append(number)
                    plain = plain and '"' not in text and "\ufeff" not in text
                rows = self._split(good, positions) if plain and arrow_csv else self._parse(good, positions)
                rows[SOURCE_LINE] = np.asarray(lines, dtype="int64")
                if len(rows) or rejected:
                    yield RawChunk(rows.reset_index(drop=True), rejected, fh.tell())

    def _split(self, good: list[str], positions: list[int]) -> pd.DataFrame:
        """Lines without quotes (or byte-order marks) split at their commas, as ``_parse`` reads them."""
        if not good:
            return self._parse(good, positions)
        names = [f"f{i}" for i in range(len(self.header))]
        try:
            table = arrow_csv.read_csv(
                io.BytesIO("\n".join(good).encode("utf-8")),
                read_options=arrow_csv.ReadOptions(column_names=names, block_size=4 * MAX_LINE_BYTES),
                parse_options=arrow_csv.ParseOptions(quote_char=False, double_quote=False, escape_char=False,
                                                     newlines_in_values=False, ignore_empty_lines=False),
                convert_options=arrow_csv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()), include_columns=[names[i] for i in positions],
                    null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False),
            )
        except pa.ArrowException:  # never seen: the lines were vetted; let pandas read them then
            return self._parse(good, positions)
        if table.num_rows != len(good):  # never seen either
            return self._parse(good, positions)
        rows = table.rename_columns([self.header[i] for i in positions]).to_pandas()
        return rows[list(COLUMN_NAMES)].astype("str")

    def _parse(self, good: list[str], positions: list[int]) -> pd.DataFrame:
        if not good:
            return pd.DataFrame({name: pd.Series([], dtype="str") for name in COLUMN_NAMES})
        parsed = pd.read_csv(
            io.StringIO("\n".join(good)), header=None, usecols=positions, dtype="str",
            keep_default_na=False, na_values=[], skip_blank_lines=False, engine="c",
        )
        if len(parsed) != len(good):  # never seen: the lines were vetted; parse them one by one then
            records = [_fields(text) for text in good]
            return pd.DataFrame({name: pd.Series([r[i] for r in records], dtype="str")
                                 for name, i in zip(COLUMN_NAMES, positions, strict=True)})
        parsed.columns = [self.header[i] for i in parsed.columns]
        return parsed[list(COLUMN_NAMES)]


def open_path(path: str | Path, label: str | None = None) -> CsvSource:
    """A CSV file as a raw source (its header is checked now: ``SchemaMismatchError`` when it lacks contract
    columns, ``DatasetError`` when it is not a CSV header)."""
    return CsvSource(path, label)
