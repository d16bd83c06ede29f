"""Serving faults against the real components: the API's MLflow stopped and started again on the same port
(the API keeps serving, then follows a new champion without a restart), and versions that pass the artifact
checks but must not serve (a model file that cannot be deserialised, a model that cannot score the contract's
example encounter or answers NaN): the old version keeps serving, ``/ready`` and
``readmit_api_model_refusals_total{reason}`` say why.

One MLflow server (SQLite store, local artifacts, a fixed port so that it can come back where the API looks)
and one API process for the whole module.
"""

from __future__ import annotations

import copy
import io
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from readmit_contract import TARGET, clean, example_encounter, synthetic, validate
from readmit_contract.artifact import DIGEST_TAG
from readmit_data.candidates import build_pipeline
from readmit_serving.api.model import NOT_PROBABILITIES, PREDICT_FAILED, UNLOADABLE
from sklearn.linear_model import LogisticRegression

from ..support import BIN, free_port, started, wait_http
from .conftest import AUTH, api_process
from .test_integrity import (
    assert_no_internals,
    downloaded_digest,
    logged_model_prefix,
    metric,
    ready,
    refusals,
    register_logged,
    skops_types,
    wait_ready,
)

pytestmark = pytest.mark.slow


class Registry:
    """``readmit-tracking serve`` (SQLite store, local artifacts under ``root``) on a port of its own, which the
    tests stop and start again: the same store, the same address."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}",
                    "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts"), "MLFLOW_HOST": "127.0.0.1",
                    "MLFLOW_PORT": str(self.port), "MLFLOW_WORKERS": "1"}
        self.starts = 0
        self._stack: ExitStack | None = None

    @property
    def up(self) -> bool:
        return self._stack is not None

    def start(self) -> None:
        assert self._stack is None
        self.starts += 1
        stack = ExitStack()
        stack.enter_context(started([str(BIN / "readmit-tracking"), "serve"], self.env,
                                    self.root / f"mlflow-{self.port}-{self.starts}.log",
                                    ready_url=f"{self.uri}/health", timeout=120))
        self._stack = stack

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def artifact_file(self, client: MlflowClient, name: str, version: str, file: str) -> Path:
        path = self.root / "artifacts" / logged_model_prefix(client, name, version) / file
        assert path.is_file(), path
        return path


@dataclass
class Serving:
    registry: Registry
    client: MlflowClient
    name: str
    url: str
    log: Path
    cache: Path
    tmp: Path
    pipeline: object
    """A contract Pipeline fitted on synthetic encounters (what the good versions hold)."""
    good: str
    """The version the API served first."""

    def register(self, pipeline) -> str:
        return register_logged(self.registry.uri, self.name, pipeline, "skops", trusted=skops_types(pipeline))

    def champion(self, version: str) -> None:
        self.client.set_registered_model_alias(self.name, "champion", version)

    def serving(self) -> str:
        return ready(self.url).json()["model_version"]


@pytest.fixture(scope="module")
def serving(tmp_path_factory) -> Iterator[Serving]:
    tmp = tmp_path_factory.mktemp("serving-faults")
    registry = Registry(tmp)
    registry.start()
    try:
        rows = clean(validate(synthetic.generate(3000, seed=7)).valid).clean
        pipeline = build_pipeline("logistic_regression").fit(rows, rows[TARGET])
        name = f"faults-{uuid.uuid4().hex[:8]}"
        client = MlflowClient(registry.uri)
        good = register_logged(registry.uri, name, pipeline, "skops", trusted=skops_types(pipeline))
        client.set_registered_model_alias(name, "champion", good)
        cache = tmp / "model-cache"
        url, process = api_process(tmp, registry.uri, name, poll_seconds=0.5, MODEL_CACHE_DIR=str(cache),
                                   MODEL_RELOAD_CALLERS="tests")
        with process:
            wait_http(f"{url}/ready", timeout=120)
            yield Serving(registry, client, name, url, tmp / f"api-{url.rsplit(':', 1)[1]}.log", cache, tmp,
                          pipeline, good)
    finally:
        registry.stop()


def classifier(pipeline) -> LogisticRegression:
    """The logistic regression at the end of the contract pipeline (after its scaler)."""
    found = pipeline[-1][-1]
    assert isinstance(found, LogisticRegression)
    return found


ENCOUNTERS = [example_encounter() | {"time_in_hospital": days, "number_inpatient": days % 4} for days in range(1, 13)]


def wait_polls(url: str, polls: int = 3, timeout: float = 60.0) -> None:
    """Wait until the watcher has checked the alias ``polls`` more times (``last_check`` moved on)."""
    seen = {ready(url).json()["last_check"]}
    deadline = time.monotonic() + timeout
    while len(seen) <= polls:
        assert time.monotonic() < deadline, f"fewer than {polls} checks of the alias in {timeout} s"
        time.sleep(0.2)
        seen.add(ready(url).json()["last_check"])


def all_served_by(url: str, version: str) -> list[float]:
    """Every encounter answered 200 by ``version``, one by one and in a batch; the probabilities."""
    probabilities = []
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        for encounter in ENCOUNTERS:
            answer = http.post("/predict", json=encounter)
            assert answer.status_code == 200 and answer.json()["model_version"] == version, answer.text
            probabilities.append(answer.json()["probability"])
        batch = http.post("/predict/batch", json={"encounters": ENCOUNTERS})
        assert batch.status_code == 200 and batch.json()["model_version"] == version, batch.text
        np.testing.assert_allclose([p["probability"] for p in batch.json()["predictions"]], probabilities,
                                   rtol=0, atol=1e-9)
    return probabilities


# -- MLflow gone and back -------------------------------------------------------------------------------------------

def test_mlflow_gone_then_back_and_a_new_champion_is_followed(serving):
    registry, url = serving.registry, serving.url
    before = serving.serving()
    answers = all_served_by(url, before)
    failures_before = metric(url, "readmit_api_mlflow_check_failures_total")

    registry.stop()
    body = wait_ready(url, lambda b: b["mlflow_reachable"] is False, timeout=60)
    response = ready(url)
    assert response.status_code == 200 and body["ready"] is True and body["model_version"] == before
    assert body["last_error"] == (f"MLflow unreachable: the model registry did not answer; version {before} keeps "
                                  "serving; the API asks again every 0.5 s")
    assert_no_internals(response.text, registry.uri, serving.tmp)
    wait_polls(url)  # a few checks with nobody answering: still serving the same version
    np.testing.assert_allclose(all_served_by(url, before), answers, rtol=0, atol=1e-12)
    assert metric(url, "readmit_api_mlflow_up") == 0.0
    assert metric(url, "readmit_api_mlflow_check_failures_total") >= failures_before + 2
    assert metric(url, "readmit_api_model_loaded") == 1.0
    # asked to check now, with MLflow away: 503, the version it had keeps serving (the alias it saw last is stale)
    reload = httpx.post(f"{url}/model/reload", headers=AUTH, timeout=60)
    assert reload.status_code == 503 and reload.json()["model_version"] == before
    assert reload.json()["last_error"].startswith("MLflow unreachable")
    assert_no_internals(reload.text, registry.uri, serving.tmp)

    registry.start()  # the same store on the same port
    body = wait_ready(url, lambda b: b["mlflow_reachable"] is True and b["last_error"] is None, timeout=60)
    assert body["model_version"] == before and metric(url, "readmit_api_mlflow_up") == 1.0

    shifted = copy.deepcopy(serving.pipeline)
    classifier(shifted).intercept_ += 0.5  # another model: every probability changes
    newer = serving.register(shifted)  # registered on the restarted server
    serving.champion(newer)
    body = wait_ready(url, lambda b: b["model_version"] == newer, timeout=90)
    assert body["refused_version"] is None and body["last_error"] is None and body["alias_version"] == newer
    assert all(a != b for a, b in zip(all_served_by(url, newer), answers, strict=True))
    assert serving.log.read_text().count("Application startup complete") == 1  # followed without a restart


# -- versions that pass the artifact checks but must not serve -----------------------------------------------------

def _garbage_arrays(skops_file: Path) -> None:
    """Rewrite a skops file with every array's bytes replaced: its types and structure are intact (the
    artifact checks pass), it cannot be loaded."""
    with zipfile.ZipFile(io.BytesIO(skops_file.read_bytes())) as original:
        entries = {name: original.read(name) for name in original.namelist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as rewritten:
        for name, content in entries.items():
            rewritten.writestr(name, b"not an array" if name.endswith(".npy") else content)
    skops_file.write_bytes(buffer.getvalue())


def unloadable_version(serving: Serving) -> str:
    """A version registered, then its model file made undeserialisable, then its checksum recorded for what the
    store holds: the checksum is right, the format and types are allowed, the model does not load."""
    version = serving.register(serving.pipeline)
    _garbage_arrays(serving.registry.artifact_file(serving.client, serving.name, version, "model.skops"))
    serving.client.set_model_version_tag(serving.name, version, DIGEST_TAG,
                                         downloaded_digest(serving.registry.uri, serving.name, version))
    return version


def broken_predict_version(serving: Serving) -> str:
    """A model that loads but raises on any encounter (coefficients of the wrong shape)."""
    broken = copy.deepcopy(serving.pipeline)
    classifier(broken).coef_ = np.zeros((1, 3))
    return serving.register(broken)


def nan_version(serving: Serving) -> str:
    """A model that loads and answers NaN for every encounter."""
    broken = copy.deepcopy(serving.pipeline)
    classifier(broken).coef_ = np.full_like(classifier(broken).coef_, np.nan)
    return serving.register(broken)


CASES = {
    "unloadable": (unloadable_version, "unloadable", UNLOADABLE),
    "predict raises": (broken_predict_version, "predict_failed", PREDICT_FAILED),
    "predict answers NaN": (nan_version, "predict_failed", NOT_PROBABILITIES),
}


def test_versions_that_cannot_load_or_predict_are_refused_and_the_old_one_keeps_serving(serving):
    url, name = serving.url, serving.name
    wait_ready(url, lambda b: b["mlflow_reachable"] is True and b["refused_version"] is None)
    keeps = serving.serving()
    answers = all_served_by(url, keeps)
    for reason in ("unloadable", "predict_failed"):  # exported at 0 before anything is refused
        assert refusals(url, reason) == 0.0, reason
    successes = metric(url, "readmit_api_model_reloads_total", result="success")

    for case, (make, code, sentence) in CASES.items():
        version = make(serving)
        assert serving.client.get_model_version(name, version).tags[DIGEST_TAG] == downloaded_digest(
            serving.registry.uri, name, version), case  # the artifact checks have nothing to object to
        counted = refusals(url, code)
        serving.champion(version)
        body = wait_ready(url, lambda b, v=version: b["refused_version"] == v, timeout=90)
        response = ready(url)
        assert response.status_code == 200 and body["ready"] is True, case
        assert body["model_version"] == keeps and body["alias_version"] == version and body["refusal"] == code, case
        assert body["last_error"] == f"version {version} was refused: {sentence}; version {keeps} keeps serving", case
        assert_no_internals(response.text, serving.registry.uri, serving.tmp, serving.cache)
        assert refusals(url, code) == counted + 1, case
        assert metric(url, "readmit_api_model_refused_version") == float(version), case
        np.testing.assert_allclose(all_served_by(url, keeps), answers, rtol=0, atol=1e-12, err_msg=case)
        assert not (serving.cache / name / version).exists(), case  # nothing refused stays in the cache

    wait_polls(url)  # checks while the alias stays on a refused version: not loaded (nor counted) again
    assert refusals(url, "predict_failed") == 2.0 and refusals(url, "unloadable") == 1.0
    log = serving.log.read_text()
    assert log.count(f"v{version} (predict_failed") == 1
    assert "ValueError" in log  # the details (the library's words) are in the log only
    assert metric(url, "readmit_api_model_reloads_total", result="success") == successes  # never swapped in

    serving.champion(keeps)  # the alias goes back: nothing refused any more
    back = wait_ready(url, lambda b: b["refused_version"] is None, timeout=60)
    assert back["refusal"] is None and back["last_error"] is None and back["model_version"] == keeps
    assert metric(url, "readmit_api_model_refused_version") == 0.0
