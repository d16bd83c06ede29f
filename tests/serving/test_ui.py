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
from streamlit.testing.v1 import AppTest

from ..support import BIN, free_port, started, wait_http
from .conftest import AUTH, KEYS, api_process

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parents[2] / "server3-serving" / "ui" / "app.py"
sys.path.insert(0, str(APP.parent))  # the UI's modules live beside app.py (not an installed package)

from readmit_ui.batch import SCORE_COLUMNS, encounters_of, score_csv  # noqa: E402
from readmit_ui.client import NO_MODEL, REFUSED, REJECTED, UNREACHABLE, ApiClient, ApiRejected  # noqa: E402
from readmit_ui.login import FAILURE_DELAY_SECONDS, USER, WRONG  # noqa: E402
from readmit_ui.page import BAND_COLOURS, PAGE_FAILED  # noqa: E402

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


def has_form(at: AppTest) -> bool:
    return any(w.key == "field:age" for w in at.selectbox)


def contract_defaults() -> dict:
    """What an untouched form sends: the contract's defaults, else the first allowed value or the minimum."""
    record = {}
    for col in ENCOUNTER_COLUMNS:
        if col.kind == "id":
            continue
        if not col.required:
            record[col.name] = col.default
        else:
            record[col.name] = col.minimum if col.kind == "integer" else col.allowed[0]
    return record


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

    encounter = contract_defaults() | CHANGES
    assert at.session_state["sent_encounter"] == encounter
    expected = httpx.post(f"{api}/predict", json=encounter, headers=AUTH).raise_for_status().json()
    assert expected["scored"]
    shown = at.session_state["prediction"].result
    assert shown["probability"] == expected["probability"]
    assert [m.value for m in at.metric] == [f"{expected['probability']:.1%}"]
    band = expected["risk_band"]
    assert f":{BAND_COLOURS[band]}-badge[{band}]" in " ".join(m.value for m in at.main.markdown)
    assert f"version {expected['model_version']}" in " ".join(c.value for c in at.caption)
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert f"**Version** {expected['model_version']}" in sidebar and "Validation ROC-AUC** 0." in sidebar


def test_malformed_fields_are_reported_per_field_without_calling_the_api(api, monkeypatch):
    at = run_app(monkeypatch, api)
    fill(at, "diag_1", "not-a-code")
    fill(at, "payer_code", "other…")
    at.button(key="predict").click().run()
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith(REJECTED)
    assert "**diag_1**" in error.value and "**payer_code**" in error.value
    assert at.session_state["prediction"].result is None and not at.metric


def test_api_422_becomes_field_errors(api):
    with ApiClient(api, UI_KEY) as client, pytest.raises(ApiRejected) as info:
        client.predict(contract_defaults() | {"time_in_hospital": 40, "readmitted": "<30"})
    assert {e.field for e in info.value.errors} == {"time_in_hospital", "readmitted"}
    assert str(info.value).startswith(REJECTED)


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
