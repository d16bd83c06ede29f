"""The inference API application.

    API_KEYS=ui:KEY,... uvicorn readmit_serving.api.main:app --host 0.0.0.0 --port 8000

Loads ``MODEL_NAME@MODEL_ALIAS`` from MLflow at start (in the background: the API
answers /health at once and /ready turns 200 when the model is in), follows the
alias, and serves predictions with micro-batching. /predict, /predict/batch and /model
need a key from API_KEYS; without API_KEYS the API does not start.

``app`` is built on first access (``uvicorn ...main:app``), not at import, so importing this
module never needs the settings; invalid settings stop the process with a message naming the
variable (never its value).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..settings import ServingSettings, settings_error
from . import metrics
from .admission import AdmissionMiddleware, Overloaded, Shedder, overloaded_handler
from .auth import ApiKeyMiddleware, KeyRing, document_security, open_paths
from .batching import InferenceScheduler
from .body_limit import BodyLimitMiddleware
from .dependencies import Services
from .errors import InternalErrorMiddleware, validation_error
from .history import HistoryLookup
from .middleware import PrometheusMiddleware
from .model import ModelHolder
from .prediction_log import PredictionLog
from .routes import health, model, predict
from .watcher import ModelWatcher, settle_heap

log = logging.getLogger(__name__)


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    settings = settings or ServingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder = ModelHolder()
        scheduler = InferenceScheduler(holder, settings.microbatch_max_rows, settings.batch_slice_rows,
                                       settings.max_queued_batch_rows)
        watcher = ModelWatcher(settings.mlflow_tracking_uri, settings.model_name, settings.model_alias,
                               settings.model_poll_seconds, holder, settings.model_cache_dir,
                               settings.trees_compile, settings.trees_compiler, settings.trees_compile_max_nodes)
        history = HistoryLookup(settings.history_db_url.get_secret_value() if settings.history_db_url else None,
                                settings.history_timeout_ms, settings.history_cache_seconds)
        predictions = PredictionLog(
            settings.predictions_db_url.get_secret_value() if settings.predictions_db_url else None,
            settings.prediction_log_buffer_rows, settings.prediction_log_batch_rows, settings.prediction_log_flush_ms)
        metrics.MODEL_LOADED.set(0)
        metrics.MODEL_VERSION.set(0)
        app.state.services = Services(settings, holder, scheduler, watcher, history, predictions)
        predictions.start()
        settle_heap()  # the imports' objects (before the first model: see settle_heap)
        watcher.start()
        try:
            yield
        finally:
            try:
                watcher.stop()
                scheduler.shutdown()
                history.close()
            finally:
                predictions.close()  # after the last answer: what is buffered is written (within a bound)

    app = FastAPI(
        title="Diabetes 30-day readmission API",
        version="1.0.0",
        description="Scores hospital encounters of diabetic patients with the champion model from MLflow. "
                    "Request bodies follow the platform's feature contract.",
        lifespan=lifespan,
    )
    open_ = open_paths(app)
    app.include_router(predict.build_router(settings.max_batch_size))
    app.include_router(health.router)
    app.include_router(model.router)
    shedder = Shedder(settings.shed_retry_after_ms)
    # outermost last: metrics see every answer (401, 413, shed 503 and 500 included), errors catch what the
    # others raise; a request without a key is refused before its size is looked at, and one too large
    # before it takes an in-flight place; the body is read by the route only once admitted
    app.add_middleware(AdmissionMiddleware, limits={"/predict": settings.max_in_flight,
                                                    "/predict/batch": settings.max_in_flight_batch},
                       deadline_ms=settings.request_deadline_ms, shedder=shedder)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.body_limit)
    app.add_middleware(ApiKeyMiddleware, keys=KeyRing(settings.api_keys), open_paths=open_)
    unknown = sorted(settings.model_reload_callers - {k.name for k in settings.api_keys})
    if unknown:  # names only, never a key
        log.warning("MODEL_RELOAD_CALLERS names callers API_KEYS does not know (%s): they cannot reload the "
                    "model", ", ".join(unknown))
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(PrometheusMiddleware, known_paths=frozenset(
        route.path for route in app.routes if "{" not in getattr(route, "path", "{")) | {"/metrics"})
    document_security(app, open_)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, overloaded_handler(shedder))

    @app.exception_handler(StarletteHTTPException)
    async def body_errors_are_422(request: Request, exc: StarletteHTTPException) -> Response:
        """A body that is not even JSON text (bad bytes) is bad input like any other: 422, not 400."""
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return JSONResponse(status_code=422, content={"detail": [
                {"type": "json_invalid", "loc": ["body"], "msg": "the request body is not valid JSON text"}]})
        return await http_exception_handler(request, exc)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", include_in_schema=True,
             response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def __getattr__(name: str) -> Any:
    """``main.app``: the app from the environment's settings, built once on first access."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        settings = ServingSettings()
    except ValidationError as exc:
        raise SystemExit(settings_error(exc)) from None
    built = globals()["app"] = create_app(settings)
    return built
