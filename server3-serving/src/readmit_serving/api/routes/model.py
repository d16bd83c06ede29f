"""GET /model: the model served, its metrics, and the contract's fields."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from readmit_contract.encounter import ENCOUNTER_COLUMNS

from ..dependencies import ServicesDep
from ..schemas import ContractField, ModelDescription

router = APIRouter(tags=["model"])

CONTRACT_FIELDS = [
    ContractField(
        name=c.name, kind=c.kind, required=c.required, allowed=list(c.allowed) if c.allowed else None,
        minimum=c.minimum, maximum=c.maximum, labels=c.labels or None, description=c.description,
    )
    for c in ENCOUNTER_COLUMNS
]


@router.get("/model", response_model=ModelDescription, summary="The model being served",
            responses={503: {"description": "no model loaded yet"}})
async def model_description(services: ServicesDep) -> ModelDescription:
    model = services.holder.current
    if model is None:
        raise HTTPException(status_code=503, detail="no model loaded yet")
    return ModelDescription(
        model_name=model.name, model_alias=model.alias, model_version=model.version, run_id=model.run_id,
        threshold=model.threshold, base_rate=model.base_rate, metrics=model.metrics, loaded_at=model.loaded_at,
        contract_fields=CONTRACT_FIELDS,
    )
