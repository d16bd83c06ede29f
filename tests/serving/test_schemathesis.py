"""Property-based run over the API's OpenAPI schema (schemathesis): no 5xx, documented status codes and
response shapes, invalid bodies rejected, valid ones accepted. Requests carry the "tests" caller's key
(from a config file reading the environment: the key is on no command line)."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import KEYS

pytestmark = pytest.mark.slow

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,negative_data_rejection," \
         "positive_data_acceptance"


def _counts(api: str) -> tuple[float, float]:
    """(requests let through for the "tests" caller, requests refused) from the API's metrics."""
    text = httpx.get(f"{api}/metrics").text
    let_in = refused = 0.0
    for line in text.splitlines():
        if line.startswith('readmit_api_caller_requests_total{caller="tests"}'):
            let_in = float(line.split()[-1])
        elif line.startswith("readmit_api_auth_refused_total{"):
            refused += float(line.split()[-1])
    return let_in, refused


def test_openapi_fuzzing_finds_nothing(api, tmp_path):
    let_in, refused = _counts(api)
    (tmp_path / "schemathesis.toml").write_text('headers = { "X-API-Key" = "${API_KEY}" }\n')
    done = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{api}/openapi.json", "--checks", CHECKS,
         "--max-examples", "30", "--max-time", "60", "--workers", "1", "--seed", "20261125"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "API_KEY": KEYS["tests"]},
    )
    assert done.returncode == 0, done.stdout[-6000:]
    assert "generated" in done.stdout and " passed" in done.stdout
    # every request carried the key: the run tested the API, not its refusal
    after_let_in, after_refused = _counts(api)
    assert after_refused == refused and after_let_in - let_in > 50
