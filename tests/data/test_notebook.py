"""The raw-load notebook, run headless with papermill, on SQLite and MariaDB."""

from pathlib import Path

import nbformat
import papermill
import pytest

from readmit_data.loading import SplitPlan, loaded_batches, raw_counts
from readmit_data.stores import make_engine

from .conftest import BATCH_SIZE, SOURCE

NOTEBOOK = Path(__file__).resolve().parents[2] / "server1-data" / "notebooks" / "raw_load.ipynb"

pytestmark = pytest.mark.slow


def _run(tmp_path: Path, raw_url: str, name: str, **parameters) -> nbformat.NotebookNode:
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", progress_bar=False, cwd=str(tmp_path), start_timeout=300,
        parameters={"data_source": SOURCE, "raw_db_url": raw_url, "batch_size": BATCH_SIZE, **parameters},
    )
    return nbformat.read(out, as_version=4)


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_loads_one_batch_per_run(tmp_path, store_urls, source_frame):
    raw_url, _ = store_urls
    first = _run(tmp_path, raw_url, "first")
    text = _text(first)
    assert "validation:" in text and "train-0001:" in text
    # shows what it did: a class-balance plot
    assert any("image/png" in o.get("data", {}) for c in first.cells for o in c.get("outputs", []))

    second = _run(tmp_path, raw_url, "second")
    assert "train-0002:" in _text(second)
    again = _run(tmp_path, raw_url, "again", batch=2)
    assert "train-0002: already loaded, 0 rows added" in _text(again)

    plan = SplitPlan.of(source_frame, BATCH_SIZE, 42)
    engine = make_engine(raw_url)
    try:
        counts = raw_counts(engine)
        assert counts == {**{k: v for k, v in plan.counts().items() if k != "train"}, "train": 2 * BATCH_SIZE}
        assert list(loaded_batches(engine)["batch_id"]) == ["test", "train-0001", "train-0002", "validation"]
    finally:
        engine.dispose()
