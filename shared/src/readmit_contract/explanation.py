"""Why a model gave an encounter its risk: the contributions of the encounter's factors, in clinical words.

A *factor* is one thing a person recognises about an encounter: one input column (its one-hot block,
or its value and the features that re-express it), one quantity the transform derives (visits in
total, medications changed), or one item of the patient's history. Every feature of the contract's
transform belongs to exactly one factor (``factors``), so the contributions of a factor's features
add up and the explanation stays additive::

    base + sum of the contributions == the model's log-odds for the encounter

Contributions are on the log-odds scale (the probability is the logistic function of the log-odds):

- HistGradientBoosting: SHAP's TreeExplainer on the model's log-odds (exact Shapley values of the trees,
  path-dependent: no background data needed);
- the random forest calibrated by a sigmoid (Platt: log-odds = -(a * forest + b)): SHAP's TreeExplainer on
  the forest's probability with ``approximate=True`` (Saabas' path attributions: each split's change of
  the expected value credited to its feature), each contribution times -a (the calibration is linear in
  it, so the explanation stays additive). Why not exact: the forest's trees are deep (depth ~35, ~2,300
  nodes each on the real data) and exact TreeSHAP cost 222 ms per encounter holding the GIL (the API's
  event loop stalls meanwhile), against 0.12 ms; on real encounters the two rank factors alike
  (Spearman 0.96 over all factors, 4.2 of the top 5 in common);
- logistic regression: exact contributions ``coef_j * (x_j - mean_j) / scale_j`` against the training mean,
  which is what SHAP's linear explainer gives with the training data as background;
- the prior baseline: no factor; the base is the prior's log-odds.

Any other estimator has no explainer (``Explainer.for_pipeline`` returns None).
SHAP is imported only when a tree model's explainer is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .columns import BY_NAME, MISSING
from .features import (
    COUNT_COLUMNS,
    DERIVED_DESCRIPTIONS,
    DERIVED_FROM,
    INPUT_COLUMNS,
    EncounterFeatures,
    column_values,
)
from .history import HISTORY_DESCRIPTIONS, HISTORY_NAMES
from .icd9 import diagnosis_group

NOT_RECORDED = "not recorded"
NOT_KNOWN = "not known"
_YES_NO = ("diag_any_diabetes", "history_known", "hist_last_readmit_30")


@dataclass(frozen=True)
class Factor:
    key: str
    """The column, derived feature or history column the factor stands for."""
    label: str
    """Clinical words for it (the contract's description)."""
    features: tuple[int, ...]
    """Its features' positions in the transform's output."""


def _factor_key(feature: str) -> str:
    if feature in COUNT_COLUMNS or feature in DERIVED_DESCRIPTIONS or feature in HISTORY_NAMES:
        return feature
    if feature in DERIVED_FROM:
        return DERIVED_FROM[feature]
    column, sep, _ = feature.partition("=")
    if sep and column in BY_NAME:
        return column
    raise KeyError(f"feature {feature!r} belongs to no factor")


def _label(key: str) -> str:
    if key in BY_NAME:
        return BY_NAME[key].description
    if key in HISTORY_DESCRIPTIONS:
        text = HISTORY_DESCRIPTIONS[key]
        return text[:1].upper() + text[1:]
    return DERIVED_DESCRIPTIONS[key]


def factors(features: EncounterFeatures) -> tuple[Factor, ...]:
    """The factors of a fitted transform, in the order of their first feature."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(features.feature_names_):
        positions.setdefault(_factor_key(name), []).append(i)
    return tuple(Factor(key, _label(key), tuple(idx)) for key, idx in positions.items())


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def value_text(key: str, raw: Any, feature_values: np.ndarray) -> str:
    """The encounter's value of factor ``key`` in words: a code's description, a diagnosis with its group,
    ``not recorded`` for a missing value; derived and history factors from the transform's output."""
    if key in BY_NAME:
        column = BY_NAME[key]
        if raw is None or raw == MISSING or (isinstance(raw, float) and raw != raw):
            return NOT_RECORDED
        if column.kind == "code":
            return column.labels.get(int(raw), f"code {raw}")
        if column.kind == "icd9":
            return f"{raw} ({diagnosis_group(str(raw))})"
        if column.kind == "integer":
            return _number(float(raw))
        return str(raw)
    value = float(feature_values[0])
    if key in _YES_NO:
        return "yes" if value else "no"
    if key == "hist_inpatient_trend":
        return f"{value:+g}"
    return _number(value)


@dataclass(frozen=True)
class Contribution:
    factor: str
    label: str
    value: str
    contribution: float
    """On the log-odds scale: positive raises the risk, negative lowers it."""

    @property
    def text(self) -> str:
        return f"{self.label}: {self.value}"


@dataclass(frozen=True)
class Explanation:
    base: float
    """The model's log-odds before any factor of the encounter (its average over the training data)."""
    contributions: tuple[Contribution, ...]
    """Every factor's contribution, largest effect first."""

    @property
    def log_odds(self) -> float:
        return self.base + math.fsum(c.contribution for c in self.contributions)

    @property
    def probability(self) -> float:
        z = self.log_odds  # the logistic function, without overflow at either end
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def top(self, n: int) -> tuple[list[Contribution], float]:
        """The ``n`` largest contributions and the sum of the rest (so that the parts still add up)."""
        return list(self.contributions[:n]), math.fsum(c.contribution for c in self.contributions[n:])


ContributionFn = Callable[[np.ndarray], np.ndarray]


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _tree_contributions(estimator: Any, approximate: bool = False) -> tuple[float, ContributionFn]:
    import shap

    explainer = shap.TreeExplainer(estimator)
    expected = np.ravel(explainer.expected_value)

    def fn(X: np.ndarray) -> np.ndarray:
        values = np.asarray(explainer.shap_values(X, approximate=approximate, check_additivity=False))
        return values[:, :, 1] if values.ndim == 3 else values  # a classifier's probability: class 1

    return float(expected[-1]), fn


TREE_SHAP = "shap_tree"
TREE_PATH = "shap_tree_approximate"
LINEAR = "linear_exact"
PRIOR = "prior"
METHODS = {
    TREE_SHAP: "SHAP TreeExplainer, exact Shapley values of the trees",
    TREE_PATH: "SHAP TreeExplainer, approximate (Saabas path attributions)",
    LINEAR: "exact contributions of the logistic regression against the training mean",
    PRIOR: "the training prior: no factor changes the risk",
}
"""How an explainer computes contributions (``Explainer.method``), in words."""


def _log_odds_contributions(estimator: Any) -> tuple[str, float, ContributionFn] | None:
    """(method, base, contributions function) of the estimator's log-odds, or None when it cannot be explained."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(estimator, HistGradientBoostingClassifier) and estimator.n_trees_per_iteration_ == 1:
        return (TREE_SHAP, *_tree_contributions(estimator))
    if isinstance(estimator, CalibratedClassifierCV) and len(estimator.calibrated_classifiers_) == 1:
        calibrated = estimator.calibrated_classifiers_[0]
        inner, calibrator = calibrated.estimator, calibrated.calibrators[0]
        if estimator.method != "sigmoid" or not isinstance(inner, RandomForestClassifier):
            return None
        a, b = float(calibrator.a_), float(calibrator.b_)
        forest_base, forest = _tree_contributions(inner, approximate=True)
        return TREE_PATH, -(a * forest_base + b), lambda X: -a * forest(X)
    steps = estimator.steps if isinstance(estimator, Pipeline) else [("model", estimator)]
    *scalers, (_, last) = steps
    if isinstance(last, LogisticRegression) and last.coef_.shape[0] == 1 and all(
            isinstance(s, StandardScaler) for _, s in scalers) and len(scalers) <= 1:
        coef = last.coef_[0].astype(float)
        mean = scalers[0][1].mean_ if scalers and scalers[0][1].with_mean else np.zeros_like(coef)
        scale = scalers[0][1].scale_ if scalers and scalers[0][1].with_std else np.ones_like(coef)
        weights = coef / scale
        return LINEAR, float(last.intercept_[0]), lambda X: (np.asarray(X, dtype=float) - mean) * weights
    if isinstance(estimator, DummyClassifier) and len(estimator.class_prior_) == 2:
        base = _logit(float(estimator.class_prior_[1]))
        return PRIOR, base, lambda X: np.zeros(np.shape(X))
    return None


class Explainer:
    """Explains a fitted Pipeline (the contract's transform, then an estimator): see the module's doc."""

    def __init__(self, features: EncounterFeatures, method: str, base: float, contributions: ContributionFn) -> None:
        self.features = features
        self.method = method
        """One of ``METHODS``."""
        self.factors = factors(features)
        self.base = base
        self._contributions = contributions

    @classmethod
    def for_pipeline(cls, pipeline: Any) -> Explainer | None:
        """The pipeline's explainer, or None when its estimator is of a kind this module cannot explain."""
        features = pipeline[0]
        if len(pipeline) != 2 or not isinstance(features, EncounterFeatures):
            return None
        found = _log_odds_contributions(pipeline[-1])
        return None if found is None else cls(features, *found)

    def explain(self, records: Any) -> list[Explanation]:
        """One explanation per encounter of ``records`` (a DataFrame, a list of records, or one record)."""
        X = self.features.transform(records)
        n, raw = column_values(records, INPUT_COLUMNS)
        if n == 0:
            return []
        values = np.asarray(self._contributions(X), dtype=float).reshape(X.shape)
        history_known = self.features.history_ and "history_known" in self.features.feature_names_
        known_at = self.features.feature_names_.index("history_known") if history_known else None
        out = []
        for i in range(n):
            parts = []
            for factor in self.factors:
                contribution = float(values[i, list(factor.features)].sum())
                if factor.key in HISTORY_NAMES and known_at is not None and not X[i, known_at]:
                    text = NOT_KNOWN
                else:
                    text = value_text(factor.key, raw[factor.key][i] if factor.key in raw else None,
                                      X[i, list(factor.features)])
                parts.append(Contribution(factor.key, factor.label, text, contribution))
            parts.sort(key=lambda c: -abs(c.contribution))
            out.append(Explanation(self.base, tuple(parts)))
        return out

    def mean_absolute(self, records: Any) -> dict[str, float]:
        """Mean absolute contribution of each factor over ``records``, largest first: what drives the model."""
        X = self.features.transform(records)
        if len(X) == 0:
            return {}
        values = np.asarray(self._contributions(X), dtype=float).reshape(X.shape)
        per_factor = np.stack([values[:, list(f.features)].sum(axis=1) for f in self.factors], axis=1)
        means = np.abs(per_factor).mean(axis=0)
        order = np.argsort(-means, kind="stable")
        return {self.factors[j].key: float(means[j]) for j in order}


def label_of(key: str) -> str:
    """Clinical words for a factor key (a column, a derived feature or a history column)."""
    return _label(key)
