"""Settings of the UI, from environment variables (same names in .env, ConfigMaps, tests)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REQUIRED = ("UI_USERNAME", "UI_PASSWORD", "API_KEY")
"""Without these the page serves nothing but a message to the administrator (never an open page)."""


class UISettings(BaseSettings):
    # hide_input_in_errors: a settings error never shows the value it refused
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      hide_input_in_errors=True)

    api_url: str = Field("http://127.0.0.1:8000", validation_alias="API_URL")
    """Base URL of the inference API."""
    api_timeout_seconds: float = Field(30.0, gt=0, validation_alias="API_TIMEOUT_SECONDS")
    """Longest wait for one API answer (a batch chunk included)."""
    api_batch_size: int = Field(1000, ge=1, le=1000, validation_alias="API_BATCH_SIZE")
    """Most encounters per POST /predict/batch (at most the API's MAX_BATCH_SIZE)."""
    max_upload_mb: int = Field(25, ge=1, le=200, validation_alias="STREAMLIT_SERVER_MAX_UPLOAD_SIZE")
    """Largest CSV the page scores, in MB (MiB). The variable Streamlit itself reads for ``server.maxUploadSize``
    (the size its server accepts): set once where the UI starts, the server, the uploader and the page agree.
    25 MB holds ~140,000 encounters (diabetic_data.csv: 18 MB, 101,766); the default is the page's even when
    Streamlit's own default (200 MB) applies."""
    api_key: SecretStr | None = Field(None, validation_alias="API_KEY")
    """The UI's own key for the API (its entry in the API's API_KEYS)."""
    ui_username: str | None = Field(None, validation_alias="UI_USERNAME")
    ui_password: SecretStr | None = Field(None, validation_alias="UI_PASSWORD")
    """The login in front of the page."""

    @property
    def base_url(self) -> str:
        return self.api_url.rstrip("/")

    def missing(self) -> list[str]:
        """The required variables that are unset or empty."""
        values = {"UI_USERNAME": self.ui_username, "UI_PASSWORD": self.ui_password, "API_KEY": self.api_key}
        return [name for name in REQUIRED if not _text(values[name]).strip()]


def _text(value: str | SecretStr | None) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""
