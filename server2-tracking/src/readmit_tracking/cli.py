"""Node 2's commands:

    readmit-tracking create-bucket   create the artifact bucket on the S3 endpoint (idempotent)
    readmit-tracking serve           run `mlflow server` configured from the environment
    readmit-tracking command         print the `mlflow server` command line (secrets masked)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .settings import TrackingSettings


def server_command(settings: TrackingSettings) -> list[str]:
    """The `mlflow server` argv: proxied artifacts, so clients need no S3 credentials."""
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", settings.backend_store_uri.get_secret_value(),
        "--artifacts-destination", settings.artifacts_destination,
        "--serve-artifacts",
        "--host", settings.host,
        "--port", str(settings.port),
        "--workers", str(settings.workers),
    ]
    if settings.allowed_hosts:
        cmd += ["--allowed-hosts", settings.allowed_hosts]
    return cmd


def server_environment(settings: TrackingSettings) -> dict[str, str]:
    """Environment of the server process: the S3 endpoint and keys boto3 reads."""
    env = dict(os.environ)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="readmit-tracking", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_bucket = sub.add_parser("create-bucket", help="create the S3 artifact bucket (idempotent)")
    p_bucket.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the S3 endpoint")
    sub.add_parser("serve", help="exec `mlflow server` configured from the environment")
    sub.add_parser("command", help="print the server command line with the backend URI masked")
    args = parser.parse_args(argv)
    settings = TrackingSettings()
    if args.command == "create-bucket":
        print(create_bucket(settings, args.wait))
        return 0
    cmd = server_command(settings)
    if args.command == "command":
        masked = [("***" if part == settings.backend_store_uri.get_secret_value() else part) for part in cmd]
        print(" ".join(masked))
        return 0
    os.execvpe(cmd[0], cmd, server_environment(settings))
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
