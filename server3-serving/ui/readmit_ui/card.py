"""The "Model card" tab: the card training recorded for the model being served (``GET /model/card``).

What the model is for and what it is not for, the data it learnt from, its discrimination with 95 % intervals,
its calibration (with observed against predicted risk by risk group), its figures per subgroup, and the decision
threshold as a capacity rule. A version without a card to show gets a sentence saying why (from ``/model``'s
``card`` status); nothing of the card's own text is ever treated as code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from .client import ApiClient, ApiUnavailable, CardUnavailable

log = logging.getLogger(__name__)

NOT_SERVING = "The model card is shown here once the prediction service serves a model."
STATUS_MESSAGES = {
    "missing": "No model card was recorded for the model version being served.",
    "no_checksum": "The model card of the version being served has no checksum recorded at training, so it cannot "
                   "be trusted and is not shown.",
    "checksum_mismatch": "The model card of the version being served does not match the checksum recorded at "
                         "training, so it is not shown. Ask the administrator.",
    "unreadable": "The model card of the version being served cannot be read. Ask the administrator.",
}
CARD_FAILED = "The model card cannot be shown on this page. Ask the administrator."
SPLIT_ORDER = ("validation", "test")
CACHE_KEY = "model_card"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def interval(iv: dict[str, Any]) -> str:
    """``0.673 (0.609–0.727)``: a value and its 95 % interval."""
    text = num(iv.get("value"))
    if iv.get("low") is not None and iv.get("high") is not None:
        text += f" ({num(iv['low'])}–{num(iv['high'])})"
    return text


def splits(card: dict[str, Any]) -> list[str]:
    evaluation = card["evaluation"]
    return [s for s in SPLIT_ORDER if s in evaluation] + sorted(set(evaluation) - set(SPLIT_ORDER))


# -- the sections ------------------------------------------------------------------------------------------------

def intended_use(card: dict[str, Any]) -> None:
    use = card["intended_use"]
    st.subheader("Intended use")
    st.markdown(use["summary"])
    discharge = "; ".join(f["description"] for f in use["known_at_discharge"])
    st.markdown(f"**Scored at** {use['scored_at']}. **Inputs known only at discharge** (scoring earlier leaves them "
                f"missing or partial): {discharge}.")
    st.markdown(f"**Patient history.** {use['history']}")
    st.markdown(f"**Not scored.** {use['out_of_scope']}")
    st.markdown("**Not for:**\n" + "\n".join(f"- {item}" for item in use["not_for"]))


def data(card: dict[str, Any]) -> None:
    summary = card["data"]
    st.subheader("Data")
    st.markdown(summary["split"])
    st.table(pd.DataFrame([{"split": name, "encounters": f"{rows:,}",
                            "patients": f"{summary['patients'].get(name, 0):,}",
                            "readmitted within 30 days": pct(summary["positive_rate"].get(name))}
                           for name, rows in summary["rows"].items()]).set_index("split"))
    st.caption(f"Training batches: {', '.join(summary['train_batches'])}.")


def performance(card: dict[str, Any]) -> None:
    st.subheader("Performance")
    rows = []
    for name in splits(card):
        a = card["evaluation"][name]
        rows.append({"split": name, "encounters": f"{a['rows']:,}", "patients": f"{a['patients']:,}",
                     "ROC-AUC": interval(a["roc_auc"]), "PR-AUC": interval(a["pr_auc"]),
                     "Brier score": interval(a["brier"])})
    st.table(pd.DataFrame(rows).set_index("split"))
    st.caption("In brackets: 95 % intervals from a bootstrap that resamples patients. ROC-AUC: 0.5 is chance, 1 is "
               "perfect ranking. Validation chose the model and its threshold; test was held out until the end.")


def calibration_frame(card: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"split": name, "risk group": i + 1, "mean predicted risk": b["predicted"],
                          "observed readmission": b["observed"], "encounters": b["n"]}
                         for name in splits(card)
                         for i, b in enumerate(card["evaluation"][name]["calibration"]["bins"])])


def calibration_chart(frame: pd.DataFrame) -> alt.LayerChart:
    top = float(max(frame["mean predicted risk"].max(), frame["observed readmission"].max(), 0.01))
    diagonal = alt.Chart(pd.DataFrame({"risk": [0.0, top]})).mark_line(strokeDash=[4, 4], color="grey").encode(
        x="risk:Q", y="risk:Q")
    groups = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("mean predicted risk:Q", title="Mean predicted risk (risk group)", axis=alt.Axis(format="%")),
        y=alt.Y("observed readmission:Q", title="Observed readmission within 30 days", axis=alt.Axis(format="%")),
        color=alt.Color("split:N", title="Split"),
        tooltip=["split:N", "risk group:Q", alt.Tooltip("mean predicted risk:Q", format=".1%"),
                 alt.Tooltip("observed readmission:Q", format=".1%"), "encounters:Q"],
    )
    return alt.layer(diagonal, groups).properties(height=320)


def calibration(card: dict[str, Any]) -> None:
    st.subheader("Calibration")
    for name in splits(card):
        c = card["evaluation"][name]["calibration"]
        st.markdown(f"**{name.capitalize()}**: slope {num(c['slope'], 2)}, intercept {num(c['intercept'], 2)}; "
                    f"observed {pct(c['observed_rate'])} readmitted vs {pct(c['predicted_rate'])} predicted.")
    st.caption("A well calibrated model has slope 1 and intercept 0, and its risk groups lie on the dashed line: "
               "a slope below 1 means its risks are too extreme, a positive intercept that it under-estimates risk. "
               "Each point is one of ten risk groups of equal size, lowest risk first.")
    st.altair_chart(calibration_chart(calibration_frame(card)), width="stretch")


def subgroup_table(groups: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{"group": g["group"] + (" (small: not relied on)" if g.get("small") else ""),
                          "encounters": f"{g['n']:,}", "ROC-AUC": num(g.get("roc_auc")),
                          "observed": pct(g["observed_rate"]), "predicted": pct(g["predicted_rate"]),
                          "readmitted flagged": pct(g.get("true_positive_rate")),
                          "others flagged": pct(g.get("false_positive_rate")), "flagged": pct(g["flagged_share"])}
                         for g in groups]).set_index("group")


def subgroups(card: dict[str, Any]) -> None:
    st.subheader("Subgroups")
    names = splits(card)
    split = st.radio("Subgroups on", names, index=names.index("test") if "test" in names else 0, horizontal=True,
                     key="card:split")
    st.caption("Per group: ROC-AUC, observed and mean predicted readmission, the share of its readmitted encounters "
               "flagged at the threshold (sensitivity), of its other encounters flagged, and of all its encounters "
               "flagged.")
    for table in card["evaluation"][split]["subgroups"]:
        st.markdown(f"**{table['label']}**")
        if table.get("note"):
            st.caption(table["note"])
        st.table(subgroup_table(table["groups"]))


def threshold(card: dict[str, Any]) -> None:
    rule = card["threshold"]
    st.subheader("Decision threshold")
    st.markdown(rule["rule"])
    st.caption(f"Threshold {rule['value']:.3f}, chosen by {rule['chosen_by']}. Other capacities (validation):")
    st.table(pd.DataFrame([{"flags": pct(c["flagged_share"]), "threshold": num(c["threshold"]),
                            "readmissions caught": pct(c["sensitivity"]), "flagged readmitted": pct(c["precision"])}
                           for c in rule["capacity"]]).set_index("flags"))


def drivers_and_limits(card: dict[str, Any]) -> None:
    if card.get("drivers"):
        st.subheader("What drives the model")
        st.markdown("\n".join(f"- {d['label']}" for d in card["drivers"][:10]))
        st.caption("The factors with the largest average effect on the validation encounters' risk, largest first.")
    st.subheader("Limitations")
    st.markdown("\n".join(f"- {item}" for item in card["limitations"]))


def show_card(card: dict[str, Any]) -> None:
    model = card["model"]
    st.caption(f"Candidate {model['candidate']} ({model['estimator']}), built {model['created']}; patient history "
               f"{'used' if model['uses_history'] else 'not used'}.")
    for section in (intended_use, data, performance, calibration, subgroups, threshold, drivers_and_limits):
        section(card)


# -- the tab ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CardLookup:
    """The card of the model being served, or the sentence saying why there is none to show."""

    card: dict[str, Any] | None = None
    info: str | None = None
    """Why there is no card (no model, none recorded, not trusted)."""
    warning: str | None = None
    """The API failed to give it (try again later)."""
    version: str | None = None


def lookup_card(client: ApiClient, model: dict[str, Any] | None) -> CardLookup:
    """The card of ``model`` (``/model``'s answer; None: no model served), fetched once per loaded version."""
    if model is None:
        return CardLookup(info=NOT_SERVING)
    status = model.get("card", "available")
    if status != "available":
        return CardLookup(info=STATUS_MESSAGES.get(status, CARD_FAILED))
    key = (model.get("model_version"), model.get("loaded_at"))
    cached = st.session_state.get(CACHE_KEY)
    if cached is None or cached[0] != key:
        try:
            cached = (key, client.model_card())
        except CardUnavailable as exc:
            return CardLookup(info=str(exc))
        except ApiUnavailable as exc:
            return CardLookup(warning=str(exc))
        st.session_state[CACHE_KEY] = cached
    return CardLookup(card=cached[1], version=str(key[0]))


def model_card_tab(lookup: CardLookup) -> None:
    """The tab: the card, or a sentence."""
    if lookup.card is None:
        if lookup.warning:
            st.warning(lookup.warning)
        else:
            st.info(lookup.info or CARD_FAILED)
        return
    try:
        show_card(lookup.card)
    except (KeyError, TypeError, ValueError, AttributeError):  # a card of another shape: a sentence, not a traceback
        log.exception("the model card of version %s cannot be shown", lookup.version)
        st.info(CARD_FAILED)
