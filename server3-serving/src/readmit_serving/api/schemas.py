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


Direction = Literal["raises", "lowers", "none"]


class FactorContribution(BaseModel):
    factor: str = Field(description="The factor's key: a contract column, a quantity derived from the encounter or "
                                    "an item of the patient's history")
    label: str = Field(description="The factor in clinical words")
    value: str = Field(description="This encounter's value of it, in words ('not recorded', 'not known' when "
                                   "missing)")
    text: str = Field(description="'label: value', ready to show")
    contribution: float = Field(description="What it adds to the log-odds of readmission (positive: raises the risk)")
    direction: Direction = Field(description="raises (contribution > 0), lowers (< 0) or none (0)")


class PredictionExplanation(BaseModel):
    base_log_odds: float = Field(description="The model's log-odds before any factor of this encounter (its average "
                                             "over the training data)")
    log_odds: float = Field(description="The model's log-odds for this encounter: base_log_odds + the factors' "
                                        "contributions + other_factors")
    factors: list[FactorContribution] = Field(description="The factors with the largest effect, largest first "
                                                          "(explain_top of them)")
    other_factors: float = Field(description="The sum of the contributions of the other factors")
    other_factor_count: int = Field(description="How many factors other_factors sums")
    method: str = Field(description="How the contributions were computed: shap_tree (exact Shapley values of the "
                                    "trees), shap_tree_approximate (path attributions of the trees), linear_exact "
                                    "(a logistic regression's exact contributions) or prior (no factor changes the "
                                    "risk)")
    scale: str = Field(description="How to read the numbers")


class ExplainedPrediction(Prediction):
    explanation: PredictionExplanation | None = Field(
        None, description="Only with explain=true: why the model gave this risk, as additive contributions of the "
                          "encounter's factors (null when the encounter is not scored)")


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


CardStatus = Literal["available", "missing", "no_checksum", "checksum_mismatch", "unreadable"]


class ModelDescription(BaseModel):
    model_name: str
    model_alias: str
    model_version: str
    run_id: str
    threshold: float
    base_rate: float
    metrics: dict[str, float]
    loaded_at: float
    explainable: bool = Field(description="Whether POST /predict?explain=true can explain this version's predictions")
    predictor: Literal["compiled", "interpreted", "scikit-learn"] = Field(
        description="How the estimator's trees are evaluated: compiled (Treelite's C code, built in the background "
                    "after a version starts serving), interpreted (Treelite's predictor, until then or when the "
                    "trees are too large to compile), scikit-learn (a model that is not a tree ensemble). All three "
                    "give scikit-learn's probabilities (checked on 500 encounters before use)")
    card: CardStatus = Field(description="GET /model/card: available; missing (training recorded no card for this "
                                         "version); no_checksum (a card without the checksum training records); "
                                         "checksum_mismatch (the card differs from what training recorded); "
                                         "unreadable (it cannot be downloaded or parsed). Only an available card "
                                         "is served")
    contract_fields: list[ContractField]
