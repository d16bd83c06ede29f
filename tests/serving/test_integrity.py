"""Model integrity: a version whose artifact was changed after training, that carries no checksum, that is
saved with pickle or that holds types outside scikit-learn and the contract is never served.

The contract's checks on their own (digest, format, types), then the real API in front of a real MLflow
server whose artifact store is tampered with behind its back (files on disk, objects in S3).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException, get_error_code
from prometheus_client.parser import text_string_to_metric_families
from readmit_contract import TARGET, clean, validate
from readmit_contract.artifact import (
    ALLOWED_MODULE_PREFIXES,
    DIGEST_TAG,
    ArtifactRefused,
    artifact_digest,
    foreign_types,
    recorded_digest,
    verify_artifact,
    verify_digest,
    verify_format_and_types,
)
from readmit_data.candidates import build_pipeline
from readmit_serving.api.watcher import failure_kind
from sklearn.preprocessing import FunctionTransformer

from ..conftest import s3_client
from ..support import free_port, wait_http
from .conftest import AUTH, api_process, register_models

# -- the contract's checks, on folders saved by MLflow itself ------------------------------------------------


@pytest.fixture(scope="module")
def rows(synthetic_frame):
    return clean(validate(synthetic_frame).valid).clean


@pytest.fixture(scope="module")
def pipeline(rows):
    return build_pipeline("logistic_regression").fit(rows, rows[TARGET])


@pytest.fixture(scope="module")
def foreign_pipeline(rows):
    """A contract pipeline with a step holding a function from outside scikit-learn (numpy.asarray)."""
    foreign = build_pipeline("logistic_regression")
    foreign.steps.insert(1, ("sneaky", FunctionTransformer(np.asarray)))
    return foreign.fit(rows, rows[TARGET])


def skops_types(pipeline) -> list[str]:
    import skops.io

    return skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))


def save(folder: Path, pipeline, serialization_format: str = "skops", trusted: list[str] | None = None) -> Path:
    mlflow.sklearn.save_model(pipeline, folder, serialization_format=serialization_format,
                              skops_trusted_types=trusted if serialization_format == "skops" else None,
                              pip_requirements=["scikit-learn"])  # no requirement inference: ~10 s each
    return folder


def edit_mlmodel(folder: Path, change) -> None:
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    change(mlmodel)
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def refusal(call) -> ArtifactRefused:
    with pytest.raises(ArtifactRefused) as caught:
        call()
    return caught.value


def test_digest_covers_every_file_and_name(tmp_path):
    folder = tmp_path / "a"
    (folder / "sub").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "model.skops").write_bytes(b"\x00\x01model")
    (folder / "sub" / "x.json").write_text("{}")
    digest = artifact_digest(folder)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert artifact_digest(shutil.copytree(folder, tmp_path / "elsewhere")) == digest  # location does not count

    (folder / "registered_model_meta").write_text("model_name: m\nmodel_version: '3'\n")  # the client writes it
    assert artifact_digest(folder) == digest

    changes = {
        "edit": lambda: (folder / "model.skops").write_bytes(b"\x00\x01modem"),
        "rename": lambda: (folder / "sub" / "x.json").rename(folder / "sub" / "y.json"),
        "move": lambda: (folder / "sub" / "x.json").rename(folder / "x.json"),
        "add": lambda: (folder / "sub" / "extra").write_text(""),
        "remove": lambda: (folder / "sub" / "x.json").unlink(),
    }
    for what, change in changes.items():
        shutil.rmtree(folder)
        shutil.copytree(tmp_path / "elsewhere", folder)
        assert artifact_digest(folder) == digest
        change()
        assert artifact_digest(folder) != digest, what


def test_digest_is_checked_against_the_recorded_one(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    digest = artifact_digest(folder)
    verify_digest(folder, digest)
    verify_digest(folder, digest.upper() + "\n")
    assert recorded_digest({DIGEST_TAG: digest}) == digest
    for missing in (None, "", "  "):
        refused = refusal(lambda missing=missing: verify_digest(folder, missing))
        assert refused.code == "no_checksum" and "no checksum was recorded" in refused.reason
    assert refusal(lambda: recorded_digest({"candidate": "x"})).code == "no_checksum"
    refused = refusal(lambda: verify_digest(folder, "0" * 64))
    assert refused.code == "checksum_mismatch"
    assert refused.reason == "its artifact does not match the checksum recorded at training"
    assert digest in refused.details and str(tmp_path) not in refused.reason


def test_a_skops_contract_pipeline_passes(tmp_path, pipeline):
    folder = save(tmp_path / "ok", pipeline, trusted=skops_types(pipeline))
    assert verify_format_and_types(folder) == ["readmit_contract.features.EncounterFeatures"]
    assert verify_artifact(folder, artifact_digest(folder)) == ["readmit_contract.features.EncounterFeatures"]
    assert ALLOWED_MODULE_PREFIXES == ("sklearn.", "readmit_contract.")
    assert foreign_types(["sklearn.x.Y", "readmit_contract.features.F", "numpy.asarray", "builtins.eval",
                          "sklearnx.Evil"]) == ["numpy.asarray", "builtins.eval", "sklearnx.Evil"]


@pytest.mark.parametrize("serialization_format", ["pickle", "cloudpickle"])
def test_pickle_is_refused(tmp_path, pipeline, serialization_format):
    folder = save(tmp_path / "m", pipeline, serialization_format)
    refused = refusal(lambda: verify_format_and_types(folder))
    assert refused.code == "unsafe_format" and "pickle" in refused.reason
    refused = refusal(lambda: verify_artifact(folder, artifact_digest(folder)))  # a right checksum changes nothing
    assert refused.code == "unsafe_format"


def test_types_outside_sklearn_and_the_contract_are_refused(tmp_path, foreign_pipeline, pipeline):
    trusted = skops_types(foreign_pipeline)
    assert "numpy.asarray" in trusted
    folder = save(tmp_path / "foreign", foreign_pipeline, trusted=trusted)
    refused = refusal(lambda: verify_format_and_types(folder))
    assert refused.code == "unsafe_types" and "outside scikit-learn and the feature contract" in refused.reason
    assert "numpy.asarray" in refused.details and "numpy.asarray" not in refused.reason

    # a clean model file, but the MLmodel asks skops to trust a dangerous function anyway
    listed = save(tmp_path / "listed", pipeline, trusted=skops_types(pipeline))
    edit_mlmodel(listed, lambda m: m["flavors"]["sklearn"]["skops_trusted_types"].append("builtins.eval"))
    assert refusal(lambda: verify_format_and_types(listed)).code == "unsafe_types"


def test_malformed_models_are_refused(tmp_path, pipeline):
    original = save(tmp_path / "original", pipeline, trusted=skops_types(pipeline))
    verify_format_and_types(original)

    def variant(label: str, change) -> ArtifactRefused:
        folder = shutil.copytree(original, tmp_path / label)
        change(folder)
        return refusal(lambda: verify_format_and_types(folder))

    cases = {
        "no MLmodel file": lambda f: (f / "MLmodel").unlink(),
        "not a scikit-learn model": lambda f: edit_mlmodel(f, lambda m: m["flavors"].pop("sklearn")),
        "ships Python code": lambda f: edit_mlmodel(f, lambda m: m["flavors"]["python_function"].update(code="code")),
        "points outside the model folder": lambda f: edit_mlmodel(
            f, lambda m: m["flavors"]["sklearn"].update(pickled_model="../../model.skops")),
        "model file is missing": lambda f: (f / "model.skops").unlink(),
        "cannot be read as a skops file": lambda f: (f / "model.skops").write_bytes(b"not a zip file"),
        "pickle (no format)": lambda f: edit_mlmodel(f, lambda m: m["flavors"]["sklearn"].pop("serialization_format")),
        "MLmodel cannot be read": lambda f: (f / "MLmodel").write_text("flavors: [unclosed\n"),
    }
    for label, change in cases.items():
        refused = variant(re.sub(r"\W+", "-", label), change)
        assert refused.code == "unsafe_format", label
        assert str(tmp_path) not in refused.reason and "Error" not in refused.reason, (label, refused.reason)


def test_failures_are_told_apart_by_mlflow_error_code():
    assert failure_kind(RestException({"error_code": "PERMISSION_DENIED", "message": "no"})) == "credentials"
    # what MLflow's client raises for a non-JSON answer (the basic-auth app's 401 and 403 pages)
    assert failure_kind(MlflowException("401 != 200", error_code=get_error_code(401))) == "credentials"
    assert failure_kind(MlflowException("403 != 200", error_code=get_error_code(403))) == "credentials"
    assert failure_kind(MlflowException("502 != 200", error_code=get_error_code(502))) == "unreachable"
    assert failure_kind(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "x"})) == "missing"
    assert failure_kind(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "alias"})) == "missing"
    assert failure_kind(RestException({"error_code": "INTERNAL_ERROR", "message": "db down"})) == "mlflow_error"
    assert failure_kind(MlflowException("API request to http://h:1 failed with exception x")) == "unreachable"
    assert failure_kind(ConnectionError("refused")) == "unreachable"


# -- the API in front of a real MLflow server ----------------------------------------------------------------


def ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/ready", timeout=10)


def wait_ready(url: str, predicate, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = ready(url).json()
        if predicate(body):
            return body
        time.sleep(0.3)
    raise AssertionError(f"/ready never reached the expected state: {body}")


def metric(url: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def served_version(url: str, encounter: dict) -> str:
    answer = httpx.post(f"{url}/predict", json=encounter, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["model_version"]


def assert_no_internals(text: str, tracking_uri: str, *paths: Path) -> None:
    """A response body names no host, URL, path, exception class or library message."""
    host_port = tracking_uri.removeprefix("http://")
    for forbidden in (host_port, host_port.split(":")[0], "http", "/", "Exception", "Error", "Traceback",
                      "mlflow-artifacts", "s3:", "urllib3", "requests", *(str(p) for p in paths)):
        assert forbidden not in text, (forbidden, text)


def logged_model_prefix(client: MlflowClient, name: str, version: str) -> str:
    """Where MLflow 3 keeps a version's files, relative to the server's artifact destination: the logged
    model's artifact location (``mlflow-artifacts:/<experiment>/models/<model id>/artifacts``)."""
    source = client.get_model_version(name, version).source
    assert source.startswith("models:/m-"), source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    assert location.startswith("mlflow-artifacts:/"), location
    return location.removeprefix("mlflow-artifacts:").strip("/")


class ArtifactStore:
    """The tracking server's artifact store, reached behind MLflow's back (as an intruder would)."""

    def __init__(self, tracking, tmp_path_factory) -> None:
        self.tracking = tracking
        self.basetemp = tmp_path_factory.getbasetemp()

    def _local(self, prefix: str, file: str) -> Path:
        # sqlite_tracking keeps its artifacts under <its temporary folder>/artifacts; model ids are unique
        found = {p.resolve() for p in self.basetemp.glob(f"mlflow-sqlite*/artifacts/{prefix}/{file}")}
        assert len(found) == 1, (prefix, found)  # (pytest's "...current" link names the same folder)
        return found.pop()

    def read(self, prefix: str, file: str) -> bytes:
        if self.tracking.s3_endpoint:
            s3 = s3_client(self.tracking.s3_endpoint)
            return s3.get_object(Bucket=self.tracking.bucket, Key=f"artifacts/{prefix}/{file}")["Body"].read()
        return self._local(prefix, file).read_bytes()

    def write(self, prefix: str, file: str, content: bytes) -> None:
        if self.tracking.s3_endpoint:
            s3 = s3_client(self.tracking.s3_endpoint)
            key = f"artifacts/{prefix}/{file}"
            s3.head_object(Bucket=self.tracking.bucket, Key=key)  # the object is really there: replace it
            s3.put_object(Bucket=self.tracking.bucket, Key=key, Body=content)
        else:
            self._local(prefix, file).write_bytes(content)


def downloaded_digest(tracking_uri: str, name: str, version: str) -> str:
    """Digest of ``models:/NAME/VERSION`` as any MLflow client downloads it."""
    mlflow.set_tracking_uri(tracking_uri)  # models:/ URIs resolve through the process-wide registry URI
    with tempfile.TemporaryDirectory() as tmp:
        return artifact_digest(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))


def refusals(url: str, reason: str) -> float | None:
    return metric(url, "readmit_api_model_refusals_total", reason=reason)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite_tracking", "s3_tracking"])
def test_a_tampered_version_is_refused_and_the_old_one_keeps_serving(backend, request, tmp_path, tmp_path_factory,
                                                                     encounters):
    tracking = request.getfixturevalue(backend)
    name = f"integrity-{uuid.uuid4().hex[:8]}"
    models = register_models(tracking.uri, name, tmp_path, candidates=("logistic_regression", "prior_baseline"))
    good, tampered = models.versions["logistic_regression"], models.versions["prior_baseline"]
    client = MlflowClient(tracking.uri)
    for version in (good, tampered):  # training recorded the digest of the artifact as MLflow hands it out
        assert client.get_model_version(name, version).tags[DIGEST_TAG] == downloaded_digest(tracking.uri, name,
                                                                                             version)
    assert client.get_model_version_by_alias(name, "champion").version == good

    # an intruder with write access to the artifact store swaps in another valid model file
    store = ArtifactStore(tracking, tmp_path_factory)
    good_file = store.read(logged_model_prefix(client, name, good), "model.skops")
    tampered_prefix = logged_model_prefix(client, name, tampered)
    assert store.read(tampered_prefix, "model.skops") != good_file
    store.write(tampered_prefix, "model.skops", good_file)

    cache = tmp_path / "model-cache"
    url, process = api_process(tmp_path, tracking.uri, name, poll_seconds=0.5, MODEL_CACHE_DIR=str(cache))
    log = tmp_path / f"api-{url.rsplit(':', 1)[1]}.log"
    with process:
        wait_http(f"{url}/ready", timeout=120)
        assert served_version(url, encounters[0]) == good
        assert refusals(url, "checksum_mismatch") == 0.0  # every reason is exported from the start
        assert metric(url, "readmit_api_model_refused_version") == 0.0

        client.set_registered_model_alias(name, "champion", tampered)
        body = wait_ready(url, lambda b: b["refused_version"] == tampered)
        response = ready(url)
        assert response.status_code == 200  # the previous version is still there to serve
        assert body["ready"] is True and body["model_version"] == good and body["alias_version"] == tampered
        assert body["refusal"] == "checksum_mismatch"
        assert body["last_error"] == (f"version {tampered} was refused: its artifact does not match the checksum "
                                      f"recorded at training; version {good} keeps serving")
        assert_no_internals(response.text, tracking.uri, cache, tmp_path)
        assert [served_version(url, e) for e in encounters[:10]] == [good] * 10
        assert refusals(url, "checksum_mismatch") == 1.0
        assert metric(url, "readmit_api_model_refused_version") == float(tampered)
        assert metric(url, "readmit_api_model_reloads_total", result="refused") == 1.0
        assert not (cache / name / tampered).exists()  # refused files are not kept

        time.sleep(2.5)  # five polls while the alias stays on the refused version: no second download, no recount
        assert refusals(url, "checksum_mismatch") == 1.0
        assert ready(url).json()["last_error"] == body["last_error"]
        assert log.read_text().count(f"refused {name} v{tampered} (checksum_mismatch") == 1
        assert "downloaded artifact" in log.read_text()  # the details went to the log

        # the alias goes back: nothing refused any more; it comes again: checked again (and refused again)
        client.set_registered_model_alias(name, "champion", good)
        back = wait_ready(url, lambda b: b["refused_version"] is None)
        assert back["last_error"] is None and back["refusal"] is None and back["model_version"] == good
        assert metric(url, "readmit_api_model_refused_version") == 0.0
        client.set_registered_model_alias(name, "champion", tampered)
        wait_ready(url, lambda b: b["refused_version"] == tampered)
        assert refusals(url, "checksum_mismatch") == 2.0
        assert served_version(url, encounters[1]) == good


def register_logged(tracking_uri: str, name: str, pipeline, serialization_format: str,
                    trusted: list[str] | None = None) -> str:
    """Log ``pipeline`` as MLflow allows it, register it and record its true digest (the same tag training
    sets): only the format or the types can be at fault."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(name)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(pipeline, name="model", serialization_format=serialization_format,
                                        skops_trusted_types=trusted, pip_requirements=["scikit-learn"])
    version = str(mlflow.register_model(info.model_uri, name).version)
    MlflowClient(tracking_uri).set_model_version_tag(name, version, DIGEST_TAG,
                                                     downloaded_digest(tracking_uri, name, version))
    return version


@pytest.mark.slow
def test_untagged_pickled_and_foreign_versions_are_refused(sqlite_tracking, tmp_path, encounters, pipeline,
                                                           foreign_pipeline):
    uri = sqlite_tracking.uri
    name = f"integrity-{uuid.uuid4().hex[:8]}"
    good = register_models(uri, name, tmp_path, candidates=("logistic_regression",)).versions["logistic_regression"]
    client = MlflowClient(uri)
    first = client.get_model_version(name, good)
    mlflow.set_tracking_uri(uri)
    untagged = str(mlflow.register_model(first.source, name).version)  # the same model again, without a checksum
    assert DIGEST_TAG not in client.get_model_version(name, untagged).tags
    pickled = register_logged(uri, name, pipeline, "pickle")
    foreign = register_logged(uri, name, foreign_pipeline, "skops", trusted=skops_types(foreign_pipeline))

    url, process = api_process(tmp_path, uri, name, poll_seconds=0.5)
    with process:
        wait_http(f"{url}/ready", timeout=120)
        assert served_version(url, encounters[0]) == good
        expected = {
            untagged: ("no_checksum", "no checksum was recorded for it at training"),
            pickled: ("unsafe_format", "it is saved with pickle, which can run code when loaded"),
            foreign: ("unsafe_types", "its model holds types from outside scikit-learn and the feature contract"),
        }
        for version, (code, reason) in expected.items():
            client.set_registered_model_alias(name, "champion", version)
            body = wait_ready(url, lambda b, v=version: b["refused_version"] == v)
            assert body["refusal"] == code and body["model_version"] == good, body
            assert body["last_error"].startswith(f"version {version} was refused: {reason}"), body
            assert body["last_error"].endswith(f"version {good} keeps serving"), body
            assert refusals(url, code) == 1.0
            assert served_version(url, encounters[2]) == good
            assert_no_internals(ready(url).text, uri, tmp_path)
        assert metric(url, "readmit_api_model_reloads_total", result="success") == 1.0


@pytest.mark.slow
def test_a_refused_first_version_leaves_the_api_not_ready(sqlite_tracking, tmp_path, pipeline, encounters):
    uri = sqlite_tracking.uri
    name = f"integrity-{uuid.uuid4().hex[:8]}"
    pickled = register_logged(uri, name, pipeline, "pickle")
    MlflowClient(uri).set_registered_model_alias(name, "champion", pickled)
    url, process = api_process(tmp_path, uri, name, poll_seconds=0.5)
    with process:
        body = wait_ready(url, lambda b: b["refused_version"] == pickled)
        response = ready(url)
        assert response.status_code == 503 and body["ready"] is False and body["model_version"] is None
        assert body["last_error"].endswith("no model is served yet") and body["refusal"] == "unsafe_format"
        assert_no_internals(response.text, uri, tmp_path)
        assert httpx.post(f"{url}/predict", json=encounters[0], headers=AUTH, timeout=30).status_code == 503


@pytest.mark.slow
def test_ready_tells_mlflow_is_unreachable_without_internals(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    url, process = api_process(tmp_path, closed, "readmission-nowhere", poll_seconds=0.5)
    with process:
        body = wait_ready(url, lambda b: b["last_check"] is not None and b["last_error"] is not None)
        response = ready(url)
        assert response.status_code == 503
        assert body["mlflow_reachable"] is False and body["ready"] is False
        assert body["last_error"].startswith("MLflow unreachable: the model registry did not answer")
        assert_no_internals(response.text, closed, tmp_path)
        assert "ConnectionError" not in response.text and "Max retries" not in response.text
        log = (tmp_path / f"api-{url.rsplit(':', 1)[1]}.log").read_text()
        assert closed.removeprefix("http://") in log  # the details are in the log, for whoever runs the API


@pytest.mark.slow
def test_record_checksum_tags_a_version_registered_before_checksums(sqlite_tracking, tmp_path, pipeline, monkeypatch):
    """The upgrade path: a champion registered before training recorded checksums has no tag (the API would
    refuse it); `readmit-data record-checksum` tags it with the digest of the artifact as the store holds it,
    refuses a pickled one, and says when there is no champion."""
    from readmit_data import cli

    uri = sqlite_tracking.uri
    name = f"upgrade-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MODEL_NAME", name)
    monkeypatch.setenv("RAW_DB_URL", f"sqlite:///{tmp_path / 'raw.db'}")
    monkeypatch.setenv("CLEAN_DB_URL", f"sqlite:///{tmp_path / 'clean.db'}")
    assert cli.main(["record-checksum"]) == 1  # no champion yet
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(name)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(pipeline, name="model", serialization_format="skops",
                                        skops_trusted_types=skops_types(pipeline), pip_requirements=["scikit-learn"])
    version = str(mlflow.register_model(info.model_uri, name).version)
    client = MlflowClient(uri)
    client.set_registered_model_alias(name, "champion", version)
    assert DIGEST_TAG not in client.get_model_version(name, version).tags
    assert cli.main(["record-checksum"]) == 0
    assert client.get_model_version(name, version).tags[DIGEST_TAG] == downloaded_digest(uri, name, version)
    pickled = register_logged(uri, name, pipeline, "pickle")
    client.delete_model_version_tag(name, pickled, DIGEST_TAG)
    assert cli.main(["record-checksum", "--version", pickled]) == 1  # refused: never trusted by a tag
    assert DIGEST_TAG not in client.get_model_version(name, pickled).tags


def test_record_checksum_with_the_registry_down_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """A tracking server that does not answer ends `record-checksum` with one line naming what failed (no
    traceback, no credential) and exit status 1, within the bounded HTTP retries."""
    from readmit_data import cli

    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed.replace("http://", "http://training:s3cret-pw@"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("RAW_DB_URL", f"sqlite:///{tmp_path / 'raw.db'}")
    monkeypatch.setenv("CLEAN_DB_URL", f"sqlite:///{tmp_path / 'clean.db'}")
    started = time.monotonic()
    assert cli.main(["record-checksum"]) == 1
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err.strip()
    assert err.startswith("readmit-data record-checksum: ") and "\n" not in err, err
    assert "looking up" in err and "Traceback" not in err and "s3cret-pw" not in err
