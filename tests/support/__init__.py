"""Starting the platform's real servers for tests: free ports, subprocesses, readiness waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until ``url`` answers 2xx; fail early with the log if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited ({process.returncode}) before {url} answered:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s:\n{_tail(log)}")


def _tail(log: Path | None, lines: int = 60) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate a process group started by ``started``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=timeout)


@contextmanager
def started(cmd: list[str], env: dict[str, str], log: Path, ready_url: str | None = None, timeout: float = 90.0):
    """Run ``cmd`` in its own process group, wait for ``ready_url``, stop it (and its children) on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        if ready_url:
            wait_http(ready_url, timeout, process, log)
        yield process
    finally:
        stop(process)


@contextmanager
def moto_s3(log_dir: Path):
    """moto's standalone S3 server on loopback: the MinIO stand-in. Yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with started([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], {}, log_dir / "moto.log",
                 ready_url=f"{endpoint}/moto-api/"):
        yield endpoint


S3_KEYS = {"AWS_ACCESS_KEY_ID": "readmit-test-key", "AWS_SECRET_ACCESS_KEY": "readmit-test-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def mlflow_server(log_dir: Path, backend_store_uri: str, artifacts_destination: str, s3_endpoint: str | None = None,
                  auth: dict[str, str] | None = None):
    """`readmit-tracking serve` (the node-2 entry point) on a free port. Yields the tracking URI.

    ``auth``: the server's authentication variables (MLFLOW_AUTH_ADMIN_PASSWORD, ...), passed to it as
    they are; None: a server without authentication.
    """
    port = free_port()
    env = {
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        "MLFLOW_ARTIFACTS_DESTINATION": artifacts_destination,
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        **(auth or {}),
    }
    if s3_endpoint:
        env |= {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **S3_KEYS}
        subprocess.run([str(BIN / "readmit-tracking"), "create-bucket"], env={**os.environ, **env}, check=True,
                       capture_output=True, timeout=120)
    uri = f"http://127.0.0.1:{port}"
    with started([str(BIN / "readmit-tracking"), "serve"], env, log_dir / f"mlflow-{port}.log",
                 ready_url=f"{uri}/health", timeout=120):
        yield uri
