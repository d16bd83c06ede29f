"""What a person sees of a prediction: the probability, the risk band and what the band means for the model being
served, and (for a CSV) how the scored rows fall into the bands.

The API's bands (``risk_band``): ``high`` at or above the model's decision threshold, ``low`` below the share of
training encounters readmitted within 30 days (its base rate), ``medium`` between. ``/model`` gives both figures
and the model card words the threshold as a capacity rule; a prediction from another version than the one
described (the alias moved in between) gets the bands' meaning without figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from .explanation import show_explanation

BANDS = ("low", "medium", "high")
BAND_COLOURS = {"low": "green", "medium": "orange", "high": "red"}
"""Streamlit's badge colours per band."""
BAND_HEX = {"low": "#2e7d32", "medium": "#ef6c00", "high": "#c62828"}
"""The same colours in charts."""
BAND_TITLES = {"low": "Low risk", "medium": "Medium risk", "high": "High risk"}
PROBABILITY_LABEL = "Probability of readmission within 30 days"
BAND_CHART_TITLE = "Scored rows by risk band"


@dataclass(frozen=True)
class Cutoffs:
    """Where the bands of the model being served start (``/model``), and its card's threshold rule."""

    version: str
    threshold: float
    base_rate: float
    rule: str | None = None
    card: dict[str, Any] | None = None
    """The version's model card, when it has one to show."""

    @classmethod
    def of(cls, model: dict[str, Any] | None, card: dict[str, Any] | None = None) -> Cutoffs | None:
        """From ``/model``'s answer (None: no model described) and the version's card (its ``threshold.rule``)."""
        if not model or not all(isinstance(model.get(k), int | float) for k in ("threshold", "base_rate")):
            return None
        rule = None
        if card and isinstance(card.get("threshold"), dict) and isinstance(card["threshold"].get("rule"), str):
            rule = card["threshold"]["rule"]
        return cls(str(model.get("model_version")), float(model["threshold"]), float(model["base_rate"]), rule, card)


def band_meaning(band: str, cutoffs: Cutoffs | None) -> str:
    """One sentence: where the band lies and whether the model flags the encounter."""
    if cutoffs is None:
        return {
            "low": "The predicted risk is below the share of readmissions among the encounters the model learnt "
                   "from: not flagged.",
            "medium": "The predicted risk is above the share of readmissions among the encounters the model learnt "
                      "from, but below its decision threshold: not flagged, higher than usual.",
            "high": "The predicted risk is at or above the model's decision threshold: flagged for follow-up after "
                    "discharge.",
        }.get(band, "")
    if band == "low" and cutoffs.threshold <= cutoffs.base_rate:  # no medium band: low is all below the threshold
        return f"The predicted risk is below the model's decision threshold of {cutoffs.threshold:.1%}: not flagged."
    average = f"{cutoffs.base_rate:.1%} of the encounters the model learnt from were readmitted within 30 days"
    return {
        "low": f"The predicted risk is below the average ({average}): not flagged.",
        "medium": f"The predicted risk is above the average ({average}) but below the model's decision threshold "
                  f"of {cutoffs.threshold:.1%}: not flagged, higher than usual.",
        "high": f"The predicted risk is at or above the model's decision threshold of {cutoffs.threshold:.1%}: "
                "flagged for follow-up after discharge.",
    }.get(band, "")


USE_TITLE = "What this model is for, and what not"


def show_use(card: dict[str, Any]) -> None:
    """The model card's intended use, in an expander under a result (the whole card is in its tab)."""
    use = card.get("intended_use")
    if not isinstance(use, dict) or not isinstance(use.get("summary"), str):
        return
    with st.expander(USE_TITLE):
        st.markdown(use["summary"])
        not_for = [item for item in use.get("not_for") or [] if isinstance(item, str)]
        if not_for:
            st.markdown("**Not for:**\n" + "\n".join(f"- {item}" for item in not_for))


def show_prediction(prediction: dict[str, Any], cutoffs: Cutoffs | None = None, note: str | None = None) -> None:
    """The answer for one encounter: probability, band and its meaning, the model (and its card's intended use), why
    this risk."""
    if not prediction["scored"]:
        st.info(f"Not scored: {prediction['reason']}")
    else:
        if cutoffs is not None and cutoffs.version != str(prediction["model_version"]):
            cutoffs = None  # another version answered: its figures are not the ones described
        left, right = st.columns(2)
        left.metric(PROBABILITY_LABEL, f"{prediction['probability']:.1%}")
        band = prediction["risk_band"]
        right.markdown(f"**Risk band**\n\n:{BAND_COLOURS.get(band, 'gray')}-badge[{band}]")
        st.markdown(f"**{BAND_TITLES.get(band, band)}.** {band_meaning(band, cutoffs)}")
        if cutoffs is not None and cutoffs.rule:
            st.caption(f"The decision threshold: {cutoffs.rule}")
    st.caption(f"Model {prediction['model_name']} version {prediction['model_version']}. A risk supports the care "
               "team's judgement, it does not replace it: the Model card tab says what the model is and is not for.")
    if cutoffs is not None and cutoffs.card is not None:  # cutoffs is None when another version answered
        show_use(cutoffs.card)
    if prediction.get("explanation"):
        show_explanation(prediction["explanation"])
    elif note and prediction["scored"]:
        st.info(note)


def band_counts(scored: pd.DataFrame) -> pd.DataFrame:
    """Scored rows per band (every band, in order): ``band``, ``rows``, ``share``."""
    rows = scored.loc[scored["scored"].astype(bool), "risk_band"]
    counts = rows.value_counts().reindex(list(BANDS), fill_value=0)
    total = int(counts.sum())
    return pd.DataFrame({"band": list(BANDS), "rows": counts.to_numpy(dtype="int64"),
                         "share": counts.to_numpy(dtype="float64") / total if total else 0.0})


def band_chart(counts: pd.DataFrame) -> alt.Chart:
    """One bar per band, in the bands' colours, labelled with its number of rows."""
    encoding = {"x": alt.X("band:N", sort=list(BANDS), title="Risk band", axis=alt.Axis(labelAngle=0)),
                "y": alt.Y("rows:Q", title="Scored rows")}
    bars = alt.Chart(counts).mark_bar().encode(
        **encoding,
        color=alt.Color("band:N", scale=alt.Scale(domain=list(BANDS), range=[BAND_HEX[b] for b in BANDS]),
                        legend=None),
        tooltip=[alt.Tooltip("band:N", title="Risk band"), alt.Tooltip("rows:Q", title="Rows", format=","),
                 alt.Tooltip("share:Q", title="Share", format=".1%")],
    )
    labels = alt.Chart(counts).mark_text(dy=-8).encode(**encoding, text=alt.Text("rows:Q", format=","))
    return alt.layer(bars, labels).properties(height=260, title=BAND_CHART_TITLE)


def show_bands(scored: pd.DataFrame, cutoffs: Cutoffs | None) -> None:
    """The scored rows' bands: a line of badges and a bar chart, with what the bands mean."""
    counts = band_counts(scored)
    st.markdown("  ·  ".join(f":{BAND_COLOURS[b]}-badge[{b}] {n:,}" for b, n in zip(counts["band"], counts["rows"],
                                                                                     strict=True)))
    st.altair_chart(band_chart(counts), width="stretch")
    versions = set(scored.loc[scored["scored"].astype(bool), "model_version"].astype(str))
    if cutoffs is not None and versions == {cutoffs.version}:  # the figures of the version that scored every row
        st.caption(f"High: a risk of {cutoffs.threshold:.1%} or more (the model's decision threshold: flagged); "
                   f"low: below {min(cutoffs.base_rate, cutoffs.threshold):.1%} (the share of training encounters "
                   "readmitted within 30 days); medium: between.")
