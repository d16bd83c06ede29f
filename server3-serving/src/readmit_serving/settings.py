"""Settings of the inference API, from environment variables (same names in .env, ConfigMaps, tests)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", validation_alias="MLFLOW_TRACKING_URI")
    model_name: str = Field("diabetes-readmission", validation_alias="MODEL_NAME")
    model_alias: str = Field("champion", validation_alias="MODEL_ALIAS")
    model_poll_seconds: float = Field(10.0, gt=0, validation_alias="MODEL_POLL_SECONDS")
    """How often the watcher asks MLflow where the alias points (and retries after a failure)."""
    max_batch_size: int = Field(1000, ge=1, validation_alias="MAX_BATCH_SIZE")
    """Most encounters one POST /predict/batch may carry."""
    microbatch_max_rows: int = Field(64, ge=1, validation_alias="MICROBATCH_MAX_ROWS")
    """Most concurrent single-row requests answered by one model call."""
    model_cache_dir: str | None = Field(None, validation_alias="MODEL_CACHE_DIR")
    """Where downloaded model versions are kept (None: a temporary folder)."""
