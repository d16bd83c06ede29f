"""Node 2's commands:

    readmit-tracking create-bucket   create the artifact bucket on the S3 endpoint (idempotent)
    readmit-tracking serve           upgrade the backend store's schema, then exec `mlflow server`
    readmit-tracking command         print the `mlflow server` command line (it holds no secret)

The backend store URI (with the database password) reaches `mlflow server` by its environment only
(MLFLOW_BACKEND_STORE_URI, which `mlflow server --backend-store-uri` reads; the server passes it on
to its workers by environment too), so no process of the server shows it in its command line.

With MLFLOW_AUTH_ADMIN_PASSWORD set, `serve` also prepares MLflow's basic-auth app (auth.py: its
user store's schema, the admin, training and reader identities, a private config file) and starts
`mlflow server --app-name basic-auth`; the identities' passwords stay out of the server's
environment, its command line and the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from .auth import AuthSetupError, prepare as prepare_auth
from .schema import SchemaError, is_database_uri, redacted, upgrade_schema
from .settings import AuthSettings, TrackingSettings

_log = logging.getLogger("readmit_tracking")


PROVISIONING_ONLY = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_TRAINING_PASSWORD",
                       "MLFLOW_AUTH_READER_PASSWORD", "MLFLOW_AUTH_DATABASE_URI")
"""Variables `serve` needs for provisioning and the server does not: left out of its environment."""


def server_command(settings: TrackingSettings, auth: AuthSettings | None = None) -> list[str]:
    """The `mlflow server` argv, free of secrets: proxied artifacts, so clients need no S3 credentials;
    MLflow's basic-auth app when authentication is on.

    The backend store URI is not here: `server_environment` passes it as MLFLOW_BACKEND_STORE_URI.
    """
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--artifacts-destination", settings.artifacts_destination,
        "--serve-artifacts",
        "--host", settings.host,
        "--port", str(settings.port),
        "--workers", str(settings.workers),
    ]
    if settings.allowed_hosts:
        cmd += ["--allowed-hosts", settings.allowed_hosts]
    if auth is not None and auth.enabled:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def server_environment(settings: TrackingSettings, auth: AuthSettings | None = None,
                       auth_config: Path | None = None) -> dict[str, str]:
    """Environment of the server process: the backend store URI and the S3 endpoint and keys boto3 reads;
    with authentication, the auth app's config file, its CSRF key and the admin's name (the users exist
    already: no password is passed on)."""
    env = {name: value for name, value in os.environ.items() if name not in PROVISIONING_ONLY}
    if auth is not None and auth.enabled:
        if auth_config is None or auth.flask_secret_key is None:
            raise AuthSetupError("authentication is on: the server needs its config file and secret key")
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
        env["MLFLOW_AUTH_ADMIN_USERNAME"] = auth.admin_username
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = auth.flask_secret_key.get_secret_value()
    env["MLFLOW_BACKEND_STORE_URI"] = settings.backend_store_uri.get_secret_value()
    # MLflow's server-side jobs (GenAI judges, online scoring of traces, trace archival): nothing of the platform
    # uses them, and their runner would start (and stop) seven consumer processes with the server; on unless set
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if settings.s3_endpoint_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.aws_access_key_id:
        env["AWS_ACCESS_KEY_ID"] = settings.aws_access_key_id
    if settings.aws_secret_access_key:
        env["AWS_SECRET_ACCESS_KEY"] = settings.aws_secret_access_key.get_secret_value()
    return env


def create_bucket(settings: TrackingSettings, wait_seconds: float = 60.0) -> str:
    """Create the artifact bucket unless it exists; waits for the endpoint to answer."""
    import boto3
    from botocore.exceptions import ClientError, EndpointConnectionError

    if not settings.uses_s3 or settings.bucket is None:
        return "artifacts are not on S3: no bucket to create"
    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key.get_secret_value() if settings.aws_secret_access_key else None,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            break
        except EndpointConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    if settings.bucket in existing:
        return f"bucket {settings.bucket} already exists"
    try:
        client.create_bucket(Bucket=settings.bucket)
    except ClientError as exc:  # a concurrent creator won the race
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        return f"bucket {settings.bucket} already exists"
    return f"bucket {settings.bucket} created"


def prepare_backend_store(settings: TrackingSettings) -> None:
    """Bring a database backend store to MLflow's head schema; logs what it did, never the password."""
    uri = settings.backend_store_uri.get_secret_value()
    if not is_database_uri(uri):
        _log.info("backend store is not a database: no schema to upgrade")
        return
    import mlflow.store.db.utils  # noqa: F401 - imported first, so the time below is the database's alone

    started = time.perf_counter()
    change = upgrade_schema(uri)
    _log.info("backend store %s: %s (%.1f s)", redacted(uri), change, time.perf_counter() - started)


def serve(settings: TrackingSettings, auth: AuthSettings) -> NoReturn:
    """Upgrade the schema (and with authentication, prepare the auth store and its users), then
    replace this process by `mlflow server` (same pid, secret-free argv)."""
    prepare_backend_store(settings)
    auth_config = None
    if auth.enabled:
        auth_config = prepare_auth(auth, settings.backend_store_uri.get_secret_value())
    else:
        _log.warning("MLFLOW_AUTH_ADMIN_PASSWORD is not set: the server starts WITHOUT authentication")
    cmd = server_command(settings, auth)
    env = server_environment(settings, auth, auth_config)
    _log.info("starting: %s", " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)


def _settings_errors(exc: ValidationError) -> list[str]:
    """The settings' errors without the input values (they may hold secrets)."""
    return [f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_context=False, include_input=False)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="readmit-tracking", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_bucket = sub.add_parser("create-bucket", help="create the S3 artifact bucket (idempotent)")
    p_bucket.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the S3 endpoint")
    sub.add_parser("serve", help="upgrade the backend store's schema, then exec `mlflow server`")
    sub.add_parser("command", help="print the server command line (the backend store URI goes by environment)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings, auth = TrackingSettings(), AuthSettings()
    except ValidationError as exc:
        for line in _settings_errors(exc):
            _log.error("invalid settings: %s", line)
        return 2
    if args.command == "create-bucket":
        print(create_bucket(settings, args.wait))
        return 0
    if args.command == "command":
        print(" ".join(server_command(settings, auth)))
        return 0
    if problems := auth.problems():
        for problem in problems:
            _log.error("authentication: %s", problem)
        return 2
    try:
        serve(settings, auth)
    except (SchemaError, AuthSetupError) as exc:
        _log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
