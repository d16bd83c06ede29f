"""Fixtures of the tracking tests live in tests/conftest.py (the serving tests share them); helpers here."""

from __future__ import annotations

from pathlib import Path

from readmit_data.loading import load, read_source
from readmit_data.preprocessing import preprocess_pending
from readmit_data.stores import engines


def cleaned_store(root: Path, source: str) -> str:
    """CLEAN_DB_URL of a SQLite CleanData under ``root`` holding ``source`` loaded (1,500-row batches) and cleaned."""
    raw_url, clean = f"sqlite:///{root / 'raw.db'}", f"sqlite:///{root / 'clean.db'}"
    with engines(raw_url, clean) as (raw, clean_store):
        load(raw, read_source(source), source=source, batch="all", batch_size=1500, progress=False)
        preprocess_pending(raw, clean_store)
    return clean
