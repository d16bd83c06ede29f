"""A background thread that follows the model alias in MLflow.

Every ``MODEL_POLL_SECONDS`` it asks where the alias points; when the version
changed it downloads and loads the new one, then swaps it in. If MLflow cannot be
reached, the API keeps serving the model it has, reports it (``/ready`` body,
``readmit_api_mlflow_up``), and tries again at the next tick.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from . import metrics
from .model import ModelHolder, load_version

log = logging.getLogger(__name__)


@dataclass
class WatcherStatus:
    mlflow_reachable: bool = False
    last_check: float | None = None
    last_error: str | None = None
    alias_version: str | None = None


class ModelWatcher:
    def __init__(self, tracking_uri: str, name: str, alias: str, poll_seconds: float, holder: ModelHolder,
                 cache_dir: str | None = None) -> None:
        # fail fast when MLflow is away: the next tick retries (the client's default backs off for minutes)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.name, self.alias, self.poll_seconds = name, alias, poll_seconds
        self.holder = holder
        self.cache_dir = cache_dir
        self.status = WatcherStatus()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> None:
        """Ask where the alias points and load that version if it is not the one served."""
        import mlflow
        from mlflow.exceptions import RestException

        mlflow.set_tracking_uri(self.tracking_uri)
        self.status.last_check = time.time()
        try:
            version = str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except RestException as exc:  # MLflow answered: no such model or alias yet
            self._reachable(True)
            self.status.alias_version = None
            self.status.last_error = f"no {self.name}@{self.alias} in the registry yet ({exc.error_code})"
            return
        except Exception as exc:  # noqa: BLE001 - any failure to reach MLflow: timeouts, refused, 5xx
            self._reachable(False)
            metrics.MLFLOW_CHECK_FAILURES.inc()
            self.status.last_error = f"MLflow unreachable: {type(exc).__name__}: {exc}"[:500]
            log.warning(self.status.last_error)
            return
        self._reachable(True)
        self.status.alias_version = version
        current = self.holder.current
        if current is not None and current.version == version:
            self.status.last_error = None
            return
        try:
            model = load_version(self.client, self.name, version, self.alias, self.cache_dir)
        except Exception as exc:  # noqa: BLE001 - keep serving the old model
            metrics.MODEL_RELOADS.labels(result="failure").inc()
            self.status.last_error = f"loading {self.name} v{version} failed: {type(exc).__name__}: {exc}"[:500]
            log.warning(self.status.last_error)
            return
        previous = self.holder.swap(model)
        metrics.MODEL_RELOADS.labels(result="success").inc()
        metrics.MODEL_LOADED.set(1)
        metrics.MODEL_VERSION.set(float(version) if version.isdigit() else 0)
        metrics.MODEL_INFO.info({"model_name": self.name, "model_version": version, "alias": self.alias,
                                 "run_id": model.run_id})
        self.status.last_error = None
        log.info("serving %s v%s (was %s)", self.name, version, previous.version if previous else "none")

    def _reachable(self, up: bool) -> None:
        self.status.mlflow_reachable = up
        metrics.MLFLOW_UP.set(1 if up else 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the watcher never dies
                log.exception("model watcher tick failed")
            self._stop.wait(self.poll_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
