""""Why this risk": the factors of one encounter that moved its predicted risk the most, as a bar chart.

The API's explanation (``POST /predict?explain=true``) lists each factor's contribution to the log-odds of
readmission: positive raises the risk, negative lowers it, and together with the starting point (the model's
average) and the other factors they add up to the encounter's risk.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

WHY_FACTORS = 10
"""How many factors the page asks the API to explain a prediction with."""
WHY_TITLE = "Why this risk"
RAISES, LOWERS, NEITHER = "raises the risk", "lowers the risk", "no effect"
COLOURS = {RAISES: "#d62728", LOWERS: "#1f77b4", NEITHER: "#9e9e9e"}
HOW_TO_READ = (
    "Each bar is one fact about this encounter and how far it moved the predicted risk away from the average "
    "encounter's: red bars raise the risk, blue bars lower it, longer bars weigh more. The bars are on the model's "
    "log-odds scale, so they add up: the average encounter's log-odds plus every factor's bar give this encounter's "
    "risk. They show what the model weighed, not what causes a readmission."
)
AXIS = "Contribution to the log-odds of readmission"


def logistic(log_odds: float) -> float:
    return 1.0 / (1.0 + math.exp(-log_odds))


def factor_frame(explanation: dict[str, Any]) -> pd.DataFrame:
    """One row per factor shown, largest effect first: its text, contribution and effect."""
    rows = [{"factor": f["text"], "contribution": float(f["contribution"]),
             "effect": RAISES if f["contribution"] > 0 else LOWERS if f["contribution"] < 0 else NEITHER}
            for f in explanation["factors"]]
    return pd.DataFrame(rows, columns=["factor", "contribution", "effect"])


def factor_chart(frame: pd.DataFrame) -> alt.Chart:
    """Horizontal bars, largest effect on top, raises and lowers in two colours."""
    return alt.Chart(frame).mark_bar().encode(
        y=alt.Y("factor:N", sort=list(frame["factor"]), title=None, axis=alt.Axis(labelLimit=420)),
        x=alt.X("contribution:Q", title=AXIS),
        color=alt.Color("effect:N", title="Effect",
                        scale=alt.Scale(domain=list(COLOURS), range=list(COLOURS.values()))),
        tooltip=[alt.Tooltip("factor:N", title="Factor"), alt.Tooltip("contribution:Q", title="Contribution",
                                                                      format="+.3f")],
    ).properties(height=max(160, 32 * len(frame)))


def show_explanation(explanation: dict[str, Any]) -> None:
    st.subheader(WHY_TITLE)
    st.caption(HOW_TO_READ)
    frame = factor_frame(explanation)
    st.altair_chart(factor_chart(frame), width="stretch")
    others = int(explanation.get("other_factor_count", 0))
    base = float(explanation["base_log_odds"])
    st.caption(
        f"Starting point, the average encounter: log-odds {base:+.2f} (a risk of {logistic(base):.1%}). "
        + (f"The {others} other factors together: {float(explanation['other_factors']):+.2f}. " if others else "")
        + f"This encounter: log-odds {float(explanation['log_odds']):+.2f} "
          f"(a risk of {logistic(float(explanation['log_odds'])):.1%})."
    )
