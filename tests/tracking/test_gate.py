"""The promotion gate: the paired bootstrap over patients (pure), then the gate against real MLflow servers.

Candidates are trained once per module by the platform's own code on small synthetic data (the cheap
ones: prior_baseline, logistic_regression twice, hist_gradient_boosting) and registered under a model
name of each test's own. Registry errors are real: a wrong password against the authenticated server,
a port nobody listens on, and a real HTTP proxy in front of the server answering 503 to the champion
lookup.
"""

from __future__ import annotations

import http.client
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np
import pytest
from readmit_contract.artifact import DIGEST_TAG
from readmit_data.gate import corrected_confidence, paired_bootstrap, weighted_auc
from readmit_data.mlflow_access import RegistryError
from readmit_data.registry import register_and_promote
from readmit_data.settings import DataSettings
from readmit_data.stores import make_engine
from readmit_data.training import CandidateResult, take_snapshot, train_candidate
from sklearn.metrics import roc_auc_score

from ..support import free_port
from .conftest import cleaned_store

SOURCE = "synthetic:4000:21"


# -- the bootstrap itself ---------------------------------------------------------------------------


def _scores(rng: np.random.Generator, y: np.ndarray, signal: float) -> np.ndarray:
    return np.round(rng.random(len(y)) + signal * y, 3)


def test_weighted_auc_is_roc_auc_with_weights():
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.2).astype(int)
    scores = np.round(_scores(rng, y, 0.3), 1)  # many ties
    weights = rng.integers(0, 4, size=(6, 500))
    expected = [roc_auc_score(y, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(weighted_auc(y, scores, weights), expected, rtol=1e-12)
    assert np.isnan(weighted_auc(y, scores, np.where(y == 1, 0, 1)[None, :])[0])  # no positive drawn


def test_identical_models_tie_and_keep_the_champion():
    rng = np.random.default_rng(4)
    y = (rng.random(2000) < 0.11).astype(int)
    scores = _scores(rng, y, 0.3)
    comparison = paired_bootstrap(y, scores, scores.copy(), rng.integers(0, 1500, 2000), candidates=3)
    assert comparison.delta == 0.0 and comparison.lower_bound == 0.0
    assert not comparison.promoted


def test_a_real_lead_on_many_patients_wins():
    rng = np.random.default_rng(5)
    y = (rng.random(5000) < 0.3).astype(int)
    champion = _scores(rng, y, 0.30)
    challenger = np.round(champion + 0.06 * y + 0.05 * rng.random(len(y)), 3)  # a real, modest lead
    comparison = paired_bootstrap(y, challenger, champion, np.arange(len(y)), candidates=3, seed=1)
    assert comparison.promoted and 0 < comparison.lower_bound < comparison.delta
    assert comparison.patients == comparison.rows == 5000 and comparison.samples == 1000


def test_the_same_lead_on_few_patients_is_noise():
    """40 patients with 100 encounters each (copies): 4,000 rows, but only 40 independent draws."""
    rng = np.random.default_rng(12)
    y40 = (rng.random(40) < 0.4).astype(int)
    champion40 = np.round(rng.random(40) + 0.3 * y40, 3)
    challenger40 = np.round(champion40 + 0.1 * y40 + rng.normal(0, 0.2, 40), 3)  # better on average, noisily
    y, champion, challenger = np.tile(y40, 100), np.tile(champion40, 100), np.tile(challenger40, 100)
    by_patient = paired_bootstrap(y, challenger, champion, np.tile(np.arange(40), 100), candidates=3, seed=1)
    as_if_rows_were_patients = paired_bootstrap(y, challenger, champion, np.arange(len(y)), candidates=3, seed=1)
    assert by_patient.delta == as_if_rows_were_patients.delta > 0
    assert as_if_rows_were_patients.promoted  # what a bootstrap over rows would conclude
    assert by_patient.patients == 40 and by_patient.lower_bound < 0 and not by_patient.promoted


def test_resampling_patients_not_rows_widens_the_interval():
    """Each patient's encounters repeated 3 times: rows are not independent, and the bound knows it."""
    rng = np.random.default_rng(6)
    y1 = (rng.random(800) < 0.3).astype(int)
    champion1, challenger1 = _scores(rng, y1, 0.3), _scores(rng, y1, 0.35)
    y, champion, challenger = np.tile(y1, 3), np.tile(champion1, 3), np.tile(challenger1, 3)
    by_patient = paired_bootstrap(y, challenger, champion, np.tile(np.arange(800), 3), seed=2)
    by_row = paired_bootstrap(y, challenger, champion, np.arange(2400), seed=2)
    assert by_patient.delta == pytest.approx(by_row.delta)
    assert by_patient.delta - by_patient.lower_bound > 1.4 * (by_row.delta - by_row.lower_bound)


def test_best_of_n_is_corrected():
    assert corrected_confidence(0.95, 1) == pytest.approx(0.95)
    assert corrected_confidence(0.95, 5) == pytest.approx(0.99)
    rng = np.random.default_rng(7)
    y = (rng.random(3000) < 0.2).astype(int)
    champion, challenger = _scores(rng, y, 0.3), _scores(rng, y, 0.34)
    patients = np.arange(3000)
    one = paired_bootstrap(y, challenger, champion, patients, candidates=1, seed=3)
    ten = paired_bootstrap(y, challenger, champion, patients, candidates=10, seed=3)
    assert ten.confidence == pytest.approx(0.995) and ten.lower_bound < one.lower_bound
    assert ten.samples >= 2000  # enough samples for the 0.5 % tail


# -- the gate against real MLflow servers ---------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    settings: DataSettings
    clean_url: str
    results: dict[str, CandidateResult]


@pytest.fixture(scope="module")
def clean_url(tmp_path_factory) -> str:
    return cleaned_store(tmp_path_factory.mktemp("gate-stores"), SOURCE)


def settings_for(uri: str, clean_url: str, model_name: str, **extra) -> DataSettings:
    return DataSettings(MLFLOW_TRACKING_URI=uri, CLEAN_DB_URL=clean_url, MODEL_NAME=model_name,
                        MLFLOW_EXPERIMENT_NAME=f"gate-{uuid.uuid4().hex[:8]}", **extra)


def train(settings: DataSettings, clean_url: str, names: dict[str, str]) -> dict[str, CandidateResult]:
    from threadpoolctl import threadpool_limits

    engine = make_engine(clean_url)
    try:
        snapshot = take_snapshot(engine)
        # one OpenMP thread: on a shared 2-core machine, gradient boosting's threads otherwise spin against the
        # other processes (10x slower)
        with threadpool_limits(limits=1):
            return {label: train_candidate(settings, engine, candidate, snapshot)
                    for label, candidate in names.items()}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def trained(sqlite_tracking, clean_url) -> Trained:
    settings = settings_for(sqlite_tracking.uri, clean_url, "unused")
    results = train(settings, clean_url, {"prior": "prior_baseline", "logistic": "logistic_regression",
                                          "logistic_twin": "logistic_regression", "hgb": "hist_gradient_boosting"})
    return Trained(settings, clean_url, results)


def promote(trained: Trained, model_name: str, label: str, candidates: int = 3, **extra):
    settings = trained.settings.model_copy(update={"model_name": model_name, **extra})
    engine = make_engine(trained.clean_url)
    try:
        return register_and_promote(settings, engine, trained.results[label], candidates=candidates)
    finally:
        engine.dispose()


def versions(uri: str, model_name: str) -> dict[str, object]:
    from mlflow import MlflowClient

    return {v.version: v for v in MlflowClient(uri).search_model_versions(f"name = '{model_name}'")}


def champion_version(uri: str, model_name: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(uri).get_model_version_by_alias(model_name, "champion").version


@pytest.mark.slow
def test_a_better_challenger_takes_champion(sqlite_tracking, trained, model_name):
    from mlflow import MlflowClient

    first = promote(trained, model_name, "prior")
    assert first.promoted and first.decision == "first_model" and first.version == "1"
    better = promote(trained, model_name, "logistic")
    assert better.promoted and better.decision == "better" and better.alias == "champion"
    assert better.previous_champion == "1"
    assert champion_version(sqlite_tracking.uri, model_name) == "2"

    tags = versions(sqlite_tracking.uri, model_name)["2"].tags
    assert tags["promotion"].startswith("promoted: logistic_regression validation ROC-AUC")
    assert tags["promotion.decision"] == "better" and tags["promotion.champion"] == "1"
    assert float(tags["gate.lower_bound"]) > 0.0 and float(tags["gate.champion_roc_auc"]) == 0.5
    assert int(tags["gate.patients"]) < int(tags["gate.rows"])  # patients come back: grouped resampling
    assert tags["gate.candidates"] == "3" and float(tags["gate.confidence"]) == pytest.approx(1 - 0.05 / 3)
    assert int(tags["gate.bootstrap_samples"]) >= 1000 and DIGEST_TAG in tags
    run_tags = MlflowClient(sqlite_tracking.uri).get_run(trained.results["logistic"].run_id).data.tags
    assert {k: run_tags[k] for k in better.figures} == better.figures and run_tags["promotion"] == tags["promotion"]


@pytest.mark.slow
def test_a_tie_keeps_the_champion(sqlite_tracking, trained, model_name):
    promote(trained, model_name, "logistic")
    twin = promote(trained, model_name, "logistic_twin")  # the same model, trained again
    assert not twin.promoted and twin.decision == "not_better" and twin.alias == "challenger"
    assert float(twin.figures["gate.delta"]) == 0.0 and float(twin.figures["gate.lower_bound"]) == 0.0
    assert champion_version(sqlite_tracking.uri, model_name) == "1"


@pytest.mark.slow
def test_a_lead_within_the_noise_keeps_the_champion(sqlite_tracking, trained, model_name):
    # two real candidates close on validation: the weaker one is champion, the stronger one challenges
    weaker, stronger = sorted(["logistic", "hgb"], key=lambda label: trained.results[label].metrics["roc_auc"])
    promote(trained, model_name, weaker)
    challenger = promote(trained, model_name, stronger)
    delta, lower = float(challenger.figures["gate.delta"]), float(challenger.figures["gate.lower_bound"])
    assert delta > 0.0, "precondition: the challenger's validation ROC-AUC is higher (a gate without noise promotes)"
    assert lower <= 0.0 < delta and not challenger.promoted
    assert challenger.reason.startswith(f"not promoted: {trained.results[stronger].candidate}")
    assert champion_version(sqlite_tracking.uri, model_name) == "1"


@pytest.mark.slow
def test_an_unloadable_champion_is_an_explicit_decision(sqlite_tracking, trained, model_name):
    from mlflow import MlflowClient

    promote(trained, model_name, "logistic")
    # the champion's artifact no longer matches its recorded checksum: serving refuses it, so does the gate
    MlflowClient(sqlite_tracking.uri).set_model_version_tag(model_name, "1", DIGEST_TAG, "0" * 64)
    replaced = promote(trained, model_name, "prior")
    assert replaced.promoted and replaced.decision == "champion_unloadable" and replaced.previous_champion == "1"
    assert "checksum_mismatch" in replaced.reason and replaced.reason.startswith("promoted: champion v1 cannot be used")
    tags = versions(sqlite_tracking.uri, model_name)["2"].tags
    assert tags["promotion.decision"] == "champion_unloadable" and tags["promotion"] == replaced.reason
    assert champion_version(sqlite_tracking.uri, model_name) == "2"


# -- registry errors abort and promote nothing ----------------------------------------------------


def _chain(exc: BaseException) -> str:
    text, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(text)


@pytest.mark.slow
def test_an_unreachable_registry_aborts(sqlite_tracking, trained, model_name):
    promote(trained, model_name, "prior")
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError) as raised:
        promote(trained, model_name, "logistic", mlflow_tracking_uri=dead, mlflow_http_request_max_retries=0)
    message = str(raised.value)
    assert message.startswith(f"MLflow at {dead} failed while looking for versions of {model_name}")
    assert "cannot be reached" in message and "nothing was registered or promoted" in message
    assert champion_version(sqlite_tracking.uri, model_name) == "1" and list(versions(sqlite_tracking.uri,
                                                                                        model_name)) == ["1"]


class _FailingProxy(BaseHTTPRequestHandler):
    """Forwards to the upstream MLflow, except the registered-model lookup (the champion's): 503."""

    upstream: str = ""
    failed: list[str] = []

    def _handle(self) -> None:
        if self.path.startswith("/api/2.0/mlflow/registered-models/get"):
            self.failed.append(self.path)
            self._reply(503, {"Content-Type": "text/plain"}, b"Service Unavailable")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = urlsplit(self.upstream)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            kept = {k: v for k, v in response.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")}
            self._reply(response.status, kept, payload)
        finally:
            connection.close()

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def failing_proxy(sqlite_tracking):
    handler = type("Handler", (_FailingProxy,), {"upstream": sqlite_tracking.uri, "failed": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.failed
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_5xx_on_the_champion_lookup_aborts(sqlite_tracking, trained, model_name, failing_proxy):
    """Before: the 503 counted as "no champion", and the worse model became champion as a "first model"."""
    promote(trained, model_name, "logistic")
    proxy, failed = failing_proxy
    with pytest.raises(RegistryError) as raised:
        promote(trained, model_name, "prior", mlflow_tracking_uri=proxy, mlflow_http_request_max_retries=1,
                mlflow_http_request_backoff_factor=0)
    message = str(raised.value)
    assert f"failed while looking up {model_name}@champion" in message
    assert "HTTP 503 to every attempt" in message and "nothing was registered or promoted" in message
    assert len(failed) == 2  # the first attempt and one retry, nothing else failed
    assert champion_version(sqlite_tracking.uri, model_name) == "1"
    assert list(versions(sqlite_tracking.uri, model_name)) == ["1"]


@pytest.mark.slow
def test_authentication_and_permission_errors_abort(auth_tracking, clean_url):
    """A wrong password (401), then the read-only identity (403 on registering): nothing registered either
    time; the training identity then registers the same run."""
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    name = f"diabetes-readmission-gate-{uuid.uuid4().hex[:8]}"
    settings = settings_for(auth_tracking.uri, clean_url, name)
    engine = make_engine(clean_url)
    with pytest.MonkeyPatch.context() as patch, _use_tracking_uri(auth_tracking.uri):
        def identity(user) -> None:
            for key, value in user.client_env.items():
                patch.setenv(key, value)

        try:
            identity(auth_tracking.training)
            baseline = train(settings, clean_url, {"prior": "prior_baseline"})["prior"]
            MlflowClient(auth_tracking.uri).create_registered_model(name)  # training's model, no version yet

            patch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
            with pytest.raises(RegistryError) as refused:
                register_and_promote(settings, engine, baseline)
            assert f"failed while looking for versions of {name}" in str(refused.value)
            assert "authentication refused (HTTP 401)" in str(refused.value)

            identity(auth_tracking.reader)  # reads the registry and the run, may not write (the model card first)
            with pytest.raises(RegistryError) as denied:
                register_and_promote(settings, engine, baseline)
            assert f"failed while storing the model card on run {baseline.run_id}" in str(denied.value)
            assert "permission denied (HTTP 403)" in str(denied.value)

            identity(auth_tracking.training)
            assert versions(auth_tracking.uri, name) == {}  # nothing registered, no champion
            promotion = register_and_promote(settings, engine, baseline)  # and with the right identity, it works
            assert promotion.version == "1" and promotion.decision == "first_model"
        finally:
            engine.dispose()
    for error in (refused.value, denied.value):
        chain = _chain(error)
        for secret in (auth_tracking.training.password, auth_tracking.reader.password, "not-the-password"):
            assert secret not in chain
