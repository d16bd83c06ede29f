"""The model card and the explanations on the real data: what they say, and what they cost.

Fits the candidates on the platform's patient split (history on, the platform's dropout), then:

- builds the champion's (HGB's) model card and prints its headline figures: test ROC-AUC with its
  patient-bootstrap interval, calibration, the capacity rule, and per attribute the weakest subgroup;
- times the card (seconds) and the gate's new checks (calibration and subgroups, HGB against the
  logistic regression as if it were the champion) beside the ROC-AUC bootstrap the gate already ran;
- per candidate, microseconds to explain one encounter against scoring it (one record per call, the
  scikit-learn path), and the ratio.

    python bench/model_card.py [--candidates a,b,c] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from readmit_contract import TARGET, clean, validate
from readmit_contract.explanation import Explainer
from readmit_contract.history import HISTORY_NAMES, history_table
from readmit_data.candidates import build_pipeline, fit_pipeline
from readmit_data.gate import calibration_check, paired_bootstrap, subgroup_checks
from readmit_data.loading import assign_splits
from readmit_data.model_card import build_card, group_values, render_markdown
from readmit_data.settings import DataSettings
from readmit_data.training import choose_threshold, with_history_dropout
from training import data  # bench/training.py: the real file when present, else synthetic


def per_call_microseconds(fn, records: list[dict], calls: int = 100) -> float:
    fn(records[:1])
    started = time.perf_counter()
    for record in records[:calls]:
        fn([record])
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default="logistic_regression,random_forest,hist_gradient_boosting")
    parser.add_argument("--markdown", help="write the champion's card as markdown here")
    args = parser.parse_args()
    settings = DataSettings()
    frame, label = data()
    rows = clean(validate(frame).valid).clean.reset_index(drop=True)
    rows = rows.join(history_table(rows)[list(HISTORY_NAMES)])
    split = assign_splits(rows["patient_nbr"], seed=42)
    train, val, test = (rows[split == s].reset_index(drop=True) for s in ("train", "validation", "test"))
    print(f"data: {label}; train {len(train):,} / validation {len(val):,} / test {len(test):,} (by patient)")
    fit_rows = with_history_dropout(train, settings.history_dropout, 0)
    from readmit_serving.api.model import single_threaded

    pipelines = {}
    for name in args.candidates.split(","):
        pipelines[name] = single_threaded(fit_pipeline(build_pipeline(name), fit_rows, fit_rows[TARGET].to_numpy()))

    from threadpoolctl import threadpool_limits

    records = test.head(200).astype(object).where(test.head(200).notna(), None).to_dict("records")
    print(f"\n{'candidate':24} {'method':22} {'score us/row':>13} {'explain us/row':>15} {'ratio':>7}")
    for name, pipeline in pipelines.items():
        explainer = Explainer.for_pipeline(pipeline)
        with threadpool_limits(1):  # as the API's inference thread runs: one OpenMP/BLAS thread
            score = per_call_microseconds(lambda r, p=pipeline: p.predict_proba(r), records)
            explain = per_call_microseconds(explainer.explain, records, calls=50) if explainer else float("nan")
        method = explainer.method if explainer else "-"
        print(f"{name:24} {method:22} {score:13.0f} {explain:15.0f} {explain / score:7.2f}")

    champion = pipelines.get("hist_gradient_boosting") or next(iter(pipelines.values()))
    y_val = val[TARGET].to_numpy()
    threshold = choose_threshold(y_val, champion.predict_proba(val)[:, 1])
    started = time.perf_counter()
    card = build_card(candidate="hist_gradient_boosting", run_id="bench", pipeline=champion, threshold=threshold,
                      train={"batches": ["all"], "rows": len(train), "patients": train["patient_nbr"].nunique(),
                             "positive_rate": float(train[TARGET].mean())},
                      validation=val, test=test, min_group_rows=settings.model_card_min_group_rows,
                      samples=settings.model_card_bootstrap_samples, seed=0)
    card_seconds = time.perf_counter() - started
    t = card.evaluation["test"]
    print(f"\nmodel card built in {card_seconds:.1f} s")
    print(f"test ROC-AUC {t.roc_auc.value:.4f} [{t.roc_auc.low:.4f}, {t.roc_auc.high:.4f}], PR-AUC "
          f"{t.pr_auc.value:.4f} [{t.pr_auc.low:.4f}, {t.pr_auc.high:.4f}], Brier {t.brier.value:.4f}; calibration "
          f"slope {t.calibration.slope:.3f}, intercept {t.calibration.intercept:.3f}")
    print(f"threshold {card.threshold.value:.3f}: {card.threshold.rule}")
    for point in card.threshold.capacity:
        print(f"  flag {point.flagged_share:5.1%}: threshold {point.threshold:.3f}, sensitivity "
              f"{point.sensitivity:5.1%}, precision {point.precision:5.1%}")
    for table in t.subgroups:
        reliable = [g for g in table.groups if not g.small and g.roc_auc is not None]
        low = min(reliable, key=lambda g: g.roc_auc)
        high = max(reliable, key=lambda g: g.roc_auc)
        print(f"  {table.label:9} {len(table.groups)} groups; lowest ROC-AUC {low.group} {low.roc_auc:.3f} "
              f"(n {low.n:,}), highest {high.group} {high.roc_auc:.3f} (n {high.n:,})"
              + (f"; {table.note}" if table.note else ""))
    print("  drivers: " + "; ".join(f"{d.label} {d.mean_abs_contribution:.3f}" for d in card.drivers[:6]))

    if "logistic_regression" in pipelines:
        other = pipelines["logistic_regression"].predict_proba(val)[:, 1]
        mine = champion.predict_proba(val)[:, 1]
        patients = val["patient_nbr"].to_numpy()
        started = time.perf_counter()
        paired_bootstrap(y_val, mine, other, patients, candidates=3, samples=1000)
        auc_seconds = time.perf_counter() - started
        started = time.perf_counter()
        calibration = calibration_check(y_val, mine, other, patients)
        calibration_seconds = time.perf_counter() - started
        groups = [(s.attribute, g.group, np.isin(group_values(val, s.attribute), g.members))
                  for s in card.evaluation["validation"].subgroups for g in s.groups if not g.small]
        started = time.perf_counter()
        checks = subgroup_checks(y_val, mine, other, patients, groups, samples=1000)
        subgroup_seconds = time.perf_counter() - started
        worst = max(checks, key=lambda c: c.drop_lower_bound)
        print(f"\ngate, HGB against the logistic regression as champion: ROC-AUC bootstrap {auc_seconds:.1f} s; "
              f"calibration check {calibration_seconds:.1f} s (slopes {calibration.challenger_slope:.3f} vs "
              f"{calibration.champion_slope:.3f}); {len(checks)} subgroups {subgroup_seconds:.1f} s (worst "
              f"{worst.name}: {worst.challenger_auc:.3f} vs {worst.champion_auc:.3f}, drop bound "
              f"{worst.drop_lower_bound:+.3f}); refused: {calibration.worse or any(c.worse for c in checks)}")
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(card, "diabetes-readmission"), encoding="utf-8")
        print(f"card written to {args.markdown}")


if __name__ == "__main__":
    main()
