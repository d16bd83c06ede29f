"""The inference API as a real uvicorn process in front of a real MLflow server."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from readmit_contract import example_encounter

from ..support import BIN, free_port, wait_http
from .conftest import API_KEYS, AUTH, KEYS, api_process, register_models

pytestmark = pytest.mark.slow


def test_predictions_are_the_registered_pipelines(api, registered, encounters):
    """Whether the API's trees are interpreted or compiled (TREES_COMPILE, in the background once it serves), its
    answers are the registered pipeline's probabilities."""
    mlflow.set_tracking_uri(registered.tracking_uri)
    pipeline = mlflow.sklearn.load_model(f"models:/{registered.model_name}@champion")
    expected = pipeline.predict_proba(encounters[:50])[:, 1]
    seen = set()
    with httpx.Client(base_url=api, headers=AUTH) as client:
        deadline = time.monotonic() + 180
        while True:
            predictor = client.get("/model").json()["predictor"]
            seen.add(predictor)
            answers = [client.post("/predict", json=e).json() for e in encounters[:50]]
            batch = client.post("/predict/batch", json={"encounters": encounters[:50]}).json()
            np.testing.assert_allclose([a["probability"] for a in answers], expected, rtol=1e-9)
            np.testing.assert_allclose([p["probability"] for p in batch["predictions"]], expected, rtol=1e-9)
            if predictor == "compiled":
                break
            assert predictor == "interpreted" and time.monotonic() < deadline, predictor
            time.sleep(1)
    champion = registered.versions["hist_gradient_boosting"]
    assert {a["model_version"] for a in answers} == {champion} and batch["model_version"] == champion
    assert {a["risk_band"] for a in answers} <= {"low", "medium", "high"} and all(a["scored"] for a in answers)
    assert len({a["risk_band"] for a in answers}) >= 2


def test_out_of_scope_encounters_are_not_scored(http):
    hospice = example_encounter() | {"discharge_disposition_id": 13}
    one = http.post("/predict", json=hospice).json()
    assert one["scored"] is False and one["probability"] is None and "Hospice" in one["reason"]
    batch = http.post("/predict/batch", json={"encounters": [example_encounter(), hospice]}).json()
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
def test_bad_input_is_422_naming_the_field(http, change, field):
    response = http.post("/predict", json=example_encounter() | change)
    assert response.status_code == 422
    assert any(field in error["loc"] for error in response.json()["detail"]), response.json()


def test_missing_field_malformed_json_and_batch_bounds(http, encounters):
    body = example_encounter()
    del body["age"]
    missing = http.post("/predict", json=body)
    assert missing.status_code == 422 and missing.json()["detail"][0]["type"] == "missing"
    malformed = http.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422
    assert http.post("/predict/batch", json={"encounters": []}).status_code == 422
    too_many = {"encounters": [encounters[0]] * 1001}
    assert http.post("/predict/batch", json=too_many).status_code == 422


def test_model_health_ready_metrics(api, http, registered):
    model = http.get("/model").json()
    assert model["model_name"] == registered.model_name and model["model_alias"] == "champion"
    assert 0 < model["threshold"] < 1 and "val_roc_auc" in model["metrics"]
    assert {f["name"] for f in model["contract_fields"]} >= {"age", "insulin", "diag_1"}
    assert httpx.get(f"{api}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{api}/ready")
    assert ready.status_code == 200 and ready.json()["mlflow_reachable"] is True
    http.post("/predict", json=example_encounter())
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
        assert httpx.post(f"{url}/predict", json=example_encounter(), headers=AUTH).status_code == 503
        assert httpx.get(f"{url}/model", headers=AUTH).status_code == 503


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
            with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
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


def _copy_versions(client: MlflowClient, registered, name: str) -> dict[str, str]:
    """The registered versions again under model ``name`` (same artifacts, run and tags: no training)."""
    client.create_registered_model(name)
    copies = {}
    for candidate, version in registered.versions.items():
        original = client.get_model_version(registered.model_name, version)
        copy = client.create_model_version(name, original.source, run_id=original.run_id, tags=original.tags,
                                           model_id=original.model_id or original.source.removeprefix("models:/"))
        copies[candidate] = str(copy.version)
    return copies


def test_model_reload_checks_the_alias_now(registered, encounters, tmp_path):
    """POST /model/reload: the alias moved, the watcher's next poll is an hour away, the new version serves at
    once; only the callers in MODEL_RELOAD_CALLERS may ask; a missing alias is 503 and the old version serves."""
    name = registered.model_name + "-reload"
    client = MlflowClient(registered.tracking_uri)
    versions = _copy_versions(client, registered, name)
    old, new = versions["hist_gradient_boosting"], versions["logistic_regression"]
    client.set_registered_model_alias(name, "champion", old)
    url, process = api_process(tmp_path, registered.tracking_uri, name, poll_seconds=3600,
                               MODEL_RELOAD_CALLERS="tests")
    with process, httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
        wait_http(f"{url}/ready", timeout=120)
        client.set_registered_model_alias(name, "champion", new)
        assert http.post("/predict", json=encounters[0]).json()["model_version"] == old  # not polled yet
        assert httpx.post(f"{url}/model/reload").status_code == 401
        forbidden = httpx.post(f"{url}/model/reload", headers={"X-API-Key": KEYS["ui"]})
        assert forbidden.status_code == 403 and "MODEL_RELOAD_CALLERS" in forbidden.json()["detail"]
        assert http.post("/predict", json=encounters[0]).json()["model_version"] == old  # a refusal changes nothing

        reloaded = http.post("/model/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["model_version"] == new == reloaded.json()["alias_version"]
        assert http.post("/predict", json=encounters[0]).json()["model_version"] == new
        assert http.post("/model/reload").status_code == 200  # nothing moved: nothing to do, still 200

        client.delete_registered_model_alias(name, "champion")
        missing = http.post("/model/reload")
        assert missing.status_code == 503
        assert missing.json()["model_version"] == new and missing.json()["alias_version"] is None
        assert f"{name}@champion" in missing.json()["last_error"] and "keeps serving" in missing.json()["last_error"]
        assert http.post("/predict", json=encounters[0]).json()["model_version"] == new
        metrics = httpx.get(f"{url}/metrics").text
    assert 'readmit_api_model_reloads_total{result="success"} 2.0' in metrics


# -- API keys ------------------------------------------------------------------------------------------

PROTECTED = [("POST", "/predict"), ("POST", "/predict/batch"), ("GET", "/model")]
OPEN = ["/health", "/ready", "/metrics", "/docs", "/openapi.json"]


def _call(api: str, method: str, path: str, headers: dict | None = None) -> httpx.Response:
    body = {"encounters": [example_encounter()]} if path == "/predict/batch" else example_encounter()
    return httpx.request(method, f"{api}{path}", json=body if method == "POST" else None, headers=headers)


def _no_internal_detail(response: httpx.Response, *secrets: str) -> None:
    """The refusal says what to do, nothing about the server: a short detail, no key, no host or path."""
    assert set(response.json()) == {"detail"} and len(response.json()["detail"]) < 120
    assert set(response.headers) <= {"content-type", "content-length", "www-authenticate", "date", "server"}
    assert response.headers.get("server", "uvicorn") == "uvicorn"  # no version
    text = response.text + " ".join(response.headers.values())
    checkout = str(Path(__file__).resolve().parents[2])  # wherever this checkout lies: no path of it may show
    for needle in (*secrets, "Traceback", "File \"", checkout, "site-packages", "127.0.0.1", "mlflow"):
        assert needle not in text, needle


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_refuse_a_missing_or_wrong_key(api, method, path):
    missing = _call(api, method, path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="readmit-api"'
    assert "X-API-Key" in missing.json()["detail"]
    _no_internal_detail(missing, *KEYS.values())

    wrong_key = "not-a-configured-key-0123456789"
    for headers in ({"X-API-Key": wrong_key}, {"Authorization": f"Bearer {wrong_key}"},
                    {"X-API-Key": KEYS["tests"][:-1]}, {"X-API-Key": KEYS["tests"] + "x"}):
        wrong = _call(api, method, path, headers)
        assert wrong.status_code == 401, headers
        assert wrong.headers["www-authenticate"] == 'Bearer realm="readmit-api", error="invalid_token"'
        assert wrong.json() == {"detail": "the API key is not valid"}
        _no_internal_detail(wrong, wrong_key, *KEYS.values())
    # another scheme than Bearer carries no key
    assert _call(api, method, path, {"Authorization": f"Basic {KEYS['tests']}"}).status_code == 401


def test_each_configured_key_is_accepted_in_either_header(api):
    for name, key in KEYS.items():
        for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
            for method, path in PROTECTED:
                response = _call(api, method, path, headers)
                assert response.status_code == 200, (name, path, response.text)


def test_open_routes_need_no_key(api):
    for path in OPEN:
        assert httpx.get(f"{api}{path}").status_code == 200, path
    assert httpx.get(f"{api}/docs/oauth2-redirect").status_code == 200
    # anything else is protected, even a path that does not exist (no route enumeration without a key)
    assert httpx.get(f"{api}/no-such-route").status_code == 401
    assert httpx.get(f"{api}/no-such-route", headers=AUTH).status_code == 404


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_refusals_and_callers_are_counted(api):
    before = httpx.get(f"{api}/metrics").text
    for _ in range(3):
        _call(api, "POST", "/predict")
    for _ in range(2):
        _call(api, "POST", "/predict", {"X-API-Key": "not-a-configured-key-0123456789"})
    _call(api, "GET", "/model", {"X-API-Key": KEYS["ui"]})
    after = httpx.get(f"{api}/metrics").text
    for series, delta in (('readmit_api_auth_refused_total{reason="missing"}', 3),
                          ('readmit_api_auth_refused_total{reason="invalid"}', 2),
                          ('readmit_api_caller_requests_total{caller="ui"}', 1)):
        assert _sample(after, series) - _sample(before, series) == delta, series
    assert KEYS["ui"] not in after and KEYS["tests"] not in after


def test_openapi_declares_the_keys(api):
    schema = httpx.get(f"{api}/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKey"] == schemes["ApiKey"] | {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["Bearer"] | {"type": "http", "scheme": "bearer"} == schemes["Bearer"]
    for method, path in PROTECTED:
        operation = schema["paths"][path][method.lower()]
        assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}] and "401" in operation["responses"]
    for path in ("/health", "/ready", "/metrics"):
        assert "security" not in schema["paths"][path]["get"], path


def _start_without_valid_keys(tmp_path, api_keys: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "API_KEYS"}
    env |= {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MODEL_NAME": "never-loaded"}
    if api_keys is not None:
        env["API_KEYS"] = api_keys
    return subprocess.run([str(BIN / "uvicorn"), "readmit_serving.api.main:app", "--host", "127.0.0.1",
                           "--port", str(free_port())], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_the_api_refuses_to_start_without_valid_keys(tmp_path):
    unset = _start_without_valid_keys(tmp_path, None)
    assert unset.returncode != 0
    assert "API_KEYS is not set" in unset.stderr and "Traceback" not in unset.stderr, unset.stderr

    short_key = "only-15-chars-x"
    short = _start_without_valid_keys(tmp_path, f"tests:{KEYS['tests']},ui:{short_key}")
    assert short.returncode != 0
    assert "API_KEYS entry 2 (ui): the key is shorter than 16 characters" in short.stderr, short.stderr
    assert short_key not in short.stdout + short.stderr and KEYS["tests"] not in short.stdout + short.stderr


# -- no internal detail in answers ---------------------------------------------------------------------

def test_validation_errors_echo_only_short_values(http, encounters):
    wrong_type = http.post("/predict", json=example_encounter() | {"time_in_hospital": "three"}).json()["detail"]
    assert wrong_type[0]["input"] == "three" and wrong_type[0]["loc"] == ["body", "time_in_hospital"]
    assert all(set(e) <= {"type", "loc", "msg", "input"} for e in wrong_type)

    body = example_encounter()
    del body["age"]
    (missing,) = http.post("/predict", json=body).json()["detail"]
    assert missing["type"] == "missing" and "input" not in missing  # FastAPI would echo the whole encounter

    too_many = http.post("/predict/batch", json={"encounters": [encounters[0]] * 1001})
    assert too_many.status_code == 422 and len(too_many.content) < 1000, too_many.text[:2000]
    assert "input" not in too_many.json()["detail"][0] and "1000" in too_many.json()["detail"][0]["msg"]

    long_text = "x" * 5000
    long = http.post("/predict", json=example_encounter() | {"diag_1": long_text})
    assert long.status_code == 422 and long_text not in long.text and len(long.content) < 2000

    every_field_wrong = {name: "?!" for name in example_encounter()}
    many = http.post("/predict/batch", json={"encounters": [every_field_wrong] * 20}).json()["detail"]
    assert len(many) == 101 and many[-1]["type"] == "too_many_errors"


def test_an_exception_in_a_handler_is_a_generic_500(caplog):
    """In process (ASGI transport): a route that fails with a message naming a path and a host."""
    from readmit_serving.api.main import create_app
    from readmit_serving.settings import ServingSettings

    app = create_app(ServingSettings(API_KEYS=API_KEYS, MLFLOW_TRACKING_URI="http://127.0.0.1:9"))

    @app.get("/explode")
    async def explode() -> dict:
        raise RuntimeError("cannot open /var/lib/secret.db on db.internal:3306")

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get("/explode"), await client.get("/explode", headers=AUTH)

    with caplog.at_level(logging.ERROR, logger="readmit_serving"):
        refused, failed = asyncio.run(scenario())
    assert refused.status_code == 401  # a route added later is protected unless opened on purpose
    assert failed.status_code == 500
    body = failed.json()
    assert set(body) == {"detail", "request_id"} and body["detail"] == "internal error"
    assert failed.headers["x-request-id"] == body["request_id"] and len(body["request_id"]) == 32
    for needle in ("secret.db", "db.internal", "RuntimeError", "Traceback"):
        assert needle not in failed.text
    (record,) = [r for r in caplog.records if body["request_id"] in r.getMessage()]
    assert "caller tests" in record.getMessage() and "db.internal:3306" in str(record.exc_info[1])


def test_reload_callers_unknown_to_api_keys_are_named_in_the_log(caplog):
    from readmit_serving.api.main import create_app
    from readmit_serving.settings import ServingSettings

    with caplog.at_level(logging.WARNING, logger="readmit_serving.api.main"):
        create_app(ServingSettings(API_KEYS=API_KEYS, MODEL_RELOAD_CALLERS="tests,nobody"))
    warned = [r.getMessage() for r in caplog.records if "MODEL_RELOAD_CALLERS" in r.getMessage()]
    assert warned == ["MODEL_RELOAD_CALLERS names callers API_KEYS does not know (nobody): they cannot reload "
                      "the model"]
    assert not any(key in message for key in KEYS.values() for message in warned)
