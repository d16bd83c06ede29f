"""The inference API as a real uvicorn process in front of a real MLflow server."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from readmit_contract import example_encounter

from ..support import mlflow_server, wait_http
from .conftest import api_process, register_models

pytestmark = pytest.mark.slow


def test_predictions_are_the_registered_pipelines(api, registered, encounters):
    mlflow.set_tracking_uri(registered.tracking_uri)
    pipeline = mlflow.sklearn.load_model(f"models:/{registered.model_name}@champion")
    expected = pipeline.predict_proba(encounters[:50])[:, 1]
    with httpx.Client(base_url=api) as client:
        answers = [client.post("/predict", json=e).json() for e in encounters[:50]]
        batch = client.post("/predict/batch", json={"encounters": encounters[:50]}).json()
    np.testing.assert_allclose([a["probability"] for a in answers], expected, rtol=1e-9)
    np.testing.assert_allclose([p["probability"] for p in batch["predictions"]], expected, rtol=1e-9)
    champion = registered.versions["hist_gradient_boosting"]
    assert {a["model_version"] for a in answers} == {champion} and batch["model_version"] == champion
    assert {a["risk_band"] for a in answers} <= {"low", "medium", "high"} and all(a["scored"] for a in answers)
    assert len({a["risk_band"] for a in answers}) >= 2


def test_out_of_scope_encounters_are_not_scored(api):
    hospice = example_encounter() | {"discharge_disposition_id": 13}
    one = httpx.post(f"{api}/predict", json=hospice).json()
    assert one["scored"] is False and one["probability"] is None and "Hospice" in one["reason"]
    batch = httpx.post(f"{api}/predict/batch", json={"encounters": [example_encounter(), hospice]}).json()
    assert [p["scored"] for p in batch["predictions"]] == [True, False]


BAD_INPUTS = [
    ({"time_in_hospital": "three"}, "time_in_hospital"),  # wrong type
    ({"time_in_hospital": 40}, "time_in_hospital"),  # out of range
    ({"age": "[100-110)"}, "age"),  # outside the allowed set
    ({"admission_type_id": 42}, "admission_type_id"),  # unknown hospital code
    ({"diag_1": "not-a-code"}, "diag_1"),  # malformed ICD-9
    ({"gender": None}, "gender"),  # missing required
    ({"readmitted": "<30"}, "readmitted"),  # not an input field
]


@pytest.mark.parametrize(("change", "field"), BAD_INPUTS)
def test_bad_input_is_422_naming_the_field(api, change, field):
    response = httpx.post(f"{api}/predict", json=example_encounter() | change)
    assert response.status_code == 422
    assert any(field in error["loc"] for error in response.json()["detail"]), response.json()


def test_missing_field_malformed_json_and_batch_bounds(api, encounters):
    body = example_encounter()
    del body["age"]
    missing = httpx.post(f"{api}/predict", json=body)
    assert missing.status_code == 422 and missing.json()["detail"][0]["type"] == "missing"
    malformed = httpx.post(f"{api}/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422
    assert httpx.post(f"{api}/predict/batch", json={"encounters": []}).status_code == 422
    too_many = {"encounters": [encounters[0]] * 1001}
    assert httpx.post(f"{api}/predict/batch", json=too_many, timeout=30).status_code == 422


def test_model_health_ready_metrics(api, registered):
    model = httpx.get(f"{api}/model").json()
    assert model["model_name"] == registered.model_name and model["model_alias"] == "champion"
    assert 0 < model["threshold"] < 1 and "val_roc_auc" in model["metrics"]
    assert {f["name"] for f in model["contract_fields"]} >= {"age", "insulin", "diag_1"}
    assert httpx.get(f"{api}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{api}/ready")
    assert ready.status_code == 200 and ready.json()["mlflow_reachable"] is True
    httpx.post(f"{api}/predict", json=example_encounter())
    text = httpx.get(f"{api}/metrics").text
    for name in ("readmit_api_requests_total", "readmit_api_request_duration_seconds_bucket",
                 "readmit_api_inference_duration_seconds_bucket", "readmit_api_predictions_total",
                 "readmit_api_model_info", "readmit_api_model_reloads_total", "readmit_api_requests_in_progress",
                 "readmit_api_mlflow_up 1.0", "readmit_api_model_loaded 1.0"):
        assert name in text, name
    assert 'route="/predict",status="200"' in text


def test_openapi_documents_the_contract(api):
    schema = httpx.get(f"{api}/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health", "/ready", "/model", "/metrics"} <= set(schema["paths"])
    encounter = schema["components"]["schemas"]["Encounter"]
    assert "[70-80)" in encounter["properties"]["age"]["enum"]
    assert httpx.get(f"{api}/docs").status_code == 200


def test_not_ready_before_a_model_exists(sqlite_tracking, tmp_path):
    url, process = api_process(tmp_path, sqlite_tracking.uri, "no-such-model-yet")
    with process:
        time.sleep(2)
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and ready.json()["mlflow_reachable"] is True
        assert "no-such-model-yet@champion" in ready.json()["last_error"]
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.post(f"{url}/predict", json=example_encounter()).status_code == 503
        assert httpx.get(f"{url}/model").status_code == 503


def test_hot_swap_while_a_client_keeps_sending(registered, encounters, tmp_path):
    """The alias moves to another version under load: no request fails, the new version takes over."""
    name = registered.model_name + "-swap"
    models = register_models(registered.tracking_uri, name, tmp_path)
    client = MlflowClient(registered.tracking_uri)
    old, new = models.versions["hist_gradient_boosting"], models.versions["logistic_regression"]
    cache = tmp_path / "model-cache"
    url, process = api_process(tmp_path, registered.tracking_uri, name, poll_seconds=0.5, MODEL_CACHE_DIR=str(cache))
    with process:
        wait_http(f"{url}/ready", timeout=120)
        seen: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def keep_sending(offset: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as http:
                i = offset
                while not stop.is_set():
                    response = http.post("/predict", json=encounters[i % len(encounters)])
                    i += 1
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        seen.append(response.json()["model_version"])

        threads = [threading.Thread(target=keep_sending, args=(k * 7,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        client.set_registered_model_alias(name, "champion", new)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not seen or seen[-1] != new):
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen[0] == old and seen[-1] == new
    first_new = seen.index(new)
    assert set(seen[first_new + 50 :]) <= {new}  # once swapped, it stays swapped
    assert len(seen) > 100
    assert (cache / name / old / "MLmodel").exists() and (cache / name / new / "MLmodel").exists()


def test_mlflow_stopped_predictions_continue(encounters, tmp_path):
    """MLflow goes away after the model is loaded: the API keeps predicting and says MLflow is unreachable."""
    with contextlib.ExitStack() as stack:
        tracking_server = mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
        tracking = tracking_server.__enter__()
        try:
            models = register_models(tracking, "readmission-outage", tmp_path, candidates=("logistic_regression",))
            url, process = api_process(tmp_path, tracking, models.model_name, poll_seconds=0.5)
            stack.enter_context(process)
            wait_http(f"{url}/ready", timeout=120)
        finally:
            tracking_server.__exit__(None, None, None)  # MLflow stops here
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and httpx.get(f"{url}/ready").json()["mlflow_reachable"]:
            time.sleep(0.3)
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 200 and ready.json()["mlflow_reachable"] is False
        assert "MLflow unreachable" in ready.json()["last_error"]
        for encounter in encounters[:20]:
            answer = httpx.post(f"{url}/predict", json=encounter)
            assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        text = httpx.get(f"{url}/metrics").text
        assert "readmit_api_mlflow_up 0.0" in text
        assert "readmit_api_mlflow_check_failures_total" in text
