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

    # training (train_and_register)
    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", validation_alias="MLFLOW_TRACKING_URI")
    experiment_name: str = Field("diabetes-readmission", validation_alias="MLFLOW_EXPERIMENT_NAME")
    model_name: str = Field("diabetes-readmission", validation_alias="MODEL_NAME")
    model_alias: str = Field("champion", validation_alias="MODEL_ALIAS")
    challenger_alias: str = Field("challenger", validation_alias="CHALLENGER_ALIAS")
    candidates: str = Field("logistic_regression,random_forest,hist_gradient_boosting", validation_alias="CANDIDATES")
    """Comma-separated candidate names (see readmit_data.candidates)."""
    promotion_min_delta: float = Field(0.0, ge=0.0, validation_alias="PROMOTION_MIN_DELTA")
    """A candidate takes the champion alias only if the lower bound of its validation ROC-AUC lead over the
    champion (paired bootstrap over patients, see readmit_data.gate) exceeds this margin."""
    promotion_confidence: float = Field(0.95, gt=0.5, lt=1.0, validation_alias="PROMOTION_CONFIDENCE")
    """Confidence of the one-sided interval of that lead, before the correction for the run's N candidates
    (Bonferroni: the bound is taken at 1 - (1 - PROMOTION_CONFIDENCE) / N)."""
    promotion_bootstrap_samples: int = Field(1000, ge=100, le=100_000, validation_alias="PROMOTION_BOOTSTRAP_SAMPLES")
    """Bootstrap samples of the lead (raised automatically when too few for the corrected tail)."""
    promotion_max_subgroup_auc_drop: float = Field(0.02, ge=0.0, le=1.0,
                                                   validation_alias="PROMOTION_MAX_SUBGROUP_AUC_DROP")
    """A candidate is not promoted when, for one subgroup of its model card (age band, sex, race, payer), its
    validation ROC-AUC is below the champion's by more than this, beyond the noise (paired patient bootstrap,
    Bonferroni over the groups)."""
    promotion_max_calibration_worsening: float = Field(0.1, ge=0.0,
                                                       validation_alias="PROMOTION_MAX_CALIBRATION_WORSENING")
    """A candidate is not promoted when its calibration slope is further from 1 than the champion's by more
    than this, beyond the noise (paired patient bootstrap)."""
    model_card_min_group_rows: int = Field(100, ge=1, validation_alias="MODEL_CARD_MIN_GROUP_ROWS")
    """Subgroups of the model card with fewer encounters are merged (and the card says so)."""
    model_card_bootstrap_samples: int = Field(500, ge=100, le=100_000, validation_alias="MODEL_CARD_BOOTSTRAP_SAMPLES")
    """Bootstrap samples of the model card's intervals (patients resampled)."""
    drift_share_threshold: float = Field(0.05, gt=0.0, le=1.0, validation_alias="DRIFT_SHARE_THRESHOLD")
    """monitor_drift asks for retraining when at least this share of the contract's features drifted (47
    features: 0.05 is 3 of them)."""
    drift_reference_rows: int = Field(20_000, ge=1000, validation_alias="DRIFT_REFERENCE_ROWS")
    """At most this many of the champion's training rows (a seeded sample) are the drift reference."""
    arrival_max_auc_drop: float = Field(0.05, gt=0.0, le=1.0, validation_alias="ARRIVAL_MAX_AUC_DROP")
    """monitor_drift asks for retraining when the champion's ROC-AUC on a batch that arrived after it is below
    its validation ROC-AUC by more than this."""
    pushgateway_url: str = Field("", validation_alias="PUSHGATEWAY_URL")
    """Prometheus Pushgateway the drift checks push their figures to (``readmit_data.monitor.push_check``);
    empty: not pushed."""
    predictions_db_url: str = Field("", validation_alias="PREDICTIONS_DB_URL")
    """The Predictions store the API logs every answer to (``readmit_contract.prediction_log``): monitor_drift
    compares its recent encounters with the champion's training rows and deletes rows past the retention.
    Empty: no live drift, nothing pruned."""
    prediction_log_retention_days: float = Field(180.0, gt=0, validation_alias="PREDICTION_LOG_RETENTION_DAYS")
    """Logged predictions older than this are deleted by monitor_drift."""
    drift_prediction_hours: float = Field(24.0, gt=0, validation_alias="DRIFT_PREDICTION_HOURS")
    """The live drift check reads the predictions of this many hours before it (each encounter once: its
    latest answer)."""
    drift_excluded_callers: str = Field("locust", validation_alias="DRIFT_EXCLUDED_CALLERS")
    """API callers (names of the API's API_KEYS, comma-separated) whose logged predictions the live drift check
    leaves out: the load test's synthetic traffic is no population of patients."""

    @property
    def excluded_callers(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.drift_excluded_callers.split(",") if name.strip())

    mlflow_http_request_timeout: int = Field(30, gt=0, validation_alias="MLFLOW_HTTP_REQUEST_TIMEOUT")
    """Seconds MLflow's client waits for an answer (MLflow's own variable; its default, 120, is lifted here)."""
    mlflow_http_request_max_retries: int = Field(3, ge=0, le=10, validation_alias="MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    """Retries of a failed MLflow request (MLflow's default, 7, holds a task for minutes when MLflow is down)."""
    mlflow_http_request_backoff_factor: int = Field(1, ge=0, le=10,
                                                    validation_alias="MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    """Exponential backoff factor between those retries, in seconds (1: about 0, 2, 4 s)."""
    random_seed: int = Field(0, validation_alias="RANDOM_SEED")
    history_dropout: float = Field(0.1, ge=0.0, lt=1.0, validation_alias="HISTORY_DROPOUT")
    """Share of training rows whose patient history is blanked (seeded), so a model learns to answer when
    serving cannot look a patient up (readmit_contract.history)."""
    search_seconds: float = Field(0.0, ge=0.0, validation_alias="SEARCH_SECONDS")
    """Time budget of the hyper-parameter search per tree candidate (Optuna over patient-grouped folds of the
    train rows; readmit_data.search). 0: the candidates' fixed parameters."""
    warm_start_iterations: int = Field(100, ge=1, le=10_000, validation_alias="WARM_START_ITERATIONS")
    """Boosting iterations a warm start adds to a hist_gradient_boosting model, fitted on the new batches only
    (train_and_register's mode ``warm_start`` and the learning curve's warm-start line; readmit_data.warm_start).
    A forest gets trees in proportion to the new rows instead."""

    @property
    def candidate_names(self) -> list[str]:
        return [c.strip() for c in self.candidates.split(",") if c.strip()]


@lru_cache(maxsize=1)
def get_settings() -> DataSettings:
    return DataSettings()
