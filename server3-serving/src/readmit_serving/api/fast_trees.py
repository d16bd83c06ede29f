"""All trees of a fitted binary HistGradientBoostingClassifier walked at once, with numpy.

scikit-learn predicts tree by tree in a Python loop (300 trees: ~2 ms per call, even for one
row, holding the GIL most of the time). Here the trees' nodes are stacked into flat arrays
once, and every row descends every tree together, one depth level per step, so a call costs a
few dozen numpy operations. Same model, same fitted thresholds: the API uses it only after
checking, at load time, that it reproduces scikit-learn's probabilities on sample rows.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier


class StackedTrees:
    def __init__(self, model: HistGradientBoostingClassifier) -> None:
        predictors = [tree for iteration in model._predictors for tree in iteration]
        if model.n_trees_per_iteration_ != 1 or any(tree.nodes["is_categorical"].any() for tree in predictors):
            raise ValueError("only binary models without native categorical splits can be stacked")
        sizes = [len(tree.nodes) for tree in predictors]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        nodes = np.concatenate([tree.nodes for tree in predictors])
        shift = np.repeat(offsets, sizes)
        self.roots = offsets.astype(np.intp)
        self.feature = nodes["feature_idx"].astype(np.intp)
        self.threshold = nodes["num_threshold"].astype(np.float64)
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        self.is_leaf = nodes["is_leaf"].astype(bool)
        # leaves point to themselves, so every row can take the same number of steps
        self.left = np.where(self.is_leaf, np.arange(len(nodes)), nodes["left"] + shift).astype(np.intp)
        self.right = np.where(self.is_leaf, np.arange(len(nodes)), nodes["right"] + shift).astype(np.intp)
        self.value = nodes["value"].astype(np.float64)
        self.depth = int(nodes["depth"].max())
        self.baseline = float(np.ravel(model._baseline_prediction)[0])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        rows = np.arange(len(X))[:, None]
        node = np.broadcast_to(self.roots, (len(X), len(self.roots))).copy()
        for _ in range(self.depth):
            x = X[rows, self.feature[node]]
            go_left = np.where(np.isnan(x), self.missing_left[node], x <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])
        p = expit(self.baseline + self.value[node].sum(axis=1))
        return np.column_stack([1 - p, p])
