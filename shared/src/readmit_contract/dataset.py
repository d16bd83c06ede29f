"""Getting ``diabetic_data.csv``: download from the UCI archive (checksum-verified, cached),
or read a local path. Raw frames are text, exactly as the file writes them.

``source_path`` gives the file to stream (``readmit_contract.reader`` reads it in chunks, malformed
lines set aside with their line numbers); ``read_raw_csv`` reads a well-formed file whole.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from .columns import COLUMN_NAMES
from .validate import SchemaMismatchError

DATASET_URL = (
    "https://archive.ics.uci.edu/static/public/296/diabetes+130-us+hospitals+for+years+1999-2008.zip"
)
DATA_FILE = "diabetic_data.csv"
DATA_SHA256 = "0689e7ec031237dc63031b938805c48377748761a3b26acab621567afa24df97"
EXPECTED_ROWS = 101_766
DEFAULT_CACHE_DIR = Path(os.environ.get("READMIT_DATA_CACHE", Path.home() / ".cache" / "readmit"))


class DatasetError(RuntimeError):
    """The data set could not be obtained."""


class DownloadError(DatasetError):
    """The archive could not be fetched (no network, HTTP error, not a zip)."""


class ChecksumError(DatasetError):
    """The file's sha256 is not the published one."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, expected_sha256: str) -> None:
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ChecksumError(f"{path.name}: sha256 {actual} is not the expected {expected_sha256}")


def download(
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    url: str = DATASET_URL,
    expected_sha256: str = DATA_SHA256,
    timeout: float = 60.0,
) -> Path:
    """Path of the verified ``diabetic_data.csv`` in ``cache_dir``, downloading it if needed."""
    cache_dir = Path(cache_dir)
    target = cache_dir / DATA_FILE
    if target.exists():
        _verify(target, expected_sha256)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive_path = cache_dir / "archive.zip.partial"
    partial = target.with_suffix(".partial")
    try:
        try:  # streamed to disk: neither the archive nor the file is held in memory
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive_path, "wb") as out:  # noqa: S310 - fixed https URL or a test's
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise DownloadError(f"cannot download the data set from {url}: {exc}. Without network, pass a local "
                                "path to diabetic_data.csv or use synthetic data.") from exc
        try:
            with zipfile.ZipFile(archive_path) as archive:
                member = next(n for n in archive.namelist() if Path(n).name == DATA_FILE)
                with archive.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, StopIteration) as exc:
            raise DownloadError(f"{url} did not return a zip archive holding {DATA_FILE}") from exc
        _verify(partial, expected_sha256)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        archive_path.unlink(missing_ok=True)
    partial.replace(target)
    return target


def read_raw_csv(path: str | Path) -> pd.DataFrame:
    """The file as text (no value is interpreted: ``None`` and ``?`` stay strings)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no data file at {path}")
    frame = pd.read_csv(path, dtype="str", keep_default_na=False, na_values=[])
    missing = [c for c in COLUMN_NAMES if c not in frame.columns]
    if missing:
        raise SchemaMismatchError(missing)
    return frame


def source_path(source: str | Path, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """The file of ``"download"`` (the UCI archive, checksum-verified, cached) or of a local path."""
    if str(source) == "download":
        return download(cache_dir)
    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"no data file at {path}")
    return path


def load_raw(source: str | Path, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> pd.DataFrame:
    """Raw frame from ``"download"`` (the UCI archive) or a local path."""
    return read_raw_csv(source_path(source, cache_dir))
