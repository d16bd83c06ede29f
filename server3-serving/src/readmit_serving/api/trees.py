"""The served estimator's trees evaluated by Treelite, not by scikit-learn's Python loop over trees.

scikit-learn predicts tree by tree: 300 boosted trees cost ~2 ms per call even for one encounter, a 200-tree
forest more. Treelite (the DMLC project's model compiler) imports the fitted trees as they are, and:

- its GTIL predictor evaluates them in C++ at once (``interpreted``: tens of microseconds per encounter, no
  compiler needed);
- TL2cgen, its code generator, turns them into C that the machine's C compiler builds into a library
  (``compiled``: a few microseconds per encounter). Building takes seconds for boosted trees and minutes for a
  deep forest, so only trees of at most ``max_nodes`` nodes are compiled, in the background once the version
  serves (``watcher``).

Either replaces scikit-learn only after reproducing its probabilities on sample encounters (``agrees``: to
1e-9; Treelite's sums are exact to ~1e-15). Supported: a binary HistGradientBoostingClassifier without native
categorical splits, a binary RandomForestClassifier, and either inside a CalibratedClassifierCV fitted with
``ensemble=False`` (one estimator; its fitted calibrator is applied as scikit-learn applies it). Anything else
(logistic regression, the prior baseline, a model that disagrees) is served by scikit-learn.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

log = logging.getLogger(__name__)

COMPILED, INTERPRETED, SCIKIT_LEARN = "compiled", "interpreted", "scikit-learn"
"""How the served model's trees are evaluated (``/model``'s ``predictor``)."""
AGREEMENT_ROWS = 500
AGREEMENT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ImportedTrees:
    """A fitted estimator's trees in Treelite, and how to turn their output into scikit-learn's probability."""

    model: Any
    """The ``treelite.Model``."""
    margin: bool
    """Whether the calibrator reads the raw log-odds (a calibrated HistGradientBoosting) instead of a probability."""
    calibrator: Any
    """The fitted calibrator of a ``CalibratedClassifierCV`` (None: the trees' probability is the answer)."""
    nodes: int
    forest: bool
    """A random forest (deep trees): Treelite's interpreter beats scikit-learn at every call size, where for boosted
    trees scikit-learn's binned walk wins above a few dozen rows."""


def import_trees(estimator: Any) -> ImportedTrees | None:
    """The estimator's trees imported into Treelite, or None when it is not a supported tree model."""
    calibrator, margin = None, False
    if isinstance(estimator, CalibratedClassifierCV):
        fitted = getattr(estimator, "calibrated_classifiers_", [])
        if len(fitted) != 1 or len(fitted[0].calibrators) != 1:
            return None
        calibrator = fitted[0].calibrators[0]
        estimator = fitted[0].estimator
        margin = hasattr(estimator, "decision_function")  # what scikit-learn's calibration reads first
    if isinstance(estimator, HistGradientBoostingClassifier):
        if estimator.n_trees_per_iteration_ != 1 or any(
                tree.nodes["is_categorical"].any() for iteration in estimator._predictors for tree in iteration):
            return None
        nodes = sum(len(tree.nodes) for iteration in estimator._predictors for tree in iteration)
    elif isinstance(estimator, RandomForestClassifier):
        if getattr(estimator, "n_classes_", 0) != 2 or getattr(estimator, "n_outputs_", 0) != 1:
            return None
        nodes = sum(tree.tree_.node_count for tree in estimator.estimators_)
    else:
        return None
    import treelite.sklearn

    try:
        model = treelite.sklearn.import_model(estimator)
    except Exception:  # noqa: BLE001 - a model Treelite cannot take is served by scikit-learn
        log.warning("Treelite could not import the %s: scikit-learn evaluates it", type(estimator).__name__,
                    exc_info=True)
        return None
    return ImportedTrees(model, margin, calibrator, nodes, isinstance(estimator, RandomForestClassifier))


class TreePredictor:
    """The positive-class probability of feature rows (the output of the pipeline's transform)."""

    def __init__(self, kind: str, imported: ImportedTrees, raw: Callable[[np.ndarray], np.ndarray],
                 keep: Any = None) -> None:
        self.kind, self.nodes, self.imported = kind, imported.nodes, imported
        self._raw, self._calibrator, self._keep = raw, imported.calibrator, keep

    def positive(self, X: np.ndarray) -> np.ndarray:
        out = self._raw(np.ascontiguousarray(X, dtype=np.float64))
        out = out.reshape(len(X), -1)[:, -1]
        if self._calibrator is not None:
            out = self._calibrator.predict(out)
        return out


def interpreted(imported: ImportedTrees) -> TreePredictor:
    """Treelite's GTIL on the calling thread (``nthread=1``: serving's parallelism is micro-batching)."""
    from treelite import gtil

    model, margin = imported.model, imported.margin
    return TreePredictor(INTERPRETED, imported, lambda X: gtil.predict(model, X, nthread=1, pred_margin=margin))


class _Folder:
    """The compiled library's folder, removed when its predictor is collected (a loaded library stays mapped)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="readmit-trees-"))

    def __del__(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def compiled(imported: ImportedTrees, toolchain: str = "gcc") -> TreePredictor:
    """The trees compiled by TL2cgen with ``toolchain`` (raises when there is no compiler or it fails)."""
    import tl2cgen

    folder = _Folder()
    library = folder.path / "trees.so"
    tl2cgen.export_lib(imported.model, toolchain=toolchain, libpath=library,
                       params={"parallel_comp": 2, "quantize": 1}, nthread=1)
    predictor = tl2cgen.Predictor(library, nthread=1)
    margin = imported.margin
    one_at_a_time = threading.Lock()  # TL2cgen: "this function may be called by only one thread at a time"

    def raw(X: np.ndarray) -> np.ndarray:
        matrix = tl2cgen.DMatrix(X)
        with one_at_a_time:
            return predictor.predict(matrix, pred_margin=margin)

    return TreePredictor(COMPILED, imported, raw, keep=(folder, predictor))


def can_compile(toolchain: str = "gcc") -> bool:
    """Whether the C compiler TL2cgen calls is on PATH."""
    return shutil.which(toolchain) is not None


def agrees(pipeline: Any, predictor: TreePredictor, rows: int = AGREEMENT_ROWS) -> bool:
    """Whether ``predictor`` gives the pipeline's probabilities on synthetic encounters, to 1e-9."""
    from readmit_contract import synthetic, validate

    sample = validate(synthetic.generate(rows, seed=1)).valid
    expected = pipeline.predict_proba(sample)[:, 1]
    actual = predictor.positive(pipeline[:-1].transform(sample))
    return actual.shape == expected.shape and bool(
        np.allclose(actual, expected, rtol=0, atol=AGREEMENT_TOLERANCE))
