"""Shared fixtures: synthetic data from the contract's generator, and the real file when present."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from readmit_contract import synthetic

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_path() -> Path:
    """The real diabetic_data.csv: $READMIT_REAL_DATA, else ../shared/data beside the checkout."""
    configured = os.environ.get("READMIT_REAL_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "diabetic_data.csv"


@pytest.fixture(scope="session")
def real_data_file() -> Path:
    path = real_data_path()
    if not path.exists():
        pytest.skip(f"real data set not present at {path}")
    return path


@pytest.fixture(scope="session")
def synthetic_frame() -> pd.DataFrame:
    """3,000 synthetic encounters as text (never modify: copy first)."""
    return synthetic.generate(3000, seed=7)
