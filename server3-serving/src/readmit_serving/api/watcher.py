"""A background thread that follows the model alias in MLflow.

Every ``MODEL_POLL_SECONDS`` it asks where the alias points; when the version
changed it downloads the new one, checks it (``readmit_contract.artifact``: the checksum
recorded at training, skops format, allowed types), loads it, smoke-tests it on the
contract's example encounter (``model.smoke_test``) and only then swaps it in. A version
that fails the checks, cannot be deserialised or fails the smoke test is refused: the
previous model keeps serving, ``/ready`` says why (``refused_version``, ``refusal``),
``readmit_api_model_refusals_total{reason}`` counts it, and it is not downloaded again until
the alias moves. A download that fails (MLflow or its store away) is no refusal: tried again
at the next tick. If MLflow cannot be reached, the API keeps serving the model it has, reports
it (``/ready`` body, ``readmit_api_mlflow_up``), and tries again at the next tick; once MLflow
answers again it follows the alias as before, without a restart.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass

from readmit_contract.artifact import ArtifactRefused

from . import metrics
from .model import SERVING_REFUSAL_CODES, LoadedModel, ModelHolder, compile_trees, load_version
from .trees import INTERPRETED

log = logging.getLogger(__name__)

for _reason in SERVING_REFUSAL_CODES:  # exported at 0 from the start, as the artifact checks' reasons are
    metrics.MODEL_REFUSALS.labels(reason=_reason)


CREDENTIAL_ERRORS = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
"""MLflow error codes of HTTP 401 and 403."""
MISSING_ERRORS = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})
"""MLflow error codes of a model or alias that does not exist (yet)."""


def settle_heap() -> None:
    """Collect what a model swap left, then put every object alive out of the cyclic garbage collector's reach
    (``gc.freeze``): the API's heap (MLflow, scikit-learn, pandas, SHAP, the model) is ~350,000 objects, and a full
    collection over them, which the collector starts now and then under steady traffic, stopped every request for
    ~100-200 ms (the p99). One such pause per model swap, on this thread, instead."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def failure_kind(exc: BaseException) -> str:
    """What a failed MLflow call means for a person: ``credentials`` (401/403), ``missing`` (no such model or
    alias), ``mlflow_error`` (MLflow answered with another error), ``unreachable`` (no answer: refused
    connection, timeout, DNS, a proxy's 5xx page)."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, MlflowException):
        if exc.error_code in CREDENTIAL_ERRORS:
            return "credentials"
        if isinstance(exc, RestException):  # a JSON error body: MLflow itself answered
            return "missing" if exc.error_code in MISSING_ERRORS else "mlflow_error"
    return "unreachable"


@dataclass
class WatcherStatus:
    """What /ready reports. ``last_error`` holds fixed sentences only: exception text, hosts, URLs and paths go
    to the log, never here."""

    mlflow_reachable: bool = False
    last_check: float | None = None
    last_error: str | None = None
    alias_version: str | None = None
    refused_version: str | None = None
    """The version the alias points at, refused by the artifact checks, its loading or its smoke test (not
    downloaded again until the alias moves)."""
    refusal: str | None = None
    """Why, as a short code (``readmit_contract.artifact.REFUSAL_CODES``, or ``model.SERVING_REFUSAL_CODES``: the
    model cannot be loaded or fails the smoke test)."""


class ModelWatcher:
    def __init__(self, tracking_uri: str, name: str, alias: str, poll_seconds: float, holder: ModelHolder,
                 cache_dir: str | None = None, compile_trees: bool = False, compiler: str = "gcc",
                 compile_max_nodes: int = 100_000) -> None:
        # fail fast when MLflow is away: the next tick retries (the client's default backs off for minutes)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.name, self.alias, self.poll_seconds = name, alias, poll_seconds
        self.holder = holder
        self.cache_dir = cache_dir
        self.compile_trees, self.compiler, self.compile_max_nodes = compile_trees, compiler, compile_max_nodes
        self.status = WatcherStatus()
        self._refusal_message: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checking = threading.Lock()  # one check at a time: the poll's and POST /model/reload's

    # -- the sentences /ready shows ----------------------------------------------------------------------------

    def _serving(self) -> str:
        current = self.holder.current
        return f"version {current.version} keeps serving" if current is not None else "no model is served yet"

    def _message(self, kind: str, version: str | None = None) -> str:
        serving = self._serving()
        if kind == "unreachable":
            return (f"MLflow unreachable: the model registry did not answer; {serving}; "
                    f"the API asks again every {self.poll_seconds:g} s")
        if kind == "credentials":
            return ("MLflow refused the API's credentials (HTTP 401/403): check the API's MLFLOW_TRACKING_USERNAME "
                    f"and MLFLOW_TRACKING_PASSWORD and that this user may read the model; {serving}")
        if kind == "missing":
            return (f"no {self.name}@{self.alias} in the registry yet: register a version of model {self.name} "
                    f"and give it the alias {self.alias}; {serving}")
        if kind == "mlflow_error":
            return f"MLflow answered with an error (details in the API's log); {serving}; the API asks again soon"
        return (f"loading version {version} failed (details in the API's log); {serving}; "
                "the API tries again at the next check")

    # -- one check ---------------------------------------------------------------------------------------------

    def check_once(self) -> str:
        """Ask where the alias points and load that version if it is not the one served (nor refused); returns
        the outcome: ``serving`` (the alias's version serves), ``refused``, ``missing`` (no such alias),
        ``lookup_failed`` (MLflow did not answer or refused the API) or ``load_failed``. A check asked for while
        another runs waits for it, then checks again (the alias may have moved meanwhile)."""
        with self._checking:
            return self._check()

    def _check(self) -> str:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        self.status.last_check = time.time()
        try:
            version = str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except Exception as exc:  # noqa: BLE001 - whatever happened, keep serving and say so in words
            return "missing" if self._lookup_failed(exc) == "missing" else "lookup_failed"
        self._checked(answered=True, ok=True)
        self.status.alias_version = version
        current = self.holder.current
        if current is not None and current.version == version:
            self._forget_refusal()
            self.status.last_error = None
            return "serving"
        if self.status.refused_version == version:  # refused already: not downloaded again until the alias moves
            self.status.last_error = self._refusal_message
            return "refused"
        self._forget_refusal()
        try:
            model = load_version(self.client, self.name, version, self.alias, self.cache_dir, self.tracking_uri)
        except ArtifactRefused as refused:
            self._refuse(version, refused)
            return "refused"
        except Exception as exc:  # noqa: BLE001 - keep serving the old model
            metrics.MODEL_RELOADS.labels(result="failure").inc()
            kind = "credentials" if failure_kind(exc) == "credentials" else "load_failed"
            self.status.last_error = self._message(kind, version)
            log.warning("loading %s v%s failed: %s: %s", self.name, version, type(exc).__name__, exc)
            return "load_failed"
        previous = self.holder.swap(model)
        metrics.MODEL_RELOADS.labels(result="success").inc()
        metrics.MODEL_LOADED.set(1)
        metrics.MODEL_VERSION.set(float(version) if version.isdigit() else 0)
        metrics.MODEL_INFO.info({"model_name": self.name, "model_version": version, "alias": self.alias,
                                 "run_id": model.run_id, "predictor": model.predictor})
        self.status.last_error = None
        log.info("serving %s v%s (was %s), its trees %s", self.name, version,
                 previous.version if previous else "none", model.predictor)
        settle_heap()
        if self.compile_trees and model.predictor == INTERPRETED:
            threading.Thread(target=self._compile, args=(model,), name="trees-compile", daemon=True).start()
        return "serving"

    def _compile(self, model: LoadedModel) -> None:
        """Compile the trees of ``model`` (serving meanwhile) and put the compiled model in its place if it
        still serves then (a version swapped in meanwhile is not replaced)."""
        faster = compile_trees(model, self.compiler, self.compile_max_nodes)
        if faster is not None and self.holder.upgrade(model, faster):
            metrics.MODEL_INFO.info({"model_name": self.name, "model_version": model.version, "alias": self.alias,
                                     "run_id": model.run_id, "predictor": faster.predictor})
            log.info("serving %s v%s with compiled trees", self.name, model.version)
            settle_heap()

    def _lookup_failed(self, exc: Exception) -> str:
        """Record a failed lookup of the alias; returns its kind (``failure_kind``)."""
        kind = failure_kind(exc)
        if kind == "missing":  # MLflow answered: no such model or alias yet (the alias points at nothing)
            self._checked(answered=True, ok=True)
            self.status.alias_version = None
            self._forget_refusal()
        else:
            self._checked(answered=kind != "unreachable", ok=False)
            metrics.MLFLOW_CHECK_FAILURES.inc()
        self.status.last_error = self._message(kind)
        log.warning("looking up %s@%s failed (%s): %s: %s", self.name, self.alias, kind, type(exc).__name__,
                    str(exc)[:1000])
        return kind

    def _refuse(self, version: str, refused: ArtifactRefused) -> None:
        metrics.MODEL_RELOADS.labels(result="refused").inc()
        metrics.MODEL_REFUSALS.labels(reason=refused.code).inc()
        metrics.MODEL_REFUSED_VERSION.set(float(version) if version.isdigit() else 0)
        self.status.refused_version, self.status.refusal = version, refused.code
        self._refusal_message = f"version {version} was refused: {refused.reason}; {self._serving()}"
        self.status.last_error = self._refusal_message
        log.error("refused %s v%s (%s: %s): %s", self.name, version, refused.code, refused.reason, refused.details)

    def _forget_refusal(self) -> None:
        if self.status.refused_version is not None:
            metrics.MODEL_REFUSED_VERSION.set(0)
        self.status.refused_version = self.status.refusal = self._refusal_message = None

    def _checked(self, answered: bool, ok: bool) -> None:
        self.status.mlflow_reachable = answered
        metrics.MLFLOW_UP.set(1 if ok else 0)

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
