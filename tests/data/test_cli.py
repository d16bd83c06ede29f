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


def test_cli_streams_a_file_with_bad_lines_and_ends_errors_with_a_message(tmp_path):
    from readmit_contract.synthetic import write_csv

    from ..contract.test_reader import corrupt

    path = write_csv(tmp_path / "diabetic_data.csv", 2_000, seed=9)
    expected = corrupt(path)
    env = {"RAW_DB_URL": f"sqlite:///{tmp_path / 'raw.db'}", "CLEAN_DB_URL": f"sqlite:///{tmp_path / 'clean.db'}",
           "DATA_SOURCE": str(path), "BATCH_SIZE": "500"}
    out = _cli(env, "load", "--batch", "all")  # progress on: off by itself without a terminal
    assert f"unreadable: {len(expected)} line(s) of the source are not rows" in out
    assert "train-0003:" in out
    status = _cli(env, "status")
    assert f"RawData unreadable source lines: {len(expected)} (first: line 3, ragged line: 49 fields" in status

    refused = subprocess.run(
        [sys.executable, "-m", "readmit_data.cli", "load", "--source", "synthetic:500:1", "--quiet"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("readmit-data load: RawData already holds batches of another source")
    assert "Traceback" not in refused.stderr
