"""Treelite evaluates the served trees (interpreted by GTIL, compiled by TL2cgen) with scikit-learn's probabilities."""

import numpy as np
import pytest
from readmit_contract import TARGET, clean, synthetic, validate
from readmit_data.candidates import build_pipeline, fit_pipeline
from readmit_serving.api import trees
from readmit_serving.api.model import LoadedModel, compile_trees, interpreted_if_equal, smoke_test
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline


@pytest.fixture(scope="module")
def rows():
    return clean(validate(synthetic.generate(4000, seed=2)).valid).clean


def _fit(rows, estimator):
    pipeline = build_pipeline("hist_gradient_boosting")
    pipeline.set_params(model=estimator)
    return fit_pipeline(pipeline, rows, rows[TARGET].to_numpy())


def _small_forest():
    return RandomForestClassifier(n_estimators=12, min_samples_leaf=40, max_depth=8, random_state=0)


def _small_boosting():
    return HistGradientBoostingClassifier(max_iter=40, random_state=0)


@pytest.fixture(scope="module")
def pipelines(rows):
    """The estimators serving may get: boosted trees, a forest, each calibrated by patient folds as training does."""
    calibrated = {"cv": GroupKFold(n_splits=3, shuffle=True, random_state=0), "ensemble": False}
    return {
        "boosting": _fit(rows, _small_boosting()),
        "forest": _fit(rows, _small_forest()),
        "calibrated_forest": _fit(rows, CalibratedClassifierCV(_small_forest(), method="sigmoid", **calibrated)),
        "calibrated_boosting": _fit(rows, CalibratedClassifierCV(_small_boosting(), method="isotonic", **calibrated)),
    }


def _records(rows, n):
    return rows.drop(columns=[TARGET]).head(n).to_dict("records")


@pytest.mark.parametrize("kind", ["boosting", "forest", "calibrated_forest", "calibrated_boosting"])
def test_interpreted_and_compiled_give_scikit_learns_probabilities(pipelines, rows, kind):
    pipeline = pipelines[kind]
    imported = trees.import_trees(pipeline[-1])
    assert imported is not None and imported.nodes > 0
    records = _records(rows, 300)
    expected = pipeline.predict_proba(records)[:, 1]
    features = pipeline[:-1].transform(records)
    for predictor in (trees.interpreted(imported), trees.compiled(imported)):
        np.testing.assert_allclose(predictor.positive(features), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(predictor.positive(features[:1]), expected[:1], rtol=0, atol=1e-12)
        assert trees.agrees(pipeline, predictor)


def test_missing_values_take_the_fitted_branch():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6))
    X[rng.random(X.shape) < 0.1] = np.nan  # exercises missing_go_to_left
    y = ((np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) + rng.normal(size=3000)) > 0.8).astype(int)
    model = HistGradientBoostingClassifier(max_iter=80, random_state=0).fit(X, y)
    test = rng.normal(size=(500, 6))
    test[rng.random(test.shape) < 0.1] = np.nan
    imported = trees.import_trees(model)
    for predictor in (trees.interpreted(imported), trees.compiled(imported)):
        np.testing.assert_allclose(predictor.positive(test), model.predict_proba(test)[:, 1], rtol=0, atol=1e-12)


def test_what_treelite_does_not_take_stays_with_scikit_learn(rows):
    X = np.random.default_rng(1).normal(size=(300, 3))
    assert trees.import_trees(HistGradientBoostingClassifier(max_iter=5).fit(X, np.arange(300) % 3)) is None
    logistic = build_pipeline("logistic_regression").fit(rows, rows[TARGET])
    assert trees.import_trees(logistic[-1]) is None
    assert interpreted_if_equal(logistic) is None
    model = LoadedModel(logistic, "m", "1", "champion", "run", 0.2, 0.1)
    assert model.predictor == "scikit-learn"
    records = _records(rows, 20)
    np.testing.assert_allclose(model.predict(records), logistic.predict_proba(records)[:, 1], atol=1e-12)


def test_the_served_model_is_interpreted_then_compiled_when_proven_equal(pipelines, rows):
    pipeline = pipelines["boosting"]
    interpreted = interpreted_if_equal(pipeline)
    assert interpreted is not None
    model = LoadedModel(pipeline, "m", "1", "champion", "run", 0.2, 0.1, trees=interpreted)
    assert model.predictor == "interpreted"
    records = _records(rows, 100)
    expected = pipeline.predict_proba(records)[:, 1]
    np.testing.assert_allclose([model.predict([r])[0] for r in records[:20]], expected[:20], rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.predict(records), expected, rtol=0, atol=1e-9)

    faster = compile_trees(model, "gcc", max_nodes=10**6)
    assert faster is not None and faster.predictor == "compiled" and faster.version == model.version
    smoke_test(faster)
    np.testing.assert_allclose(faster.predict(records), expected, rtol=0, atol=1e-9)
    # not compiled: too many nodes, no compiler, already compiled, not a tree model
    assert compile_trees(model, "gcc", max_nodes=interpreted.nodes - 1) is None
    assert compile_trees(model, "no-such-compiler-readmit", max_nodes=10**6) is None
    assert compile_trees(faster, "gcc", max_nodes=10**6) is None
    assert compile_trees(LoadedModel(pipeline, "m", "1", "champion", "run", 0.2, 0.1), "gcc", 10**6) is None


def test_a_disagreeing_treelite_model_is_not_used(pipelines, monkeypatch):
    pipeline = pipelines["forest"]
    real = trees.interpreted

    def off_by_a_little(imported):
        predictor = real(imported)
        raw = predictor._raw
        predictor._raw = lambda X: raw(X) + 1e-6
        return predictor

    monkeypatch.setattr("readmit_serving.api.model.interpreted", off_by_a_little)
    assert interpreted_if_equal(pipeline) is None


def test_the_transform_step_is_the_contracts_records_path(pipelines, rows):
    model = LoadedModel(pipelines["boosting"], "m", "1", "champion", "run", 0.2, 0.1)
    records = _records(rows, 50)
    assert np.array_equal(model.transform(records), pipelines["boosting"][:-1].transform(records), equal_nan=True)
    assert isinstance(pipelines["boosting"], Pipeline)


def test_a_forest_is_interpreted_at_every_call_size(pipelines, rows):
    """Boosted trees above 64 encounters go to scikit-learn until compiled; a forest's calls all stay with Treelite
    (its interpreter beats scikit-learn's per-tree walk at a batch slice too) and give the same probabilities."""
    pipeline = pipelines["calibrated_forest"]
    interpreted = interpreted_if_equal(pipeline)
    assert interpreted is not None and interpreted.imported.forest
    assert not interpreted_if_equal(pipelines["boosting"]).imported.forest
    model = LoadedModel(pipeline, "m", "1", "champion", "run", 0.2, 0.1, trees=interpreted)
    calls = []
    positive = interpreted.positive
    interpreted.positive = lambda X: calls.append(len(X)) or positive(X)
    records = _records(rows, 300)
    np.testing.assert_allclose(model.predict(records), pipeline.predict_proba(records)[:, 1], rtol=0, atol=1e-9)
    assert calls == [300]
