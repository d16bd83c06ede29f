"""The Locust load test: realistic request bodies, its Prometheus endpoint, and the capacity search run
against the real API until it stops by itself and writes its report."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from readmit_contract import FEATURE_COLUMNS, Encounter
from readmit_contract.target import EXCLUDED_DISCHARGE_DISPOSITIONS

from ..support import BIN, free_port, started

pytestmark = pytest.mark.slow

LOADTEST = Path(__file__).resolve().parents[2] / "server3-serving" / "loadtest"
LOCUSTFILE = LOADTEST / "locustfile.py"


@pytest.fixture(scope="module")
def loadtest():
    """The load test's helper modules that do not import Locust (which would monkey-patch this process with
    gevent). The folder is not a package: the locustfile puts it on sys.path."""
    sys.path.insert(0, str(LOADTEST))
    try:
        import capacity_report
        import loadtest_bodies
        import loadtest_settings
        import locust_metrics

        assert "locust" not in sys.modules
        yield capacity_report, loadtest_bodies, loadtest_settings, locust_metrics
    finally:
        sys.path.remove(str(LOADTEST))


# -- pieces ------------------------------------------------------------------------------------------


def test_bodies_are_contract_encounters_from_the_generator(loadtest):
    _, bodies_module, _, _ = loadtest
    bodies = bodies_module.encounter_bodies(500, seed=3)
    assert len(bodies) == 500 and bodies == bodies_module.encounter_bodies(500, seed=3)
    for body in bodies:
        assert list(body) == list(FEATURE_COLUMNS)  # no ids, no outcome
        Encounter.model_validate(body)
    assert all(isinstance(b["time_in_hospital"], int) and isinstance(b["admission_type_id"], int) for b in bodies)
    assert any(b["weight"] is None for b in bodies) and "?" not in {v for b in bodies for v in b.values()}
    # like real traffic, a few expired/hospice encounters (the API answers scored=false)
    assert 0 < sum(b["discharge_disposition_id"] in EXCLUDED_DISCHARGE_DISPOSITIONS for b in bodies) < 50


def test_settings_from_the_environment(loadtest):
    _, _, settings_module, _ = loadtest
    settings = settings_module.LoadTestSettings.from_env({})
    assert settings.metrics_port == 9646 and settings.slo_p95_ms == 200 and settings.max_error_ratio == 0.01
    assert not settings.capacity_search
    settings = settings_module.LoadTestSettings.from_env({
        "API_URL": "http://api:8000", "CAPACITY_SEARCH": "1", "CAPACITY_SLO_P95_MS": "150",
        "CAPACITY_STEP_USERS": "5", "CAPACITY_START_USERS": "5", "CAPACITY_REPORT_DIR": "out"})
    assert settings.capacity_search and settings.slo_p95_ms == 150.0 and settings.step_users == 5
    assert settings.api_url == "http://api:8000" and settings.report_dir == "out" and settings.step_spawn_rate == 5
    with pytest.raises(ValueError, match="CAPACITY_STEP_USERS"):
        settings_module.LoadTestSettings.from_env({"CAPACITY_STEP_USERS": "many"})
    with pytest.raises(ValueError):
        settings_module.LoadTestSettings.from_env({"CAPACITY_START_USERS": "600", "CAPACITY_MAX_USERS": "500"})


def test_response_times_become_a_cumulative_histogram(loadtest):
    _, _, _, metrics = loadtest
    buckets = dict(metrics.histogram_buckets({3: 2, 10: 5, 180: 1, 40000: 1}))
    assert buckets["0.005"] == 2 and buckets["0.01"] == 7 and buckets["0.15"] == 7 and buckets["0.2"] == 8
    assert buckets["30.0"] == 8 and buckets["+Inf"] == 9
    counts = list(buckets.values())
    assert counts == sorted(counts)


def test_search_stops_at_the_first_step_over_the_slo_and_reports(loadtest, tmp_path):
    capacity, _, settings_module, _ = loadtest
    settings = settings_module.LoadTestSettings(slo_p95_ms=100, start_users=10, step_users=10, max_users=100)

    def snap(at, requests, failures, times):
        return capacity.Snapshot(at, requests, failures, sum(times.values()), times, times)

    fast = snap(10, 1000, 0, {20: 950, 90: 50})
    slow = snap(20, 2000, 5, {20: 1400, 90: 500, 300: 100})  # this step: p95 300 ms
    first = capacity.measure(10, snap(0, 0, 0, {}), fast, settings)
    second = capacity.measure(20, fast, slow, settings)
    assert first.within_slo and first.rps == 100 and first.p95_ms == 90 and capacity.verdict(first, settings) is None
    assert not second.within_slo and second.p95_ms == 300 and second.error_ratio == 0.005
    assert "SLO" in capacity.verdict(second, settings)
    over_budget = capacity.measure(20, fast, snap(20, 2000, 50, {20: 2000}), settings)
    assert "error ratio" in capacity.verdict(over_budget, settings)
    at_max = capacity.measure(100, snap(0, 0, 0, {}), fast, settings)
    assert "CAPACITY_MAX_USERS" in capacity.verdict(at_max, settings)

    report = capacity.build_report(settings, [first, second], capacity.verdict(second, settings),
                                   datetime.now(UTC), "http://127.0.0.1:8000")
    assert report["max_users_within_slo"] == 10 and report["max_rps_within_slo"] == 100
    check_report_files(capacity.write_report(tmp_path, report), report)

    # a step cut short (the run stopped from outside) is reported but not counted
    partial = capacity.measure(30, snap(0, 0, 0, {}), fast, settings, complete=False)
    assert partial.within_slo
    report = capacity.build_report(settings, [first, partial], "stopped", datetime.now(UTC), None)
    assert report["max_users_within_slo"] == 10 and "partial step" in capacity.markdown(report)


# -- the real thing --------------------------------------------------------------------------------------


def run_capacity_search(api: str, report_dir: Path, log_dir: Path, **env: str) -> tuple[int, str, Path]:
    """Run the locustfile with CAPACITY_SEARCH=1 to its end: (exit code, a scrape taken during the run, its log)."""
    port = free_port()
    environment = {"CAPACITY_SEARCH": "1", "CAPACITY_REPORT_DIR": str(report_dir), "LOCUST_METRICS_PORT": str(port),
                   "LOCUST_METRICS_HOST": "127.0.0.1", "LOADTEST_POOL_SIZE": "500", **env}
    cmd = [str(BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "--host", api, "--only-summary",
           "--web-port", str(free_port())]
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    scrape, log = "", log_dir / f"locust-{port}.log"
    with started(cmd, environment, log, ready_url=metrics_url, timeout=60) as process:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                text = httpx.get(metrics_url, timeout=5).text
            except httpx.HTTPError:
                break
            if any(line.startswith("locust_users ") and float(line.split()[1]) > 0 for line in text.splitlines()) \
                    and 'name="/predict"' in text:
                scrape = text
                break
            time.sleep(0.5)
        returncode = process.wait(timeout=120)
    return returncode, scrape, log


def check_report_files(paths: list[Path], report: dict) -> None:
    json_path, md_path, png_path = paths
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    markdown = md_path.read_text()
    assert f"Max users within the SLO: {report['max_users_within_slo']}" in markdown
    assert sum(line.startswith("| ") and line[2].isdigit() for line in markdown.splitlines()) == len(report["steps"])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 5000


def read_report(report_dir: Path) -> dict:
    report = json.loads((report_dir / "capacity-report.json").read_text())
    check_report_files([report_dir / n for n in ("capacity-report.json", "capacity-report.md",
                                                 "latency-vs-users.png")], report)
    return report


def test_capacity_search_against_the_api(api, tmp_path):
    report_dir = tmp_path / "report"
    returncode, scrape, log = run_capacity_search(
        api, report_dir, tmp_path, CAPACITY_SLO_P95_MS="2000", CAPACITY_START_USERS="2", CAPACITY_STEP_USERS="4",
        CAPACITY_STEP_SECONDS="3", CAPACITY_MAX_USERS="10", LOADTEST_WAIT_MIN="0.05", LOADTEST_WAIT_MAX="0.2")
    assert returncode == 0, log.read_text()[-3000:]

    # the Prometheus endpoint during the run
    for name in ("locust_users", "locust_running", 'locust_requests_total{method="POST",name="/predict"}',
                 'locust_failures_total{method="POST",name="/predict"}', "locust_response_time_seconds_bucket{",
                 'name="Aggregated"', "locust_current_rps", "locust_slo_p95_seconds 2.0",
                 "locust_capacity_step_users"):
        assert name in scrape, f"{name} not in the scrape:\n{scrape}"

    report = read_report(report_dir)
    steps = report["steps"]
    assert [s["users"] for s in steps] == [2, 6, 10][: len(steps)] and steps
    assert all(s["requests"] > 0 and s["rps"] > 0 and s["failures"] == 0 and s["seconds"] >= 2.5 and s["complete"]
               for s in steps)
    assert all(s["within_slo"] == (s["p95_ms"] <= 2000 and s["error_ratio"] <= 0.01) for s in steps)
    assert all(s["within_slo"] for s in steps[:-1])  # the search stops at the first step over the objective
    within = [s for s in steps if s["within_slo"]]
    assert report["max_users_within_slo"] == max((s["users"] for s in within), default=0) <= steps[-1]["users"]
    assert report["max_rps_within_slo"] == max((s["rps"] for s in within), default=0.0)
    if steps[-1]["within_slo"]:  # a healthy API keeps 10 users under 2 s: stopped at the ceiling
        assert len(steps) == 3 and "CAPACITY_MAX_USERS" in report["stop_reason"]
        assert report["max_users_within_slo"] == 10 and report["max_rps_within_slo"] > 0
    assert report["host"] == api and report["slo"] == {"route": "POST /predict", "p95_ms": 2000.0,
                                                       "max_error_ratio": 0.01}


def test_capacity_search_stops_when_the_slo_breaks(api, tmp_path):
    report_dir = tmp_path / "report"
    returncode, _, log = run_capacity_search(api, report_dir, tmp_path, CAPACITY_SLO_P95_MS="0.5",
                                             CAPACITY_START_USERS="3", CAPACITY_STEP_SECONDS="2")
    assert returncode == 0, log.read_text()[-3000:]
    report = read_report(report_dir)
    (step,) = report["steps"]
    assert step["users"] == 3 and step["requests"] > 0 and step["p95_ms"] > 0.5 and not step["within_slo"]
    assert "SLO" in report["stop_reason"] and report["max_users_within_slo"] == 0
    assert report["max_rps_within_slo"] == 0
