"""Building the model card of a registered version (``readmit_contract.card``), and storing it in MLflow.

``build_card`` is a pure function of the fitted Pipeline and the rows it is assessed on:

- discrimination: ROC-AUC, PR-AUC and Brier score with 95 % intervals from a bootstrap that resamples
  *patients* (a patient's encounters are correlated; resampling rows would make the intervals too narrow);
- calibration: slope and intercept (``training.calibration_line``), observed against mean predicted risk in
  ten risk groups of equal size;
- subgroups by age band, sex, race and payer, with Fairlearn's ``MetricFrame``: n, ROC-AUC, observed and
  mean predicted rate, true and false positive rates and the share flagged at the threshold. A group
  with fewer than ``min_group_rows`` encounters is merged (age bands with their neighbour, other
  attributes into one "merged" group) and the card says which; a group still too small after merging is
  marked ``small`` (shown, not relied on);
- the threshold as a capacity rule: the share of validation encounters it flags, and the thresholds
  that would flag 5, 10, 20 and 30 %;
- what drives the model: mean absolute contribution of each factor (``readmit_contract.explanation``) over
  a sample of validation rows.

The validation assessment is what the gate compares (the rows every candidate is chosen on); the test
assessment is reported only: no decision reads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from readmit_contract import TARGET
from readmit_contract.card import (
    CARD_CALIBRATION_PLOT,
    CARD_JSON,
    CARD_MARKDOWN,
    Assessment,
    Calibration,
    CalibrationBin,
    CapacityPoint,
    DataSummary,
    Driver,
    Group,
    InputField,
    IntendedUse,
    Interval,
    ModelCard,
    ModelInfo,
    Subgroups,
    Threshold,
    card_digest,
)
from readmit_contract.columns import AGE_BRACKETS, BY_NAME, COLUMNS
from readmit_contract.explanation import Explainer, label_of
from readmit_contract.target import EXCLUDED_DISCHARGE_DISPOSITIONS
from sklearn.metrics import average_precision_score, roc_auc_score

from .candidates import PATIENT_COLUMN
from .gate import patient_bootstrap_interval, patient_weights
from .training import calibration_line

log = logging.getLogger(__name__)

SUBGROUP_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("age", "Age band"), ("gender", "Sex"), ("race", "Race"), ("payer_code", "Payer"),
)
ORDERED_ATTRIBUTES: dict[str, tuple[str, ...]] = {"age": AGE_BRACKETS}
NOT_RECORDED = "not recorded"
CAPACITY_SHARES = (0.05, 0.10, 0.20, 0.30)
CALIBRATION_BINS = 10
DRIVER_ROWS = 500
DRIVERS = 15


# -- groups ------------------------------------------------------------------------------------------

def group_values(frame: pd.DataFrame, attribute: str) -> np.ndarray:
    """The attribute's value of each row as text, a missing one as ``not recorded``."""
    values = frame[attribute].astype(object)
    return np.where(values.isna().to_numpy() | (values == "?").to_numpy(), NOT_RECORDED,
                    values.astype(str).to_numpy()).astype(object)


def merge_groups(values: np.ndarray, attribute: str, min_rows: int) -> tuple[list[tuple[str, list[str]]], str | None]:
    """The groups of ``values`` as (name, members), small ones merged, and a note saying which were merged.

    Ordered attributes (age) merge a small band with its neighbours until the merged band is large enough
    (a last small band joins the one before); others merge every small value into one ``merged`` group."""
    counts = pd.Series(values).value_counts()
    order = ORDERED_ATTRIBUTES.get(attribute)
    merged_notes: list[str] = []
    if order is not None:
        present = [v for v in order if v in counts.index] + sorted(set(counts.index) - set(order))
        bands: list[list[str]] = []
        current: list[str] = []
        for value in present:
            current.append(value)
            if sum(int(counts[v]) for v in current) >= min_rows:
                bands.append(current)
                current = []
        if current:
            if bands:
                bands[-1].extend(current)
            else:
                bands.append(current)
        groups = [(_band_name(band), band) for band in bands]
        merged_notes = [_band_name(band) for band in bands if len(band) > 1]
    else:
        large = [v for v in counts.index if int(counts[v]) >= min_rows]
        small = sorted(v for v in counts.index if int(counts[v]) < min_rows)
        groups = [(v, [v]) for v in sorted(large)]
        if len(small) == 1:  # nothing to merge it with: shown alone, marked small
            groups.append((small[0], small))
            return groups, (f"{small[0]} has fewer than {min_rows} encounters: its figures are shown, not relied "
                            "on")
        if small:
            groups.append(("merged: " + ", ".join(small), small))
            merged_notes = small
    note = None
    if merged_notes:
        note = (f"groups of fewer than {min_rows} encounters were merged: "
                + ("; ".join(merged_notes) if order is not None else ", ".join(merged_notes) + " form one group"))
    return groups, note


def _band_name(band: Sequence[str]) -> str:
    if len(band) == 1:
        return band[0]
    first, last = band[0], band[-1]
    if first.startswith("[") and last.endswith(")"):
        return f"{first.split('-')[0]}-{last.split('-')[1]}"
    return " + ".join(band)


# -- metrics -----------------------------------------------------------------------------------------

def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def _rate(y: np.ndarray, flagged: np.ndarray) -> float:
    return float(flagged[y].mean()) if y.any() else float("nan")


def _finite(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def weighted_interval(metric: Callable[[np.ndarray], float], weights: np.ndarray) -> tuple[float | None, float | None]:
    """The 95 % percentile interval of ``metric`` over the samples' weights (None, None: no finite value)."""
    values = np.array([metric(w) for w in weights], dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None, None
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[CalibrationBin]:
    """Observed rate against mean predicted risk in ``bins`` risk groups of (nearly) equal size, lowest first."""
    order = np.argsort(p, kind="mergesort")
    out = []
    for chunk in np.array_split(order, min(bins, len(order))):
        if len(chunk):
            out.append(CalibrationBin(predicted=float(p[chunk].mean()), observed=float(y[chunk].mean()),
                                      n=len(chunk)))
    return out


def subgroup_table(frame: pd.DataFrame, y: np.ndarray, p: np.ndarray, threshold: float, attribute: str,
                   label: str, min_rows: int) -> Subgroups:
    """Fairlearn's MetricFrame over the (merged) groups of ``attribute``."""
    from fairlearn.metrics import MetricFrame

    values = group_values(frame, attribute)
    groups, note = merge_groups(values, attribute, min_rows)
    name_of = {member: name for name, members in groups for member in members}
    sensitive = pd.Series([name_of[v] for v in values], name=attribute, dtype=object)

    def metric(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
        return lambda y_true, y_pred: fn(np.asarray(y_true), np.asarray(y_pred))

    frame_metrics = MetricFrame(
        metrics={
            "n": metric(lambda t, s: float(len(t))),
            "positives": metric(lambda t, s: float(t.sum())),
            "roc_auc": metric(_auc),
            "observed_rate": metric(lambda t, s: float(t.mean())),
            "predicted_rate": metric(lambda t, s: float(s.mean())),
            "true_positive_rate": metric(lambda t, s: _rate(t.astype(bool), s >= threshold)),
            "false_positive_rate": metric(lambda t, s: _rate(~t.astype(bool), s >= threshold)),
            "flagged_share": metric(lambda t, s: float((s >= threshold).mean())),
        },
        y_true=y, y_pred=p, sensitive_features=sensitive,
    )
    table = frame_metrics.by_group
    out = []
    for name, members in groups:
        row = table.loc[name]
        out.append(Group(
            group=name, members=list(members), n=int(row["n"]), positives=int(row["positives"]),
            roc_auc=_finite(row["roc_auc"]), observed_rate=float(row["observed_rate"]),
            predicted_rate=float(row["predicted_rate"]),
            true_positive_rate=_finite(row["true_positive_rate"]),
            false_positive_rate=_finite(row["false_positive_rate"]),
            flagged_share=float(row["flagged_share"]), small=int(row["n"]) < min_rows,
        ))
    return Subgroups(attribute=attribute, label=label, note=note, groups=out)


def assess(split: str, frame: pd.DataFrame, p: np.ndarray, threshold: float, *, min_group_rows: int,
           samples: int, seed: int) -> Assessment:
    """Every figure of one split (see the module's doc)."""
    y = frame[TARGET].to_numpy().astype(int)
    p = np.asarray(p, dtype=float)
    patients = frame[PATIENT_COLUMN].to_numpy()
    both = len(np.unique(y)) == 2  # a split with one outcome has no ROC-AUC (nor its interval)
    auc_low, auc_high = (patient_bootstrap_interval(y, p, patients, samples=samples, seed=seed) if both
                         else (None, None))
    weights = patient_weights(patients, samples, seed + 1)
    squared = (p - y) ** 2
    brier_samples = (weights @ squared) / weights.sum(axis=1)
    pr_low, pr_high = weighted_interval(
        lambda w: average_precision_score(y, p, sample_weight=w) if (w * y).sum() > 0 else float("nan"),
        weights[: min(samples, 300)])
    slope, intercept = calibration_line(y, p)
    return Assessment(
        split=split, rows=len(frame), patients=len(np.unique(patients)), positives=int(y.sum()),
        roc_auc=Interval(value=_finite(_auc(y, p)), low=auc_low, high=auc_high),
        pr_auc=Interval(value=float(average_precision_score(y, p)), low=pr_low, high=pr_high),
        brier=Interval(value=float(squared.mean()), low=float(np.quantile(brier_samples, 0.025)),
                       high=float(np.quantile(brier_samples, 0.975))),
        calibration=Calibration(slope=_finite(slope), intercept=_finite(intercept), observed_rate=float(y.mean()),
                                predicted_rate=float(p.mean()), bins=calibration_bins(y, p)),
        subgroups=[subgroup_table(frame, y, p, threshold, attribute, label, min_group_rows)
                   for attribute, label in SUBGROUP_ATTRIBUTES if attribute in frame.columns],
    )


def capacity(y: np.ndarray, p: np.ndarray, threshold: float, chosen_by: str) -> Threshold:
    """The threshold as a capacity rule, and the thresholds of other capacities (on the validation rows)."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=float)

    def at(t: float) -> tuple[float, float, float]:
        flagged = p >= t
        share = float(flagged.mean())
        sensitivity = float(flagged[y].mean()) if y.any() else 0.0
        precision = float(y[flagged].mean()) if flagged.any() else 0.0
        return share, sensitivity, precision

    share, sensitivity, precision = at(threshold)
    points = []
    for target in CAPACITY_SHARES:
        t = float(np.quantile(p, 1 - target))
        s, sens, prec = at(t)
        points.append(CapacityPoint(flagged_share=s, threshold=t, sensitivity=sens, precision=prec))
    rule = (f"Flags encounters with a predicted risk of {threshold:.1%} or more: {share:.0%} of discharges "
            f"(about {round(share * 100)} of every 100). Among them {precision:.0%} are readmitted within 30 days; "
            f"they hold {sensitivity:.0%} of all such readmissions. A team that can follow up fewer patients "
            "picks a higher threshold from the capacity table.")
    return Threshold(value=float(threshold), chosen_by=chosen_by, flagged_share=share, sensitivity=sensitivity,
                     precision=precision, rule=rule, capacity=points)


def intended_use() -> IntendedUse:
    features = [c for c in COLUMNS if c.is_feature]
    excluded = "; ".join(BY_NAME["discharge_disposition_id"].labels[k].rstrip(".")
                         for k in sorted(EXCLUDED_DISCHARGE_DISPOSITIONS))
    return IntendedUse(
        summary=("Estimates, at discharge, the probability that an adult diabetic inpatient is readmitted within "
                 "30 days, to help a care team decide whom to follow up after discharge. It supports a clinician's "
                 "judgement; it does not replace it."),
        scored_at="discharge",
        known_at_discharge=[InputField(name=c.name, description=c.description) for c in features
                            if c.known == "discharge"],
        known_at_admission=[InputField(name=c.name, description=c.description) for c in features
                            if c.known == "admission"],
        history=("The patient's earlier encounters in this hospital's records, looked up by patient number, when "
                 "available; without them the model still scores, less well (see the run's "
                 "val_roc_auc_without_history)."),
        out_of_scope=f"Encounters ending in death or hospice are not scored: {excluded}.",
        not_for=[
            "scoring at admission or during the stay: inputs known only at discharge would be missing or partial",
            "deciding care on its own, or denying care",
            "patients or hospitals unlike the 130 US hospitals of 1999-2008 it learnt from, without checking "
            "its calibration there first",
        ],
    )


def drivers(pipeline: Any, validation: pd.DataFrame, seed: int) -> list[Driver]:
    explainer = Explainer.for_pipeline(pipeline)
    if explainer is None or validation.empty:
        return []
    sample = validation.sample(min(DRIVER_ROWS, len(validation)), random_state=seed)
    means = explainer.mean_absolute(sample)
    return [Driver(factor=k, label=label_of(k), mean_abs_contribution=v)
            for k, v in list(means.items())[:DRIVERS] if v > 0]


def build_card(*, candidate: str, run_id: str, pipeline: Any, threshold: float, train: dict[str, Any],
               validation: pd.DataFrame, test: pd.DataFrame | None, min_group_rows: int = 100,
               samples: int = 500, seed: int = 0) -> ModelCard:
    """The card of one fitted Pipeline. ``train`` summarises its training rows: ``batches``, ``rows``,
    ``patients``, ``positive_rate``."""
    from concurrent.futures import ThreadPoolExecutor

    p_val = pipeline.predict_proba(validation)[:, 1]
    scored = {"validation": (validation, p_val)}
    if test is not None and not test.empty:
        scored["test"] = (test, pipeline.predict_proba(test)[:, 1])
    # the splits' assessments are independent (each seeded alike): one thread each, so the bootstraps' numpy
    # work of one runs on the second core while the other is in Python
    with ThreadPoolExecutor(max_workers=len(scored)) as pool:
        futures = {split: pool.submit(assess, split, frame, p, threshold, min_group_rows=min_group_rows,
                                      samples=samples, seed=seed) for split, (frame, p) in scored.items()}
        evaluation = {split: future.result() for split, future in futures.items()}
    splits = {"validation": validation, **({"test": test} if test is not None and not test.empty else {})}
    data = DataSummary(
        train_batches=list(train["batches"]),
        rows={"train": int(train["rows"]), **{k: len(v) for k, v in splits.items()}},
        patients={"train": int(train["patients"]), **{k: int(v[PATIENT_COLUMN].nunique()) for k, v in splits.items()}},
        positive_rate={"train": float(train["positive_rate"]),
                       **{k: float(v[TARGET].mean()) for k, v in splits.items()}},
        split=("Patients, not encounters, are split into train, validation and test (a patient's encounters all "
               "fall in one split); the threshold and the choice of model use validation only."),
    )
    limitations = [
        "Learnt from US hospitals of 1999-2008 (UCI Diabetes 130-US hospitals): coding, care and populations "
        "have changed since; check calibration on local data before relying on the risk values.",
        "Race and payer are recorded by the hospitals; 'not recorded' is frequent for payer.",
        "Readmissions to other hospitals are not in the data: the observed rate is a lower bound.",
    ]
    return ModelCard(
        model=ModelInfo(candidate=candidate, estimator=type(pipeline[-1]).__name__, run_id=run_id,
                        created=datetime.now(UTC).isoformat(timespec="seconds"),
                        uses_history=bool(getattr(pipeline[0], "history_", False))),
        intended_use=intended_use(),
        data=data,
        threshold=capacity(validation[TARGET].to_numpy(), p_val, threshold,
                           "the highest F1 score on the validation rows"),
        evaluation=evaluation,
        drivers=drivers(pipeline, validation, seed),
        limitations=limitations,
    )


# -- rendering ---------------------------------------------------------------------------------------

def card_json(card: ModelCard) -> str:
    return json.dumps(card.model_dump(mode="json", by_alias=True), indent=2, sort_keys=False) + "\n"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(card: ModelCard, model_name: str | None = None) -> str:
    lines = [f"# Model card: {model_name or 'readmission model'} ({card.model.candidate})", "",
             f"Run `{card.model.run_id}`, built {card.model.created}. Estimator: {card.model.estimator}; "
             f"patient history {'used' if card.model.uses_history else 'not used'}.", "",
             "## Intended use", "", card.intended_use.summary, "",
             f"Scored at **{card.intended_use.scored_at}**. Inputs known only at discharge: "
             + "; ".join(f.description for f in card.intended_use.known_at_discharge[:12])
             + (", and the status of each diabetes medication." if len(card.intended_use.known_at_discharge) > 12
                else "."), "",
             card.intended_use.history, "", card.intended_use.out_of_scope, "", "Not for:"]
    lines += [f"- {item}" for item in card.intended_use.not_for]
    d = card.data
    lines += ["", "## Data", "", d.split, "", "| split | rows | patients | readmitted <30 days |", "|---|---|---|---|"]
    lines += [f"| {k} | {d.rows[k]:,} | {d.patients.get(k, 0):,} | {_pct(d.positive_rate.get(k))} |" for k in d.rows]
    lines += ["", f"Train batches: {', '.join(d.train_batches)}.", "", "## Threshold", "", card.threshold.rule, "",
              "| flags | threshold | sensitivity | precision |", "|---|---|---|---|"]
    lines += [f"| {_pct(c.flagged_share)} | {c.threshold:.3f} | {_pct(c.sensitivity)} | {_pct(c.precision)} |"
              for c in card.threshold.capacity]
    for split, a in card.evaluation.items():
        lines += ["", f"## Performance on {split} ({a.rows:,} encounters, {a.patients:,} patients)", "",
                  "| metric | value | 95 % interval (patients resampled) |", "|---|---|---|"]
        for name, interval in (("ROC-AUC", a.roc_auc), ("PR-AUC", a.pr_auc), ("Brier score", a.brier)):
            lines.append(f"| {name} | {_num(interval.value)} | {_num(interval.low)} – {_num(interval.high)} |")
        c = a.calibration
        lines += ["", f"Calibration: slope {_num(c.slope)}, intercept {_num(c.intercept)}; observed "
                      f"{_pct(c.observed_rate)} vs predicted {_pct(c.predicted_rate)}.", ""]
        for s in a.subgroups:
            lines += [f"### {s.label} ({split})", ""]
            if s.note:
                lines += [f"_{s.note}_", ""]
            lines += ["| group | n | ROC-AUC | observed | predicted | TPR | FPR | flagged |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {g.group}{' (small)' if g.small else ''} | {g.n:,} | {_num(g.roc_auc)} | "
                      f"{_pct(g.observed_rate)} | {_pct(g.predicted_rate)} | {_pct(g.true_positive_rate)} | "
                      f"{_pct(g.false_positive_rate)} | {_pct(g.flagged_share)} |" for g in s.groups]
            lines.append("")
    if card.drivers:
        lines += ["## What drives the model", "", "Mean absolute contribution to the log-odds, validation rows:", ""]
        lines += [f"- {drv.label}: {drv.mean_abs_contribution:.3f}" for drv in card.drivers]
    lines += ["", "## Limitations", ""] + [f"- {item}" for item in card.limitations]
    return "\n".join(lines) + "\n"


def calibration_figure(card: ModelCard):
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for split, a in card.evaluation.items():
        xs = [b.predicted for b in a.calibration.bins]
        ys = [b.observed for b in a.calibration.bins]
        top = max(top, *xs, *ys)
        ax.plot(xs, ys, marker="o", label=f"{split} (slope {_num(a.calibration.slope, 2)})")
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlabel("mean predicted risk (risk group)")
    ax.set_ylabel("observed 30-day readmission")
    ax.set_title("Calibration by risk group")
    ax.legend()
    return figure


# -- MLflow ------------------------------------------------------------------------------------------

def log_card(client: Any, run_id: str, card: ModelCard, model_name: str | None = None) -> str:
    """Store the card (JSON, markdown, calibration plot) on the run; returns the JSON's digest."""
    import matplotlib.pyplot as plt

    text = card_json(card)
    figure = calibration_figure(card)
    try:
        client.log_figure(run_id, figure, CARD_CALIBRATION_PLOT)
    finally:
        plt.close(figure)
    client.log_text(run_id, render_markdown(card, model_name), CARD_MARKDOWN)
    client.log_text(run_id, text, CARD_JSON)  # last: its presence marks a complete card
    return card_digest(text.encode("utf-8"))


def read_card(client: Any, run_id: str) -> tuple[ModelCard, str] | None:
    """The card stored on the run and its digest, or None when the run has none."""
    import tempfile
    from pathlib import Path

    names = {a.path for a in client.list_artifacts(run_id, CARD_JSON.rsplit("/", 1)[0])}
    if CARD_JSON not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="readmit-card-") as tmp:
        data = Path(client.download_artifacts(run_id, CARD_JSON, tmp)).read_bytes()
    return ModelCard.model_validate_json(data), card_digest(data)
