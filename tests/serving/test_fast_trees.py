"""The stacked-tree evaluation reproduces scikit-learn's HistGradientBoosting probabilities."""

import numpy as np
import pytest
from readmit_contract import TARGET, clean, synthetic, validate
from readmit_data.candidates import build_pipeline
from readmit_serving.api.fast_trees import StackedTrees
from readmit_serving.api.model import LoadedModel, stack_if_equal
from sklearn.ensemble import HistGradientBoostingClassifier


def test_equal_to_sklearn_with_missing_values():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6))
    X[rng.random(X.shape) < 0.1] = np.nan  # exercises missing_go_to_left
    y = ((np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) + rng.normal(size=3000)) > 0.8).astype(int)
    model = HistGradientBoostingClassifier(max_iter=80, random_state=0).fit(X, y)
    test = rng.normal(size=(500, 6))
    test[rng.random(test.shape) < 0.1] = np.nan
    np.testing.assert_allclose(StackedTrees(model).predict_proba(test), model.predict_proba(test), atol=1e-12)


def test_refuses_what_it_cannot_stack():
    X = np.random.default_rng(1).normal(size=(300, 3))
    y = np.arange(300) % 3
    with pytest.raises(ValueError):
        StackedTrees(HistGradientBoostingClassifier(max_iter=5).fit(X, y))  # multiclass


def test_the_served_model_uses_it_only_when_proven_equal():
    rows = clean(validate(synthetic.generate(4000, seed=2)).valid).clean
    hgb = build_pipeline("hist_gradient_boosting").fit(rows, rows[TARGET])
    stacked = stack_if_equal(hgb)
    assert stacked is not None
    assert stack_if_equal(build_pipeline("logistic_regression").fit(rows, rows[TARGET])) is None
    model = LoadedModel(hgb, "m", "1", "champion", "run", 0.2, 0.1, stacked=stacked)
    records = rows.drop(columns=[TARGET]).head(40).to_dict("records")
    np.testing.assert_allclose([model.predict([r])[0] for r in records], hgb.predict_proba(records)[:, 1], atol=1e-9)
    np.testing.assert_allclose(model.predict(records), hgb.predict_proba(records)[:, 1], atol=1e-9)
