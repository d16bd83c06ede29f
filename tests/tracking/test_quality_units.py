"""Model-quality tools of training: the calibration line, patient-bootstrap intervals, the bounded search
and history dropout (no server)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from readmit_contract import TARGET, clean, synthetic, validate
from readmit_contract.history import HISTORY_NAMES, history_table
from readmit_data.candidates import build_pipeline
from readmit_data.gate import patient_bootstrap_interval
from readmit_data.search import SPACES, apply, search
from readmit_data.training import calibration_line, with_history_dropout
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import roc_auc_score


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    frame = clean(validate(synthetic.generate(3000, seed=11)).valid).clean.reset_index(drop=True)
    return frame.join(history_table(frame)[list(HISTORY_NAMES)])


def test_calibration_line_of_calibrated_and_over_confident_scores():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.6, 200_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    slope, intercept = calibration_line(y, p)
    assert slope == pytest.approx(1.0, abs=0.03) and intercept == pytest.approx(0.0, abs=0.05)
    logit = np.log(p / (1 - p))
    extreme = 1 / (1 + np.exp(-2 * logit))  # logits doubled: too confident, slope 1/2
    assert calibration_line(y, extreme)[0] == pytest.approx(0.5, abs=0.02)


def test_patient_bootstrap_interval_is_wider_than_resampling_rows():
    """Patients with five identical encounters: resampling patients sees 1/5 of the information resampling
    rows pretends to, and the interval shows it; both contain the AUC."""
    rng = np.random.default_rng(1)
    y1 = rng.integers(0, 2, 400)
    s1 = y1 * 0.3 + rng.normal(size=400)
    y, scores, patients = np.repeat(y1, 5), np.repeat(s1, 5), np.repeat(np.arange(400), 5)
    auc = roc_auc_score(y, scores)
    low, high = patient_bootstrap_interval(y, scores, patients, samples=600)
    row_low, row_high = patient_bootstrap_interval(y, scores, np.arange(len(y)), samples=600)
    assert low < auc < high and row_low < auc < row_high
    assert (high - low) > 1.8 * (row_high - row_low)


def test_history_dropout_blanks_a_seeded_share_of_rows_only(rows):
    out = with_history_dropout(rows, 0.25, seed=3)
    blank = out[list(HISTORY_NAMES)].isna().all(axis=1)
    assert 0.2 < blank.mean() < 0.3
    assert not rows[list(HISTORY_NAMES)].isna().any().any()  # the input is untouched
    pd.testing.assert_frame_equal(out.loc[~blank], rows.loc[~blank])
    assert with_history_dropout(rows, 0.25, seed=3)[list(HISTORY_NAMES)].isna().all(axis=1).equals(blank)
    assert with_history_dropout(rows, 0.0, seed=3) is rows


@pytest.mark.parametrize("candidate", sorted(SPACES))
def test_search_keeps_to_its_space_and_never_returns_worse_than_the_fixed_parameters(rows, candidate):
    pipeline = build_pipeline(candidate)
    found = search(candidate, pipeline, rows, rows[TARGET].to_numpy(), seconds=600, max_trials=3)
    assert found is not None and found.trials == 3
    assert 0.5 < found.default_cv_roc_auc < 1 and len(found.history) == 3
    space = SPACES[candidate]
    for trial in found.history:  # every trial drew its parameters inside the declared space
        import optuna

        assert space(optuna.trial.FixedTrial({k: v for k, v in trial.items() if k not in ("number", "value")}))
    if found.params:
        assert found.cv_roc_auc == max(t["value"] for t in found.history)
        apply(pipeline, found.params)
        model = pipeline.named_steps["model"]
        bare = model.estimator if isinstance(model, CalibratedClassifierCV) else model
        assert {k: bare.get_params()[k] for k in found.params} == found.params
    else:  # no trial beat the fixed parameters: they are kept
        assert found.cv_roc_auc == found.default_cv_roc_auc
    assert search("logistic_regression", build_pipeline("logistic_regression"), rows, rows[TARGET].to_numpy(),
                  seconds=5) is None
