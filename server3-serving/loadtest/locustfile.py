"""Load test of the inference API with realistic encounters.

    locust -f server3-serving/loadtest/locustfile.py --host http://127.0.0.1:8000 --web-login  # web UI
    locust -f server3-serving/loadtest/locustfile.py --headless -u 50 -r 10 -t 5m            # fixed load
    CAPACITY_SEARCH=1 CAPACITY_SLO_P95_MS=200 locust -f server3-serving/loadtest/locustfile.py --headless

Users are clinicians' applications: mostly POST /predict with one encounter, sometimes
POST /predict/batch (LOADTEST_BATCH_SIZE encounters), now and then GET /model. Encounters
come from the feature contract's synthetic generator (LOADTEST_POOL_SIZE of them,
LOADTEST_SEED). The run's statistics are served to Prometheus on LOCUST_METRICS_PORT
(default 9646, /metrics; see locust_metrics.py). With CAPACITY_SEARCH=1 a load shape steps
users up until the p95 of POST /predict exceeds CAPACITY_SLO_P95_MS or errors exceed
CAPACITY_MAX_ERROR_RATIO, then writes the capacity report into CAPACITY_REPORT_DIR (see
capacity_search.py). The search ends by itself (at the latest at CAPACITY_MAX_USERS): Locust
ignores -u, -r and -t when a load shape runs. Every setting: loadtest_settings.py.

Security: every request carries ``X-API-Key: $API_KEY`` (required: without it the run does not
start), and only to the API the run was started against (--host, else API_URL): a host typed into
the web UI cannot collect the key. The web UI runs only behind ``--web-login`` with
LOCUST_USERNAME / LOCUST_PASSWORD (web_login.py); headless runs need no login.
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # the helper modules beside this file (the folder is not a package)
    sys.path.insert(0, _HERE)

import gevent  # noqa: E402
from flask import jsonify, request  # noqa: E402
from flask_login import current_user  # noqa: E402
from locust import HttpUser, between, events, task  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402

import locust_metrics  # noqa: E402
import web_login  # noqa: E402
from capacity_search import CapacitySearchShape  # noqa: E402
from loadtest_bodies import encounter_bodies  # noqa: E402
from loadtest_settings import LoadTestSettings, SettingsError  # noqa: E402

log = logging.getLogger(__name__)

try:
    SETTINGS = LoadTestSettings.from_env()
except SettingsError as exc:  # e.g. no API_KEY: stop here rather than count 401s as failures
    sys.exit(f"locustfile: {exc}")
API_KEY_HEADER = "X-API-Key"
ENCOUNTERS = encounter_bodies(SETTINGS.pool_size, SETTINGS.seed)
_seeds = random.Random(SETTINGS.seed)


def origin(url: str | None) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of a URL, default ports filled in; None when it has no valid host."""
    try:
        parts = urlsplit((url or "").strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or {"http": 80, "https": 443}.get(scheme)


@dataclass
class ApiTarget:
    """The API this run was started against: the only origin that receives the key."""

    url: str
    warned: set[str] = field(default_factory=set)

    def accepts(self, url: str | None) -> bool:
        return origin(url) is not None and origin(url) == origin(self.url)


TARGET = ApiTarget(SETTINGS.api_url)  # --host replaces it at init


class Clinician(HttpUser):
    host = SETTINGS.api_url
    wait_time = between(SETTINGS.wait_min, SETTINGS.wait_max)

    def on_start(self) -> None:
        self.rng = random.Random(_seeds.random())
        if TARGET.accepts(self.host):
            self.client.headers[API_KEY_HEADER] = SETTINGS.api_key.get_secret_value()
            self.client.max_redirects = 0  # the API never redirects; requests would carry the key along
        elif self.host not in TARGET.warned:  # no key for another host (e.g. set from the web UI)
            TARGET.warned.add(self.host)
            log.error("API_KEY is only sent to %s (the run's --host or API_URL), not to %s: "
                      "restart Locust with --host to load another API", TARGET.url, self.host)

    @task(20)
    def predict(self) -> None:
        with self.client.post("/predict", json=self.rng.choice(ENCOUNTERS), name="/predict",
                              catch_response=True) as response:
            if _refused(response):
                return
            if response.ok and "scored" not in _json(response):
                response.failure(f"unexpected answer: {response.text[:200]}")

    @task(2)
    def predict_batch(self) -> None:
        batch = self.rng.sample(ENCOUNTERS, min(SETTINGS.batch_size, len(ENCOUNTERS)))
        with self.client.post("/predict/batch", json={"encounters": batch}, name="/predict/batch",
                              catch_response=True) as response:
            if _refused(response):
                return
            if response.ok and len(_json(response).get("predictions", ())) != len(batch):
                response.failure(f"expected {len(batch)} predictions: {response.text[:200]}")

    @task(1)
    def model(self) -> None:
        with self.client.get("/model", name="/model", catch_response=True) as response:
            if _refused(response):
                return
            if response.ok and "model_version" not in _json(response):
                response.failure(f"unexpected answer: {response.text[:200]}")


def _refused(response: Any) -> bool:
    """A 401/403 is a configuration error, not a load result: say so in the failure. A 503 with a shedding
    reason is the API protecting its latency (the load is beyond capacity): a failure named by that reason,
    so the report groups them instead of listing one line per body."""
    if response.status_code == 503:
        reason = _json(response).get("reason")
        if reason:
            response.failure(f"shed by the API: busy ({reason})")
            return True
        return False
    if response.status_code not in (401, 403):
        return False
    response.failure(f"the API refused the request ({response.status_code}): is API_KEY listed in the API's "
                     "API_KEYS (locust:<key>) and is the run pointed at that API?")
    return True


def _json(response: Any) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@events.init.add_listener
def _protect(environment: Any, **_kwargs: Any) -> None:
    # first listener: a web UI that cannot be protected stops the process before anything is served
    try:
        web_login.protect(environment, SETTINGS)
    except web_login.WebLoginError as exc:
        sys.exit(f"locustfile: {exc}")
    if environment.host:  # --host: the API of this run, the one the key goes to
        TARGET.url = environment.host
    if environment.web_ui is not None:
        environment.web_ui.app.before_request(_only_the_run_api)


@events.init.add_listener
def _catch_up_the_clock(**_kwargs: Any) -> None:
    # gevent's loop clock stood still during the slow imports above: without this, -t/--run-time
    # (a timer armed right after init) ended a headless run as soon as it started
    gevent.get_hub().loop.update_now()


def _only_the_run_api() -> Any:
    """Refuse a swarm the web UI points at another host (its users would go without the key)."""
    if request.endpoint != "locust.swarm" or request.method != "POST" or not current_user.is_authenticated:
        return None  # (not logged in: Locust's login_required answers)
    host = (request.form.get("host") or "").strip()
    if host and not TARGET.accepts(host):
        return jsonify({"success": False, "host": TARGET.url,
                        "message": f"this run only loads {TARGET.url} (its API key is for that API); "
                                   "restart Locust with --host to load another one"})
    return None


@events.init.add_listener
def _serve_metrics(environment, **_kwargs) -> None:
    # workers send their statistics to the master, which serves the aggregate
    if isinstance(environment.runner, WorkerRunner) or SETTINGS.metrics_port <= 0:
        return
    locust_metrics.serve(environment, SETTINGS.metrics_host, SETTINGS.metrics_port, SETTINGS.slo_p95_ms,
                         SETTINGS.max_error_ratio)


@events.test_stop.add_listener
def _close_capacity_search(environment, **_kwargs) -> None:
    shape = environment.shape_class
    if isinstance(shape, CapacitySearchShape) and shape.users is not None and not shape.finished:
        shape.finish("stopped from outside (web UI or signal) before the SLO broke")


if SETTINGS.capacity_search:

    class CapacitySearch(CapacitySearchShape):
        settings = SETTINGS
