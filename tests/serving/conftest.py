"""A registered champion (trained by the platform's own code on synthetic data) and the API as a real
uvicorn process in front of it.

The API needs API_KEYS: ``api_process`` gives every API it starts the session's keys (``API_KEYS``,
fresh random keys per session, never written to a file or a command line); tests send
``AUTH`` (the "tests" caller) or use the ``http`` client, which sends it.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from readmit_contract import validate
from readmit_contract.encounter import json_encounters
from readmit_contract.target import EXCLUDED_DISCHARGE_DISPOSITIONS
from readmit_data.loading import load, read_source
from readmit_data.preprocessing import preprocess_pending
from readmit_data.registry import register_and_promote
from readmit_data.settings import DataSettings
from readmit_data.stores import engines
from readmit_data.training import take_snapshot, train_candidate

from ..support import free_port, started

SOURCE = "synthetic:6000:31"
BIN = Path(sys.executable).parent

KEYS = {name: secrets.token_urlsafe(24) for name in ("tests", "ui", "locust")}
"""The callers the test APIs know, and their keys."""
API_KEYS = ",".join(f"{name}:{key}" for name, key in KEYS.items())
AUTH = {"X-API-Key": KEYS["tests"]}
"""Headers of an authorised request."""


@dataclass(frozen=True)
class Registered:
    tracking_uri: str
    model_name: str
    versions: dict[str, str]  # candidate -> version
    settings: DataSettings


def register_models(tracking_uri: str, model_name: str, root: Path,
                    candidates=("hist_gradient_boosting", "logistic_regression")) -> Registered:
    """Train candidates through the platform's training code; the first becomes champion."""
    settings = DataSettings(MLFLOW_TRACKING_URI=tracking_uri, MODEL_NAME=model_name, MLFLOW_EXPERIMENT_NAME=model_name,
                            RAW_DB_URL=f"sqlite:///{root}/raw.db", CLEAN_DB_URL=f"sqlite:///{root}/clean.db",
                            PROMOTION_MIN_DELTA=1.0)  # later candidates never take the alias by themselves
    versions = {}
    with engines(settings.raw_db_url, settings.clean_db_url) as (raw, clean_store):
        load(raw, read_source(SOURCE), source=SOURCE, batch="all", batch_size=2000, progress=False)
        preprocess_pending(raw, clean_store)
        snapshot = take_snapshot(clean_store)
        for candidate in candidates:
            result = train_candidate(settings, clean_store, candidate, snapshot)
            versions[candidate] = register_and_promote(settings, clean_store, result).version
    return Registered(tracking_uri, model_name, versions, settings)


@pytest.fixture(scope="session")
def registered(sqlite_tracking, tmp_path_factory) -> Registered:
    return register_models(sqlite_tracking.uri, "readmission-serving-test", tmp_path_factory.mktemp("serving-data"))


@pytest.fixture(scope="session")
def encounters() -> list[dict]:
    """In-scope encounters as JSON bodies (contract names, null for missing)."""
    rows = validate(read_source(SOURCE).head(400)).valid
    rows = rows[~rows["discharge_disposition_id"].isin(EXCLUDED_DISCHARGE_DISPOSITIONS)]
    return json_encounters(rows)


def api_process(tmp_path: Path, tracking_uri: str, model_name: str, poll_seconds: float = 1.0, **env: str):
    port = free_port()
    # TREES_COMPILE off unless asked: compiling a version's trees costs seconds of both cores per API started;
    # the shared ``api`` compiles (test_api checks its answers once compiled), test_trees covers the rest
    environment = {"MLFLOW_TRACKING_URI": tracking_uri, "MODEL_NAME": model_name, "MODEL_ALIAS": "champion",
                   "MODEL_POLL_SECONDS": str(poll_seconds), "API_KEYS": API_KEYS, "TREES_COMPILE": "false", **env}
    cmd = [str(BIN / "uvicorn"), "readmit_serving.api.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--no-access-log"]
    return f"http://127.0.0.1:{port}", started(cmd, environment, tmp_path / f"api-{port}.log",
                                               ready_url=f"http://127.0.0.1:{port}/health")


@pytest.fixture(scope="session")
def api(registered, tmp_path_factory):
    """The API serving the registered champion; yields its base URL once /ready is 200."""
    from ..support import wait_http

    url, process = api_process(tmp_path_factory.mktemp("api"), registered.tracking_uri, registered.model_name,
                               TREES_COMPILE="true")
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield url


@pytest.fixture(scope="session")
def api_headers() -> dict[str, str]:
    """Headers of an authorised request (the "tests" caller's key)."""
    return dict(AUTH)


@pytest.fixture
def http(api):
    """An httpx client of the shared API that sends the "tests" caller's key."""
    with httpx.Client(base_url=api, headers=AUTH, timeout=30) as client:
        yield client


# -- a model the contract cannot explain, registered without a model card ------------------------------------

def log_and_register(tracking_uri: str, name: str, pipeline) -> str:
    """Log ``pipeline`` (skops) in a run of its own, register it and record its checksum as training does (tag
    ``artifact_sha256``): a version the API serves, whose run holds no model card."""
    import tempfile

    import mlflow
    import skops.io
    from mlflow import MlflowClient
    from readmit_contract.artifact import DIGEST_TAG, artifact_digest

    mlflow.set_tracking_uri(tracking_uri)  # models:/ URIs resolve through the process-wide registry URI
    mlflow.set_experiment(name)
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(pipeline, name="model", serialization_format="skops",
                                        skops_trusted_types=trusted, pip_requirements=["scikit-learn"])
    version = str(mlflow.register_model(info.model_uri, name).version)
    with tempfile.TemporaryDirectory() as tmp:
        digest = artifact_digest(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
    MlflowClient(tracking_uri).set_model_version_tag(name, version, DIGEST_TAG, digest)
    return version


@dataclass(frozen=True)
class Unexplainable:
    url: str
    model_name: str
    version: str


@pytest.fixture(scope="session")
def unexplainable(sqlite_tracking, synthetic_frame, tmp_path_factory) -> Unexplainable:
    """An API serving a model the contract cannot explain (a forest calibrated by isotonic regression, made with
    the contract's transform), registered from a run without a model card."""
    from mlflow import MlflowClient
    from readmit_contract import TARGET, EncounterFeatures, clean
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    from ..support import wait_http

    rows = clean(validate(synthetic_frame).valid).clean
    forest = CalibratedClassifierCV(RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0),
                                    method="isotonic", cv=2)
    pipeline = Pipeline([("features", EncounterFeatures()), ("model", forest)]).fit(rows, rows[TARGET])
    name = "readmission-unexplainable"
    version = log_and_register(sqlite_tracking.uri, name, pipeline)
    MlflowClient(sqlite_tracking.uri).set_registered_model_alias(name, "champion", version)
    url, process = api_process(tmp_path_factory.mktemp("api-unexplainable"), sqlite_tracking.uri, name)
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield Unexplainable(url, name, version)
