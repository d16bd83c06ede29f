"""GET /model: the model served, its metrics, and the contract's fields; GET /model/card: its model card."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from readmit_contract.card import ModelCard
from readmit_contract.encounter import ENCOUNTER_COLUMNS

from ..dependencies import ServicesDep
from ..model_card import AVAILABLE
from ..schemas import ContractField, Message, ModelDescription

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
