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


LEGACY_MLFLOW_ADMIN_PASSWORD = "password1234"
"""The admin password older MLflow versions shipped in basic_auth.ini (GHSA-gq3w-7jj3-x7gr)."""
MIN_PASSWORD_LENGTH = 12
"""MLflow's basic-auth store refuses shorter passwords (mlflow.utils.validation._validate_password)."""
MIN_SECRET_KEY_LENGTH = 16


class AuthSettings(BaseSettings):
    """MLflow basic authentication, on whenever MLFLOW_AUTH_ADMIN_PASSWORD is set.

    Checked by ``problems()`` rather than by pydantic validators: a validation error would print
    the raw input, and that input holds the passwords.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    admin_username: str = Field("admin", validation_alias="MLFLOW_AUTH_ADMIN_USERNAME")
    admin_password: SecretStr | None = Field(None, validation_alias="MLFLOW_AUTH_ADMIN_PASSWORD")
    flask_secret_key: SecretStr | None = Field(None, validation_alias="MLFLOW_FLASK_SERVER_SECRET_KEY")
    """The basic-auth app's CSRF and session key: the same value in every replica."""
    training_username: str | None = Field(None, validation_alias="MLFLOW_AUTH_TRAINING_USERNAME")
    training_password: SecretStr | None = Field(None, validation_alias="MLFLOW_AUTH_TRAINING_PASSWORD")
    reader_username: str | None = Field(None, validation_alias="MLFLOW_AUTH_READER_USERNAME")
    reader_password: SecretStr | None = Field(None, validation_alias="MLFLOW_AUTH_READER_PASSWORD")
    database_uri: SecretStr | None = Field(None, validation_alias="MLFLOW_AUTH_DATABASE_URI")
    """The auth app's user store; None: the backend store (its tables beside MLflow's)."""
    model_name: str = Field("diabetes-readmission", validation_alias="MODEL_NAME")
    experiment_name: str = Field("diabetes-readmission", validation_alias="MLFLOW_EXPERIMENT_NAME")
    cache_ttl_seconds: int = Field(60, ge=0, le=3600, validation_alias="MLFLOW_AUTH_CACHE_TTL_SECONDS")
    """How long a server process reuses a checked user name and password (MLflow's auth_cache_ttl_seconds: an
    in-memory cache of each worker process, keyed by an HMAC of the pair under a per-process random key; a
    password or admin flag changed through MLflow's API drops the user's entries only in the worker that handled
    the change: the other workers and replicas still accept the old password, or the old flag, for up to this
    long). Each check is a scrypt hash, ~50-150 ms of a core by design, paid otherwise by every request of
    training, the API's watcher and the notebook. 0: no cache."""

    @property
    def enabled(self) -> bool:
        return self.admin_password is not None

    def store_uri(self, backend_store_uri: str) -> str:
        return self.database_uri.get_secret_value() if self.database_uri else backend_store_uri

    def problems(self) -> list[str]:
        """What keeps the server from starting with authentication (empty: nothing). No values."""
        if not self.enabled:
            return []
        found = []
        if self.flask_secret_key is None or not self.flask_secret_key.get_secret_value():
            found.append("MLFLOW_FLASK_SERVER_SECRET_KEY is required when MLFLOW_AUTH_ADMIN_PASSWORD is set "
                         "(the basic-auth app's CSRF key; the same value in every replica)")
        elif _weak(self.flask_secret_key, MIN_SECRET_KEY_LENGTH):
            found.append(f"MLFLOW_FLASK_SERVER_SECRET_KEY must be a real secret of at least "
                         f"{MIN_SECRET_KEY_LENGTH} characters")
        identities = [("ADMIN", self.admin_username, self.admin_password),
                      ("TRAINING", self.training_username, self.training_password),
                      ("READER", self.reader_username, self.reader_password)]
        for role, username, password in identities:
            if not username:
                found.append(f"MLFLOW_AUTH_{role}_USERNAME is required when MLFLOW_AUTH_ADMIN_PASSWORD is set")
            elif ":" in username or username != username.strip():
                found.append(f"MLFLOW_AUTH_{role}_USERNAME must not contain ':' or surrounding blanks")
            if password is None or not password.get_secret_value():
                found.append(f"MLFLOW_AUTH_{role}_PASSWORD is required when MLFLOW_AUTH_ADMIN_PASSWORD is set")
            elif _weak(password, MIN_PASSWORD_LENGTH) or password.get_secret_value() == LEGACY_MLFLOW_ADMIN_PASSWORD:
                found.append(f"MLFLOW_AUTH_{role}_PASSWORD must be a real secret of at least "
                             f"{MIN_PASSWORD_LENGTH} characters")
        names = [username for _, username, _ in identities if username]
        if len(set(names)) != len(names):
            found.append("MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_TRAINING_USERNAME and MLFLOW_AUTH_READER_USERNAME "
                         "must be three different users")
        return found


def _weak(secret: SecretStr, min_length: int) -> bool:
    value = secret.get_secret_value()
    return len(value) < min_length or value.lower() in PLACEHOLDER_SECRETS
