"""Settings of node 1's data services, from environment variables (same names in .env,
Kubernetes ConfigMaps and tests)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DataSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    raw_db_url: str = Field("sqlite:///var/raw.db", validation_alias="RAW_DB_URL")
    """SQLAlchemy URL of the RawData store (mysql+pymysql://... in the cluster)."""
    clean_db_url: str = Field("sqlite:///var/clean.db", validation_alias="CLEAN_DB_URL")
    """SQLAlchemy URL of the CleanData store."""
    data_source: str = Field("download", validation_alias="DATA_SOURCE")
    """Where raw loads read from: "download" (UCI archive), a path, or "synthetic:ROWS[:SEED]"."""
    data_cache_dir: str = Field("var/data", validation_alias="DATA_CACHE_DIR")
    batch_size: int = Field(15_000, gt=0, validation_alias="BATCH_SIZE")
    split_seed: int = Field(42, validation_alias="SPLIT_SEED")


@lru_cache(maxsize=1)
def get_settings() -> DataSettings:
    return DataSettings()
