"""Prometheus metrics of the API (names follow Prometheus conventions: _total, _seconds)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info
from readmit_contract.artifact import REFUSAL_CODES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("readmit_api_requests_total", "HTTP requests answered", ["route", "method", "status"])
REQUEST_DURATION = Histogram(
    "readmit_api_request_duration_seconds", "HTTP request duration", ["route", "method"], buckets=LATENCY_BUCKETS
)
IN_PROGRESS = Gauge("readmit_api_requests_in_progress", "HTTP requests being served", ["method"])
INFERENCE_DURATION = Histogram(
    "readmit_api_inference_duration_seconds", "Duration of one model call (transform + estimator)",
    buckets=LATENCY_BUCKETS,
)
INFERENCE_ROWS = Histogram(
    "readmit_api_inference_batch_rows", "Encounters scored by one model call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
)
PREDICTIONS = Counter("readmit_api_predictions_total", "Encounters scored, by risk band", ["risk_band"])
PREDICTION_COUNTERS = {band: PREDICTIONS.labels(risk_band=band) for band in ("low", "medium", "high")}
MODEL_INFO = Info("readmit_api_model", "The model being served")
MODEL_VERSION = Gauge("readmit_api_model_version", "Registry version of the model being served (0: none)")
MODEL_LOADED = Gauge("readmit_api_model_loaded", "1 when a model is loaded and predictions can be served")
MODEL_RELOADS = Counter("readmit_api_model_reloads_total", "Model loads from MLflow, by result", ["result"])
MLFLOW_UP = Gauge("readmit_api_mlflow_up", "1 when the last check of MLflow succeeded")
MLFLOW_CHECK_FAILURES = Counter("readmit_api_mlflow_check_failures_total", "Failed checks of the model alias")
MODEL_REFUSALS = Counter(
    "readmit_api_model_refusals_total",
    "Model versions refused before loading (artifact checksum, format or types), by reason", ["reason"],
)
for _reason in REFUSAL_CODES:  # every reason present from the start, at 0: alerts need no absent() tricks
    MODEL_REFUSALS.labels(reason=_reason)
MODEL_REFUSED_VERSION = Gauge(
    "readmit_api_model_refused_version",
    "Registry version the alias points at that was refused (0: none refused)",
)

SHED_ROUTES = ("/predict", "/predict/batch")
SHED_REASONS = ("in_flight", "batch_queue", "deadline")
SHED = Counter(
    "readmit_api_shed_total",
    "Prediction requests answered 503 to keep latency bounded (never scored), by route and reason: in_flight "
    "(MAX_IN_FLIGHT / MAX_IN_FLIGHT_BATCH reached), batch_queue (MAX_QUEUED_BATCH_ROWS), deadline "
    "(REQUEST_DEADLINE_MS passed before scoring)",
    ["route", "reason"],
)
for _route in SHED_ROUTES:
    for _reason in SHED_REASONS:
        SHED.labels(route=_route, reason=_reason)
RECORD_FAILURES = Counter(
    "readmit_api_record_failures_total",
    "Encounters the model failed on (their own request answered 500, the others of the call answered), by "
    "reason: exception, non_finite (a probability that is not a finite number), explanation (explain=true: the "
    "explainer raised, or its probability differed from the model's)",
    ["reason"],
)
for _reason in ("exception", "non_finite", "explanation"):
    RECORD_FAILURES.labels(reason=_reason)
EXPLANATION_DURATION = Histogram(
    "readmit_api_explanation_duration_seconds",
    "Duration of explaining one encounter (POST /predict?explain=true; after its model call)", buckets=LATENCY_BUCKETS,
)
QUEUED_ROWS = Gauge("readmit_api_inference_queued_rows",
                    "Encounters waiting for the inference worker, by kind (single, explain, batch)", ["kind"])

HISTORY_LOOKUPS = Counter(
    "readmit_api_history_lookups_total",
    "Encounters by how their patient history was obtained (see readmit_serving.api.history.HISTORY_STATUSES): "
    "found, first_encounter, unavailable (store down or slow: scored without history), no_patient, no_encounter, off, "
    "not_used",
    ["status"],
)
HISTORY_LOOKUP_COUNTERS = {status: HISTORY_LOOKUPS.labels(status=status) for status in (
    "found", "first_encounter", "unavailable", "no_patient", "no_encounter", "off", "not_used")}
"""Each status' counter, resolved once (``labels()`` costs more than the increment)."""
HISTORY_FAILURES = Counter("readmit_api_history_failures_total",
                           "Failed lookups of the history store, by reason: timeout, error", ["reason"])
for _reason in ("timeout", "error"):
    HISTORY_FAILURES.labels(reason=_reason)
HISTORY_QUERY_DURATION = Histogram("readmit_api_history_query_duration_seconds",
                                   "Duration of one successful query of the history store", buckets=LATENCY_BUCKETS)

PREDICTION_LOG_WRITTEN = Counter("readmit_api_prediction_log_written_total",
                                 "Predictions (one per encounter answered) written to the prediction log")
PREDICTION_LOG_DROPPED = Counter(
    "readmit_api_prediction_log_dropped_total",
    "Predictions answered but not written to the prediction log, by reason: buffer_full (the store was away long "
    "enough to fill PREDICTION_LOG_BUFFER_ROWS), store_error (a row the store refused, after retries), shutdown "
    "(still buffered when the API stopped)",
    ["reason"],
)
for _reason in ("buffer_full", "store_error", "shutdown"):
    PREDICTION_LOG_DROPPED.labels(reason=_reason)
PREDICTION_LOG_BUFFERED = Gauge("readmit_api_prediction_log_buffered_rows",
                                "Predictions waiting to be written to the prediction log")
PREDICTION_LOG_WRITE_DURATION = Histogram(
    "readmit_api_prediction_log_write_duration_seconds",
    "Duration of one successful batch INSERT into the prediction log (up to PREDICTION_LOG_BATCH_ROWS rows)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
