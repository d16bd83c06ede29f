"""The Streamlit page: a login first, then API status in the sidebar, a one-encounter form (with the risk, what its
band means and why the model gave it), a CSV batch tab (a template, progress, the rows per risk band) and the model
card.

Nothing the page shows comes from an exception's text: the API client's failures carry messages
written for the page, and anything unexpected becomes ``PAGE_FAILED`` (details in the UI's log).
Deploy with STREAMLIT_CLIENT_SHOW_ERROR_DETAILS=none as well, so Streamlit itself never shows one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import PurePath
from typing import Any

import pandas as pd
import streamlit as st
from pydantic import ValidationError
from readmit_contract import SchemaMismatchError
from readmit_contract.columns import ID_COLUMNS, Column

from . import form, login
from .batch import SCORE_COLUMNS, BatchResult, score_parsed
from .card import lookup_card, model_card_tab
from .client import REJECTED, ApiClient, ApiRejected, ApiUnavailable, FieldError, NotExplainable, Readiness
from .explanation import WHY_FACTORS
from .result import BAND_COLOURS, PROBABILITY_LABEL, Cutoffs, show_bands, show_prediction
from .settings import UISettings
from .template import TEMPLATE_NAME, template_csv
from .upload import MIB, UploadRefused, read_upload, size_refusal

__all__ = ["BAND_COLOURS", "PAGE_FAILED", "main"]

log = logging.getLogger(__name__)

GRID = 3  # inputs per row
PAGE_FAILED = "Something went wrong on this page. Try again; if it persists, ask the administrator."


@dataclass
class Outcome:
    """What the last action produced, kept in the session across reruns."""

    result: Any = None
    errors: list[FieldError] = field(default_factory=list)
    down: str | None = None
    refused: str | None = None
    """Why an uploaded file cannot be scored at all (a sentence from ``upload``)."""
    note: str | None = None
    """Why a prediction comes without its explanation (the model cannot be explained)."""


def main() -> None:
    st.set_page_config(page_title="30-day readmission risk", layout="wide")
    try:
        settings = UISettings()
    except ValidationError as exc:
        names = sorted({str(e["loc"][0]) for e in exc.errors(include_input=False) if e["loc"]})
        st.error(f"This page is not configured correctly ({', '.join(names)}): ask the administrator.")
        return
    missing = settings.missing()
    if missing:
        st.error(f"This page is closed: the administrator must set {', '.join(missing)}.")
        return
    if not login.logged_in():
        login.login_form(settings)
        return
    login.logout_button()
    try:
        page(settings)
    except Exception:  # noqa: BLE001 - the page shows a sentence, the log keeps the traceback
        log.exception("the page failed")
        st.error(PAGE_FAILED)


def page(settings: UISettings) -> None:
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    with ApiClient(settings.base_url, api_key, settings.api_timeout_seconds) as client:
        readiness = client.readiness()
        problem, model = sidebar(client, readiness)
        st.title("30-day readmission risk")
        st.caption("Risk that a diabetic patient's hospital encounter is followed by a readmission within 30 days.")
        if not readiness.ready:
            st.error(readiness.error)
        elif problem:
            st.error(problem)
        card = lookup_card(client, model)
        cutoffs = Cutoffs.of(model, card.card)
        one, many, card_tab = st.tabs(["One encounter", "Many encounters (CSV)", "Model card"])
        with one:
            single_encounter(client, cutoffs)
        with many:
            many_encounters(client, settings.api_batch_size, upload_limit_mb(settings), cutoffs)
        with card_tab:
            model_card_tab(card)


# -- sidebar ---------------------------------------------------------------------------------------

def sidebar(client: ApiClient, readiness: Readiness) -> tuple[str | None, dict[str, Any] | None]:
    """The service's state and model; a message for the page when the model cannot be read, and the model
    (``/model``'s answer) when it can."""
    with st.sidebar:
        st.header("Prediction service")
        if not readiness.ready:
            (st.warning if readiness.reachable else st.error)(
                "Up, no model yet" if readiness.reachable else "Down (unreachable)")
            return None, None
        st.success("Ready")
        try:
            model = client.model()
        except (ApiUnavailable, ApiRejected) as exc:
            st.warning(str(exc))
            return str(exc), None
        metrics = model.get("metrics", {})
        auc = metrics.get("val_roc_auc")
        loaded = datetime.fromtimestamp(model["loaded_at"], UTC).strftime("%Y-%m-%d %H:%M UTC")
        st.markdown(
            f"**Model** {model['model_name']}@{model['model_alias']}  \n"
            f"**Version** {model['model_version']}  \n"
            f"**Validation ROC-AUC** {'n/a' if auc is None else f'{auc:.3f}'}  \n"
            f"**Decision threshold** {model['threshold']:.3f}  \n"
            f"**Loaded** {loaded}"
        )
        with st.expander("All metrics"):
            st.dataframe(pd.Series(metrics, name="value").sort_index(), width="stretch")
    return None, model


# -- one encounter -----------------------------------------------------------------------------------

def field_input(col: Column) -> tuple[Any, str]:
    """Render the input of one contract column; its widget value and (open categories) the free text."""
    label, help_text = form.label(col), form.help_text(col)
    kind = form.widget(col)
    if kind == "number":
        return st.number_input(label, min_value=col.minimum, max_value=col.maximum, value=form.default(col),
                               step=1, key=form.key(col), help=help_text), ""
    if kind == "text":
        return st.text_input(label, value=form.default(col), key=form.key(col), help=help_text,
                             placeholder="e.g. 250.83 (empty: unknown)"), ""
    choices = form.options(col)
    value = st.selectbox(label, choices, index=choices.index(form.default(col)), key=form.key(col),
                         format_func=partial(form.format_option, col), help=help_text)
    other = ""
    if col.kind == "open_category":
        other = st.text_input(f"{label}: other value", key=form.other_key(col), label_visibility="collapsed",
                              placeholder=f"value when “{form.OTHER}” is chosen")
    return value, other


def show_field_errors(title: str, errors: list[FieldError]) -> None:
    st.error(title + "\n" + "\n".join(f"- **{form.field_label(e.field)}**: {e.message}" for e in errors))


def predict_explained(client: ApiClient, encounter: dict[str, Any]) -> Outcome:
    """The encounter's prediction with its explanation; without it (and saying why) when the model cannot be
    explained."""
    try:
        return Outcome(result=client.predict(encounter, explain_top=WHY_FACTORS))
    except NotExplainable as exc:
        return Outcome(result=client.predict(encounter), note=str(exc))


def single_encounter(client: ApiClient, cutoffs: Cutoffs | None = None) -> None:
    values: dict[str, Any] = {}
    others: dict[str, str] = {}
    slots: dict[str, Any] = {}  # under each field, where its error goes
    st.caption("The form starts from the most common encounter of the data the platform was built on; change what "
               "differs for your patient. The ? beside a field says what it holds.")
    with st.form("encounter_form"):
        for section in form.sections():
            box = st.expander(section.title) if section.in_expander else st.container()
            with box:
                if not section.in_expander:
                    st.subheader(section.title)
                grid = st.columns(GRID)
                for i, col in enumerate(section.columns):
                    with grid[i % GRID]:
                        values[col.name], others[col.name] = field_input(col)
                        slots[col.name] = st.empty()
        submitted = st.form_submit_button("Predict", type="primary", key="predict")

    if submitted:
        encounter, errors = form.build_encounter(values, others)
        st.session_state["sent_encounter"] = encounter
        outcome = Outcome(errors=errors)
        if not errors:
            try:
                outcome = predict_explained(client, encounter)
            except ApiRejected as exc:
                outcome.errors = exc.errors
            except ApiUnavailable as exc:
                outcome.down = str(exc)
        st.session_state["prediction"] = outcome

    outcome = st.session_state.get("prediction")
    if outcome is None:
        return
    if outcome.down:
        st.error(outcome.down)
    elif outcome.errors:
        for error in outcome.errors:
            if error.field in slots:
                slots[error.field].error(error.message)
        show_field_errors(REJECTED, outcome.errors)
    else:
        show_prediction(outcome.result, cutoffs, outcome.note)


# -- many encounters ---------------------------------------------------------------------------------

def upload_limit_mb(settings: UISettings) -> int:
    """The page's limit, never above the size Streamlit's server accepts (``server.maxUploadSize``)."""
    return max(1, min(settings.max_upload_mb, int(st.get_option("server.maxUploadSize"))))


def many_encounters(client: ApiClient, chunk_size: int, limit_mb: int, cutoffs: Cutoffs | None = None) -> None:
    st.markdown(
        "Upload a CSV in the format of `diabetic_data.csv` (the contract's column names, `?` or empty for "
        "missing), in UTF-8 (UTF-16 with a byte-order mark is read too), comma-separated (semicolons or tabs "
        f"are recognised), up to {limit_mb:,} MB. Identifiers, `readmitted` and other extra columns are kept in "
        f"the output, not sent. Rows are checked against the contract, then scored in chunks of {chunk_size:,}."
    )
    st.download_button("Download a template CSV", data=template_csv(), file_name=TEMPLATE_NAME, mime="text/csv",
                       key="template", on_click="ignore", icon=":material/download:",
                       help="The columns a file needs, with one typical encounter as an example row: replace it with "
                            "your encounters (one per row, `?` where a value is unknown).")
    upload = st.file_uploader("CSV of encounters", type=["csv"], key="csv", max_upload_size=limit_mb)
    if upload is None:
        return
    too_big = size_refusal(upload.size, limit_mb * MIB)
    if too_big:  # refused from its size alone: nothing of it is read
        st.session_state.pop("batch", None)
        st.error(too_big)
        return
    if st.button(f"Score {upload.name}", type="primary", key="score"):
        st.session_state["batch"] = (upload.file_id, score_upload(upload.getvalue(), client, chunk_size,
                                                                  limit_mb * MIB))
    stored = st.session_state.get("batch")
    if stored is None or stored[0] != upload.file_id:
        return
    outcome: Outcome = stored[1]
    if outcome.refused:
        st.error(outcome.refused)
    elif outcome.down:
        st.error(outcome.down)
    elif outcome.errors:
        show_field_errors("The file cannot be scored:", outcome.errors)
    else:
        show_batch(outcome.result, PurePath(upload.name).stem, cutoffs)


def progress_text(done: int, total: int, chunk_size: int) -> str:
    """``2,000 of 4,321 valid rows scored (chunk 2 of 5)``."""
    chunks = max(1, -(-total // chunk_size))
    return f"{done:,} of {total:,} valid rows scored (chunk {min(chunks, -(-done // chunk_size)):,} of {chunks:,})"


def score_upload(data: bytes, client: ApiClient, chunk_size: int, limit_bytes: int) -> Outcome:
    try:
        parsed = read_upload(data, limit_bytes)
    except UploadRefused as exc:
        log.info("CSV upload refused: %s", exc)
        return Outcome(refused=str(exc))
    bar = st.progress(0.0, text=f"Checking {parsed.n_records:,} rows against the contract…")
    try:
        return Outcome(result=score_parsed(parsed, client, chunk_size, progress=lambda done, total: bar.progress(
            done / total, text=progress_text(done, total, chunk_size))))
    except SchemaMismatchError as exc:
        return Outcome(refused=f"The file lacks required column(s) of the contract: {', '.join(exc.missing)}.")
    except ApiRejected as exc:
        return Outcome(errors=exc.errors)
    except ApiUnavailable as exc:
        return Outcome(down=str(exc))
    finally:
        bar.empty()


def show_batch(result: BatchResult, stem: str, cutoffs: Cutoffs | None = None) -> None:
    scored = result.scored
    n_scored = int(scored["scored"].sum())
    out_of_scope = result.n_answered - n_scored
    by_contract = len(result.rejected) - result.n_unreadable
    unreadable = f", {result.n_unreadable:,} unreadable (not sent)" if result.n_unreadable else ""
    unanswered = (f", {result.n_unanswered:,} not scored because the prediction service did not answer"
                  if result.n_unanswered else "")
    summary = (f"{result.n_rows:,} rows: {n_scored:,} scored, {out_of_scope:,} out of scope (not scored), "
               f"{by_contract:,} rejected by the contract (not sent){unreadable}{unanswered}.")
    if result.n_unanswered:  # the rows answered are kept; the others are in the download, marked not scored
        st.warning(summary)
        st.warning(f"Scoring stopped after {result.n_answered:,} of {result.n_sent:,} valid rows: "
                   f"{result.interruption} The rows not scored are marked so in the download (column reason); "
                   "score them again later.")
    else:
        st.success(summary)
    for note in result.notes:
        st.caption(note)
    if n_scored:
        show_bands(scored, cutoffs)
    if len(result.rejected):
        st.warning(f"{len(result.rejected):,} row(s) rejected, not sent (row 1 = first data row; line: in the file):")
        st.dataframe(result.rejected, hide_index=True, width="stretch")
    st.download_button("Download the scored CSV", data=result.to_csv(), file_name=f"{stem}-scored.csv",
                       mime="text/csv", key="download", on_click="ignore")
    st.caption("Preview (first 200 rows): the identifiers and the scores first, then the columns of the file "
               "(the download keeps the file's order)")
    st.dataframe(preview(scored.head(200)), width="stretch", hide_index=True, column_config={
        "probability": st.column_config.NumberColumn("probability", format="percent", help=PROBABILITY_LABEL)})


def preview(scored: pd.DataFrame) -> pd.DataFrame:
    """The scored rows for the eye: identifiers, then the scores, then the file's other columns."""
    first = [c for c in ID_COLUMNS if c in scored.columns] + list(SCORE_COLUMNS)
    return scored[first + [c for c in scored.columns if c not in first]]
