"""Milliseconds per authenticated MLflow request with the credential cache (MLFLOW_AUTH_CACHE_TTL_SECONDS=60, the
default of `readmit-tracking serve`) against without it (0: a scrypt password check per request), same run.

Two `readmit-tracking serve` servers with basic authentication (SQLite store, one worker each), one after the
other; on each, the reader searches the registered models ``--requests`` times after one warm-up request.

    python bench/mlflow_auth.py [--requests 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import auth_environment, generated_identities  # noqa: E402
from tests.support import mlflow_server  # noqa: E402


def ms_per_request(ttl_seconds: int, requests: int) -> float:
    with tempfile.TemporaryDirectory(prefix="readmit-bench-auth-") as folder:
        root = Path(folder)
        admin, training, reader, secret_key = generated_identities()
        env = auth_environment(admin, training, reader, secret_key) | {
            "TMPDIR": str(root), "MLFLOW_AUTH_CACHE_TTL_SECONDS": str(ttl_seconds)}
        with mlflow_server(root, f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"), auth=env) as uri, \
                httpx.Client(auth=(reader.username, reader.password), timeout=60) as client:
            search = f"{uri}/api/2.0/mlflow/registered-models/search"
            client.get(search).raise_for_status()  # warm-up (and, with the cache, its one password check)
            started = time.perf_counter()
            for _ in range(requests):
                client.get(search).raise_for_status()
            return (time.perf_counter() - started) / requests * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    without = ms_per_request(0, args.requests)
    cached = ms_per_request(60, args.requests)
    print(f"authenticated MLflow requests ({args.requests} searches as the reader; load average before "
          f"{load:.1f} on {os.cpu_count()} cores)")
    print(f"  credential cache off (MLFLOW_AUTH_CACHE_TTL_SECONDS=0): {without:8.1f} ms per request")
    print(f"  credential cache on  (60 s, the default):             {cached:8.1f} ms per request")
    print(f"  cache on / off: {cached / without:.3f} of the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
