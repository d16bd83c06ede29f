"""Response bodies of the API (the request body of one encounter is the contract's ``Encounter``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .history import HISTORY_STATUSES, HistoryStatus

RiskBand = Literal["low", "medium", "high"]


class Prediction(BaseModel):
    probability: float | None = Field(description="Probability of readmission within 30 days (null: not scored)")
    risk_band: RiskBand | None = Field(description="low: below the training base rate; high: at or above the "
                                                   "model's decision threshold; medium: between")
    scored: bool = Field(description="False when the encounter is out of scope (death or hospice)")
    reason: str | None = Field(None, description="Why the encounter was not scored")
    history: HistoryStatus | None = Field(None, description="How the patient's earlier encounters were used: "
                                          + "; ".join(f"{k}: {v}" for k, v in HISTORY_STATUSES.items()))
    model_name: str
    model_version: str


class BatchResponse(BaseModel):
    predictions: list[Prediction]
    model_name: str
    model_version: str


class Health(BaseModel):
    status: Literal["ok", "stuck"] = "ok"
    detail: str | None = Field(None, description="Why the API is not live (only with status stuck)")


class Message(BaseModel):
    detail: str


class Shed(BaseModel):
    detail: str
    reason: Literal["in_flight", "batch_queue", "deadline"] | None = Field(
        None, description="Why the request was refused (absent: no model loaded yet)")
    retry_after_ms: int | None = Field(None, description="When to try again (also the Retry-After header, in "
                                                         "whole seconds)")


class Readiness(BaseModel):
    ready: bool
    model_name: str
    model_alias: str
    model_version: str | None = Field(description="The version being served (null: none yet)")
    mlflow_reachable: bool = Field(description="Whether MLflow answered the last check")
    alias_version: str | None = Field(description="Where the alias pointed at the last successful check")
    last_check: float | None
    last_error: str | None = Field(description="What went wrong at the last check, in words a person can act on "
                                               "(details are in the API's log)")
    refused_version: str | None = Field(None, description="The version the alias points at that was refused "
                                                          "(its artifact failed the integrity checks)")
    refusal: str | None = Field(None, description="Why it was refused: no_checksum, checksum_mismatch, "
                                                  "unsafe_format or unsafe_types")


class ContractField(BaseModel):
    name: str
    kind: str
    required: bool
    allowed: list[Any] | None = None
    minimum: int | None = None
    maximum: int | None = None
    labels: dict[int, str] | None = None
    description: str


class ModelDescription(BaseModel):
    model_name: str
    model_alias: str
    model_version: str
    run_id: str
    threshold: float
    base_rate: float
    metrics: dict[str, float]
    loaded_at: float
    contract_fields: list[ContractField]
