"""Settings of the inference API, from environment variables (same names in .env, ConfigMaps, tests)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_KEY_LENGTH = 16
CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A caller's name: it appears in logs and metrics, so a short plain word."""
KEY_TEXT = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
"""A key: printable ASCII without space or comma (it travels in an HTTP header; commas separate entries)."""
BYTES_PER_ENCOUNTER = 4096
"""Room for one encounter in a request body when MAX_BODY_BYTES is derived (compact JSON takes ~1.1 KB)."""


class ApiKey(BaseModel):
    """One caller of the API and its key (the key never appears in a repr, a log or an error)."""

    model_config = ConfigDict(frozen=True)

    name: str
    key: SecretStr


def parse_api_keys(value: Any) -> tuple[ApiKey, ...]:
    """``name:key,name:key`` -> the callers. Errors name API_KEYS and the entry's position, never a key.

    A name may appear twice (two keys of one caller while a key is rotated); a key may not (each
    request must identify one caller).
    """
    if isinstance(value, (list, tuple)):
        return tuple(v if isinstance(v, ApiKey) else ApiKey.model_validate(v) for v in value)
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value or "")
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ValueError("API_KEYS is not set: the API does not start without keys. Set it to comma-separated "
                         "name:key pairs (e.g. ui:<key>,hospital:<key>), each key at least "
                         f"{MIN_KEY_LENGTH} characters")
    keys: list[ApiKey] = []
    for position, entry in enumerate(entries, start=1):
        name, colon, key = (part.strip() for part in entry.partition(":"))
        if not colon or not name or not key:
            raise ValueError(f"API_KEYS entry {position} is not a name:key pair")
        if not CALLER_NAME.fullmatch(name):
            raise ValueError(f"API_KEYS entry {position}: the name must be a letter or digit followed by up to 63 "
                             "letters, digits, '.', '_' or '-'")
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"API_KEYS entry {position} ({name}): the key is shorter than {MIN_KEY_LENGTH} characters")
        if not KEY_TEXT.fullmatch(key):
            raise ValueError(f"API_KEYS entry {position} ({name}): the key must be printable ASCII without spaces "
                             "or commas")
        keys.append(ApiKey(name=name, key=SecretStr(key)))
    if len({k.key.get_secret_value() for k in keys}) < len(keys):
        raise ValueError("API_KEYS: two entries share one key (each caller needs its own key)")
    return tuple(keys)


class ServingSettings(BaseSettings):
    # hide_input_in_errors: a settings error never prints the value it refused (API_KEYS holds secrets)
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      hide_input_in_errors=True)

    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", validation_alias="MLFLOW_TRACKING_URI")
    model_name: str = Field("diabetes-readmission", validation_alias="MODEL_NAME")
    model_alias: str = Field("champion", validation_alias="MODEL_ALIAS")
    model_poll_seconds: float = Field(10.0, gt=0, validation_alias="MODEL_POLL_SECONDS")
    """How often the watcher asks MLflow where the alias points (and retries after a failure)."""
    max_batch_size: int = Field(1000, ge=1, validation_alias="MAX_BATCH_SIZE")
    """Most encounters one POST /predict/batch may carry."""
    microbatch_max_rows: int = Field(64, ge=1, validation_alias="MICROBATCH_MAX_ROWS")
    """Most concurrent single-row requests answered by one model call."""
    max_in_flight: int = Field(32, ge=1, validation_alias="MAX_IN_FLIGHT")
    """Most POST /predict requests served at once (from their headers to their answer); one more is
    answered 503 at once, before its body is read. On 2 cores, same runs: 32 connections in a closed loop get
    3,179 req/s, p99 14.6 ms, every answer 200 (with 16: 2,496 req/s and 42 % of the requests shed); at 2x
    capacity (bench/overload.py) the p99 of admitted requests is 23.8 ms with 32 and 15.4 ms with 16, 49 % and
    44 % admitted. (Before the API froze its heap after a swap, a full GC pause made 32 cost a p99 of ~240 ms.)"""
    max_in_flight_batch: int = Field(4, ge=1, validation_alias="MAX_IN_FLIGHT_BATCH")
    """Most POST /predict/batch requests served at once; one more is answered 503 at once."""
    max_queued_batch_rows: int = Field(4000, ge=1, validation_alias="MAX_QUEUED_BATCH_ROWS")
    """Most encounters of batch requests waiting to be scored; a batch that would pass it is answered 503
    (a batch is always taken when none waits)."""
    batch_slice_rows: int = Field(256, ge=1, validation_alias="BATCH_SLICE_ROWS")
    """Batch requests are scored in slices of this many encounters, single requests going first between two."""
    request_deadline_ms: int = Field(1000, ge=1, validation_alias="REQUEST_DEADLINE_MS")
    """A prediction request not scored within this time of its arrival is answered 503 (reason deadline)
    and never scored."""
    shed_retry_after_ms: int = Field(1000, ge=1, validation_alias="SHED_RETRY_AFTER_MS")
    """When a refused (503) caller should try again: ``retry_after_ms`` in the body, ``Retry-After`` in
    whole seconds (rounded up, at least 1)."""
    max_body_bytes: int | None = Field(None, ge=1, validation_alias="MAX_BODY_BYTES")
    """Largest request body; larger is answered 413 before it is parsed (by Content-Length, or by counting a
    chunked body). Default: MAX_BATCH_SIZE x 4 KiB + 64 KiB (an encounter is ~1.1 KB of JSON)."""
    inference_stuck_seconds: float = Field(30.0, gt=0, validation_alias="INFERENCE_STUCK_SECONDS")
    """/health answers 503 when one model call has run longer than this (the liveness probe restarts the pod)."""
    history_db_url: SecretStr | None = Field(None, validation_alias="HISTORY_DB_URL")
    """CleanData's SQLAlchemy URL, read-only identity, for patient history (unset: no history lookup; a
    secret: it holds a password)."""
    history_timeout_ms: int = Field(200, ge=1, validation_alias="HISTORY_TIMEOUT_MS")
    """How long one history query may take before the encounter is scored without history."""
    history_cache_seconds: float = Field(300.0, ge=0, validation_alias="HISTORY_CACHE_SECONDS")
    """How long a patient's looked-up encounters are reused."""
    predictions_db_url: SecretStr | None = Field(None, validation_alias="PREDICTIONS_DB_URL")
    """The Predictions store every answer is logged to (readmit_contract.prediction_log; MySQL
    ``mysql+pymysql://`` with an identity that may only INSERT and CREATE, or ``sqlite:///path``). Unset: nothing
    is logged. A secret: it holds a password."""
    prediction_log_buffer_rows: int = Field(20_000, ge=1, validation_alias="PREDICTION_LOG_BUFFER_ROWS")
    """Most predictions waiting to be written; beyond it (the store away that long) new ones are dropped and
    counted (readmit_api_prediction_log_dropped_total{reason="buffer_full"})."""
    prediction_log_batch_rows: int = Field(500, ge=1, validation_alias="PREDICTION_LOG_BATCH_ROWS")
    """Most rows one INSERT writes."""
    prediction_log_flush_ms: int = Field(200, ge=1, validation_alias="PREDICTION_LOG_FLUSH_MS")
    """Most time a prediction waits in the buffer before a write of it is started."""
    model_cache_dir: str | None = Field(None, validation_alias="MODEL_CACHE_DIR")
    """Where downloaded model versions are kept (None: a temporary folder)."""
    trees_compile: bool = Field(True, validation_alias="TREES_COMPILE")
    """Compile the served model's trees to C (TL2cgen and the C compiler ``TREES_COMPILER``) in the background
    once a version serves; until then, or when off or impossible, Treelite's interpreter evaluates them."""
    trees_compiler: str = Field("gcc", validation_alias="TREES_COMPILER")
    """The C compiler TL2cgen calls (gcc or clang, on PATH)."""
    trees_compile_max_nodes: int = Field(100_000, ge=1, validation_alias="TREES_COMPILE_MAX_NODES")
    """Trees with more nodes than this are not compiled (a deep forest takes minutes to build): interpreted."""
    model_reload_callers: Annotated[frozenset[str], NoDecode] = Field(  # type: ignore[assignment]
        frozenset({"hospital"}), validation_alias="MODEL_RELOAD_CALLERS")
    """Callers (names in API_KEYS) allowed to POST /model/reload, comma-separated; any other caller gets 403."""
    api_keys: Annotated[tuple[ApiKey, ...], NoDecode] = Field("", validate_default=True,  # type: ignore[assignment]
                                                               validation_alias="API_KEYS")
    """Callers of /predict, /predict/batch and /model: ``name:key`` pairs, comma-separated (required)."""

    @property
    def body_limit(self) -> int:
        """MAX_BODY_BYTES, or the default derived from MAX_BATCH_SIZE."""
        return self.max_body_bytes or self.max_batch_size * BYTES_PER_ENCOUNTER + 65_536

    @field_validator("model_reload_callers", mode="before")
    @classmethod
    def _parse_callers(cls, value: Any) -> frozenset[str]:
        if isinstance(value, str):
            return frozenset(name.strip() for name in value.split(",") if name.strip())
        return frozenset(value)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> tuple[ApiKey, ...]:
        return parse_api_keys(value)


def settings_error(exc: ValidationError) -> str:
    """A settings ValidationError as one line per variable: its name and what is wrong, never its value."""
    fields = ServingSettings.model_fields
    lines = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = [str(part) for part in error["loc"]]
        if loc and loc[0] in fields and isinstance(fields[loc[0]].validation_alias, str):
            loc[0] = fields[loc[0]].validation_alias  # an unset variable is reported under the field's name
        where = ".".join(loc) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(message if message.startswith(where) else f"{where}: {message}")
    return "invalid settings of the inference API:\n  " + "\n  ".join(lines)
