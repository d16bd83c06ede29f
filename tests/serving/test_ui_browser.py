"""The clinician's page in a real browser: the real Streamlit server in front of the real API (itself in front of a
real MLflow server), driven in headless Chromium (Debian's ``chromium``) with Playwright. A person logs in, scores
one encounter and a CSV; the tests assert on what the page shows (the texts, the charts, the tables' rows).

With ``READMIT_SCREENSHOTS`` naming a folder, each step's picture is saved there (``make screenshots`` refreshes
those in docs/screenshots, shown in the README): a 1280x900 viewport, PNG.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from readmit_contract import synthetic, validate
from readmit_contract.columns import typical_record

from ..support import BIN, free_port, started
from .conftest import AUTH, KEYS

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    missing = f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("READMIT_SCREENSHOTS") or os.environ.get("CI"):  # make screenshots, CI: no silent skip
        pytest.fail(missing, pytrace=False)
    pytest.skip(missing, allow_module_level=True)

from playwright.sync_api import Browser, Locator, Page, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "server3-serving" / "ui" / "app.py"
sys.path.insert(0, str(APP.parent))  # the UI's modules live beside app.py (not an installed package)

from readmit_ui.batch import encounters_of  # noqa: E402
from readmit_ui.client import REJECTED  # noqa: E402
from readmit_ui.explanation import WHY_FACTORS, WHY_TITLE  # noqa: E402
from readmit_ui.result import BAND_TITLES, PROBABILITY_LABEL, USE_TITLE  # noqa: E402
from readmit_ui.template import TEMPLATE_NAME, template_csv  # noqa: E402

USERNAME = "clinician"
PASSWORD = secrets.token_urlsafe(18)
VIEWPORT = {"width": 1280, "height": 900}
WAIT_MS = 90_000
"""Longest wait for the page to answer an action (two shared cores, the API scoring with its explainer)."""
SCROLL_TO = """(element) => {
    let box = element.parentElement;
    while (box && !(box.scrollHeight > box.clientHeight && getComputedStyle(box).overflowY !== "visible")) {
        box = box.parentElement;
    }
    (box || document.scrollingElement).scrollBy(0, element.getBoundingClientRect().top - 24);
}"""
"""Scroll the page's scrolling box so that ``element`` is at the top of the viewport (24 px below its edge)."""

NUMBERS = {"Length of stay (days)": 8, "Inpatient stays, past year": 3, "Emergency visits, past year": 1,
           "Lab tests": 52, "Medications given": 21}
"""What the clinician changes in the typical encounter, by the field's label (number inputs)."""
CHANGED = {"time_in_hospital": 8, "number_inpatient": 3, "number_emergency": 1, "num_lab_procedures": 52,
           "num_medications": 21, "insulin": "Up"}
"""The same changes by contract name (and insulin, chosen in the medications' expander)."""


def screenshot(page: Page, name: str) -> None:
    """Save the viewport as ``<READMIT_SCREENSHOTS>/<name>.png`` when the variable names a folder."""
    folder = os.environ.get("READMIT_SCREENSHOTS")
    if not folder:
        return
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(600)  # the charts' and alerts' transitions end
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000, path  # a picture, not a blank page


@pytest.fixture(scope="module")
def ui(api, tmp_path_factory) -> Iterator[str]:
    """The real Streamlit server of the page, in front of the shared API, sending the "ui" caller's key."""
    port = free_port()
    env = {"API_URL": api, "API_KEY": KEYS["ui"], "UI_USERNAME": USERNAME, "UI_PASSWORD": PASSWORD}
    cmd = [str(BIN / "streamlit"), "run", str(APP), "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none",
           "--client.toolbarMode", "minimal", "--theme.base", "light"]
    with started(cmd, env, tmp_path_factory.mktemp("ui") / "streamlit.log",
                 ready_url=f"http://127.0.0.1:{port}/_stcore/health"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, ui: str) -> Iterator[Page]:
    """A fresh browser session on the page, logged in."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(ui)
        page.get_by_role("textbox", name="Username").fill(USERNAME)
        page.get_by_role("textbox", name="Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("heading", name="Demographics").wait_for()
        yield page
    finally:
        context.close()


def main(page: Page) -> Locator:
    """The page's main area (not the sidebar)."""
    return page.get_by_test_id("stMain")


def choose(page: Page, label: str, option: str) -> None:
    """Pick ``option`` in the select box labelled ``label`` (its list opens on a click once the page is still)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.scroll_into_view_if_needed()
    for _ in range(5):
        box.click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=3_000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    assert box.input_value() == option


def api_answer(api: str, encounter: dict) -> dict:
    return httpx.post(f"{api}/predict", json=encounter, headers=AUTH).raise_for_status().json()


def test_a_clinician_scores_one_encounter(api, page):
    # the form speaks clinical words and starts from the typical patient
    assert page.get_by_role("combobox", name="Age", exact=True).input_value() == "[70-80)"
    assert page.get_by_role("combobox", name="Discharged to").input_value() == "1 — Discharged to home"
    assert page.get_by_role("spinbutton", name="Length of stay (days)").input_value() == "3"
    assert page.get_by_role("textbox", name="Primary diagnosis").input_value() == "428"
    assert not page.get_by_text("num_lab_procedures", exact=True).count()  # no raw column name as a label
    screenshot(page, "form")

    # a malformed field: its error under it and in the summary, nothing sent
    diagnosis = page.get_by_role("textbox", name="Primary diagnosis")
    diagnosis.fill("not a code")
    page.get_by_role("button", name="Predict").click()
    errors = main(page).get_by_test_id("stAlertContentError")
    errors.filter(has_text=REJECTED).wait_for()
    assert "Primary diagnosis: 'not a code' is not an ICD-9 code" in errors.filter(has_text=REJECTED).inner_text()
    field_error = errors.filter(has_not_text=REJECTED)
    assert field_error.count() == 1 and "is not an ICD-9 code" in field_error.inner_text()
    under, field = field_error.bounding_box(), diagnosis.bounding_box()
    assert 0 <= under["y"] - (field["y"] + field["height"]) < 40 and abs(under["x"] - field["x"]) < 40  # under it
    assert not page.get_by_test_id("stMetric").count()

    # the clinician corrects it, changes what differs for this patient and asks for the risk
    diagnosis.fill("428")
    for label, value in NUMBERS.items():
        field = page.get_by_role("spinbutton", name=label)
        field.fill(str(value))
        field.press("Tab")
    page.get_by_text("Status of each medication").click()
    page.wait_for_timeout(800)  # the expander opens
    choose(page, "Insulin", "Up")
    page.get_by_role("button", name="Predict").click()

    expected = api_answer(api, typical_record() | CHANGED)
    metric = page.get_by_test_id("stMetric")
    metric.get_by_test_id("stMetricValue").filter(has_text=f"{expected['probability']:.1%}").wait_for()
    assert metric.get_by_test_id("stMetricLabel").inner_text() == PROBABILITY_LABEL
    band = expected["risk_band"]
    text = main(page).inner_text()
    assert f"{BAND_TITLES[band]}. The predicted risk is" in text and "decision threshold" in text
    assert not errors.count()

    # why this risk: the chart of the factors, and the model card's intended use beside the result
    why = page.get_by_role("heading", name=WHY_TITLE)
    why.wait_for()
    chart = page.get_by_test_id("stVegaLiteChart").first
    chart.wait_for()
    assert chart.bounding_box()["height"] > 32 * WHY_FACTORS / 2
    assert f"(a risk of {expected['probability']:.1%})" in main(page).inner_text()
    assert page.get_by_text(USE_TITLE).count() == 1
    page.get_by_test_id("stMetric").evaluate(SCROLL_TO)
    screenshot(page, "prediction")


def test_a_clinician_scores_a_csv(api, page, tmp_path):
    page.get_by_role("tab", name="Many encounters (CSV)").click()

    # the template: the contract's columns and one typical encounter, downloaded by the browser
    with page.expect_download() as download:
        page.get_by_role("button", name="Download a template CSV").click()
    assert download.value.suggested_filename == TEMPLATE_NAME
    assert Path(download.value.path()).read_bytes() == template_csv()

    frame = synthetic.generate(120, seed=5)
    bad = frame.iloc[[0]].assign(encounter_id="999999999", time_in_hospital="abc")
    frame = pd.concat([frame, bad], ignore_index=True)
    upload = tmp_path / "encounters.csv"
    frame.to_csv(upload, index=False)
    valid = validate(frame).valid
    answers = httpx.post(f"{api}/predict/batch", json={"encounters": encounters_of(valid)},
                         headers=AUTH).raise_for_status().json()["predictions"]
    expected = pd.DataFrame(answers, index=valid.index)
    n_scored = int(expected["scored"].sum())
    bands = expected.loc[expected["scored"], "risk_band"].value_counts()

    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(upload))
    page.get_by_role("button", name="Score encounters.csv").click()
    summary = main(page).get_by_test_id("stAlertContentSuccess")
    summary.wait_for()
    assert summary.inner_text().startswith(f"121 rows: {n_scored} scored, {len(expected) - n_scored} out of scope")
    assert "1 rejected by the contract" in summary.inner_text()

    # the bands: a line of counts and the chart
    counts = " · ".join(f"{band} {int(bands.get(band, 0))}" for band in ("low", "medium", "high"))
    assert main(page).get_by_text(counts, exact=True).count() == 1
    chart = main(page).get_by_test_id("stVegaLiteChart").filter(visible=True)  # the card's tab has its own
    chart.wait_for()
    assert chart.bounding_box()["height"] > 150

    # the tables: the row not sent, and every row with its score (identifiers and scores first)
    # (the grids draw on a canvas; their accessible table, off screen, holds the rows in view)
    grids = main(page).get_by_test_id("stDataFrame").filter(visible=True).all()
    rejected, preview = (grid.locator("table[role=grid]") for grid in grids)
    assert rejected.get_attribute("aria-rowcount") == "2"  # the header and the bad row
    cells = rejected.locator("td").all_text_contents()
    assert cells[:2] == ["121", "122"] and cells[2].startswith("time_in_hospital: wrong type")
    assert preview.get_attribute("aria-rowcount") == str(len(frame) + 1)
    header = preview.locator("th").all_text_contents()
    assert header[:5] == ["encounter_id", "patient_nbr", "probability", "risk_band", "scored"]
    i = int(expected.index[expected["scored"]][0])  # the first scored row (the first rows are on screen)
    cells = preview.locator("tr").nth(i + 1).locator("td").all_text_contents()
    assert cells[0] == frame.loc[i, "encounter_id"] and cells[3] == expected.loc[i, "risk_band"]
    shown = float(cells[2].removesuffix("%")) / (100 if cells[2].endswith("%") else 1)  # the accessible text: raw
    assert shown == pytest.approx(expected.loc[i, "probability"], abs=5e-4)
    summary.evaluate(SCROLL_TO)
    screenshot(page, "csv")


def test_the_model_card_is_one_click_away(page):
    page.get_by_role("tab", name="Model card").click()
    for heading in ("Intended use", "Performance", "Calibration", "Decision threshold"):
        page.get_by_role("heading", name=heading).wait_for()
    calibration = page.get_by_role("heading", name="Calibration")
    page.get_by_role("heading", name="Performance").evaluate(SCROLL_TO)
    chart = main(page).get_by_test_id("stVegaLiteChart").filter(visible=True)  # drawn once in view
    chart.wait_for()
    box, heading = chart.bounding_box(), calibration.bounding_box()
    assert box["height"] > 150 and box["y"] > heading["y"] and box["y"] + box["height"] < VIEWPORT["height"]
    screenshot(page, "model-card")
