"""Settings of the UI, from environment variables (same names in .env, ConfigMaps, tests)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class UISettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    api_url: str = Field("http://127.0.0.1:8000", validation_alias="API_URL")
    """Base URL of the inference API."""
    api_timeout_seconds: float = Field(30.0, gt=0, validation_alias="API_TIMEOUT_SECONDS")
    """Longest wait for one API answer (a batch chunk included)."""
    api_batch_size: int = Field(1000, ge=1, le=1000, validation_alias="API_BATCH_SIZE")
    """Most encounters per POST /predict/batch (at most the API's MAX_BATCH_SIZE)."""

    @property
    def base_url(self) -> str:
        return self.api_url.rstrip("/")
