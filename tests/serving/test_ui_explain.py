"""The Streamlit page (AppTest, the real page script) tells why the model gave a risk and shows the served model's
card, against the real API: what a person sees (the chart of the factors, the card's headings and figures), and a
sentence instead when the model cannot be explained or has no card."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

APP = Path(__file__).resolve().parents[2] / "server3-serving" / "ui" / "app.py"
sys.path.insert(0, str(APP.parent))  # the UI's modules live beside app.py (not an installed package)

from readmit_ui.card import STATUS_MESSAGES  # noqa: E402
from readmit_ui.client import NOT_EXPLAINABLE  # noqa: E402
from readmit_ui.explanation import HOW_TO_READ, LOWERS, RAISES, WHY_FACTORS, WHY_TITLE  # noqa: E402

from .conftest import AUTH  # noqa: E402
from .test_ui import CHANGES, assert_no_internal_detail, charts, fill, run_app, typical_encounter  # noqa: E402

pytestmark = pytest.mark.slow

CARD_SECTIONS = ["Intended use", "Data", "Performance", "Calibration", "Subgroups", "Decision threshold",
                 "What drives the model", "Limitations"]


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def predicted(api: str, encounter: dict, **params) -> dict:
    return httpx.post(f"{api}/predict", json=encounter, headers=AUTH, params=params).raise_for_status().json()


def test_a_prediction_shows_why_this_risk(api, monkeypatch):
    at = run_app(monkeypatch, api)
    assert WHY_TITLE not in texts(at.subheader)  # nothing to explain before a prediction
    for name, value in CHANGES.items():
        fill(at, name, value)
    at.button(key="predict").click().run()
    assert not at.exception and not at.error and not at.warning

    expected = predicted(api, typical_encounter() | CHANGES, explain="true", explain_top=str(WHY_FACTORS))
    factors = expected["explanation"]["factors"]
    assert len(factors) == WHY_FACTORS
    assert [m.value for m in at.metric] == [f"{expected['probability']:.1%}"]
    assert WHY_TITLE in texts(at.subheader) and HOW_TO_READ in texts(at.caption)
    (spec, data), = [(s, d) for s, d in charts(at) if "factor" in d.columns]
    assert data["factor"].tolist() == [f["text"] for f in factors]  # largest effect first, in clinical words
    assert data["contribution"].tolist() == pytest.approx([f["contribution"] for f in factors])
    assert data["effect"].tolist() == [RAISES if f["direction"] == "raises" else LOWERS for f in factors]
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["y"]["field"] == "factor"
    summary = " ".join(texts(at.caption))
    assert f"a risk of {expected['probability']:.1%}" in summary
    assert f"The {expected['explanation']['other_factor_count']} other factors together" in summary
    assert_no_internal_detail(at, api)


def test_the_model_card_tab_shows_the_card(api, monkeypatch):
    card = httpx.get(f"{api}/model/card", headers=AUTH).raise_for_status().json()
    at = run_app(monkeypatch, api)
    assert not at.exception and not at.error and not at.warning
    assert [t.label for t in at.tabs] == ["One encounter", "Many encounters (CSV)", "Model card"]
    headings = texts(at.subheader)
    assert [h for h in headings if h in CARD_SECTIONS] == CARD_SECTIONS
    markdown = " ".join(texts(at.markdown))
    captions = " ".join(texts(at.caption))
    assert card["intended_use"]["summary"] in markdown
    assert all(f["description"] in markdown for f in card["intended_use"]["known_at_discharge"])
    assert card["threshold"]["rule"] in markdown

    tables = [t.value for t in at.table]
    performance = next(t for t in tables if "ROC-AUC" in t.columns and "Brier score" in t.columns)
    for split in ("validation", "test"):
        roc = card["evaluation"][split]["roc_auc"]
        assert performance.loc[split, "ROC-AUC"] == f"{roc['value']:.3f} ({roc['low']:.3f}–{roc['high']:.3f})"
        calibration = card["evaluation"][split]["calibration"]
        assert (f"**{split.capitalize()}**: slope {calibration['slope']:.2f}, intercept "
                f"{calibration['intercept']:.2f}") in markdown
    (_, bins), = [(s, d) for s, d in charts(at) if "observed readmission" in d.columns]
    test_bins = bins[bins["split"] == "test"]
    assert test_bins["observed readmission"].tolist() == pytest.approx(
        [b["observed"] for b in card["evaluation"]["test"]["calibration"]["bins"]])

    # subgroups: one table per attribute, on test first, with the note of merged groups
    subgroups = card["evaluation"]["test"]["subgroups"]
    group_tables = [t for t in tables if "readmitted flagged" in t.columns]
    assert len(group_tables) == len(subgroups)
    for table, shown in zip(subgroups, group_tables, strict=True):
        assert f"**{table['label']}**" in markdown
        assert [g["group"] for g in table["groups"]] == [name.removesuffix(" (small: not relied on)")
                                                          for name in shown.index]
        assert shown["encounters"].tolist() == [f"{g['n']:,}" for g in table["groups"]]
        if table["note"]:
            assert table["note"] in captions
    assert any(t["note"] for t in subgroups)  # the synthetic data has groups small enough to merge
    capacity = next(t for t in tables if "readmissions caught" in t.columns)
    assert len(capacity) == len(card["threshold"]["capacity"])

    at.radio(key="card:split").set_value("validation").run()
    validation = card["evaluation"]["validation"]["subgroups"]
    shown = [t.value for t in at.table if "readmitted flagged" in t.value.columns]
    assert [t["encounters"].tolist() for t in shown] == [[f"{g['n']:,}" for g in s["groups"]] for s in validation]
    assert_no_internal_detail(at, api)


def test_a_model_without_explainer_or_card_is_said_so(unexplainable, monkeypatch):
    at = run_app(monkeypatch, unexplainable.url)
    assert not at.exception and not at.error
    assert STATUS_MESSAGES["missing"] in texts(at.info)
    assert not [h for h in texts(at.subheader) if h in CARD_SECTIONS]
    at.button(key="predict").click().run()
    assert not at.exception and not at.error
    expected = predicted(unexplainable.url, typical_encounter())
    assert at.session_state["prediction"].result["probability"] == expected["probability"]
    assert [m.value for m in at.metric] == [f"{expected['probability']:.1%}"]
    assert NOT_EXPLAINABLE in texts(at.info) and WHY_TITLE not in texts(at.subheader)
    assert not [d for _, d in charts(at) if "factor" in d.columns]
    assert_no_internal_detail(at, unexplainable.url)
