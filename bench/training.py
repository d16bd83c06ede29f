"""Model quality and training time on the real data, patient-grouped split.

Per candidate: validation ROC-AUC, PR-AUC, Brier, training seconds; then the best
candidate's (the champion's) test ROC-AUC. Baseline in the same run, same split: a
plain HistGradientBoosting on the raw columns (text columns as native categoricals).
Split: the platform's own (70/15/15 by patient, seeded), hospice/expired excluded.

    python bench/training.py [--candidates a,b,c]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
from readmit_contract import TARGET, clean, synthetic, validate
from readmit_contract.columns import FEATURE_COLUMNS, TEXT_COLUMNS
from readmit_contract.dataset import read_raw_csv
from readmit_data.candidates import CANDIDATES, build_pipeline
from readmit_data.loading import assign_splits
from readmit_data.training import choose_threshold, evaluate
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]


def data() -> tuple[pd.DataFrame, str]:
    path = Path(os.environ.get("READMIT_REAL_DATA", REPO.parent / "shared" / "data" / "diabetic_data.csv"))
    if path.exists():
        return read_raw_csv(path), "real file"
    return synthetic.generate(101_766, seed=0), "synthetic (real file absent)"


def raw_baseline(train: pd.DataFrame, test: pd.DataFrame) -> tuple[float, float]:
    """Plain HGB on the raw feature columns: text columns as native categoricals (codes when > 255 values)."""
    columns = list(FEATURE_COLUMNS)

    def encode(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[columns].copy()
        for name in columns:
            if name in TEXT_COLUMNS:
                values = out[name].astype("str").fillna("?")
                values = values.where(values.isin(categories[name]), "?")  # unseen in training: as missing
                coded = pd.Categorical(values, categories=categories[name])
                # HGB takes at most 255 native categories: wider columns (ICD-9 codes) as integer codes
                out[name] = coded if len(categories[name]) <= 255 else coded.codes
        return out

    categories = {n: sorted({*train[n].astype("str").fillna("?").unique(), "?"}) for n in columns if n in TEXT_COLUMNS}
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    started = time.perf_counter()
    model.fit(encode(train), train[TARGET])
    seconds = time.perf_counter() - started
    return float(roc_auc_score(test[TARGET], model.predict_proba(encode(test))[:, 1])), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default="logistic_regression,random_forest,hist_gradient_boosting")
    args = parser.parse_args()
    frame, label = data()
    rows = clean(validate(frame).valid).clean
    split = assign_splits(rows["patient_nbr"], seed=42)
    train, val, test = (rows[split == s] for s in ("train", "validation", "test"))
    print(f"data: {label}; in scope {len(rows):,}; train {len(train):,} / validation {len(val):,} / "
          f"test {len(test):,} (by patient); positives {rows[TARGET].mean():.3f}")

    baseline_auc, baseline_s = raw_baseline(train, test)
    print(f"baseline: plain HGB on raw columns: test ROC-AUC {baseline_auc:.4f} ({baseline_s:.1f} s)")
    print(f"{'candidate':24} {'val ROC-AUC':>11} {'val PR-AUC':>10} {'val Brier':>9} {'train s':>8}")
    fitted = {}
    for name in args.candidates.split(","):
        assert name in CANDIDATES, name
        pipeline = build_pipeline(name)
        started = time.perf_counter()
        pipeline.fit(train, train[TARGET].to_numpy())
        seconds = time.perf_counter() - started
        proba = pipeline.predict_proba(val)[:, 1]
        threshold = choose_threshold(val[TARGET].to_numpy(), proba)
        metrics = evaluate(val[TARGET].to_numpy(), proba, threshold)
        fitted[name] = (pipeline, metrics, threshold)
        print(f"{name:24} {metrics['roc_auc']:11.4f} {metrics['pr_auc']:10.4f} {metrics['brier']:9.4f} {seconds:8.1f}")
    champion = max(fitted, key=lambda n: fitted[n][1]["roc_auc"])
    pipeline, _, threshold = fitted[champion]
    test_metrics = evaluate(test[TARGET].to_numpy(), pipeline.predict_proba(test)[:, 1], threshold)
    print(f"champion {champion}: test ROC-AUC {test_metrics['roc_auc']:.4f}, PR-AUC {test_metrics['pr_auc']:.4f}, "
          f"Brier {test_metrics['brier']:.4f}, F1 {test_metrics['f1']:.3f} at threshold {threshold:.3f}")
    print(f"champion vs raw baseline (test ROC-AUC): {test_metrics['roc_auc'] / baseline_auc:.3f}x, "
          f"{test_metrics['roc_auc'] - baseline_auc:+.4f}")


if __name__ == "__main__":
    main()
