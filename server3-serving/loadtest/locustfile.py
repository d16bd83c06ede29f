"""Load test of the inference API with realistic encounters.

    locust -f server3-serving/loadtest/locustfile.py --host http://127.0.0.1:8000            # web UI
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
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # the helper modules beside this file (the folder is not a package)
    sys.path.insert(0, _HERE)

from locust import HttpUser, between, events, task  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402

import locust_metrics  # noqa: E402
from capacity_search import CapacitySearchShape  # noqa: E402
from loadtest_bodies import encounter_bodies  # noqa: E402
from loadtest_settings import LoadTestSettings  # noqa: E402

SETTINGS = LoadTestSettings.from_env()
ENCOUNTERS = encounter_bodies(SETTINGS.pool_size, SETTINGS.seed)
_seeds = random.Random(SETTINGS.seed)


class Clinician(HttpUser):
    host = SETTINGS.api_url
    wait_time = between(SETTINGS.wait_min, SETTINGS.wait_max)

    def on_start(self) -> None:
        self.rng = random.Random(_seeds.random())

    @task(20)
    def predict(self) -> None:
        with self.client.post("/predict", json=self.rng.choice(ENCOUNTERS), name="/predict",
                              catch_response=True) as response:
            if response.ok and "scored" not in _json(response):
                response.failure(f"unexpected answer: {response.text[:200]}")

    @task(2)
    def predict_batch(self) -> None:
        batch = self.rng.sample(ENCOUNTERS, min(SETTINGS.batch_size, len(ENCOUNTERS)))
        with self.client.post("/predict/batch", json={"encounters": batch}, name="/predict/batch",
                              catch_response=True) as response:
            if response.ok and len(_json(response).get("predictions", ())) != len(batch):
                response.failure(f"expected {len(batch)} predictions: {response.text[:200]}")

    @task(1)
    def model(self) -> None:
        with self.client.get("/model", name="/model", catch_response=True) as response:
            if response.ok and "model_version" not in _json(response):
                response.failure(f"unexpected answer: {response.text[:200]}")


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


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
