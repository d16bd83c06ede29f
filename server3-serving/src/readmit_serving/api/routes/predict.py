"""POST /predict and POST /predict/batch.

Bodies are strict JSON (``strict_json``); every model call goes through the inference scheduler
(``batching``), which may refuse a request to keep latency bounded (``admission.Overloaded``: 503).
``POST /predict?explain=true`` also explains the risk (``explanations``); without a query string the route does
nothing more than before. Every answer (200) is buffered for the prediction log (``prediction_log``: an append,
no I/O) under a fresh request id, which the answer carries as ``X-Request-ID``.
"""

# no `from __future__ import annotations`: FastAPI must see the BatchRequest class built at run time

import math
import time
import uuid
from collections import Counter
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field, TypeAdapter, create_model
from pydantic_core import to_json
from readmit_contract import Encounter

from .. import metrics
from ..batching import NoModelError, NotExplainable, RecordFailed
from ..dependencies import Services
from ..explanations import EXPLAIN_PARAMETERS, explain_top, explanation_body, not_explainable
from ..model import LoadedModel, out_of_scope
from ..schemas import BatchResponse, ExplainedPrediction, Message, Prediction, PredictionExplanation, Shed
from ..strict_json import StrictJsonRoute

NO_MODEL = "no model loaded yet: waiting for the model alias in MLflow (see /ready)"

RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": Message, "description": "The body is larger than MAX_BODY_BYTES (refused before it is read)"},
    415: {"model": Message, "description": "The body is not JSON (Content-Type) or is compressed (Content-Encoding)"},
    503: {"model": Shed, "description": "No model loaded yet, or refused to keep latency bounded (then with "
                                        "Retry-After and retry_after_ms; never scored)"},
}


Answer = dict[str, Any]
"""One encounter's answer: ``Prediction``'s fields in its order, rendered to JSON as it is (pydantic-core's
serializer), without building and validating a model object per encounter."""


def _prediction(model: LoadedModel, probability: float | None, reason: str | None = None,
                history: str | None = None, count: bool = True) -> Answer:
    if probability is None:
        return {"probability": None, "risk_band": None, "scored": False, "reason": reason, "history": None,
                "model_name": model.name, "model_version": model.version}
    if not math.isfinite(probability):  # the scheduler refuses these already; never hand one to the JSON encoder
        raise RecordFailed("a probability that is not a finite number")
    band = model.band(probability)
    if count:
        metrics.PREDICTION_COUNTERS[band].inc()
    return {"probability": probability, "risk_band": band, "scored": True, "reason": None, "history": history,
            "model_name": model.name, "model_version": model.version}


def _predictions(model: LoadedModel, reasons: list[str | None], probabilities: list[float],
                 histories: list[str]) -> list[Answer]:
    """A batch's answers in order: the scored ones from ``probabilities`` (counted per band once), the others
    with their reason."""
    answers, how = iter(probabilities), iter(histories)
    predictions = [_prediction(model, next(answers), history=next(how), count=False) if why is None
                   else _prediction(model, None, why) for why in reasons]
    for band, n in Counter(p["risk_band"] for p in predictions if p["scored"]).items():
        metrics.PREDICTION_COUNTERS[band].inc(n)
    return predictions


REQUEST_ID = "X-Request-ID"
"""The answer's header naming its rows in the prediction log (``request_id``)."""
REQUEST_ID_HEADER = {REQUEST_ID: {"description": "The answer's id: its rows in the prediction log carry it as "
                                                 "request_id (uuid4, 32 hex digits)",
                                  "schema": {"type": "string"}}}


def _explained(prediction: Answer, explanation: PredictionExplanation | None, request_id: str) -> JSONResponse:
    """An answer with its explanation (returned as a response: the route's model, Prediction, would drop it)."""
    body = ExplainedPrediction(**prediction, explanation=explanation)
    return JSONResponse(body.model_dump(mode="json"), headers={REQUEST_ID: request_id})


def _answer(prediction: Answer, request_id: str) -> Response:
    """``prediction`` as FastAPI would render it for ``response_model=Prediction`` (every field, JSON nulls)."""
    return Response(to_json(prediction), media_type="application/json", headers={REQUEST_ID: request_id})


_RECORDS = TypeAdapter(list[Encounter])
"""A batch's encounters as records in one call (``Encounter.to_record`` of each)."""


def _caller(request: Request) -> str | None:
    """The API-key name of the caller (set by the key check, ``auth.ApiKeyMiddleware``)."""
    return request.scope.get("state", {}).get("caller")


PREDICT_DESCRIPTION = (
    "The probability that the encounter is followed by a readmission within 30 days, its risk band, and the model "
    "that gave it. With `explain=true` the answer also carries `explanation`: the encounter's factors with the "
    "largest effect on the risk (`explain_top`, 10 by default), each with its contribution to the log-odds "
    "(`base_log_odds` + the factors + `other_factors` = `log_odds`; probability = logistic(log_odds)). "
    "Encounters ending in death or hospice are not scored (`scored: false`, no explanation)."
)
EXPLAIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ExplainedPrediction, "description": "The prediction (with `explanation` when explain=true)",
          "headers": REQUEST_ID_HEADER},
    409: {"model": Message, "description": "explain=true, but the model version served cannot be explained (ask "
                                           "without explain for its prediction)"},
}


async def _predict_explained(record: dict[str, Any], top: int, services: Services,
                             request: Request) -> tuple[Answer, PredictionExplanation | None]:
    model = services.holder.current
    if model is None:
        raise HTTPException(status_code=503, detail=NO_MODEL)
    if model.explainer is None:
        raise HTTPException(status_code=409, detail=not_explainable(model.version))
    (history,) = await services.history.attach([record], model.uses_history)
    try:
        probability, explanation, model = await services.scheduler.explain(record, _deadline(request, services))
    except NoModelError:
        raise HTTPException(status_code=503, detail=NO_MODEL) from None
    except NotExplainable as exc:
        raise HTTPException(status_code=409, detail=not_explainable(exc.version)) from None
    return (_prediction(model, probability, history=history),
            explanation_body(explanation, top, model.explainer.method))


def _uses_history(services: Services) -> bool:
    model = services.holder.current
    return model is not None and model.uses_history


def _deadline(request: Request, services: Services) -> float:
    """When this request must have been scored (set on arrival by the admission middleware)."""
    deadline = getattr(request.state, "deadline", None)
    return deadline if deadline is not None else time.monotonic() + services.settings.request_deadline_ms / 1000


def build_router(max_batch_size: int) -> APIRouter:
    router = APIRouter(tags=["predictions"], route_class=StrictJsonRoute, responses=RESPONSES)
    BatchRequest = create_model(  # noqa: N806 - a model class
        "BatchRequest",
        encounters=(list[Encounter], Field(min_length=1, max_length=max_batch_size,
                                           description=f"1 to {max_batch_size} encounters")),
    )

    @router.post("/predict", response_model=Prediction, summary="Risk of 30-day readmission of one encounter",
                 description=PREDICT_DESCRIPTION, responses=EXPLAIN_RESPONSES,
                 openapi_extra={"parameters": EXPLAIN_PARAMETERS})
    async def predict(encounter: Encounter, request: Request) -> Response:
        # the answer is rendered here (``_answer``), not by FastAPI from the response model: the same JSON without
        # validating the Prediction a second time; services are the app's (no per-request dependency to solve)
        services: Services = request.app.state.services
        top = explain_top(request)  # None: no explanation asked (the parameters are read by hand, see explanations)
        record = encounter.to_record()
        reason = out_of_scope(record)
        explanation = None
        if reason is not None:
            model = services.holder.current
            if model is None:
                raise HTTPException(status_code=503, detail=NO_MODEL)
            prediction = _prediction(model, None, reason)  # nothing to explain
        elif top is not None:
            prediction, explanation = await _predict_explained(record, top, services, request)
        else:
            (history,) = await services.history.attach([record], _uses_history(services))
            try:
                probability, model = await services.scheduler.predict(record, _deadline(request, services))
            except NoModelError:
                raise HTTPException(status_code=503, detail=NO_MODEL) from None
            prediction = _prediction(model, probability, history=history)
        request_id = uuid.uuid4().hex
        services.predictions.add(request_id, "predict", _caller(request), record, prediction)
        if top is not None:
            return _explained(prediction, explanation, request_id)
        return _answer(prediction, request_id)

    @router.post("/predict/batch", response_model=BatchResponse,
                 summary="Risk of 30-day readmission of many encounters",
                 responses={200: {"description": "One prediction per encounter, in order",
                                  "headers": REQUEST_ID_HEADER}})
    async def predict_batch(body: BatchRequest, request: Request) -> Response:  # type: ignore[valid-type]
        services: Services = request.app.state.services
        model = services.holder.current
        if model is None:
            raise HTTPException(status_code=503, detail=NO_MODEL)
        records: list[dict[str, Any]] = _RECORDS.dump_python(body.encounters, by_alias=True)  # type: ignore[attr-defined]
        reasons = [out_of_scope(r) for r in records]
        scorable = [r for r, why in zip(records, reasons, strict=True) if why is None]
        probabilities: list[float] = []
        histories: list[str] = []
        if scorable:
            histories = await services.history.attach(scorable, model.uses_history)
            scored = await services.scheduler.predict_many(scorable, model, _deadline(request, services))
            probabilities = scored.tolist()
        predictions = _predictions(model, reasons, probabilities, histories)
        request_id = uuid.uuid4().hex
        services.predictions.add_many(request_id, "batch", _caller(request), records, predictions)
        answer = {"predictions": predictions, "model_name": model.name, "model_version": model.version}
        return Response(to_json(answer), media_type="application/json", headers={REQUEST_ID: request_id})

    return router
