"""Settings of the load test, from environment variables (the same names in the ConfigMap and in tests)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class LoadTestSettings:
    api_url: str = "http://127.0.0.1:8000"
    """API_URL: the API under load (locust's --host overrides it)."""
    metrics_host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes the pod from another pod
    """LOCUST_METRICS_HOST: address of the Prometheus endpoint of the run."""
    metrics_port: int = 9646
    """LOCUST_METRICS_PORT: port of that endpoint (0: no endpoint)."""
    seed: int = 0
    """LOADTEST_SEED: seed of the synthetic encounters and of the users' choices."""
    pool_size: int = 2000
    """LOADTEST_POOL_SIZE: synthetic encounters generated once and sampled by the users."""
    batch_size: int = 20
    """LOADTEST_BATCH_SIZE: encounters per POST /predict/batch."""
    wait_min: float = 0.5
    wait_max: float = 1.5
    """LOADTEST_WAIT_MIN / LOADTEST_WAIT_MAX: think time of a user between two requests, seconds."""
    capacity_search: bool = False
    """CAPACITY_SEARCH=1: step users up until the SLO breaks, then write the capacity report."""
    slo_p95_ms: float = 200.0
    """CAPACITY_SLO_P95_MS: latency objective, p95 of POST /predict (same as the Prometheus alert)."""
    max_error_ratio: float = 0.01
    """CAPACITY_MAX_ERROR_RATIO: failed requests / requests allowed in a step."""
    start_users: int = 10
    """CAPACITY_START_USERS: users of the first step."""
    step_users: int = 10
    """CAPACITY_STEP_USERS: users added at each step."""
    step_seconds: float = 30.0
    """CAPACITY_STEP_SECONDS: how long each step is measured (after its users are spawned)."""
    max_users: int = 500
    """CAPACITY_MAX_USERS: the search stops there even within the SLO."""
    spawn_rate: float = 0.0
    """CAPACITY_SPAWN_RATE: users started per second at each step (0: a whole step in one second)."""
    report_dir: str = "capacity-report"
    """CAPACITY_REPORT_DIR: where capacity-report.json, capacity-report.md and latency-vs-users.png go."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadTestSettings:
        env = os.environ if env is None else env
        names = {
            "api_url": "API_URL", "metrics_host": "LOCUST_METRICS_HOST", "metrics_port": "LOCUST_METRICS_PORT",
            "seed": "LOADTEST_SEED", "pool_size": "LOADTEST_POOL_SIZE", "batch_size": "LOADTEST_BATCH_SIZE",
            "wait_min": "LOADTEST_WAIT_MIN", "wait_max": "LOADTEST_WAIT_MAX", "capacity_search": "CAPACITY_SEARCH",
            "slo_p95_ms": "CAPACITY_SLO_P95_MS", "max_error_ratio": "CAPACITY_MAX_ERROR_RATIO",
            "start_users": "CAPACITY_START_USERS", "step_users": "CAPACITY_STEP_USERS",
            "step_seconds": "CAPACITY_STEP_SECONDS", "max_users": "CAPACITY_MAX_USERS",
            "spawn_rate": "CAPACITY_SPAWN_RATE", "report_dir": "CAPACITY_REPORT_DIR",
        }
        values = {}
        for field in fields(cls):
            raw = env.get(names[field.name], "").strip()
            if not raw:
                continue
            kind = type(field.default)
            try:
                values[field.name] = raw.lower() in TRUE if kind is bool else kind(raw)
            except ValueError as exc:
                raise ValueError(f"{names[field.name]}={raw!r}: expected {kind.__name__}") from exc
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if not 0 <= self.wait_min <= self.wait_max:
            raise ValueError("LOADTEST_WAIT_MIN must be >= 0 and <= LOADTEST_WAIT_MAX")
        if self.pool_size < 1 or self.batch_size < 1:
            raise ValueError("LOADTEST_POOL_SIZE and LOADTEST_BATCH_SIZE must be >= 1")
        if self.start_users < 1 or self.step_users < 1 or self.max_users < self.start_users:
            raise ValueError("need CAPACITY_START_USERS >= 1, CAPACITY_STEP_USERS >= 1, "
                             "CAPACITY_MAX_USERS >= CAPACITY_START_USERS")
        if self.step_seconds <= 0 or self.slo_p95_ms <= 0 or not 0 <= self.max_error_ratio < 1:
            raise ValueError("need CAPACITY_STEP_SECONDS > 0, CAPACITY_SLO_P95_MS > 0, "
                             "0 <= CAPACITY_MAX_ERROR_RATIO < 1")

    @property
    def step_spawn_rate(self) -> float:
        return self.spawn_rate if self.spawn_rate > 0 else float(max(self.start_users, self.step_users))
