"""Explanations of single predictions (``POST /predict?explain=true``).

The explainer (``readmit_contract.explanation.Explainer``) is built once per loaded version, after its smoke
test, and kept only if its explanations add up to the model's own probabilities on sample encounters
(``build_explainer``); a version without one serves predictions as usual and answers explain requests 409
(``not_explainable``). Explanations are computed on the inference thread (``batching``), on the model object
that gave the probability, and turned into the response body here (``explanation_body``).

The query parameters are read by hand (``explain_top``): FastAPI's declared query parameters cost ~25 us per
request even when absent, on every plain ``/predict``; a request without a query string pays nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from readmit_contract.explanation import Explainer, Explanation
from starlette.requests import Request

from .schemas import FactorContribution, PredictionExplanation

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-6
"""Largest difference allowed between an explanation's probability and the model's."""
DEFAULT_TOP = 10
MAX_TOP = 50
CHECK_ROWS = 50
"""Synthetic encounters (besides the contract's example) an explainer must explain right before it serves."""
SCALE = ("Contributions are on the log-odds scale: base_log_odds + the factors' contributions + other_factors = "
         "log_odds, and the probability is the logistic function of the log-odds, 1 / (1 + exp(-log_odds)); a "
         "positive contribution raises the risk, a negative one lowers it.")


def not_explainable(version: str) -> str:
    """The 409 sentence of an explain request to a version without an explainer."""
    return (f"this model version ({version}) cannot be explained: ask without explain=true for its prediction")


class ExplainQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    explain: bool = False
    explain_top: int = Field(DEFAULT_TOP, ge=1, le=MAX_TOP)


EXPLAIN_PARAMETERS: list[dict[str, Any]] = [
    {"name": "explain", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
     "description": "Also explain the risk: the answer's `explanation` lists the factors of the encounter with the "
                    "largest effect on it, as additive contributions to the log-odds (409 when the model served "
                    "cannot be explained; encounters not scored get none)"},
    {"name": "explain_top", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP, "default": DEFAULT_TOP},
     "description": "How many factors `explanation.factors` lists (the others are summed in `other_factors`)"},
]
"""The OpenAPI description of the query parameters ``explain_top`` reads."""


def explain_top(request: Request) -> int | None:
    """How many factors the request wants explained, or None for no explanation; a bad value is FastAPI's 422
    (``loc`` ``["query", name]``). A request without a query string costs one dictionary lookup."""
    if not request.scope.get("query_string"):
        return None
    try:
        query = ExplainQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])}
                                      for e in exc.errors(include_url=False, include_context=False)]) from None
    return query.explain_top if query.explain else None


def _direction(contribution: float) -> str:
    return "raises" if contribution > 0 else "lowers" if contribution < 0 else "none"


def finite(explanation: Explanation) -> bool:
    return math.isfinite(explanation.base) and all(math.isfinite(c.contribution) for c in explanation.contributions)


def explanation_body(explanation: Explanation, top: int, method: str) -> PredictionExplanation:
    """The answer's ``explanation``: the ``top`` largest contributions, the rest summed; ``method`` is the
    explainer's (``Explainer.method``)."""
    shown, rest = explanation.top(top)
    return PredictionExplanation(
        base_log_odds=explanation.base,
        log_odds=explanation.log_odds,
        factors=[FactorContribution(factor=c.factor, label=c.label, value=c.value, text=c.text,
                                    contribution=c.contribution, direction=_direction(c.contribution))
                 for c in shown],
        other_factors=rest,
        other_factor_count=len(explanation.contributions) - len(shown),
        method=method,
        scale=SCALE,
    )


def check_records(records: list[dict[str, Any]], rows: int = CHECK_ROWS) -> list[dict[str, Any]]:
    """``records`` and ``rows`` synthetic encounters, as the API hands them to a model."""
    from readmit_contract import Encounter, synthetic, validate
    from readmit_contract.encounter import json_encounters

    sample = validate(synthetic.generate(rows, seed=2)).valid
    return records + [Encounter.model_validate(e).to_record() for e in json_encounters(sample)]


def build_explainer(model: Any, records: list[dict[str, Any]], probabilities: np.ndarray) -> Explainer | None:
    """The explainer of ``model`` (a ``LoadedModel``) if its explanations of ``records`` match ``probabilities``
    (the model's, within ``PROBABILITY_TOLERANCE``), else None. Never raises: why it is None is logged."""
    where = f"{model.name} v{model.version}"
    try:
        explainer = Explainer.for_pipeline(model.pipeline)
    except Exception as exc:  # noqa: BLE001 - the model serves without explanations
        log.warning("%s: building its explainer failed (%s: %s): explain requests get 409", where,
                    type(exc).__name__, str(exc)[:500])
        return None
    if explainer is None:
        log.info("%s: its estimator (%s) cannot be explained: explain requests get 409", where,
                 type(model.pipeline[-1]).__name__)
        return None
    try:
        explained = np.array([e.probability for e in explainer.explain(records)], dtype=float)
    except Exception as exc:  # noqa: BLE001
        log.warning("%s: its explainer fails on sample encounters (%s: %s): explain requests get 409", where,
                    type(exc).__name__, str(exc)[:500])
        return None
    gap = float(np.max(np.abs(explained - probabilities))) if len(records) else 0.0
    if not gap <= PROBABILITY_TOLERANCE:  # NaN included
        log.warning("%s: its explanations do not add up to its probabilities on sample encounters (largest gap "
                    "%.3g): explain requests get 409", where, gap)
        return None
    return explainer
