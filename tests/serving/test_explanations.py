"""POST /predict?explain=true against the real API (uvicorn) serving the registered champion, with the embedded
default's history store (CleanData's SQLite file): the explanation is the contract's explainer's on the record as
the API scored it, history included; it adds up to the prediction's probability; the parameters are checked;
a model that cannot be explained still serves its predictions and says so in a sentence."""

from __future__ import annotations

import math

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from readmit_contract import Encounter, example_encounter
from readmit_contract.columns import FEATURE_COLUMNS
from readmit_contract.explanation import NOT_KNOWN, Explainer
from readmit_contract.history import HISTORY_NAMES, history_table, missing_history
from readmit_data.stores import clean_encounters, make_engine
from readmit_serving.api.explanations import SCALE
from readmit_serving.api.schemas import ExplainedPrediction, Prediction
from sqlalchemy import select

from ..support import wait_http
from .conftest import AUTH, api_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def history_api(registered, tmp_path_factory):
    """The API with the embedded default's history store: CleanData's SQLite file the champion was trained from."""
    url, process = api_process(tmp_path_factory.mktemp("explain-api"), registered.tracking_uri, registered.model_name,
                               HISTORY_DB_URL=registered.settings.clean_db_url, HISTORY_TIMEOUT_MS="2000")
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield url


@pytest.fixture(scope="module")
def client(history_api):
    with httpx.Client(base_url=history_api, headers=AUTH, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def pipeline(registered):
    mlflow.set_tracking_uri(registered.tracking_uri)
    return mlflow.sklearn.load_model(f"models:/{registered.model_name}@champion")


@pytest.fixture(scope="module")
def explainer(pipeline) -> Explainer:
    found = Explainer.for_pipeline(pipeline)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def clean_rows(registered) -> pd.DataFrame:
    engine = make_engine(registered.settings.clean_db_url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(select(clean_encounters), conn)
    finally:
        engine.dispose()


def body_of(row: pd.Series, ids: bool = True) -> dict:
    names = [*(("encounter_id", "patient_nbr") if ids else ()), *FEATURE_COLUMNS]
    return {k: (None if pd.isna(v) else (int(v) if isinstance(v, np.integer) else v)) for k, v in row[names].items()}


def logistic(log_odds: float) -> float:
    return 1.0 / (1.0 + math.exp(-log_odds))


def explained(client: httpx.Client, body: dict, **params) -> dict:
    response = client.post("/predict", json=body, params={"explain": "true", **params})
    assert response.status_code == 200, response.text
    return response.json()


def check_additive(answer: dict, top: int = 10) -> None:
    """The parts of an answer's explanation add up, are ordered and labelled, and give its probability."""
    explanation = answer["explanation"]
    factors = explanation["factors"]
    assert len(factors) == top
    total = explanation["base_log_odds"] + math.fsum(f["contribution"] for f in factors) + explanation["other_factors"]
    assert total == pytest.approx(explanation["log_odds"], abs=1e-9)
    assert abs(logistic(explanation["log_odds"]) - answer["probability"]) <= 1e-6
    sizes = [abs(f["contribution"]) for f in factors]
    assert sizes == sorted(sizes, reverse=True)
    for factor in factors:
        assert factor["text"] == f"{factor['label']}: {factor['value']}"
        expected = "raises" if factor["contribution"] > 0 else "lowers" if factor["contribution"] < 0 else "none"
        assert factor["direction"] == expected
    assert explanation["scale"] == SCALE


def test_an_explanation_adds_up_to_its_prediction(client, encounters, explainer, registered):
    for encounter in encounters[:30]:
        plain = client.post("/predict", json=encounter).json()
        answer = explained(client, encounter)
        assert answer["probability"] == pytest.approx(plain["probability"], abs=1e-12)
        assert answer["risk_band"] == plain["risk_band"] and answer["history"] == plain["history"]
        assert answer["model_version"] == registered.versions["hist_gradient_boosting"]
        check_additive(answer)
        assert answer["explanation"]["other_factor_count"] == len(explainer.factors) - 10
        assert answer["explanation"]["method"] == explainer.method == "shap_tree"  # exact TreeSHAP of the HGB
        assert "explanation" not in plain and set(plain) == set(Prediction.model_fields)
        assert set(answer) == set(ExplainedPrediction.model_fields)


def test_the_explanation_is_of_the_record_as_scored_history_included(client, explainer, clean_rows):
    """A patient's latest encounter: the API explains it with the history it looked up (the stored table's), and
    the same encounter sent without the patient's number without history: each equal to the contract's explainer
    on that record."""
    table = history_table(clean_rows).set_index("encounter_id")
    counts = clean_rows["patient_nbr"].value_counts()
    patient = counts[counts >= 3].index[0]
    row = clean_rows[clean_rows["patient_nbr"] == patient].sort_values("encounter_id").iloc[-1]
    history = table.loc[int(row["encounter_id"]), list(HISTORY_NAMES)].to_dict()
    assert history["hist_encounters"] >= 2
    cases = ((body_of(row), history, "found"), (body_of(row, ids=False), missing_history(), "no_patient"))
    for body, attached, status in cases:
        answer = explained(client, body, explain_top=50)
        assert answer["history"] == status
        record = {**Encounter.model_validate(body).to_record(), **attached}
        (expected,) = explainer.explain([record])
        top, rest = expected.top(50)
        got = answer["explanation"]
        assert [(f["factor"], f["text"]) for f in got["factors"]] == [(c.factor, c.text) for c in top]
        np.testing.assert_allclose([f["contribution"] for f in got["factors"]], [c.contribution for c in top],
                                   rtol=0, atol=1e-9)
        assert got["base_log_odds"] == pytest.approx(expected.base, abs=1e-12)
        assert got["other_factors"] == pytest.approx(rest, abs=1e-9)
        assert answer["probability"] == pytest.approx(expected.probability, abs=1e-9)
        texts = {c.factor: c.text for c in expected.contributions}
        if status == "found":
            assert texts["hist_encounters"].endswith(f": {int(history['hist_encounters'])}")
        else:
            assert texts["hist_encounters"].endswith(NOT_KNOWN)


def test_explain_top_lists_that_many_factors(client, explainer):
    for top in (1, 3, 50):
        answer = explained(client, example_encounter(), explain_top=str(top))
        shown = min(top, len(explainer.factors))
        check_additive(answer, shown)
        assert answer["explanation"]["other_factor_count"] == len(explainer.factors) - shown
    # explain=false (in any of the words FastAPI takes) and unknown parameters change nothing
    for params in ({"explain": "false"}, {"explain": "0", "explain_top": "5"}, {"verbose": "1"}):
        answer = client.post("/predict", json=example_encounter(), params=params).json()
        assert "explanation" not in answer and answer["scored"], params


@pytest.mark.parametrize(("params", "name"), [
    ({"explain": "perhaps"}, "explain"),
    ({"explain": "true", "explain_top": "0"}, "explain_top"),
    ({"explain": "true", "explain_top": "51"}, "explain_top"),
    ({"explain": "true", "explain_top": "ten"}, "explain_top"),
    ({"explain": "true", "explain_top": "2.5"}, "explain_top"),
])
def test_bad_parameters_are_422_naming_them(client, params, name):
    response = client.post("/predict", json=example_encounter(), params=params)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", name] and "ctx" not in error
    for internal in ("Traceback", "pydantic", "https://", "File "):
        assert internal not in response.text


def test_out_of_scope_encounters_get_no_explanation(client):
    hospice = example_encounter() | {"discharge_disposition_id": 13}
    answer = explained(client, hospice)
    assert answer["scored"] is False and answer["probability"] is None and answer["explanation"] is None
    assert "Hospice" in answer["reason"]


def test_explanations_are_timed_and_documented(client, history_api):
    def count() -> float:
        text = httpx.get(f"{history_api}/metrics").text
        for line in text.splitlines():
            if line.startswith("readmit_api_explanation_duration_seconds_count"):
                return float(line.split()[-1])
        raise AssertionError("no readmit_api_explanation_duration_seconds")

    before = count()
    for _ in range(3):
        explained(client, example_encounter())
    client.post("/predict", json=example_encounter())
    assert count() - before == 3
    operation = httpx.get(f"{history_api}/openapi.json").json()["paths"]["/predict"]["post"]
    assert {p["name"] for p in operation["parameters"]} == {"explain", "explain_top"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ExplainedPrediction")
    assert "409" in operation["responses"] and "explain=true" in operation["description"]


def test_a_model_that_cannot_be_explained_still_serves(unexplainable):
    with httpx.Client(base_url=unexplainable.url, headers=AUTH, timeout=30) as http:
        refused = http.post("/predict", json=example_encounter(), params={"explain": "true"})
        assert refused.status_code == 409
        assert refused.json() == {"detail": f"this model version ({unexplainable.version}) cannot be explained: ask "
                                            "without explain=true for its prediction"}
        plain = http.post("/predict", json=example_encounter())
        assert plain.status_code == 200 and plain.json()["model_version"] == unexplainable.version
        assert 0 <= plain.json()["probability"] <= 1
        hospice = http.post("/predict", json=example_encounter() | {"discharge_disposition_id": 13},
                            params={"explain": "true"})
        assert hospice.status_code == 200 and hospice.json()["explanation"] is None  # nothing to explain
        model = http.get("/model").json()
        assert model["explainable"] is False and model["model_version"] == unexplainable.version
