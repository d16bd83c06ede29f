"""The command-line loads and preprocessing, configured only through environment variables."""

import os
import subprocess
import sys

from readmit_data.loading import SplitPlan, read_source

from .conftest import BATCH_SIZE, SOURCE


def _cli(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "readmit_data.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=300, check=True,
    )
    return done.stdout


def test_cli_load_preprocess_status(store_urls, tmp_path):
    raw_url, clean_url = store_urls
    env = {"RAW_DB_URL": raw_url, "CLEAN_DB_URL": clean_url, "DATA_SOURCE": SOURCE, "BATCH_SIZE": str(BATCH_SIZE)}
    out = _cli(env, "load", "--quiet")
    assert "train-0001: 2000 train rows loaded" in out
    out = _cli(env, "load", "--quiet", "--batch", "1")
    assert "train-0001: already loaded, 0 rows added" in out
    out = _cli(env, "preprocess")
    assert "validation:" in out and "train-0001:" in out
    assert "nothing new to preprocess" in _cli(env, "preprocess")
    status = _cli(env, "status")
    plan = SplitPlan.of(read_source(SOURCE), BATCH_SIZE, 42)
    assert f"'validation': {plan.counts()['validation']}" in status
    assert "train-0001" in status
