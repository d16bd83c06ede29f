"""GET /model/card against the real API in front of a real MLflow server: the card training stored for the served
version, checked against its recorded checksum; a version whose card is missing, has no checksum, does not match
it or cannot be read still serves its predictions, and /model/card says which in a sentence (details in the log).

The card states are copies of the registered champion under a model name of this module's own (the same model
files and checksum; the card tag changed, removed, or the version pointed at a run holding no card or a bad one),
served by one API that follows the alias as the module moves it."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from readmit_contract import example_encounter
from readmit_contract.card import CARD_DIGEST_TAG, CARD_JSON, ModelCard, card_digest

from ..support import wait_http
from .conftest import AUTH, api_process

pytestmark = pytest.mark.slow

NAME = "readmission-cards"
BAD_CARD = '{"schema": "readmit-model-card/1", "model": "not a card"}\n'


def stored_card(client: MlflowClient, run_id: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, CARD_JSON, tmp)).read_bytes()


def test_the_served_card_is_the_one_training_recorded(http, registered):
    client = MlflowClient(registered.tracking_uri)
    version = client.get_model_version(registered.model_name, registered.versions["hist_gradient_boosting"])
    stored = stored_card(client, version.run_id)
    assert card_digest(stored) == version.tags[CARD_DIGEST_TAG]

    response = http.get("/model/card")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["schema"] == "readmit-model-card/1" and "schema_" not in body
    assert ModelCard.model_validate(body) == ModelCard.model_validate_json(stored)
    assert body["model"]["run_id"] == version.run_id == http.get("/model").json()["run_id"]
    assert {"validation", "test"} <= set(body["evaluation"]) and body["intended_use"]["known_at_discharge"]
    model = http.get("/model").json()
    assert model["card"] == "available" and model["explainable"] is True


def test_the_card_needs_a_key(api):
    assert httpx.get(f"{api}/model/card").status_code == 401
    assert httpx.get(f"{api}/model/card", headers={"X-API-Key": "not-a-key-of-this-api-0000"}).status_code == 401


@pytest.fixture(scope="module")
def versions(registered) -> dict[str, str]:
    """Card state -> version of ``NAME``: copies of the champion (same model files, same checksum)."""
    client = MlflowClient(registered.tracking_uri)
    champion = client.get_model_version(registered.model_name, registered.versions["hist_gradient_boosting"])
    tags = dict(champion.tags)
    assert CARD_DIGEST_TAG in tags
    without_card_tag = {k: v for k, v in tags.items() if k != CARD_DIGEST_TAG}
    mlflow.set_tracking_uri(registered.tracking_uri)
    experiment = client.get_run(champion.run_id).info.experiment_id

    def copy(tag_values: dict[str, str], run_id: str | None = None) -> str:
        """A version of NAME with the champion's model files, from ``run_id`` (default: the champion's run)."""
        made = client.create_model_version(NAME, champion.source, run_id=run_id or champion.run_id, tags=tag_values,
                                           model_id=champion.source.removeprefix("models:/"))
        assert client.get_model_version(NAME, made.version).run_id == (run_id or champion.run_id)
        return str(made.version)

    def run_holding(card_text: str | None) -> str:
        run = client.create_run(experiment)
        if card_text is not None:
            client.log_text(run.info.run_id, card_text, CARD_JSON)
        client.set_terminated(run.info.run_id)
        return run.info.run_id

    client.create_registered_model(NAME)
    made = {
        "available": copy(tags),
        "checksum_mismatch": copy({**tags, CARD_DIGEST_TAG: "0" * 64}),
        "no_checksum": copy(without_card_tag),
        "missing": copy(without_card_tag, run_holding(None)),
        "unreadable": copy({**tags, CARD_DIGEST_TAG: card_digest(BAD_CARD.encode())}, run_holding(BAD_CARD)),
        "undownloadable": copy(tags, run_holding(None)),  # a checksum recorded, but no card on the run
    }
    client.set_registered_model_alias(NAME, "champion", made["available"])
    return made


@pytest.fixture(scope="module")
def cards_api(registered, versions, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cards-api")
    url, process = api_process(folder, registered.tracking_uri, NAME, poll_seconds=0.5)
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield url, folder


def serve(url: str, client: MlflowClient, version: str, timeout: float = 90.0) -> None:
    """Point the alias at ``version`` and wait (bounded) until the API serves it."""
    client.set_registered_model_alias(NAME, "champion", version)
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/ready", timeout=10).json().get("model_version") != version:
        assert time.monotonic() < deadline, f"version {version} never served"
        time.sleep(0.2)


EXPECTED = {
    "checksum_mismatch": ("checksum_mismatch", "the model card of version {v} does not match the checksum recorded "
                                               "at training, so it is not served",
                          "does not match its checksum: recorded " + "0" * 64),
    "no_checksum": ("no_checksum", "the model card of version {v} has no checksum recorded at training, so it is not "
                                   "served", "holds a model card but the version has no model_card_sha256 tag"),
    "missing": ("missing", "no model card was recorded for version {v}", "has no model card"),
    "unreadable": ("unreadable", "the model card of version {v} cannot be read (details in the API's log)",
                   "cannot be parsed"),
    "undownloadable": ("unreadable", "the model card of version {v} cannot be read (details in the API's log)",
                       "cannot be downloaded from run"),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_a_version_without_a_card_to_serve_still_serves_and_says_why(cards_api, registered, versions, case):
    url, folder = cards_api
    version = versions[case]
    client = MlflowClient(registered.tracking_uri)
    serve(url, client, version)
    status, sentence, logged = EXPECTED[case]
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        answer = http.get("/model/card")
        assert answer.status_code == 404 and answer.json() == {"detail": sentence.format(v=version)}
        for internal in ("/", "http", "127.0.0.1", "Error", "Exception", "Traceback", "sha256", "0" * 16):
            assert internal not in answer.text, internal
        model = http.get("/model").json()
        assert model["card"] == status and model["model_version"] == version and model["explainable"] is True
        prediction = http.post("/predict", json=example_encounter(), params={"explain": "true"}).json()
        assert prediction["model_version"] == version and prediction["explanation"]["factors"]
    ready = httpx.get(f"{url}/ready").json()
    assert ready["refused_version"] is None and ready["last_error"] is None  # a card never refuses a model
    log = "\n".join(p.read_text() for p in folder.glob("api-*.log"))
    assert f"v{version}" in log and logged in log, log[-3000:]


def test_moving_back_to_a_version_with_a_card_serves_it_again(cards_api, registered, versions):
    url, _ = cards_api
    client = MlflowClient(registered.tracking_uri)
    serve(url, client, versions["missing"])
    assert httpx.get(f"{url}/model/card", headers=AUTH).status_code == 404
    serve(url, client, versions["available"])
    answer = httpx.get(f"{url}/model/card", headers=AUTH)
    assert answer.status_code == 200
    champion = client.get_model_version(registered.model_name, registered.versions["hist_gradient_boosting"])
    assert json.loads(answer.text)["model"]["run_id"] == champion.run_id


def test_a_model_without_explainer_or_card(unexplainable):
    with httpx.Client(base_url=unexplainable.url, headers=AUTH, timeout=30) as http:
        answer = http.get("/model/card")
        assert answer.status_code == 404
        assert answer.json() == {"detail": f"no model card was recorded for version {unexplainable.version}"}
        assert http.get("/model").json()["card"] == "missing"
