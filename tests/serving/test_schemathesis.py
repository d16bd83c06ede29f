"""Property-based run over the API's OpenAPI schema (schemathesis): no 5xx, documented status codes and
response shapes, invalid bodies rejected, valid ones accepted."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,negative_data_rejection," \
         "positive_data_acceptance"


def test_openapi_fuzzing_finds_nothing(api, tmp_path):
    done = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{api}/openapi.json", "--checks", CHECKS,
         "--max-examples", "30", "--max-time", "60", "--workers", "1", "--seed", "20261125"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-6000:]
    assert "generated" in done.stdout and " passed" in done.stdout
