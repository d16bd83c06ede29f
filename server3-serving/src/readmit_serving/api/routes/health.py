"""GET /health (liveness) and GET /ready (readiness: 200 only with a model loaded)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..dependencies import Services, ServicesDep
from ..schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers and inference is not stuck",
            responses={503: {"model": Health, "description": "the inference worker has been on one model call "
                                                             "longer than INFERENCE_STUCK_SECONDS"}})
async def health(services: ServicesDep) -> JSONResponse:
    running = services.scheduler.running_for()
    if running > services.settings.inference_stuck_seconds:
        return JSONResponse({"status": "stuck", "detail": f"the inference worker has been on one model call for "
                                                          f"{running:.0f} s"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready", response_model=Readiness, summary="Readiness: a model is loaded",
            responses={503: {"model": Readiness, "description": "no model loaded yet"}})
async def ready(services: ServicesDep) -> JSONResponse:
    body = readiness(services)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


def readiness(services: Services) -> Readiness:
    """What /ready (and POST /model/reload) report."""
    model = services.holder.current
    status = services.watcher.status
    return Readiness(
        ready=model is not None,
        model_name=services.settings.model_name,
        model_alias=services.settings.model_alias,
        model_version=model.version if model else None,
        mlflow_reachable=status.mlflow_reachable,
        alias_version=status.alias_version,
        last_check=status.last_check,
        last_error=status.last_error,
        refused_version=status.refused_version,
        refusal=status.refusal,
    )
