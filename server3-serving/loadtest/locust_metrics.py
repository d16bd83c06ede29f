"""Prometheus metrics of a Locust run, read from Locust's own statistics at scrape time.

Reading ``runner.stats`` (instead of counting request events) costs nothing per request and
works on a standalone runner and on a master (which aggregates its workers' statistics);
workers serve no endpoint. Locust keeps response times in rounded milliseconds; they are
exposed as a histogram in seconds so that Grafana computes quantiles with
``histogram_quantile`` like it does for the API.

    locust_users                                   users running
    locust_running                                 1 while spawning or running
    locust_requests_total{method,name}             requests sent ("Aggregated": all of them)
    locust_failures_total{method,name}             failed requests
    locust_response_time_seconds{method,name}      histogram of response times
    locust_current_rps / locust_current_fail_per_second    Locust's ~10 s sliding window
    locust_current_p50_seconds / _p95_seconds / _p99_seconds  idem
    locust_slo_p95_seconds, locust_slo_max_error_ratio     the capacity search's objectives
    locust_capacity_*                              progress of a capacity search (CAPACITY_SEARCH=1)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# seconds; the API's buckets up to 1 s, then coarser (a load test goes further than the SLO)
RESPONSE_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5,
                         2.0, 3.0, 5.0, 10.0, 30.0)
AGGREGATED = "Aggregated"


def histogram_buckets(response_times_ms: dict[int, int]) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs of a Locust ``response_times`` dict (rounded ms -> count)."""
    ordered = sorted(response_times_ms.items())
    buckets: list[tuple[str, int]] = []
    count, i = 0, 0
    for bound in RESPONSE_TIME_BUCKETS:
        while i < len(ordered) and ordered[i][0] <= bound * 1000:
            count += ordered[i][1]
            i += 1
        buckets.append((repr(bound), count))
    buckets.append(("+Inf", sum(response_times_ms.values())))
    return buckets


class LocustCollector(Collector):
    def __init__(self, environment: Any, slo_p95_ms: float, max_error_ratio: float) -> None:
        self.environment = environment
        self.slo_p95_ms = slo_p95_ms
        self.max_error_ratio = max_error_ratio

    def collect(self) -> Iterator[Any]:
        runner = self.environment.runner
        yield GaugeMetricFamily("locust_slo_p95_seconds", "Latency objective of the run (p95 of POST /predict)",
                                value=self.slo_p95_ms / 1000)
        yield GaugeMetricFamily("locust_slo_max_error_ratio", "Share of failed requests the run tolerates",
                                value=self.max_error_ratio)
        if runner is None:
            return
        yield GaugeMetricFamily("locust_users", "Users running", value=runner.user_count)
        yield GaugeMetricFamily("locust_running", "1 while users are spawning or running",
                                value=1 if runner.state in ("spawning", "running") else 0)

        stats = runner.stats
        entries = [(name, method, entry) for (name, method), entry in list(stats.entries.items())]
        entries.append((AGGREGATED, "", stats.total))
        requests = CounterMetricFamily("locust_requests", "Requests sent", labels=["method", "name"])
        failures = CounterMetricFamily("locust_failures", "Requests failed", labels=["method", "name"])
        times = HistogramMetricFamily("locust_response_time_seconds", "Response times seen by the users",
                                      labels=["method", "name"])
        for name, method, entry in entries:
            labels = [method or "", name]
            requests.add_metric(labels, entry.num_requests)
            failures.add_metric(labels, entry.num_failures)
            times.add_metric(labels, histogram_buckets(dict(entry.response_times)),
                             sum_value=entry.total_response_time / 1000)
        yield from (requests, failures, times)

        total = stats.total
        yield GaugeMetricFamily("locust_current_rps", "Requests per second, last ~10 s", value=total.current_rps)
        yield GaugeMetricFamily("locust_current_fail_per_second", "Failures per second, last ~10 s",
                                value=total.current_fail_per_sec)
        for percent in (50, 95, 99):
            value = total.get_current_response_time_percentile(percent / 100)
            if value is not None:
                yield GaugeMetricFamily(f"locust_current_p{percent}_seconds",
                                        f"{percent}th percentile of response times, last ~10 s", value=value / 1000)

        shape = self.environment.shape_class
        progress = getattr(shape, "progress", None)
        if callable(progress):
            for key, (help_text, value) in progress().items():
                yield GaugeMetricFamily(f"locust_capacity_{key}", help_text, value=value)


def serve(environment: Any, host: str, port: int, slo_p95_ms: float, max_error_ratio: float) -> bool:
    """Register the collector and start the /metrics endpoint; False when the port is taken."""
    REGISTRY.register(LocustCollector(environment, slo_p95_ms, max_error_ratio))
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("no Prometheus endpoint on %s:%d: %s", host, port, exc)
        return False
    log.info("Prometheus metrics of the run on http://%s:%d/metrics", host, port)
    return True
