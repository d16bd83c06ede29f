"""Is a challenger better than the champion by more than the validation set's noise?

Both models are scored on the same validation rows, and the difference of their ROC-AUCs
(challenger - champion) is bootstrapped *over patients*: a bootstrap sample draws patients
(``patient_nbr``) with replacement and keeps all of each drawn patient's encounters, as often as the
patient was drawn. A patient's encounters are not independent (same person, same risks), so
resampling rows would understate the noise. The comparison is paired: every sample scores both
models on the very same rows, so what the two models share (the rows' difficulty) cancels out.

The challenger takes the alias only when the *lower bound* of a one-sided percentile interval of
the difference exceeds ``PROMOTION_MIN_DELTA``. The challenger is the best of the run's N candidates,
picked on this same validation set, so its lead is biased upwards by the pick itself (best-of-N
luck). We correct for that with Bonferroni: the interval's confidence is ``1 - alpha / N``
(alpha = ``1 - PROMOTION_CONFIDENCE``). If no candidate beats the champion, each one's bound
exceeds the margin with probability at most alpha / N, so the probability that the picked one
does - whichever is picked - is at most N * alpha / N = alpha. Bonferroni needs no assumption on
how the candidates' errors correlate (they do: same rows), at the price of being conservative when
the candidates are alike; with 3 candidates and 95 % the bound is the 1.67th percentile.

A tie (identical scores, or a difference inside the noise) keeps the champion.

The AUCs of all samples are computed at once from one sort per model (the Mann-Whitney rank form
with weights: a sample is a vector of integer weights over the patients, each row weighted by how
often its patient was drawn), in chunks of samples to bound memory: 0.9 s for 1,000 samples of the
real validation split's size (14,809 rows, 10,498 patients) on 2 shared, busy cores, 12x faster
than scikit-learn's ``roc_auc_score`` with sample weights in a loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_CHUNK_CELLS = 4_000_000
"""Samples x rows processed at once (a few float64 matrices of this size: tens of MB)."""

MIN_TAIL_SAMPLES = 10
"""Bootstrap samples expected beyond the bound: the number of samples is raised to ``MIN_TAIL_SAMPLES / tail``
when the configured one is too small for the tail (many candidates, high confidence)."""


@dataclass(frozen=True)
class Comparison:
    """The paired bootstrap of ROC-AUC(challenger) - ROC-AUC(champion) on the same validation rows."""

    challenger_auc: float
    champion_auc: float
    delta: float
    """Difference of the two AUCs on the validation rows themselves."""
    lower_bound: float
    """One-sided lower bound of the difference at ``confidence``."""
    confidence: float
    """Confidence of the bound, Bonferroni-corrected for the ``candidates`` of the run: 1 - alpha / N."""
    candidates: int
    samples: int
    patients: int
    rows: int
    min_delta: float

    @property
    def promoted(self) -> bool:
        """The challenger wins only when even the pessimistic end of the interval beats the margin."""
        return self.lower_bound > self.min_delta

    def tags(self) -> dict[str, str]:
        """The figures, as model-version / run tags."""
        return {
            "gate.challenger_roc_auc": f"{self.challenger_auc:.6f}",
            "gate.champion_roc_auc": f"{self.champion_auc:.6f}",
            "gate.delta": f"{self.delta:.6f}",
            "gate.lower_bound": f"{self.lower_bound:.6f}",
            "gate.confidence": f"{self.confidence:.6f}",
            "gate.candidates": str(self.candidates),
            "gate.bootstrap_samples": str(self.samples),
            "gate.patients": str(self.patients),
            "gate.rows": str(self.rows),
            "gate.min_delta": f"{self.min_delta:g}",
        }

    def describe(self) -> str:
        return (f"ROC-AUC {self.challenger_auc:.4f} vs {self.champion_auc:.4f}: delta {self.delta:+.4f}, "
                f"{self.confidence:.2%} lower bound {self.lower_bound:+.4f} (bootstrap of {self.patients} patients, "
                f"{self.rows} rows, {self.samples} samples, best of {self.candidates}; min delta {self.min_delta:g})")


def corrected_confidence(confidence: float, candidates: int) -> float:
    """Bonferroni: the one-sided confidence that keeps the family-wise error of N candidates at 1 - confidence."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    return 1.0 - (1.0 - confidence) / max(1, candidates)


def patient_index(patients: np.ndarray) -> tuple[np.ndarray, int]:
    """(the patient of each row as 0..n-1, n): the columns a bootstrap over patients draws."""
    _, patient_of_row = np.unique(np.asarray(patients), return_inverse=True)
    return patient_of_row, int(patient_of_row.max()) + 1 if len(patient_of_row) else 0


def patient_weights(patients: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Row weights of ``samples`` bootstrap samples that each draw the patients with replacement (samples x rows):
    a row weighs how often its patient was drawn."""
    patient_of_row, n = patient_index(patients)
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=samples).astype(float)
    return draws[:, patient_of_row]


class _RankedScores:
    """One model's scores, prepared once for the AUC of any number of weightings of the rows.

    The weighted Mann-Whitney statistic: each positive row earns the weight of the negatives scored below
    it plus half the weight of those tied with it. With the negatives sorted by score, these are two
    look-ups in the running sum of the negatives' weights (before the first tied negative, after the
    last), so an AUC costs one cumulative sum over the negatives and a few gathers over the positives.
    ``columns`` map rows to the columns of the weight matrices (rows themselves, or their patients)."""

    def __init__(self, y: np.ndarray, scores: np.ndarray, columns: np.ndarray) -> None:
        positive = np.asarray(y).astype(bool)
        scores = np.asarray(scores, dtype=float)
        negative_order = np.argsort(scores[~positive], kind="mergesort")
        negative_scores = scores[~positive][negative_order]
        self.negative_columns = columns[~positive][negative_order]
        self.positive_columns = columns[positive]
        self.below = np.searchsorted(negative_scores, scores[positive], side="left")
        self.up_to = np.searchsorted(negative_scores, scores[positive], side="right")

    def auc(self, weights: np.ndarray) -> np.ndarray:
        negative = weights[:, self.negative_columns]
        running = np.zeros((weights.shape[0], negative.shape[1] + 1))
        np.cumsum(negative, axis=1, out=running[:, 1:])
        positive = weights[:, self.positive_columns]
        wins = (positive * (running[:, self.below] + running[:, self.up_to])).sum(axis=1) / 2
        pairs = positive.sum(axis=1) * running[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, wins / pairs, np.nan)


def weighted_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``scores`` for labels ``y`` under each row of ``weights`` (samples x rows), ties counting
    one half. NaN for a weighting without both classes."""
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    return _RankedScores(y, scores, np.arange(weights.shape[1])).auc(weights)


def paired_bootstrap(
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    patients: np.ndarray,
    *,
    candidates: int = 1,
    confidence: float = 0.95,
    samples: int = 1000,
    min_delta: float = 0.0,
    seed: int = 0,
) -> Comparison:
    """Compare ``challenger`` and ``champion`` probabilities for labels ``y`` on the same rows, resampling
    ``patients`` (one id per row) with replacement; see the module's doc."""
    y = np.asarray(y)
    challenger, champion = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    if not (len(y) == len(challenger) == len(champion) == len(patients)):
        raise ValueError("labels, both models' scores and patient ids must have one value per row")
    level = corrected_confidence(confidence, candidates)
    tail = 1.0 - level
    samples = max(int(samples), math.ceil(MIN_TAIL_SAMPLES / tail))
    patient_of_row, n_patients = patient_index(patients)

    ones = np.ones((1, len(y)))
    challenger_auc = float(weighted_auc(y, challenger, ones)[0])
    champion_auc = float(weighted_auc(y, champion, ones)[0])

    # a sample's weights are per patient (how often drawn); each row reads its patient's column
    ranked_challenger = _RankedScores(y, challenger, patient_of_row)
    ranked_champion = _RankedScores(y, champion, patient_of_row)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(1, len(y)))
    deltas = np.empty(samples)
    uniform = np.full(n_patients, 1.0 / max(1, n_patients))
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        draws = rng.multinomial(n_patients, uniform, size=size).astype(float)
        deltas[start:start + size] = ranked_challenger.auc(draws) - ranked_champion.auc(draws)
    valid = deltas[~np.isnan(deltas)]
    lower = float(np.quantile(valid, tail)) if len(valid) else float("-inf")
    return Comparison(
        challenger_auc=challenger_auc,
        champion_auc=champion_auc,
        delta=challenger_auc - champion_auc,
        lower_bound=lower,
        confidence=level,
        candidates=max(1, candidates),
        samples=len(valid),
        patients=n_patients,
        rows=len(y),
        min_delta=min_delta,
    )


def patient_bootstrap_interval(y: np.ndarray, scores: np.ndarray, patients: np.ndarray, *,
                               confidence: float = 0.95, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Two-sided ``confidence`` interval of the ROC-AUC of ``scores``, resampling patients (not encounters)
    with replacement: a patient's encounters are correlated, so resampling rows would make it too narrow."""
    patient_of_row, n_patients = patient_index(patients)
    ranked = _RankedScores(np.asarray(y), np.asarray(scores, dtype=float), patient_of_row)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(1, len(y)))
    uniform = np.full(n_patients, 1.0 / max(1, n_patients))
    aucs = np.empty(samples)
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        aucs[start:start + size] = ranked.auc(rng.multinomial(n_patients, uniform, size=size).astype(float))
    aucs = aucs[~np.isnan(aucs)]
    tail = (1.0 - confidence) / 2
    return float(np.quantile(aucs, tail)), float(np.quantile(aucs, 1.0 - tail))


# -- what the model card adds to the gate: calibration and subgroups ----------------------------------

@dataclass(frozen=True)
class GroupCheck:
    """A subgroup's ROC-AUC, challenger against champion on the same rows."""

    attribute: str
    group: str
    rows: int
    challenger_auc: float
    champion_auc: float
    drop_lower_bound: float
    """One-sided lower bound of champion - challenger (Bonferroni over the groups checked)."""
    max_drop: float

    @property
    def worse(self) -> bool:
        """The challenger is worse for this group by more than ``max_drop``, beyond the noise."""
        return self.drop_lower_bound > self.max_drop

    @property
    def name(self) -> str:
        return f"{self.attribute}={self.group}"


def subgroup_checks(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, patients: np.ndarray,
                    groups: list[tuple[str, str, np.ndarray]], *, confidence: float = 0.95, samples: int = 1000,
                    max_drop: float = 0.02, seed: int = 0) -> list[GroupCheck]:
    """For each (attribute, group, row mask) whose rows hold both outcomes: the paired patient bootstrap of the
    champion's lead over the challenger within the group, its bound corrected for the number of groups."""
    y, challenger, champion, patients = map(np.asarray, (y, challenger, champion, patients))
    usable = [(a, g, m) for a, g, m in groups if len(np.unique(y[m])) == 2]
    out = []
    for attribute, group, mask in usable:
        lead = paired_bootstrap(y[mask], champion[mask], challenger[mask], patients[mask], candidates=len(usable),
                                confidence=confidence, samples=samples, min_delta=max_drop, seed=seed)
        # the bootstrap was asked for champion - challenger: its "challenger" is our champion
        out.append(GroupCheck(attribute, group, int(mask.sum()), challenger_auc=lead.champion_auc,
                              champion_auc=lead.challenger_auc, drop_lower_bound=lead.lower_bound, max_drop=max_drop))
    return out


@dataclass(frozen=True)
class CalibrationCheck:
    """Calibration error |slope - 1|, challenger against champion on the same rows."""

    challenger_slope: float
    champion_slope: float
    worsening_lower_bound: float
    """One-sided lower bound of |challenger slope - 1| - |champion slope - 1| (patients resampled)."""
    max_worsening: float

    @property
    def worse(self) -> bool:
        return self.worsening_lower_bound > self.max_worsening


MAX_SLOPE = 100.0
"""A fitted slope beyond this is no calibration slope (nearly constant scores): NaN."""


def _slopes(y: np.ndarray, scores: np.ndarray, weights: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Calibration slope of ``scores`` under each row of ``weights`` (samples x rows): the weighted maximum-
    likelihood logistic fit of ``y`` on the logit of ``scores``, by Newton's method for every sample at once.
    NaN for a sample without both outcomes, for scores that do not vary (a constant model has no slope), and
    for a fit that does not converge. 200 samples of 15,000 rows: about a second; scikit-learn's
    ``LogisticRegression`` with ``sample_weight`` in a loop took 85 s."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(scores, dtype=float), 1e-6, 1 - 1e-6)
    x = np.log(p / (1 - p))
    w = np.asarray(weights, dtype=float)
    if len(x) == 0 or np.ptp(x) < 1e-9:
        return np.full(len(w), np.nan)
    usable = ((w * y).sum(axis=1) > 0) & ((w * (1 - y)).sum(axis=1) > 0)

    def loglik(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        eta = a[:, None] + b[:, None] * x
        return (w * (y * eta - np.logaddexp(0, eta))).sum(axis=1)

    slope, intercept = np.ones(len(w)), np.zeros(len(w))
    current = loglik(intercept, slope)
    converged = np.zeros(len(w), dtype=bool)
    for _ in range(iterations):
        mu = 1 / (1 + np.exp(-(intercept[:, None] + slope[:, None] * x)))
        r = w * (y - mu)
        v = w * mu * (1 - mu)
        g0, g1 = r.sum(axis=1), r @ x
        h00, h01, h11 = v.sum(axis=1), v @ x, v @ (x * x)
        det = h00 * h11 - h01 * h01
        solvable = usable & np.isfinite(det) & (det > 1e-12 * np.maximum(h00 * h11, 1e-300))
        usable &= solvable  # a singular Hessian: this sample's slope is not identified
        safe = np.where(solvable, det, 1.0)
        step0 = np.where(solvable, (h11 * g0 - h01 * g1) / safe, 0.0)
        step1 = np.where(solvable, (h00 * g1 - h01 * g0) / safe, 0.0)
        scale = np.ones(len(w))
        for _ in range(30):  # halve the step where it would lower the likelihood (concave: it converges)
            trial = loglik(intercept + scale * step0, slope + scale * step1)
            worse = ~(trial >= current - 1e-12)  # NaN counts as worse
            if not (worse & usable).any():
                break
            scale = np.where(worse, scale / 2, scale)
        intercept, slope = intercept + scale * step0, slope + scale * step1
        current = loglik(intercept, slope)
        moved = np.maximum(np.abs(scale * step0), np.abs(scale * step1))
        converged = moved < 1e-8
        if (converged | ~usable).all():
            break
    good = usable & converged & np.isfinite(slope) & (np.abs(slope) < MAX_SLOPE)
    return np.where(good, slope, np.nan)


def calibration_check(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, patients: np.ndarray, *,
                      confidence: float = 0.95, samples: int = 200, max_worsening: float = 0.1,
                      seed: int = 0) -> CalibrationCheck:
    """Whether the challenger's calibration slope is further from 1 than the champion's by more than
    ``max_worsening``, beyond the noise (paired bootstrap over patients)."""
    y = np.asarray(y).astype(int)
    ones = np.ones((1, len(y)))
    challenger_slope = float(_slopes(y, challenger, ones)[0])
    champion_slope = float(_slopes(y, champion, ones)[0])
    if not (np.isfinite(challenger_slope) and np.isfinite(champion_slope)):
        # a constant model has no slope: nothing to compare
        return CalibrationCheck(challenger_slope, champion_slope, float("-inf"), max_worsening)
    weights = patient_weights(patients, samples, seed)
    worsening = np.abs(_slopes(y, challenger, weights) - 1) - np.abs(_slopes(y, champion, weights) - 1)
    worsening = worsening[np.isfinite(worsening)]
    lower = float(np.quantile(worsening, 1 - confidence)) if len(worsening) else float("-inf")
    return CalibrationCheck(challenger_slope, champion_slope, lower, max_worsening)
