"""POST /predict and POST /predict/batch."""

# no `from __future__ import annotations`: FastAPI must see the BatchRequest class built at run time

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import Field, create_model
from readmit_contract import Encounter

from .. import metrics
from ..batching import NoModelError, score
from ..dependencies import ServicesDep
from ..model import LoadedModel, out_of_scope
from ..schemas import BatchResponse, Prediction

NO_MODEL = "no model loaded yet: waiting for the model alias in MLflow (see /ready)"


def _prediction(model: LoadedModel, probability: float | None, reason: str | None = None) -> Prediction:
    if probability is None:
        return Prediction(probability=None, risk_band=None, scored=False, reason=reason,
                          model_name=model.name, model_version=model.version)
    band = model.band(probability)
    metrics.PREDICTIONS.labels(risk_band=band).inc()
    return Prediction(probability=probability, risk_band=band, scored=True,
                      model_name=model.name, model_version=model.version)


def build_router(max_batch_size: int) -> APIRouter:
    router = APIRouter(tags=["predictions"])
    BatchRequest = create_model(  # noqa: N806 - a model class
        "BatchRequest",
        encounters=(list[Encounter], Field(min_length=1, max_length=max_batch_size,
                                           description=f"1 to {max_batch_size} encounters")),
    )

    @router.post("/predict", response_model=Prediction, summary="Risk of 30-day readmission of one encounter")
    async def predict(encounter: Encounter, services: ServicesDep) -> Prediction:
        record = encounter.to_record()
        reason = out_of_scope(record)
        if reason is not None:
            model = services.holder.current
            if model is None:
                raise HTTPException(status_code=503, detail=NO_MODEL)
            return _prediction(model, None, reason)
        try:
            probability, model = await services.batcher.predict(record)
        except NoModelError:
            raise HTTPException(status_code=503, detail=NO_MODEL) from None
        return _prediction(model, probability)

    @router.post("/predict/batch", response_model=BatchResponse, summary="Risk of 30-day readmission of many encounters")
    async def predict_batch(body: BatchRequest, services: ServicesDep) -> BatchResponse:  # type: ignore[valid-type]
        model = services.holder.current
        if model is None:
            raise HTTPException(status_code=503, detail=NO_MODEL)
        records: list[dict[str, Any]] = [e.to_record() for e in body.encounters]  # type: ignore[attr-defined]
        reasons = [out_of_scope(r) for r in records]
        scorable = [r for r, why in zip(records, reasons, strict=True) if why is None]
        probabilities: list[float] = []
        if scorable:
            loop = asyncio.get_running_loop()
            probabilities = (await loop.run_in_executor(services.batcher.executor, score, model, scorable)).tolist()
        answers = iter(probabilities)
        predictions = [_prediction(model, next(answers)) if why is None else _prediction(model, None, why)
                       for why in reasons]
        return BatchResponse(predictions=predictions, model_name=model.name, model_version=model.version)

    return router
