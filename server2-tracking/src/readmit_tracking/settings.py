"""Settings of the MLflow tracking server, from environment variables only."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "password", "minioadmin"}


class TrackingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    backend_store_uri: SecretStr = Field(SecretStr("sqlite:///var/mlflow.db"), validation_alias="MLFLOW_BACKEND_STORE_URI")
    """Runs and registry: mysql+pymysql://USER:PASSWORD@HOST:3306/mlflow in the cluster."""
    artifacts_destination: str = Field("var/mlartifacts", validation_alias="MLFLOW_ARTIFACTS_DESTINATION")
    """Where the server stores artifacts it proxies: s3://BUCKET[/prefix] (MinIO) in the cluster."""
    s3_endpoint_url: str | None = Field(None, validation_alias="MLFLOW_S3_ENDPOINT_URL")
    aws_access_key_id: str | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")
    host: str = Field("127.0.0.1", validation_alias="MLFLOW_HOST")
    port: int = Field(5000, validation_alias="MLFLOW_PORT")
    workers: int = Field(2, ge=1, validation_alias="MLFLOW_WORKERS")
    allowed_hosts: str | None = Field(None, validation_alias="MLFLOW_SERVER_ALLOWED_HOSTS")
    """Host headers the server accepts (its Service DNS names in the cluster); None: MLflow's default."""

    @property
    def uses_s3(self) -> bool:
        return self.artifacts_destination.startswith("s3://")

    @property
    def bucket(self) -> str | None:
        if not self.uses_s3:
            return None
        return self.artifacts_destination.removeprefix("s3://").split("/", 1)[0]

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> TrackingSettings:
        if self.uses_s3:
            secret = self.aws_secret_access_key.get_secret_value() if self.aws_secret_access_key else ""
            if not self.aws_access_key_id or secret.lower() in PLACEHOLDER_SECRETS:
                raise ValueError("S3 artifacts need AWS_ACCESS_KEY_ID and a real AWS_SECRET_ACCESS_KEY (from a Secret)")
        return self
