"""The model card's figures, recomputed independently on the same rows, and the gate's reading of it:
a candidate made worse for one subgroup, or worse calibrated, on purpose is not promoted (no server)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from readmit_contract import TARGET, clean, synthetic, validate
from readmit_contract.card import ModelCard
from readmit_contract.columns import DISCHARGE_COLUMNS
from readmit_contract.history import HISTORY_NAMES, history_table
from readmit_data.candidates import build_pipeline, fit_pipeline
from readmit_data.gate import calibration_check, subgroup_checks
from readmit_data.model_card import build_card, card_json, group_values, merge_groups, render_markdown
from readmit_data.registry import BETTER, NOT_BETTER, WORSE_CALIBRATION, WORSE_SUBGROUP, _compare
from readmit_data.settings import DataSettings
from readmit_data.training import CandidateResult
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

THRESHOLD = 0.2
MIN_ROWS = 150


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    frame = clean(validate(synthetic.generate(16000, seed=5)).valid).clean.reset_index(drop=True)
    frame = frame.join(history_table(frame)[list(HISTORY_NAMES)])
    patients = frame["patient_nbr"].unique()
    rng = np.random.default_rng(0)
    part = dict(zip(patients, rng.choice(["train", "validation", "test"], len(patients), p=[0.5, 0.3, 0.2]),
                    strict=True))
    split = frame["patient_nbr"].map(part)
    return {name: frame[split == name].reset_index(drop=True) for name in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def pipeline(data):
    from threadpoolctl import threadpool_limits

    train = data["train"]
    with threadpool_limits(1):
        return fit_pipeline(build_pipeline("hist_gradient_boosting", seed=1), train, train[TARGET].to_numpy())


@pytest.fixture(scope="module")
def card(data, pipeline) -> ModelCard:
    train = data["train"]
    summary = {"batches": ["train-0001"], "rows": len(train), "patients": train["patient_nbr"].nunique(),
               "positive_rate": float(train[TARGET].mean())}
    return build_card(candidate="hist_gradient_boosting", run_id="run-1", pipeline=pipeline, threshold=THRESHOLD,
                      train=summary, validation=data["validation"], test=data["test"], min_group_rows=MIN_ROWS,
                      samples=300, seed=0)


def _bootstrap_auc(y, p, patients, samples=300, seed=7):
    """A plain loop: draw patients with replacement, take all their rows, compute ROC-AUC."""
    rng = np.random.default_rng(seed)
    ids = np.unique(patients)
    rows_of = pd.Series(np.arange(len(patients))).groupby(patients).apply(list).to_dict()
    aucs = []
    for _ in range(samples):
        rows = np.concatenate([rows_of[i] for i in rng.choice(ids, len(ids))])
        if len(np.unique(y[rows])) == 2:
            aucs.append(roc_auc_score(y[rows], p[rows]))
    return np.quantile(aucs, 0.025), np.quantile(aucs, 0.975)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_the_cards_figures_match_an_independent_computation(card, data, pipeline, split):
    frame = data[split]
    y = frame[TARGET].to_numpy()
    p = pipeline.predict_proba(frame)[:, 1]
    a = card.evaluation[split]
    assert (a.rows, a.positives, a.patients) == (len(frame), int(y.sum()), frame["patient_nbr"].nunique())
    assert a.roc_auc.value == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert a.pr_auc.value == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert a.brier.value == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    low, high = _bootstrap_auc(y, p, frame["patient_nbr"].to_numpy())
    assert a.roc_auc.low == pytest.approx(low, abs=0.015) and a.roc_auc.high == pytest.approx(high, abs=0.015)
    for interval in (a.roc_auc, a.pr_auc, a.brier):
        assert interval.low < interval.value < interval.high
    # calibration: the logistic fit of the outcome on the logit, unpenalised; ten risk groups of equal size
    logit = np.log(p / (1 - p)).reshape(-1, 1)
    fit = LogisticRegression(penalty=None, max_iter=5000).fit(logit, y)
    assert a.calibration.slope == pytest.approx(fit.coef_[0, 0], abs=1e-3)
    assert a.calibration.intercept == pytest.approx(fit.intercept_[0], abs=1e-3)
    deciles = pd.qcut(pd.Series(p).rank(method="first"), 10, labels=False)
    by = pd.DataFrame({"p": p, "y": y, "bin": deciles}).groupby("bin")
    # (a boundary row may fall in the next group: sizes within one row, rates within 1 %)
    assert np.abs(np.array([b.n for b in a.calibration.bins]) - by.size().to_numpy()).max() <= 1
    assert [b.observed for b in a.calibration.bins] == pytest.approx(by["y"].mean().tolist(), abs=0.01)
    assert [b.predicted for b in a.calibration.bins] == pytest.approx(by["p"].mean().tolist(), abs=0.01)
    # subgroups: each group recomputed with pandas and scikit-learn on its members' rows
    for table in a.subgroups:
        values = frame[table.attribute].astype(object).where(frame[table.attribute].notna(), "not recorded")
        assert sum(g.n for g in table.groups) == len(frame)
        for g in table.groups:
            rows = values.isin(g.members).to_numpy()
            yy, pp, flagged = y[rows], p[rows], p[rows] >= THRESHOLD
            assert (g.n, g.positives) == (rows.sum(), yy.sum())
            assert g.observed_rate == pytest.approx(yy.mean()) and g.predicted_rate == pytest.approx(pp.mean())
            assert g.flagged_share == pytest.approx(flagged.mean())
            assert g.true_positive_rate == pytest.approx(flagged[yy == 1].mean())
            assert g.false_positive_rate == pytest.approx(flagged[yy == 0].mean())
            assert g.roc_auc == pytest.approx(roc_auc_score(yy, pp))
            assert g.small == (g.n < MIN_ROWS)


def test_the_threshold_is_stated_as_a_capacity(card, data, pipeline):
    frame = data["validation"]
    y, p = frame[TARGET].to_numpy(), pipeline.predict_proba(frame)[:, 1]
    flagged = p >= THRESHOLD
    assert card.threshold.flagged_share == pytest.approx(flagged.mean())
    assert card.threshold.precision == pytest.approx(y[flagged].mean())
    assert card.threshold.sensitivity == pytest.approx(flagged[y == 1].mean())
    assert f"{flagged.mean():.0%} of discharges" in card.threshold.rule
    for point in card.threshold.capacity:
        assert (p >= point.threshold).mean() == pytest.approx(point.flagged_share, abs=0.01)


def test_the_card_says_what_it_is_for_and_merges_small_groups(card, data):
    assert {f.name for f in card.intended_use.known_at_discharge} == set(DISCHARGE_COLUMNS)
    assert card.intended_use.scored_at == "discharge"
    assert card.data.rows == {"train": len(data["train"]), "validation": len(data["validation"]),
                              "test": len(data["test"])}
    race = next(s for s in card.evaluation["validation"].subgroups if s.attribute == "race")
    merged = [g for g in race.groups if g.group.startswith("merged: ")]
    assert merged and race.note and all(m in race.note for m in merged[0].members)
    assert {s.attribute for s in card.evaluation["test"].subgroups} == {"age", "gender", "race", "payer_code"}
    assert card.drivers and card.drivers[0].mean_abs_contribution >= card.drivers[-1].mean_abs_contribution
    # the JSON round-trips and the markdown carries the same figures
    again = ModelCard.model_validate(json.loads(card_json(card)))
    assert again == card and json.loads(card_json(card))["schema"] == "readmit-model-card/1"
    text = render_markdown(card, "diabetes-readmission")
    assert f"| ROC-AUC | {card.evaluation['test'].roc_auc.value:.3f} |" in text
    assert race.note in text and card.threshold.rule in text


def test_small_age_bands_merge_with_their_neighbours():
    values = np.array(["[0-10)"] * 3 + ["[10-20)"] * 5 + ["[50-60)"] * 50 + ["[60-70)"] * 60 + ["[90-100)"] * 4,
                      dtype=object)
    groups, note = merge_groups(values, "age", 20)
    assert groups == [("[0-60)", ["[0-10)", "[10-20)", "[50-60)"]), ("[60-100)", ["[60-70)", "[90-100)"])]
    assert note and "[0-60)" in note
    groups, note = merge_groups(np.array(["a"] * 30 + ["b"] * 2 + ["c"] * 1, dtype=object), "race", 20)
    assert groups == [("a", ["a"]), ("merged: b, c", ["b", "c"])] and "b, c" in note
    groups, note = merge_groups(np.array(["a"] * 30 + ["b"] * 2, dtype=object), "race", 20)
    assert groups == [("a", ["a"]), ("b", ["b"])] and note.startswith("b has fewer than 20")


# -- the gate reads the card --------------------------------------------------------------------------

class Scores:
    """A model double for the gate: the champion's own scores, changed on purpose."""

    def __init__(self, base, change):
        self.base, self.change = base, change

    def predict_proba(self, frame):
        p = np.clip(self.change(frame, self.base.predict_proba(frame)[:, 1]), 1e-6, 1 - 1e-6)
        return np.column_stack([1 - p, p])


def _sharper(frame, p):
    """Better ranking than the champion everywhere (the label leaks in a little): a real lead."""
    logit = np.log(p / (1 - p)) + 0.8 * frame[TARGET].to_numpy() - 0.1
    return 1 / (1 + np.exp(-logit))


def _scrambled_for(value):
    def change(frame, p):
        out = _sharper(frame, p)
        rows = group_values(frame, "race") == value
        out[rows] = np.random.default_rng(3).permutation(out[rows])  # no ranking left for this group only
        return out
    return change


def _over_confident(frame, p):
    logit = np.log(p / (1 - p))
    return 1 / (1 + np.exp(-(3 * (logit - logit.mean()) + logit.mean() + 0.8 * frame[TARGET].to_numpy())))


@pytest.fixture(scope="module")
def settings():
    return DataSettings(PROMOTION_BOOTSTRAP_SAMPLES=400)


def _decide(settings, pipeline, candidate, card, data):
    best = CandidateResult("hist_gradient_boosting", "run-2", "runs:/run-2/model", {"roc_auc": 0.7}, THRESHOLD)
    return _compare(settings, best, "1", pipeline, candidate, data["validation"], card, candidates=1)


def test_the_gate_promotes_a_candidate_better_everywhere(settings, pipeline, card, data):
    decision = _decide(settings, pipeline, Scores(pipeline, _sharper), card, data)
    assert decision.kind == BETTER and decision.promoted, decision.reason
    assert int(decision.figures["gate.subgroups_checked"]) >= 8
    assert "subgroups of the model card within limits" in decision.reason


def test_the_gate_refuses_a_candidate_made_worse_for_one_subgroup(settings, pipeline, card, data):
    decision = _decide(settings, pipeline, Scores(pipeline, _scrambled_for("AfricanAmerican")), card, data)
    assert decision.kind == WORSE_SUBGROUP and not decision.promoted
    assert float(decision.figures["gate.lower_bound"]) > 0  # its overall lead alone would have promoted it
    assert decision.figures["gate.worst_subgroup"] == "race=AfricanAmerican"
    assert "it is worse for race=AfricanAmerican" in decision.reason and "race=Caucasian" not in decision.reason
    # the same check on the arrays: only that group is flagged
    frame = data["validation"]
    y = frame[TARGET].to_numpy()
    champion = pipeline.predict_proba(frame)[:, 1]
    values = group_values(frame, "race")
    groups = [("race", g, values == g) for g in ("Caucasian", "AfricanAmerican")]
    challenger = _scrambled_for("AfricanAmerican")(frame, champion)
    checks = subgroup_checks(y, challenger, champion, frame["patient_nbr"].to_numpy(), groups, samples=400)
    assert [c.worse for c in checks] == [False, True]


def test_the_gate_refuses_a_worse_calibrated_candidate(settings, pipeline, card, data):
    decision = _decide(settings, pipeline, Scores(pipeline, _over_confident), card, data)
    assert decision.kind == WORSE_CALIBRATION and not decision.promoted, decision.reason
    assert float(decision.figures["gate.calibration_slope"]) < 0.5 < float(
        decision.figures["gate.champion_calibration_slope"])
    assert "its calibration is worse" in decision.reason


def test_a_candidate_no_better_stays_not_better_whatever_the_card(settings, pipeline, card, data):
    decision = _decide(settings, pipeline, Scores(pipeline, lambda frame, p: p), card, data)
    assert decision.kind == NOT_BETTER and not decision.promoted
    frame = data["validation"]
    y, p = frame[TARGET].to_numpy(), pipeline.predict_proba(frame)[:, 1]
    same = calibration_check(y, p, p, frame["patient_nbr"].to_numpy(), samples=50)
    assert same.challenger_slope == same.champion_slope and not same.worse


def test_a_constant_model_has_no_calibration_slope_and_is_not_called_worse(data, pipeline):
    frame = data["validation"]
    y, p = frame[TARGET].to_numpy(), pipeline.predict_proba(frame)[:, 1]
    for constant in (0.11, 0.2):
        check = calibration_check(y, np.full(len(y), constant), p, frame["patient_nbr"].to_numpy(), samples=50)
        assert np.isnan(check.challenger_slope) and not check.worse
        assert check.champion_slope == pytest.approx(calibration_check(y, p, p, frame["patient_nbr"].to_numpy(),
                                                                       samples=20).champion_slope)


def test_a_split_with_one_outcome_still_gets_a_card(data, pipeline):
    one = data["test"][data["test"][TARGET] == 0]
    train = data["train"]
    card = build_card(candidate="hist_gradient_boosting", run_id="run-3", pipeline=pipeline, threshold=THRESHOLD,
                      train={"batches": ["b"], "rows": len(train), "patients": 1, "positive_rate": 0.1},
                      validation=data["validation"], test=one, samples=100)
    assert card.evaluation["test"].roc_auc.value is None and card.evaluation["test"].roc_auc.low is None
    assert card.evaluation["validation"].roc_auc.value is not None
