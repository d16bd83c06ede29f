"""The Streamlit UI (streamlit's AppTest) against the real API in front of a real MLflow server."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from readmit_contract import synthetic, validate
from readmit_contract.columns import column
from readmit_contract.encounter import ENCOUNTER_COLUMNS
from streamlit.testing.v1 import AppTest

from ..support import free_port
from .conftest import api_process

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parents[2] / "server3-serving" / "ui" / "app.py"
sys.path.insert(0, str(APP.parent))  # the UI's modules live beside app.py (not an installed package)

from readmit_ui.batch import SCORE_COLUMNS, encounters_of, score_csv  # noqa: E402
from readmit_ui.client import ApiClient, ApiRejected  # noqa: E402
from readmit_ui.page import BAND_COLOURS  # noqa: E402


def run_app(monkeypatch, api_url: str) -> AppTest:
    monkeypatch.setenv("API_URL", api_url)
    return AppTest.from_file(str(APP), default_timeout=60).run()


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


def test_prediction_round_trip(api, monkeypatch):
    at = run_app(monkeypatch, api)
    assert not at.exception and not at.error
    for name, value in CHANGES.items():
        fill(at, name, value)
    at.button(key="predict").click().run()
    assert not at.exception and not at.error and not at.warning

    encounter = contract_defaults() | CHANGES
    assert at.session_state["sent_encounter"] == encounter
    expected = httpx.post(f"{api}/predict", json=encounter).raise_for_status().json()
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
    assert "**diag_1**" in error.value and "**payer_code**" in error.value
    assert at.session_state["prediction"].result is None and not at.metric


def test_api_422_becomes_field_errors(api):
    with ApiClient(api) as client, pytest.raises(ApiRejected) as info:
        client.predict(contract_defaults() | {"time_in_hospital": 40, "readmitted": "<30"})
    assert {e.field for e in info.value.errors} == {"time_in_hospital", "readmitted"}


def test_api_down_is_a_clear_error(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    at = run_app(monkeypatch, url)
    assert not at.exception
    assert any(f"The prediction API at {url} is down" in e.value for e in at.main.error)
    at.button(key="predict").click().run()
    assert not at.exception and at.session_state["prediction"].down.startswith(f"The prediction API at {url} is down")


def test_api_without_model_is_a_clear_error(registered, tmp_path, monkeypatch):
    url, process = api_process(tmp_path, registered.tracking_uri, "no-such-model")
    with process:
        at = run_app(monkeypatch, url)
        assert not at.exception
        assert any(f"The prediction API at {url} has no model yet" in e.value for e in at.main.error)
        at.button(key="predict").click().run()
        assert not at.exception and "has no model yet" in at.session_state["prediction"].down


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
    answers = httpx.post(f"{api}/predict/batch", json=body).raise_for_status().json()["predictions"]
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
    with ApiClient(api) as client:
        result = score_csv(data, client, chunk_size=7, progress=lambda done, total: calls.append((done, total)))
    check_scored(result, frame, api_probabilities(api, frame))
    assert calls[-1] == (50, 50) and len(calls) == 8


def test_a_file_without_ids_or_outcome_is_scored(api, upload):
    frame, _ = upload
    features_only = frame.drop(columns=["encounter_id", "patient_nbr", "readmitted"]).head(50)
    with ApiClient(api) as client:
        result = score_csv(features_only.to_csv(index=False).encode(), client)
    assert result.rejected.empty and result.scored["probability"].notna().sum() > 40
