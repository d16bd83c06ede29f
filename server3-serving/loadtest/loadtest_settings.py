"""Settings of the load test, from environment variables (the same names in the ConfigMap, the Secrets and tests).

Secrets: API_KEY (the load test's key for the inference API, sent as ``X-API-Key``; the API lists it in
API_KEYS as ``locust:<key>``) is required: without it every request would be a 401, so the run refuses
to start. LOCUST_USERNAME / LOCUST_PASSWORD guard the web UI (see web_login.py); headless runs (the
capacity search) do not need them. Secrets are ``SecretStr`` (masked in repr) and never part of an
error message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

API_KEY_MIN_LENGTH = 16  # the API refuses shorter keys in API_KEYS
API_KEY_TEXT = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII, no space, no comma (as the API wants)
PASSWORD_MIN_LENGTH = 12

_MAPPING_ONLY: ContextVar[bool] = ContextVar("loadtest_settings_mapping_only", default=False)

HINTS = {
    "API_KEY": "the load test's key for the inference API, sent as X-API-Key "
               "(the API must list it in API_KEYS as locust:<key>)",
}


class SettingsError(ValueError):
    """Invalid settings, with a message naming the environment variables (never their values)."""


class LoadTestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True,
                                      hide_input_in_errors=True)

    api_url: str = Field("http://127.0.0.1:8000", validation_alias="API_URL")
    """API_URL: the API under load (locust's --host overrides it)."""
    api_key: SecretStr = Field(validation_alias="API_KEY")
    """API_KEY: the load test's API key, sent as X-API-Key on every request (required)."""
    web_username: str | None = Field(None, validation_alias="LOCUST_USERNAME")
    web_password: SecretStr | None = Field(None, validation_alias="LOCUST_PASSWORD")
    """LOCUST_USERNAME / LOCUST_PASSWORD: the login of the web UI (required when the web UI runs)."""
    metrics_host: str = Field("0.0.0.0", validation_alias="LOCUST_METRICS_HOST")  # noqa: S104 - scraped by Prometheus
    """LOCUST_METRICS_HOST: address of the Prometheus endpoint of the run."""
    metrics_port: int = Field(9646, validation_alias="LOCUST_METRICS_PORT")
    """LOCUST_METRICS_PORT: port of that endpoint (0: no endpoint)."""
    seed: int = Field(0, validation_alias="LOADTEST_SEED")
    """LOADTEST_SEED: seed of the synthetic encounters and of the users' choices."""
    pool_size: int = Field(2000, ge=1, validation_alias="LOADTEST_POOL_SIZE")
    """LOADTEST_POOL_SIZE: synthetic encounters generated once and sampled by the users."""
    batch_size: int = Field(20, ge=1, validation_alias="LOADTEST_BATCH_SIZE")
    """LOADTEST_BATCH_SIZE: encounters per POST /predict/batch."""
    wait_min: float = Field(0.5, ge=0, validation_alias="LOADTEST_WAIT_MIN")
    wait_max: float = Field(1.5, ge=0, validation_alias="LOADTEST_WAIT_MAX")
    """LOADTEST_WAIT_MIN / LOADTEST_WAIT_MAX: think time of a user between two requests, seconds."""
    capacity_search: bool = Field(False, validation_alias="CAPACITY_SEARCH")
    """CAPACITY_SEARCH=1: step users up until the SLO breaks, then write the capacity report."""
    slo_p95_ms: float = Field(200.0, gt=0, validation_alias="CAPACITY_SLO_P95_MS")
    """CAPACITY_SLO_P95_MS: latency objective, p95 of POST /predict (same as the Prometheus alert)."""
    max_error_ratio: float = Field(0.01, ge=0, lt=1, validation_alias="CAPACITY_MAX_ERROR_RATIO")
    """CAPACITY_MAX_ERROR_RATIO: failed requests / requests allowed in a step."""
    start_users: int = Field(10, ge=1, validation_alias="CAPACITY_START_USERS")
    """CAPACITY_START_USERS: users of the first step."""
    step_users: int = Field(10, ge=1, validation_alias="CAPACITY_STEP_USERS")
    """CAPACITY_STEP_USERS: users added at each step."""
    step_seconds: float = Field(30.0, gt=0, validation_alias="CAPACITY_STEP_SECONDS")
    """CAPACITY_STEP_SECONDS: how long each step is measured (after its users are spawned)."""
    max_users: int = Field(500, ge=1, validation_alias="CAPACITY_MAX_USERS")
    """CAPACITY_MAX_USERS: the search stops there even within the SLO."""
    spawn_rate: float = Field(0.0, ge=0, validation_alias="CAPACITY_SPAWN_RATE")
    """CAPACITY_SPAWN_RATE: users started per second at each step (0: a whole step in one second)."""
    report_dir: str = Field("capacity-report", validation_alias="CAPACITY_REPORT_DIR")
    """CAPACITY_REPORT_DIR: where capacity-report.json, capacity-report.md and latency-vs-users.png go."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # from_env(mapping) reads the mapping only (tests); otherwise the process environment
        return (init_settings,) if _MAPPING_ONLY.get() else (init_settings, env_settings)

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value().strip()
        if len(key) < API_KEY_MIN_LENGTH:
            raise ValueError(f"must be at least {API_KEY_MIN_LENGTH} characters (the API refuses shorter keys)")
        if not API_KEY_TEXT.fullmatch(key):
            raise ValueError("must be printable ASCII without spaces or commas (as in the API's API_KEYS)")
        return SecretStr(key)

    @model_validator(mode="after")
    def _consistent(self) -> LoadTestSettings:
        if self.wait_min > self.wait_max:
            raise ValueError("LOADTEST_WAIT_MIN must be <= LOADTEST_WAIT_MAX")
        if self.max_users < self.start_users:
            raise ValueError("CAPACITY_MAX_USERS must be >= CAPACITY_START_USERS")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadTestSettings:
        """The settings from the process environment, or from ``env`` only; SettingsError when invalid."""
        token = _MAPPING_ONLY.set(env is not None)
        try:
            values: dict[str, Any] = {} if env is None else {k: v for k, v in env.items() if v.strip()}
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(describe(exc)) from None
        finally:
            _MAPPING_ONLY.reset(token)

    def web_login_problem(self) -> str | None:
        """Why the web UI's login cannot be set up from these settings (None: it can)."""
        if not (self.web_username or "").strip() or self.web_password is None:
            return "the web UI needs LOCUST_USERNAME and LOCUST_PASSWORD (its login)"
        if len(self.web_password.get_secret_value()) < PASSWORD_MIN_LENGTH:
            return f"LOCUST_PASSWORD must be at least {PASSWORD_MIN_LENGTH} characters"
        return None

    @property
    def step_spawn_rate(self) -> float:
        return self.spawn_rate if self.spawn_rate > 0 else float(max(self.start_users, self.step_users))


def describe(exc: ValidationError) -> str:
    """A readable message naming the variables at fault, without their values."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        name = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "not set" + (f": {HINTS[name]}" if name in HINTS else "")
        problems.append(f"{name}: {message}" if name else message)
    return "invalid load-test settings: " + "; ".join(problems)
