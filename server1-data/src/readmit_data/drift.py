"""Data drift: do the encounters the champion meets now look like those it learnt from?

Per contract feature, the current encounters are compared with the champion's training rows by
Evidently's ``DataDriftPreset``: Wasserstein distance (normed) for numerical columns and Jensen-Shannon
distance for categorical ones, each drifted at 0.1 or more. A missing value is a category of its own
("not recorded": how often weight is recorded is part of the population). The tests are fixed rather
than Evidently's size-dependent defaults, whose chi-squared test answers p = 0 as soon as the current
rows hold one category the reference lacks (seen: weight ">200" once in 15,000 undrifted rows). The
result is the share of drifted features and, per feature, the method, its score and whether it drifted.

Why Evidently: maintained (0.7, 2026), per-feature tests chosen by column type and sample size, and an
HTML report a reviewer can open in MLflow. NannyML, the other candidate, estimates performance without
labels, which this platform measures with labels (``readmit_data.arrival``), and pulls telemetry and
cloud clients into the hospital's image.

Compatibility: Evidently 0.7.23 imports ``infer_dtype_from_object`` from pandas' internals at import time
(only its legacy data-integrity tests call it); pandas 3.1 removed it. ``evidently()`` provides a stand-in
that refuses to be called, so the import works and nothing this module uses can depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from readmit_contract.columns import COLUMNS
from readmit_contract.icd9 import diagnosis_group

NOT_RECORDED = "not recorded"
MIN_ROWS = 1000
"""Fewer current encounters than this are not compared: Evidently's distance tests (chosen for a large
reference) flag sampling noise as drift in small windows (seen: 6 of 47 features on 300 undrifted rows)."""
NUMERICAL: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.is_feature and c.kind == "integer")
CATEGORICAL: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.is_feature and c.kind != "integer")
"""Hospital codes (admission type, discharge disposition, source) are categories, not quantities; ICD-9
diagnoses are compared by clinical group (as the model reads them), not by their hundreds of codes."""
ICD9: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind == "icd9")
DRIFT_COLUMNS: tuple[str, ...] = NUMERICAL + CATEGORICAL


def evidently() -> Any:
    """The ``evidently`` package, imported once pandas' removed private name has its stand-in."""
    import os

    import pandas.core.dtypes.common as common

    os.environ.setdefault("DO_NOT_TRACK", "1")  # no usage telemetry from a hospital's machines

    if not hasattr(common, "infer_dtype_from_object"):
        def infer_dtype_from_object(dtype: Any) -> type:
            raise NotImplementedError("Evidently's legacy data-integrity tests are not used by this platform")

        common.infer_dtype_from_object = infer_dtype_from_object
    import evidently as package

    return package


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    share: float
    """Share of the features that drifted."""
    drifted: int
    features: list[FeatureDrift]
    reference_rows: int
    current_rows: int
    html: str = field(repr=False, default="")

    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]


def _frame(rows: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """The drift columns as Evidently reads them: numbers as floats, categories as text (missing: None)."""
    out = pd.DataFrame(index=range(len(rows)))
    for name in columns:
        values = rows[name].reset_index(drop=True)
        if name in NUMERICAL:
            out[name] = pd.to_numeric(values, errors="coerce").astype(float)
        elif name in ICD9:
            out[name] = values.map(lambda v: diagnosis_group(None if v is None or v != v else str(v))).astype(object)
        else:
            out[name] = values.astype(object).where(values.notna(), NOT_RECORDED).map(str).astype(object)
    return out


METHOD_NAMES = {"jensenshannon": "Jensen-Shannon distance", "wasserstein": "Wasserstein distance (normed)"}


def _method_and_threshold(metric_name: str) -> tuple[str, float]:
    """'ValueDrift(column=age,method=Jensen-Shannon distance,threshold=0.1)' -> (method, threshold)."""
    inside = metric_name[metric_name.index("(") + 1: metric_name.rindex(")")]
    method = inside.split("method=", 1)[1].rsplit(",threshold=", 1)[0]
    threshold = float(inside.rsplit("threshold=", 1)[1])
    return METHOD_NAMES.get(method, method), threshold


def _is_p_value(method: str) -> bool:
    return "p_value" in method or "test" in method.lower() and "distance" not in method.lower()


def compare(reference: pd.DataFrame, current: pd.DataFrame, columns: tuple[str, ...] = DRIFT_COLUMNS,
            html: bool = True) -> DriftResult:
    """Evidently's data drift of ``current`` against ``reference`` over ``columns`` (columns constant in both are
    left out by Evidently's own rules)."""
    evidently()
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if reference.empty or len(current) < MIN_ROWS:
        raise ValueError(f"drift needs reference rows and at least {MIN_ROWS} current rows")
    definition = DataDefinition(numerical_columns=[c for c in columns if c in NUMERICAL],
                                categorical_columns=[c for c in columns if c in CATEGORICAL])
    preset = DataDriftPreset(columns=list(columns), num_method="wasserstein", cat_method="jensenshannon")
    snapshot = Report([preset]).run(
        Dataset.from_pandas(_frame(current, columns), data_definition=definition),
        Dataset.from_pandas(_frame(reference, columns), data_definition=definition))
    features = []
    counted = None
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            counted = int(metric["value"]["count"])
        if not config["type"].endswith("ValueDrift"):
            continue
        method, threshold = _method_and_threshold(metric["metric_name"])
        score = float(metric["value"])
        # distances drift above their threshold; p-values below it
        drifted = score < threshold if _is_p_value(method) else score >= threshold
        features.append(FeatureDrift(config["column"], method, score if math.isfinite(score) else float("nan"),
                                     threshold, drifted))
    features.sort(key=lambda f: (not f.drifted, f.feature))
    drifted = sum(f.drifted for f in features)
    if counted is not None and counted != drifted:  # our reading of each test must be Evidently's own
        raise RuntimeError(f"Evidently counts {counted} drifted features, its per-feature results {drifted}")
    return DriftResult(share=drifted / len(features) if features else 0.0, drifted=drifted, features=features,
                       reference_rows=len(reference), current_rows=len(current),
                       html=snapshot.get_html_str(as_iframe=False) if html else "")
