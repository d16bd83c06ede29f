"""Model quality, training time and serving cost per candidate, on the real data, patient-grouped split.

Per candidate: validation and test ROC-AUC with 95 % intervals that resample patients, test ROC-AUC
when serving cannot look patients up (history missing), Brier score, calibration slope, training
seconds and serving microseconds per encounter (one encounter per call; and per encounter of a
1,000-row batch). Baseline in the same run, same split: a plain HistGradientBoosting on the raw
columns (text as native categoricals), no history. The champion is the best on validation.

Split: the platform's own (70/15/15 by patient, seeded), hospice/expired excluded; history from the
same patient's earlier encounters (``readmit_contract.history``), training rows blanked at the
platform's ``HISTORY_DROPOUT``. ``--search-seconds N`` runs the platform's Optuna search for the tree
candidates first (grouped folds of the train rows). ``lightgbm`` is measured when the package is
installed (a comparison, not a platform candidate).

    python bench/training.py [--candidates a,b,c] [--search-seconds N] [--no-history]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from readmit_contract import TARGET, EncounterFeatures, clean, synthetic, validate
from readmit_contract.columns import FEATURE_COLUMNS, TEXT_COLUMNS
from readmit_contract.dataset import read_raw_csv
from readmit_contract.history import HISTORY_NAMES, history_table
from readmit_data.candidates import CANDIDATES, build_pipeline, fit_pipeline
from readmit_data.gate import patient_bootstrap_interval
from readmit_data.loading import assign_splits
from readmit_data.search import apply, search
from readmit_data.settings import DataSettings
from readmit_data.training import calibration_line, with_history_dropout
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]


def data() -> tuple[pd.DataFrame, str]:
    path = Path(os.environ.get("READMIT_REAL_DATA", REPO.parent / "shared" / "data" / "diabetic_data.csv"))
    if path.exists():
        return read_raw_csv(path), "real file"
    return synthetic.generate(101_766, seed=0), "synthetic (real file absent)"


def raw_baseline(train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, float]:
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
    return model.predict_proba(encode(test))[:, 1], seconds


def lightgbm_pipeline() -> Pipeline | None:
    try:
        import lightgbm
    except ImportError:
        return None
    model = lightgbm.LGBMClassifier(n_estimators=800, learning_rate=0.02, num_leaves=31, min_child_samples=100,
                                    subsample=0.8, subsample_freq=1, colsample_bytree=0.5, reg_lambda=5.0,
                                    n_jobs=2, verbose=-1, random_state=0)
    return Pipeline([("features", EncounterFeatures()), ("model", model)])


def serving_microseconds(pipeline: Pipeline, frame: pd.DataFrame) -> tuple[float, float]:
    """Microseconds per encounter: one record per call (200 calls), and in a batch of 1,000 records."""
    from readmit_serving.api.model import single_threaded

    single_threaded(pipeline)  # as serving runs it: parallelism comes from micro-batching, not joblib
    records = frame.head(1000).astype(object).where(frame.head(1000).notna(), None).to_dict("records")
    pipeline.predict_proba(records[:1])
    started = time.perf_counter()
    for record in records[:200]:
        pipeline.predict_proba([record])
    single = (time.perf_counter() - started) / 200 * 1e6
    started = time.perf_counter()
    pipeline.predict_proba(records)
    batch = (time.perf_counter() - started) / len(records) * 1e6
    return single, batch


def interval(y: np.ndarray, proba: np.ndarray, patients: np.ndarray) -> str:
    low, high = patient_bootstrap_interval(y, proba, patients, samples=1000)
    return f"{roc_auc_score(y, proba):.4f} [{low:.4f}, {high:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default="logistic_regression,random_forest,hist_gradient_boosting")
    parser.add_argument("--search-seconds", type=float, default=0.0)
    parser.add_argument("--no-history", action="store_true", help="the features of the raw encounter only")
    args = parser.parse_args()
    settings = DataSettings()
    frame, label = data()
    rows = clean(validate(frame).valid).clean.reset_index(drop=True)
    if not args.no_history:
        rows = rows.join(history_table(rows)[list(HISTORY_NAMES)])
    split = assign_splits(rows["patient_nbr"], seed=42)
    train, val, test = (rows[split == s] for s in ("train", "validation", "test"))
    y_val, y_test = val[TARGET].to_numpy(), test[TARGET].to_numpy()
    print(f"data: {label}; in scope {len(rows):,}; train {len(train):,} / validation {len(val):,} / "
          f"test {len(test):,} (by patient); positives {rows[TARGET].mean():.3f}; "
          f"history {'off' if args.no_history else f'on (dropout {settings.history_dropout:.2f})'}")

    baseline, baseline_s = raw_baseline(train, test)
    print(f"baseline: plain HGB on raw columns: test ROC-AUC {interval(y_test, baseline, test['patient_nbr'])} "
          f"({baseline_s:.1f} s)\n")
    header = (f"{'candidate':24} {'val ROC-AUC [95% CI]':>26} {'test ROC-AUC [95% CI]':>26} {'test no hist':>12} "
              f"{'Brier':>7} {'slope':>6} {'train s':>8} {'us/row 1':>9} {'us/row 1k':>9}")
    print(header)
    fit_rows = train if args.no_history else with_history_dropout(train, settings.history_dropout, 0)
    pipelines: dict[str, Pipeline] = {name: build_pipeline(name) for name in args.candidates.split(",")
                                      if name in CANDIDATES}
    extra = lightgbm_pipeline()
    if extra is not None:
        pipelines["lightgbm (comparison)"] = extra
    results = {}
    for name, pipeline in pipelines.items():
        started = time.perf_counter()
        note = ""
        if args.search_seconds > 0:
            found = search(name, pipeline, fit_rows, fit_rows[TARGET].to_numpy(), args.search_seconds)
            if found is not None:
                if found.params:
                    apply(pipeline, found.params)
                note = (f"  search: {found.trials} trials, grouped-CV {found.default_cv_roc_auc:.4f} -> "
                        f"{found.cv_roc_auc:.4f}, {found.params or 'fixed parameters kept'}")
        fit_pipeline(pipeline, fit_rows, fit_rows[TARGET].to_numpy())
        seconds = time.perf_counter() - started
        p_val, p_test = pipeline.predict_proba(val)[:, 1], pipeline.predict_proba(test)[:, 1]
        blank = test.assign(**dict.fromkeys(HISTORY_NAMES, np.nan))
        no_history = roc_auc_score(y_test, pipeline.predict_proba(blank)[:, 1])
        slope, _ = calibration_line(y_test, p_test)
        single, batch = serving_microseconds(pipeline, test)
        results[name] = roc_auc_score(y_val, p_val)
        print(f"{name:24} {interval(y_val, p_val, val['patient_nbr']):>26} "
              f"{interval(y_test, p_test, test['patient_nbr']):>26} {no_history:12.4f} "
              f"{brier_score_loss(y_test, p_test):7.4f} {slope:6.3f} {seconds:8.1f} {single:9.0f} {batch:9.1f}")
        if note:
            print(note)
    champion = max((n for n in results if n in CANDIDATES), key=results.get)
    print(f"\nchampion (best validation ROC-AUC among platform candidates): {champion}")
    print(f"raw baseline test ROC-AUC {roc_auc_score(y_test, baseline):.4f}")


if __name__ == "__main__":
    main()
