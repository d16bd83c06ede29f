"""The Streamlit UI (streamlit's AppTest: the real page script, in process) against the real API in front
of a real MLflow server. The page asks for a login first; it sends the "ui" caller's key."""

from __future__ import annotations

import io
import json
import secrets
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from readmit_contract import synthetic, validate
from readmit_contract.columns import column
from readmit_contract.encounter import ENCOUNTER_COLUMNS
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from ..support import BIN, free_port, started, wait_http
from .conftest import AUTH, KEYS, api_process

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parents[2] / "server3-serving" / "ui" / "app.py"
sys.path.insert(0, str(APP.parent))  # the UI's modules live beside app.py (not an installed package)

from readmit_ui.batch import SCORE_COLUMNS, encounters_of, score_csv  # noqa: E402
from readmit_ui.client import (  # noqa: E402
    BUSY,
    GATEWAY,
    NO_MODEL,
    NOT_FOUND,
    REFUSED,
    REJECTED,
    TOO_LARGE,
    UNREACHABLE,
    ApiBusy,
    ApiClient,
    ApiRejected,
    ApiUnavailable,
    failed_message,
    json_answer,
)
from readmit_ui.form import FORM_COLUMNS, field_label  # noqa: E402
from readmit_ui.login import FAILURE_DELAY_SECONDS, USER, WRONG  # noqa: E402
from readmit_ui.page import BAND_COLOURS, PAGE_FAILED  # noqa: E402
from readmit_ui.result import BAND_CHART_TITLE, BAND_TITLES, Cutoffs, band_meaning  # noqa: E402
from readmit_ui.template import TEMPLATE_NAME, template_csv  # noqa: E402

USERNAME = "clinician"
PASSWORD = secrets.token_urlsafe(18)
UI_KEY = KEYS["ui"]


def open_app(monkeypatch, api_url: str, api_key: str = UI_KEY) -> AppTest:
    """The page as a visitor first sees it (not logged in)."""
    for name, value in {"API_URL": api_url, "API_KEY": api_key, "UI_USERNAME": USERNAME,
                        "UI_PASSWORD": PASSWORD}.items():
        monkeypatch.setenv(name, value)
    return AppTest.from_file(str(APP), default_timeout=60).run()


def log_in(at: AppTest, username: str = USERNAME, password: str = PASSWORD) -> AppTest:
    at.text_input(key="login:username").input(username)
    at.text_input(key="login:password").input(password)
    return at.button(key="login").click().run()


def run_app(monkeypatch, api_url: str, api_key: str = UI_KEY) -> AppTest:
    """The page after a successful login."""
    at = log_in(open_app(monkeypatch, api_url, api_key))
    assert at.session_state[USER] == USERNAME
    return at


def page_text(at: AppTest) -> str:
    """Everything the page carries (values, labels, help texts), from each element's message."""
    parts: list[str] = []

    def walk(node) -> None:
        if getattr(node, "proto", None) is not None:
            parts.append(str(node.proto))
        children = getattr(node, "children", None)
        for child in (children.values() if isinstance(children, dict) else ()):
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def assert_no_internal_detail(at: AppTest, api_url: str) -> None:
    assert not at.exception
    text = page_text(at)
    host = api_url.removeprefix("http://")
    for needle in ("Traceback", "Error(", "Exception", "httpx", "ConnectError", "site-packages", host, UI_KEY,
                   PASSWORD):
        assert needle not in text, needle


def charts(at: AppTest) -> list[tuple[dict, pd.DataFrame]]:
    """Each Vega-Lite chart on the page: its spec and its data (every dataset, stacked)."""
    found = []
    for chart in at.get("vega_lite_chart"):
        frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]
        if chart.proto.data.data:
            frames.append(convert_arrow_bytes_to_pandas_df(chart.proto.data.data))
        found.append((json.loads(chart.proto.spec), pd.concat(frames, ignore_index=True)))
    return found


def has_form(at: AppTest) -> bool:
    return any(w.key == "field:age" for w in at.selectbox)


def typical_encounter() -> dict:
    """What an untouched form sends: the contract's typical encounter (``Column.typical``), None for missing."""
    return {col.name: col.typical for col in ENCOUNTER_COLUMNS if col.kind != "id"}


def fill(at: AppTest, name: str, value) -> None:
    kind = column(name).kind
    if kind == "integer":
        at.number_input(key=f"field:{name}").set_value(value)
    elif kind == "icd9":
        at.text_input(key=f"field:{name}").input(value)
    else:
        at.selectbox(key=f"field:{name}").set_value(value)


CHANGES = {
    "age": "[70-80)", "race": "AfricanAmerican", "discharge_disposition_id": 3, "admission_source_id": 7,
    "time_in_hospital": 9, "number_inpatient": 4, "number_emergency": 2, "num_medications": 21,
    "diag_1": "428", "diag_2": "250.83", "medical_specialty": "InternalMedicine", "A1Cresult": ">8",
    "insulin": "Up", "glyburide-metformin": "Steady", "change": "Ch", "diabetesMed": "Yes",
}


# -- login ---------------------------------------------------------------------------------------------

def test_the_page_asks_for_a_login_first(api, monkeypatch):
    at = open_app(monkeypatch, api)
    assert not at.exception and not has_form(at) and not at.tabs and not at.sidebar.markdown
    assert [w.key for w in at.text_input] == ["login:username", "login:password"]
    password = at.text_input(key="login:password").proto
    assert type(password).Type.Name(password.type) == "PASSWORD"
    assert USER not in at.session_state


def test_a_wrong_login_is_refused_after_a_delay(api, monkeypatch):
    at = open_app(monkeypatch, api)
    for username, password in ((USERNAME, PASSWORD + "x"), ("someone", PASSWORD), (USERNAME, ""),
                               (USERNAME.upper(), PASSWORD)):
        started_at = time.monotonic()
        log_in(at, username, password)
        assert time.monotonic() - started_at >= FAILURE_DELAY_SECONDS
        assert [e.value for e in at.error] == [WRONG], (username, password)
        assert USER not in at.session_state and not has_form(at) and not at.tabs
        assert at.text_input(key="login:password").value == ""  # the form does not keep what was typed
    assert_no_internal_detail(at, api)


def test_the_right_login_shows_the_form_until_logout(api, monkeypatch):
    at = run_app(monkeypatch, api)
    assert not at.exception and not at.error and has_form(at)
    assert any(USERNAME in c.value for c in at.sidebar.caption)
    at.button(key="predict").click().run()
    assert at.session_state["prediction"].result["scored"]
    at.run()  # the session remembers the login across reruns
    assert has_form(at) and at.session_state[USER] == USERNAME

    at.button(key="logout").click().run()
    assert not has_form(at) and USER not in at.session_state and "prediction" not in at.session_state
    assert [w.key for w in at.text_input] == ["login:username", "login:password"]


@pytest.mark.parametrize("unset", ["UI_USERNAME", "UI_PASSWORD"])
def test_without_a_login_configured_the_page_is_closed(api, monkeypatch, unset):
    monkeypatch.setenv(unset, "")
    at = AppTest.from_file(str(APP), default_timeout=60)
    for name, value in {"API_URL": api, "API_KEY": UI_KEY, "UI_USERNAME": USERNAME, "UI_PASSWORD": PASSWORD,
                        }.items():
        if name != unset:
            monkeypatch.setenv(name, value)
    at.run()
    assert not at.exception and not has_form(at) and not at.text_input and not at.button
    (error,) = at.error
    assert "administrator must set" in error.value and unset in error.value
    monkeypatch.delenv(unset)
    assert unset in at.run().error[0].value and not at.text_input


# -- predictions -----------------------------------------------------------------------------------

def test_prediction_round_trip(api, monkeypatch):
    at = run_app(monkeypatch, api)
    assert not at.exception and not at.error
    for name, value in CHANGES.items():
        fill(at, name, value)
    at.button(key="predict").click().run()
    assert not at.exception and not at.error and not at.warning

    encounter = typical_encounter() | CHANGES
    assert at.session_state["sent_encounter"] == encounter
    expected = httpx.post(f"{api}/predict", json=encounter, headers=AUTH).raise_for_status().json()
    assert expected["scored"]
    shown = at.session_state["prediction"].result
    assert shown["probability"] == expected["probability"]
    assert [m.value for m in at.metric] == [f"{expected['probability']:.1%}"]
    band = expected["risk_band"]
    markdown = " ".join(m.value for m in at.main.markdown)
    assert f":{BAND_COLOURS[band]}-badge[{band}]" in markdown
    model = httpx.get(f"{api}/model", headers=AUTH).raise_for_status().json()
    card = httpx.get(f"{api}/model/card", headers=AUTH).raise_for_status().json()
    meaning = band_meaning(band, Cutoffs.of(model, card))
    assert f"**{BAND_TITLES[band]}.** {meaning}" in markdown  # what the band means, with this model's figures
    assert (f"{model['threshold']:.1%}" if band != "low" else f"{model['base_rate']:.1%}") in meaning
    captions = " ".join(c.value for c in at.caption)
    assert f"version {expected['model_version']}" in captions and card["threshold"]["rule"] in captions
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert f"**Version** {expected['model_version']}" in sidebar and "Validation ROC-AUC** 0." in sidebar


def test_the_form_speaks_clinical_words_and_starts_from_the_typical_patient(api, monkeypatch):
    at = run_app(monkeypatch, api)
    widgets = {w.key: w for kind in (at.selectbox, at.number_input, at.text_input) for w in kind}
    for col in FORM_COLUMNS:
        widget = widgets[f"field:{col.name}"]
        assert widget.label == col.label and widget.label != col.name, col.name
        assert col.description in widget.help and f"`{col.name}`" in widget.help, col.name  # and its CSV column
        expected = col.typical if col.typical is not None else ("" if col.kind == "icd9" else "?")
        assert widget.value == expected, col.name
    assert widgets["field:age"].value == "[70-80)" and widgets["field:num_medications"].value == 13
    assert column("insulin").hint in widgets["field:insulin"].help
    admission = widgets["field:admission_type_id"]
    assert "1 — Emergency" in admission.options  # codes with their description
    at.button(key="predict").click().run()
    assert at.session_state["sent_encounter"] == typical_encounter() and at.session_state["prediction"].result["scored"]


def test_malformed_fields_are_reported_on_the_fields_without_calling_the_api(api, monkeypatch):
    at = run_app(monkeypatch, api)
    fill(at, "diag_1", "not-a-code")
    fill(at, "payer_code", "other…")
    at.button(key="predict").click().run()
    assert not at.exception
    summary = [e.value for e in at.error if e.value.startswith(REJECTED)]
    assert len(summary) == 1
    assert "**Primary diagnosis**" in summary[0] and "**Payer**" in summary[0]  # labels, not column names
    on_fields = sorted(e.value for e in at.error if not e.value.startswith(REJECTED))
    assert on_fields == sorted(e.message for e in at.session_state["prediction"].errors) and len(on_fields) == 2
    assert any("is not an ICD-9 code" in m for m in on_fields)
    assert at.session_state["prediction"].result is None and not at.metric


def test_api_422_becomes_field_errors(api):
    with ApiClient(api, UI_KEY) as client, pytest.raises(ApiRejected) as info:
        client.predict(typical_encounter() | {"time_in_hospital": 40, "readmitted": "<30"})
    assert {e.field for e in info.value.errors} == {"time_in_hospital", "readmitted"}
    assert str(info.value).startswith(REJECTED)
    assert field_label("time_in_hospital") == "Length of stay (days)" and field_label("readmitted") == "Readmission"
    assert field_label("encounters.3.age") == "Age (encounters.3.age)" and field_label("request") == "request"


def test_a_request_too_large_for_the_api_is_a_sentence(api):
    """The real API refuses a body above MAX_BODY_BYTES (413) before reading it."""
    with ApiClient(api, UI_KEY) as client, pytest.raises(ApiUnavailable) as info:
        client.predict_batch([typical_encounter()] * 5000)  # ~5.5 MB: above the 4 MB a 1,000-row batch may take
    assert str(info.value) == TOO_LARGE


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=body, headers=headers or {},
                          request=httpx.Request("POST", "http://api.internal:8000/predict/batch"))


@pytest.mark.parametrize(("status", "body", "expected"), [
    (401, b'{"detail": "missing or unknown API key"}', REFUSED),
    (403, b'{"detail": "not allowed"}', REFUSED),
    (404, b'{"detail": "Not Found"}', NOT_FOUND),
    (413, b'{"detail": "request body larger than 4161536 bytes"}', TOO_LARGE),
    (502, b"<html>502 Bad Gateway</html>", GATEWAY),
    (504, b"<html>504 Gateway Time-out</html>", GATEWAY),
    (500, b'{"detail": "internal error", "request_id": "0123abcd"}', failed_message(500, "0123abcd")),
    (500, b"Internal Server Error", failed_message(500)),
])
def test_each_failure_of_the_api_is_a_sentence_for_the_page(status, body, expected):
    with pytest.raises(ApiUnavailable) as info:
        json_answer(answer(status, body))
    message = str(info.value)
    assert message == expected and "api.internal" not in message and "detail" not in message
    assert "administrator" in message  # what to do


def test_a_rate_limit_in_front_of_the_api_is_busy_and_sent_again():
    with pytest.raises(ApiBusy) as info:
        json_answer(answer(429, b"<html>429 Too Many Requests</html>", {"Retry-After": "2"}))
    assert str(info.value) == BUSY and info.value.retry_after_ms == 2000


# -- the API failing: a sentence on the page, never an exception's text ------------------------------

def test_api_down_is_a_clear_error(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    at = run_app(monkeypatch, url)
    assert [e.value for e in at.main.error] == [UNREACHABLE]
    at.button(key="predict").click().run()
    assert at.session_state["prediction"].down == UNREACHABLE and UNREACHABLE in [e.value for e in at.main.error]
    assert_no_internal_detail(at, url)


def test_api_stopping_under_a_logged_in_user_is_a_clear_error(registered, tmp_path, monkeypatch):
    url, process = api_process(tmp_path, registered.tracking_uri, registered.model_name)
    with process:
        wait_http(f"{url}/ready", timeout=120)
        at = run_app(monkeypatch, url)
        assert not at.error and any("**Version**" in m.value for m in at.sidebar.markdown)
    at.button(key="predict").click().run()  # the API is gone now
    assert at.session_state["prediction"].down == UNREACHABLE
    assert UNREACHABLE in [e.value for e in at.main.error]
    assert_no_internal_detail(at, url)


def test_a_refused_api_key_is_a_clear_error(api, monkeypatch):
    at = run_app(monkeypatch, api, api_key="a-key-the-api-does-not-know-0123")
    assert [e.value for e in at.main.error] == [REFUSED] and REFUSED in [w.value for w in at.sidebar.warning]
    at.button(key="predict").click().run()
    assert at.session_state["prediction"].down == REFUSED
    assert_no_internal_detail(at, api)
    at.file_uploader(key="csv").set_value(("e.csv", synthetic.generate(3, seed=1).to_csv(index=False).encode(),
                                           "text/csv")).run()
    at.button(key="score").click().run()
    assert at.session_state["batch"][1].down == REFUSED
    assert_no_internal_detail(at, api)


def test_api_without_model_is_a_clear_error(registered, tmp_path, monkeypatch):
    url, process = api_process(tmp_path, registered.tracking_uri, "no-such-model")
    with process:
        at = run_app(monkeypatch, url)
        assert [e.value for e in at.main.error] == [NO_MODEL]
        at.button(key="predict").click().run()
        assert at.session_state["prediction"].down == NO_MODEL
        assert_no_internal_detail(at, url)


def test_an_unexpected_failure_of_the_page_is_a_sentence(tmp_path, monkeypatch):
    """A server that answers /ready and /model with bodies the page does not expect (a static file server)."""
    (tmp_path / "ready").write_text(json.dumps({"ready": True}))
    (tmp_path / "model").write_text(json.dumps({"model_name": "m"}))  # no version, metrics, loaded_at...
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with started([str(BIN / "python"), "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                  str(tmp_path)], {}, tmp_path / "http.log", ready_url=f"{url}/ready"):
        at = run_app(monkeypatch, url)
    assert [e.value for e in at.main.error] == [PAGE_FAILED]
    assert_no_internal_detail(at, url)
    assert "KeyError" not in page_text(at) and "loaded_at" not in page_text(at)
    assert at.button(key="logout")  # the way out stays on the page


@pytest.fixture(scope="module")
def upload() -> tuple[pd.DataFrame, bytes]:
    """50 synthetic encounters in the raw format (ids and readmitted included), then one bad row."""
    frame = synthetic.generate(50, seed=3)
    bad = frame.iloc[[0]].assign(encounter_id="999999999", time_in_hospital="abc")
    frame = pd.concat([frame, bad], ignore_index=True)
    return frame, frame.to_csv(index=False).encode()


def api_probabilities(api: str, frame: pd.DataFrame) -> pd.DataFrame:
    valid = validate(frame).valid
    body = {"encounters": encounters_of(valid)}
    answers = httpx.post(f"{api}/predict/batch", json=body, headers=AUTH).raise_for_status().json()["predictions"]
    return pd.DataFrame(answers, index=valid.index)


def check_scored(result, frame: pd.DataFrame, expected: pd.DataFrame) -> None:
    scored = result.scored
    assert list(scored.columns) == [*frame.columns, *SCORE_COLUMNS]
    pd.testing.assert_frame_equal(scored[list(frame.columns)], frame)  # uploaded cells kept as they were
    # the API answers small calls with stacked trees, large ones with scikit-learn: equal to 1e-9
    np.testing.assert_allclose(scored.loc[expected.index, "probability"].to_numpy(dtype=float),
                               expected["probability"].to_numpy(dtype=float), rtol=0, atol=1e-9)
    assert scored.loc[expected.index, "scored"].tolist() == expected["scored"].tolist()
    assert scored.loc[expected.index, "risk_band"].tolist() == expected["risk_band"].tolist()
    assert expected["scored"].sum() > 40 and len(expected) == 50
    assert list(result.rejected["row"]) == [51]
    assert "time_in_hospital" in result.rejected["reason"].iloc[0]
    assert not scored.loc[50, "scored"] and np.isnan(scored.loc[50, "probability"])
    assert scored.loc[50, "reason"].startswith("rejected by the contract: time_in_hospital")


def test_csv_upload_is_scored_through_the_batch_endpoint(api, monkeypatch, upload):
    frame, data = upload
    at = run_app(monkeypatch, api)
    at.file_uploader(key="csv").set_value(("encounters.csv", data, "text/csv")).run()
    at.button(key="score").click().run()
    assert not at.exception and not at.error

    result = at.session_state["batch"][1].result
    expected = api_probabilities(api, frame)
    check_scored(result, frame, expected)
    assert any("1 row(s) rejected" in w.value for w in at.warning)
    rejected_table, preview = at.main.dataframe
    assert rejected_table.value["row"].tolist() == [51] and len(preview.value) == 51
    assert at.download_button(key="download").label == "Download the scored CSV"
    assert f"{int(expected['scored'].sum())} scored" in at.success[0].value

    roundtrip = pd.read_csv(io.BytesIO(result.to_csv()), dtype=str, keep_default_na=False)
    assert list(roundtrip.columns) == [*frame.columns, *SCORE_COLUMNS] and len(roundtrip) == 51

    # the scored rows per risk band: badges and a bar chart with every band
    counts = expected.loc[expected["scored"], "risk_band"].value_counts()
    (spec, bands), = [(sp, d) for sp, d in charts(at) if "band" in d.columns]
    assert bands.set_index("band")["rows"].to_dict() == {b: int(counts.get(b, 0)) for b in ("low", "medium", "high")}
    assert spec["title"] == BAND_CHART_TITLE
    badges = " ".join(m.value for m in at.main.markdown)
    assert all(f"-badge[{b}] {int(counts.get(b, 0)):,}" in badges for b in ("low", "medium", "high"))


def test_the_template_csv_is_offered_and_scores_as_is(api, monkeypatch):
    at = run_app(monkeypatch, api)
    assert at.download_button(key="template").label == "Download a template CSV"
    data = template_csv()
    header, row, *rest = data.decode().splitlines()
    assert not rest and header.split(",") == [c.name for c in ENCOUNTER_COLUMNS]
    sent = dict(zip(header.split(","), row.split(","), strict=True))
    assert sent["age"] == "[70-80)" and sent["weight"] == "?" and "readmitted" not in sent
    at.file_uploader(key="csv").set_value((TEMPLATE_NAME, data, "text/csv")).run()
    at.button(key="score").click().run()
    assert not at.exception and not at.error and not at.warning
    result = at.session_state["batch"][1].result
    assert result.rejected.empty and result.scored["scored"].tolist() == [True]
    expected = httpx.post(f"{api}/predict", json=typical_encounter(), headers=AUTH).raise_for_status().json()
    assert result.scored["probability"].iloc[0] == pytest.approx(expected["probability"], abs=1e-9)


def test_scoring_in_small_chunks_gives_the_same_answers(api, upload):
    frame, data = upload
    calls = []
    with ApiClient(api, UI_KEY) as client:
        result = score_csv(data, client, chunk_size=7, progress=lambda done, total: calls.append((done, total)))
    check_scored(result, frame, api_probabilities(api, frame))
    assert calls[-1] == (50, 50) and len(calls) == 8


def test_a_file_without_ids_or_outcome_is_scored(api, upload):
    frame, _ = upload
    features_only = frame.drop(columns=["encounter_id", "patient_nbr", "readmitted"]).head(50)
    with ApiClient(api, UI_KEY) as client:
        result = score_csv(features_only.to_csv(index=False).encode(), client)
    assert result.rejected.empty and result.scored["probability"].notna().sum() > 40
