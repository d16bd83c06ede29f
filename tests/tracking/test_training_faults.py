"""Faults during train_and_register, against real components: the MLflow server stopped between training and
registration and in the middle of registration, the S3 endpoint (moto's server) stopped while a model is
logged. Each time: a clear error, nothing half-done, and a retry (the same task functions, once the
component is back) completes the job with exactly one version per run.

One stack for the module: moto's S3 server and an MLflow server (SQLite backend store, artifacts in the
bucket), each on a fixed port so that it comes back at the same address after a stop.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from readmit_data.mlflow_access import RegistryError
from readmit_data.registry import register_and_promote
from readmit_data.settings import DataSettings
from readmit_data.stores import make_engine
from readmit_data.training import CandidateResult, take_snapshot, train_candidate

from ..conftest import BUCKET, s3_client
from ..support import BIN, S3_KEYS, free_port, started
from .conftest import cleaned_store

pytestmark = pytest.mark.slow
SOURCE = "synthetic:3000:5"


class Restartable:
    """A server started by ``tests.support.started`` that can be stopped and started again on the same port."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, ready_url: str) -> None:
        self.cmd, self.env, self.log, self.ready_url = cmd, env, log, ready_url
        self._running: AbstractContextManager | None = None

    def start(self) -> None:
        self._running = started(self.cmd, self.env, self.log, ready_url=self.ready_url, timeout=120)
        self._running.__enter__()

    def stop(self) -> None:
        if self._running is not None:
            running, self._running = self._running, None
            running.__exit__(None, None, None)


class Stack:
    def __init__(self, root: Path) -> None:
        s3_port, mlflow_port = free_port(), free_port()
        self.s3_endpoint = f"http://127.0.0.1:{s3_port}"
        self.uri = f"http://127.0.0.1:{mlflow_port}"
        self.s3 = Restartable([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], {},
                              root / "moto.log", f"{self.s3_endpoint}/moto-api/")
        self.server_env = {
            "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}",
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/artifacts",
            "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(mlflow_port), "MLFLOW_WORKERS": "1",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint, **S3_KEYS,
            "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard",  # the server gives up on a dead S3 quickly
        }
        self.mlflow = Restartable([str(BIN / "readmit-tracking"), "serve"], self.server_env, root / "mlflow.log",
                                  f"{self.uri}/health")

    def start_s3(self) -> None:
        """moto keeps its buckets in memory: a restarted endpoint is empty, and the bucket is created again."""
        self.s3.start()
        subprocess.run([str(BIN / "readmit-tracking"), "create-bucket"],  # noqa: S603 - the venv's own entry point
                       env={**os.environ, **self.server_env}, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("faults"))
    try:
        stack.start_s3()
        stack.mlflow.start()
        yield stack
    finally:
        stack.mlflow.stop()
        stack.s3.stop()


@pytest.fixture(scope="module")
def clean_url(tmp_path_factory) -> str:
    return cleaned_store(tmp_path_factory.mktemp("faults-stores"), SOURCE)


def settings_for(stack: Stack, clean_url: str) -> DataSettings:
    name = f"faults-{uuid.uuid4().hex[:8]}"
    # one retry, no backoff: the faults are permanent until the test restarts the component
    return DataSettings(MLFLOW_TRACKING_URI=stack.uri, CLEAN_DB_URL=clean_url, MODEL_NAME=name,
                        MLFLOW_EXPERIMENT_NAME=name, MLFLOW_HTTP_REQUEST_MAX_RETRIES=1,
                        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=0)


def train(settings: DataSettings, clean_url: str, candidate: str) -> CandidateResult:
    engine = make_engine(clean_url)
    try:
        return train_candidate(settings, engine, candidate, take_snapshot(engine))
    finally:
        engine.dispose()


def register(settings: DataSettings, clean_url: str, result: CandidateResult, candidates: int = 2):
    engine = make_engine(clean_url)
    try:
        return register_and_promote(settings, engine, result, candidates=candidates)
    finally:
        engine.dispose()


def registry_state(settings: DataSettings) -> tuple[str | None, dict[str, dict[str, str]]]:
    """(champion version, {version: tags}) as the registry holds them."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(settings.mlflow_tracking_uri)
    found = {v.version: dict(v.tags) | {"run_id": v.run_id}
             for v in client.search_model_versions(f"name = '{settings.model_name}'")}
    try:
        champion = client.get_model_version_by_alias(settings.model_name, "champion").version
    except MlflowException:
        champion = None
    return champion, found


def assert_no_orphan(settings: DataSettings) -> None:
    """Every version carries its decision; one version per run."""
    _, found = registry_state(settings)
    for version, tags in found.items():
        assert tags.get("promotion.decision") and tags.get("promotion") and tags.get("artifact_sha256"), version
    runs = [tags["run_id"] for tags in found.values()]
    assert len(runs) == len(set(runs)), runs


def test_mlflow_stopped_during_train_and_register(stack, clean_url, monkeypatch):
    """MLflow stops in the middle of registration (the version created, the alias not moved yet), a retry
    while it is down fails clearly, a retry once it is back completes that version."""
    from mlflow import MlflowClient

    settings = settings_for(stack, clean_url)
    baseline = train(settings, clean_url, "prior_baseline")
    assert register(settings, clean_url, baseline).version == "1"
    logistic = train(settings, clean_url, "logistic_regression")

    move_alias = MlflowClient.set_registered_model_alias

    def stop_then_move(self, *args, **kwargs):
        stack.mlflow.stop()
        return move_alias(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", stop_then_move)
    try:
        with pytest.raises(RegistryError) as during:
            register(settings, clean_url, logistic)
        monkeypatch.undo()
        with pytest.raises(RegistryError) as down:  # the task's retry, MLflow still down
            register(settings, clean_url, logistic)
    finally:
        monkeypatch.undo()
        stack.mlflow.start()
    assert str(during.value).startswith(f"MLflow at {stack.uri} failed while moving {settings.model_name}@")
    assert "the server cannot be reached" in str(during.value)
    assert "v2 is registered with its decision" in str(during.value)
    assert str(down.value).startswith(f"MLflow at {stack.uri} failed while looking for versions of "
                                      f"{settings.model_name} from run {logistic.run_id}: the server cannot be reached")

    champion, found = registry_state(settings)
    assert champion == "1" and sorted(found) == ["1", "2"]  # champion unchanged before the retry
    assert_no_orphan(settings)  # v2 exists, with its decision: not an orphan

    retried = register(settings, clean_url, logistic)  # MLflow back
    assert retried.version == "2" and retried.reused and retried.decision == found["2"]["promotion.decision"]
    champion, found = registry_state(settings)
    assert sorted(found) == ["1", "2"]  # no second version of the same run
    alias = "champion" if retried.promoted else "challenger"
    assert MlflowClient(stack.uri).get_model_version_by_alias(settings.model_name, alias).version == "2"
    assert champion == ("2" if retried.promoted else "1")
    assert MlflowClient(stack.uri).get_run(logistic.run_id).data.tags["promotion"] == found["2"]["promotion"]
    assert_no_orphan(settings)


def test_s3_stopped_while_a_model_is_logged(stack, clean_url, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    settings = settings_for(stack, clean_url)
    log_model = mlflow.sklearn.log_model

    def stop_s3_then_log(*args, **kwargs):
        stack.s3.stop()
        return log_model(*args, **kwargs)

    monkeypatch.setattr(mlflow.sklearn, "log_model", stop_s3_then_log)
    try:
        with pytest.raises(RegistryError) as raised:
            train(settings, clean_url, "prior_baseline")
    finally:
        monkeypatch.undo()
        stack.start_s3()
    message = str(raised.value)
    assert "failed while storing prior_baseline's model in MLflow's artifact store" in message
    assert "the run is marked failed and nothing was registered" in message
    client = MlflowClient(stack.uri)
    runs = client.search_runs([client.get_experiment_by_name(settings.experiment_name).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert registry_state(settings) == (None, {})

    # a retry, S3 back, trains and registers
    result = train(settings, clean_url, "prior_baseline")
    promotion = register(settings, clean_url, result, candidates=1)
    assert promotion.version == "1" and promotion.decision == "first_model"
    assert registry_state(settings)[0] == "1"
    assert_no_orphan(settings)
    keys = [o["Key"] for o in s3_client(stack.s3_endpoint).list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.endswith("model.skops") for k in keys)
