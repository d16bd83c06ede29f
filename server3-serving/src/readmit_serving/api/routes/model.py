"""GET /model: the model served, its metrics, and the contract's fields; GET /model/card: its model card;
POST /model/reload: check the alias now instead of at the watcher's next poll."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from readmit_contract.card import ModelCard
from readmit_contract.encounter import ENCOUNTER_COLUMNS

from ..dependencies import ServicesDep
from ..model_card import AVAILABLE
from ..schemas import ContractField, Message, ModelDescription, Readiness
from .health import readiness

router = APIRouter(tags=["model"])

NO_MODEL = "no model loaded yet"

CONTRACT_FIELDS = [
    ContractField(
        name=c.name, kind=c.kind, required=c.required, allowed=list(c.allowed) if c.allowed else None,
        minimum=c.minimum, maximum=c.maximum, labels=c.labels or None, description=c.description,
    )
    for c in ENCOUNTER_COLUMNS
]


@router.get("/model", response_model=ModelDescription, summary="The model being served",
            responses={503: {"model": Message, "description": "no model loaded yet"}})
async def model_description(services: ServicesDep) -> ModelDescription:
    model = services.holder.current
    if model is None:
        raise HTTPException(status_code=503, detail=NO_MODEL)
    return ModelDescription(
        model_name=model.name, model_alias=model.alias, model_version=model.version, run_id=model.run_id,
        threshold=model.threshold, base_rate=model.base_rate, metrics=model.metrics, loaded_at=model.loaded_at,
        explainable=model.explainer is not None, predictor=model.predictor, card=model.card_state.status,
        contract_fields=CONTRACT_FIELDS,
    )


@router.get("/model/card", response_model=ModelCard, summary="The model card of the version being served",
            description="What the model is for and what it is not for, the data it learnt from, its discrimination "
                        "(ROC-AUC, PR-AUC, Brier score with 95 % intervals over patients) and calibration on "
                        "validation and test, its figures per subgroup (age band, sex, race, payer), the decision "
                        "threshold as a capacity rule, and its limitations: the card training recorded for this "
                        "version, served only when it matches the checksum recorded with it.",
            responses={404: {"model": Message, "description": "The version served has no card to serve: none was "
                                                              "recorded, or it does not match the checksum recorded "
                                                              "at training, or it cannot be read"},
                       503: {"model": Message, "description": "no model loaded yet"}})
async def model_card(services: ServicesDep) -> Response:
    model = services.holder.current
    if model is None:
        raise HTTPException(status_code=503, detail=NO_MODEL)
    state = model.card_state
    if state.status != AVAILABLE:
        raise HTTPException(status_code=404, detail=state.message)
    return Response(state.body, media_type="application/json")


RELOAD_FORBIDDEN = "this caller may not reload the model (MODEL_RELOAD_CALLERS)"
RELOAD_STATUS = {"serving": 200, "refused": 409}
"""The answer's status by the check's outcome (``ModelWatcher.check_once``); any other outcome is 503."""


@router.post("/model/reload", response_model=Readiness, summary="Check the model alias now",
             description="Asks MLflow where the alias points now, instead of at the watcher's next poll, and loads "
                         "that version if it is not the one served: downloaded, checked against its training "
                         "checksum and allowed types, smoke-tested, then swapped in (the previous version serves "
                         "until then). Only the callers named in MODEL_RELOAD_CALLERS may ask. The answer is the "
                         "readiness after the check.",
             responses={403: {"model": Message, "description": "the caller is not in MODEL_RELOAD_CALLERS"},
                        409: {"model": Readiness, "description": "the alias points at a version that was refused "
                                                                 "(integrity checks, loading or smoke test); the "
                                                                 "previous version keeps serving"},
                        503: {"model": Readiness, "description": "MLflow did not answer, refused the API's "
                                                                 "credentials, has no such alias, or the version "
                                                                 "could not be downloaded; the previous version "
                                                                 "keeps serving"}})
async def reload_model(request: Request, services: ServicesDep) -> JSONResponse:
    if request.scope.get("state", {}).get("caller") not in services.settings.model_reload_callers:
        raise HTTPException(status_code=403, detail=RELOAD_FORBIDDEN)
    outcome = await asyncio.to_thread(services.watcher.check_once)
    status = RELOAD_STATUS.get(outcome, 503)  # what this check found, not what the status says since
    return JSONResponse(readiness(services).model_dump(), status_code=status)
