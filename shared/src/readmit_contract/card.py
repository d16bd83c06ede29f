"""The model card of a registered version: what the model is for, what it learnt from, and for whom it works.

Training builds it (``readmit_data.model_card``) for the version it registers and stores it in MLflow
on the version's run, beside a markdown rendering and the calibration plot; the version's tag
``CARD_DIGEST_TAG`` holds the sha256 of the JSON file, so a reader can tell the card is the one
training wrote. The gate reads it, the API serves it (``/model/card``), the UI shows it.

Figures follow TRIPOD+AI reporting: discrimination with 95 % intervals that resample patients (a
patient's encounters are correlated), calibration as Van Calster et al. (2019) recommend (slope,
intercept, observed against predicted by risk group), subgroup metrics as Fairlearn's ``MetricFrame``
computes them, and the decision threshold stated as a capacity rule (the share of encounters flagged).
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, Field

SCHEMA = "readmit-model-card/1"
CARD_DIR = "model_card"
CARD_JSON = f"{CARD_DIR}/card.json"
CARD_MARKDOWN = f"{CARD_DIR}/card.md"
CARD_CALIBRATION_PLOT = f"{CARD_DIR}/calibration.png"
CARD_DIGEST_TAG = "model_card_sha256"
"""Model-version tag: sha256 of the bytes of ``CARD_JSON`` as training stored them."""


def card_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Interval(BaseModel):
    value: float | None
    low: float | None = Field(None, description="Lower end of the 95 % interval (patients resampled)")
    high: float | None = Field(None, description="Upper end of the 95 % interval (patients resampled)")


class CalibrationBin(BaseModel):
    predicted: float = Field(description="Mean predicted probability of the encounters in the risk group")
    observed: float = Field(description="Share of them readmitted within 30 days")
    n: int


class Calibration(BaseModel):
    slope: float | None = Field(description="1 when well calibrated; below 1: predictions too extreme")
    intercept: float | None = Field(description="0 when well calibrated; positive: risk under-estimated")
    observed_rate: float
    predicted_rate: float
    bins: list[CalibrationBin] = Field(description="Ten risk groups of equal size, lowest risk first")


class Group(BaseModel):
    group: str = Field(description="The group's name (merged groups: 'merged: A, B')")
    members: list[str] = Field(description="The values of the attribute it covers")
    n: int
    positives: int
    roc_auc: float | None = Field(description="null when the group has only one outcome")
    observed_rate: float
    predicted_rate: float = Field(description="Mean predicted probability")
    true_positive_rate: float | None = Field(description="Readmitted encounters flagged at the threshold")
    false_positive_rate: float | None = Field(description="Not readmitted encounters flagged at the threshold")
    flagged_share: float = Field(description="Share of the group's encounters flagged at the threshold")
    small: bool = Field(False, description="Fewer encounters than the card's minimum even after merging: "
                                           "figures shown, not relied on (the gate skips it)")


class Subgroups(BaseModel):
    attribute: str = Field(description="The contract column the groups are made of")
    label: str
    note: str | None = Field(None, description="Which small groups were merged, and why")
    groups: list[Group]


class Assessment(BaseModel):
    split: str
    rows: int
    patients: int
    positives: int
    roc_auc: Interval
    pr_auc: Interval
    brier: Interval
    calibration: Calibration
    subgroups: list[Subgroups]


class CapacityPoint(BaseModel):
    flagged_share: float
    threshold: float
    sensitivity: float = Field(description="Share of the readmitted encounters among those flagged")
    precision: float = Field(description="Share of the flagged encounters readmitted within 30 days")


class Threshold(BaseModel):
    value: float
    chosen_by: str
    flagged_share: float = Field(description="Share of validation encounters at or above it")
    sensitivity: float
    precision: float
    rule: str = Field(description="The threshold as a capacity rule, in words")
    capacity: list[CapacityPoint] = Field(description="Other capacities: the threshold that flags each share")


class InputField(BaseModel):
    name: str
    description: str


class IntendedUse(BaseModel):
    summary: str
    scored_at: str
    known_at_discharge: list[InputField]
    known_at_admission: list[InputField]
    history: str
    out_of_scope: str
    not_for: list[str]


class DataSummary(BaseModel):
    train_batches: list[str]
    rows: dict[str, int]
    patients: dict[str, int]
    positive_rate: dict[str, float]
    split: str


class Driver(BaseModel):
    factor: str
    label: str
    mean_abs_contribution: float = Field(description="Mean absolute contribution to the log-odds (validation)")


class ModelInfo(BaseModel):
    candidate: str
    estimator: str
    run_id: str
    created: str
    uses_history: bool


class ModelCard(BaseModel):
    schema_: str = Field(SCHEMA, alias="schema")
    model: ModelInfo
    intended_use: IntendedUse
    data: DataSummary
    threshold: Threshold
    evaluation: dict[str, Assessment] = Field(description="validation (what the gate compares) and test")
    drivers: list[Driver]
    limitations: list[str]

    model_config = {"populate_by_name": True}
