from __future__ import annotations

import pandas as pd
import pytest

from readmit_data.loading import read_source
from readmit_data.stores import engines

SOURCE = "synthetic:8000:5"
BATCH_SIZE = 2_000


@pytest.fixture(scope="session")
def source_frame() -> pd.DataFrame:
    return read_source(SOURCE)


@pytest.fixture
def stores(store_urls):
    """(raw engine, clean engine) with schemas created, on SQLite or MariaDB."""
    with engines(*store_urls) as pair:
        yield pair
