"""The Locust load test: realistic request bodies, its Prometheus endpoint, the capacity search run
against the real API until it stops by itself and writes its report, the API key on every request and
the login in front of the web UI (a real Locust web process against the real API, which wants keys)."""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from readmit_contract import FEATURE_COLUMNS, Encounter
from readmit_contract.target import EXCLUDED_DISCHARGE_DISPOSITIONS

from ..support import BIN, free_port, started
from .conftest import KEYS

pytestmark = pytest.mark.slow

LOADTEST = Path(__file__).resolve().parents[2] / "server3-serving" / "loadtest"
LOCUSTFILE = LOADTEST / "locustfile.py"
LOCUST_KEY = KEYS["locust"]  # 32 characters, generated per session: the test API's API_KEYS has locust:<it>
SECRET_VARIABLES = ("API_KEY", "LOCUST_USERNAME", "LOCUST_PASSWORD", "LOCUST_WEB_LOGIN")


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
    from_env = settings_module.LoadTestSettings.from_env
    settings = from_env({"API_KEY": LOCUST_KEY})
    assert settings.metrics_port == 9646 and settings.slo_p95_ms == 200 and settings.max_error_ratio == 0.01
    assert not settings.capacity_search and settings.api_key.get_secret_value() == LOCUST_KEY
    assert LOCUST_KEY not in repr(settings) and LOCUST_KEY not in str(settings)
    settings = from_env({
        "API_KEY": f" {LOCUST_KEY}\n", "API_URL": "http://api:8000", "CAPACITY_SEARCH": "1",
        "CAPACITY_SLO_P95_MS": "150", "CAPACITY_STEP_USERS": "5", "CAPACITY_START_USERS": "5",
        "CAPACITY_REPORT_DIR": "out", "LOADTEST_SEED": ""})
    assert settings.capacity_search and settings.slo_p95_ms == 150.0 and settings.step_users == 5
    assert settings.api_url == "http://api:8000" and settings.report_dir == "out" and settings.step_spawn_rate == 5
    assert settings.api_key.get_secret_value() == LOCUST_KEY and settings.seed == 0  # trimmed; empty = unset
    with pytest.raises(ValueError, match="CAPACITY_STEP_USERS"):
        from_env({"API_KEY": LOCUST_KEY, "CAPACITY_STEP_USERS": "many"})
    with pytest.raises(ValueError, match="CAPACITY_MAX_USERS"):
        from_env({"API_KEY": LOCUST_KEY, "CAPACITY_START_USERS": "600", "CAPACITY_MAX_USERS": "500"})


def test_the_api_key_is_required_and_never_shown(loadtest):
    _, _, settings_module, _ = loadtest
    from_env = settings_module.LoadTestSettings.from_env
    with pytest.raises(settings_module.SettingsError, match="API_KEY: not set.*X-API-Key"):
        from_env({})
    with pytest.raises(settings_module.SettingsError, match="API_KEY: not set"):
        from_env({"API_KEY": "   "})
    for bad, why in (("tooShort-77xq", "at least 16"), ("spaces in a key 77xq", "printable ASCII"),
                     ("comma,in-a-key-77xq", "printable ASCII")):
        with pytest.raises(settings_module.SettingsError, match=why) as refused:
            from_env({"API_KEY": bad})
        assert "77xq" not in str(refused.value)  # the message names the variable, never its value


def test_the_web_login_settings(loadtest):
    _, _, settings_module, _ = loadtest
    from_env = settings_module.LoadTestSettings.from_env
    password = secrets.token_urlsafe(16)
    assert "LOCUST_USERNAME and LOCUST_PASSWORD" in from_env({"API_KEY": LOCUST_KEY}).web_login_problem()
    assert "LOCUST_USERNAME" in from_env({"API_KEY": LOCUST_KEY, "LOCUST_PASSWORD": password}).web_login_problem()
    assert "LOCUST_PASSWORD" in from_env({"API_KEY": LOCUST_KEY, "LOCUST_USERNAME": "operator"}).web_login_problem()
    short = from_env({"API_KEY": LOCUST_KEY, "LOCUST_USERNAME": "operator", "LOCUST_PASSWORD": "hunter2"})
    assert "at least 12" in short.web_login_problem() and "hunter2" not in short.web_login_problem()
    settings = from_env({"API_KEY": LOCUST_KEY, "LOCUST_USERNAME": "operator", "LOCUST_PASSWORD": password})
    assert settings.web_login_problem() is None and password not in repr(settings)


def test_response_times_become_a_cumulative_histogram(loadtest):
    _, _, _, metrics = loadtest
    buckets = dict(metrics.histogram_buckets({3: 2, 10: 5, 180: 1, 40000: 1}))
    assert buckets["0.005"] == 2 and buckets["0.01"] == 7 and buckets["0.15"] == 7 and buckets["0.2"] == 8
    assert buckets["30.0"] == 8 and buckets["+Inf"] == 9
    counts = list(buckets.values())
    assert counts == sorted(counts)


def test_search_stops_at_the_first_step_over_the_slo_and_reports(loadtest, tmp_path):
    capacity, _, settings_module, _ = loadtest
    settings = settings_module.LoadTestSettings.from_env({
        "API_KEY": LOCUST_KEY, "CAPACITY_SLO_P95_MS": "100", "CAPACITY_START_USERS": "10",
        "CAPACITY_STEP_USERS": "10", "CAPACITY_MAX_USERS": "100"})

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
    environment = {"API_KEY": LOCUST_KEY, "CAPACITY_SEARCH": "1", "CAPACITY_REPORT_DIR": str(report_dir),
                   "LOCUST_METRICS_PORT": str(port), "LOCUST_METRICS_HOST": "127.0.0.1", "LOADTEST_POOL_SIZE": "500",
                   **env}
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
    # headless: no web login needed; the key in no log or report
    assert LOCUST_KEY not in log.read_text() and LOCUST_KEY not in (report_dir / "capacity-report.json").read_text()


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


# -- the web UI behind its login, the key on every request -------------------------------------------------


def clean_environment(**env: str) -> dict[str, str]:
    """This process's environment without any load-test secret, plus ``env``."""
    return {**{k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}, **env}


@pytest.fixture(scope="module")
def locust_web(api, tmp_path_factory):
    """A real Locust web UI (--web-login) against the API (which wants keys): (its URL, username, password, its log)."""
    port, username, password = free_port(), "operator", secrets.token_urlsafe(18)
    log = tmp_path_factory.mktemp("locust-web") / "locust-web.log"
    cmd = [str(BIN / "locust"), "-f", str(LOCUSTFILE), "--web-login", "--web-host", "127.0.0.1",
           "--web-port", str(port), "--host", api]
    environment = {"API_KEY": LOCUST_KEY, "LOCUST_USERNAME": username, "LOCUST_PASSWORD": password,
                   "LOCUST_METRICS_PORT": "0", "LOADTEST_POOL_SIZE": "200", "LOADTEST_WAIT_MIN": "0.05",
                   "LOADTEST_WAIT_MAX": "0.2"}
    url = f"http://127.0.0.1:{port}"
    with started(cmd, environment, log, ready_url=f"{url}/login", timeout=60):  # / itself redirects to the login
        yield url, username, password, log


def web_client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, follow_redirects=False)


def log_in(client: httpx.Client, username: str, password: str, **headers: str) -> httpx.Response:
    return client.post("/login_submit", data={"username": username, "password": password}, headers=headers)


def stats(client: httpx.Client) -> dict:
    response = client.get("/stats/requests")
    assert response.status_code == 200, response.text[:300]
    return response.json()


def goes_to_login(response: httpx.Response) -> bool:
    return response.status_code == 302 and response.headers["location"].split("?")[0].endswith("/login")


def test_the_web_ui_asks_for_a_login(locust_web):
    url, username, password, _ = locust_web
    with web_client(url) as anonymous:
        assert goes_to_login(anonymous.get("/"))
        for path in ("/stats/requests", "/stats/report", "/logs", "/tasks", "/exceptions"):
            response = anonymous.get(path)
            assert goes_to_login(response) and b"num_requests" not in response.content, path
        for path, data in (("/swarm", {"user_count": "5", "spawn_rate": "5"}), ("/stop", {}), ("/stats/reset", {})):
            assert goes_to_login(anonymous.post(path, data=data)), path
        page = anonymous.get("/login")
        assert page.status_code == 200 and "login_submit" in page.text
        assert anonymous.post("/login_submit", data={}).status_code == 302 and goes_to_login(anonymous.get("/"))
    with web_client(url) as operator:  # nothing was started by the calls above
        assert log_in(operator, username, password).status_code == 302
        state = stats(operator)
        assert state["state"] == "ready" and state["user_count"] == 0 and state["total_rps"] == 0


def test_a_wrong_password_is_refused(locust_web):
    url, username, password, log = locust_web
    for wrong_user, wrong_password in ((username, password[:-1] + "x"), ("admin", password), (username, ""),
                                       (username.upper(), password)):
        with web_client(url) as client:
            began = time.monotonic()
            response = log_in(client, wrong_user, wrong_password)
            assert goes_to_login(response) and time.monotonic() - began >= 0.9  # refused, slowly
            assert "Invalid username or password" in client.get("/login").text
            assert goes_to_login(client.get("/")) and goes_to_login(client.get("/stats/requests"))
    assert "login refused" in log.read_text()


def test_the_operator_logs_in_and_runs_a_swarm_with_the_key(locust_web, api):
    url, username, password, log = locust_web
    with web_client(url) as operator:
        response = log_in(operator, username, password)
        assert response.status_code == 302 and response.headers["location"].rstrip("/") in ("", url)
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie  # plain HTTP here
        with web_client(url) as behind_the_ingress:  # HTTPS ended by the ingress: the cookie stays on HTTPS
            tls = log_in(behind_the_ingress, username, password, **{"X-Forwarded-Proto": "https"})
            assert tls.status_code == 302 and "; secure" in tls.headers["set-cookie"].lower()
        assert operator.get("/").status_code == 200

        # a host typed into the form is refused: the key only goes to the API of the run
        refused = operator.post("/swarm", data={"user_count": "2", "spawn_rate": "2", "host": "http://127.0.0.1:9"})
        assert refused.json()["success"] is False and "--host" in refused.json()["message"]
        assert stats(operator)["state"] == "ready"

        started_swarm = operator.post("/swarm", data={"user_count": "2", "spawn_rate": "2", "host": api})
        assert started_swarm.status_code == 200 and started_swarm.json()["success"] is True, started_swarm.text
        try:
            deadline, predict = time.monotonic() + 60, {}
            while time.monotonic() < deadline:
                entries = {(e["method"], e["name"]): e for e in stats(operator)["stats"]}
                predict = entries.get(("POST", "/predict"), {})
                if predict.get("num_requests", 0) >= 10:
                    break
                time.sleep(0.5)
        finally:
            assert operator.post("/stop").status_code == 200
        assert predict.get("num_requests", 0) >= 10, stats(operator)
        current = stats(operator)
        aggregated = next(e for e in current["stats"] if e["name"] == "Aggregated")
        assert aggregated["num_requests"] >= 10 and aggregated["num_failures"] == 0, current["errors"]
        assert current["errors"] == [] and current["fail_ratio"] == 0

        assert goes_to_login(operator.get("/logout")) and goes_to_login(operator.get("/"))
    text = log.read_text()
    assert password not in text and LOCUST_KEY not in text


def test_the_api_refuses_the_load_without_the_key(api, encounters):
    """What makes the successful runs above evidence that the key was sent: without it the API says 401."""
    assert httpx.post(f"{api}/predict", json=encounters[0], timeout=30).status_code == 401
    wrong = {"X-API-Key": "not-the-key-" + "x" * 20}
    assert httpx.get(f"{api}/model", headers=wrong, timeout=30).status_code == 401
    answer = httpx.post(f"{api}/predict", json=encounters[0], headers={"X-API-Key": LOCUST_KEY}, timeout=30)
    assert answer.status_code == 200 and "scored" in answer.json()


def run_locust(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run the locustfile with this environment (no load-test secret unless given) to its end."""
    cmd = [str(BIN / "locust"), "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(free_port()),
           *args]
    return subprocess.run(cmd, env=clean_environment(LOCUST_METRICS_PORT="0", LOADTEST_POOL_SIZE="50", **env),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)


def test_locust_does_not_start_without_its_secrets(api, tmp_path):
    # no API_KEY: a clear message at start, not a run of 401s (headless and web UI alike)
    for args in (["--headless", "-u", "1", "-t", "3s", "--host", api], ["--web-login", "--host", api]):
        run = run_locust(args, tmp_path, LOCUST_USERNAME="operator", LOCUST_PASSWORD=secrets.token_urlsafe(16))
        assert run.returncode != 0 and "API_KEY: not set" in run.stderr, run.stderr[-2000:]
        assert "/predict" not in run.stdout + run.stderr  # no request was made
    # a web UI never runs open: without --web-login, or without its username/password
    password = secrets.token_urlsafe(16)
    refusals = (
        ([], {"LOCUST_USERNAME": "operator", "LOCUST_PASSWORD": password}, "--web-login"),
        (["--web-login"], {}, "LOCUST_USERNAME and LOCUST_PASSWORD"),
        (["--web-login"], {"LOCUST_USERNAME": "operator"}, "LOCUST_USERNAME and LOCUST_PASSWORD"),
        (["--web-login"], {"LOCUST_USERNAME": "operator", "LOCUST_PASSWORD": "short"}, "at least 12"),
    )
    for args, env, message in refusals:
        run = run_locust([*args, "--host", api], tmp_path, API_KEY=LOCUST_KEY, **env)
        assert run.returncode != 0 and message in run.stderr, (args, run.stderr[-2000:])
        assert password not in run.stdout + run.stderr and LOCUST_KEY not in run.stdout + run.stderr
    # headless needs no login (the capacity search tests run that way): a short fixed run with the key only
    run = run_locust(["--headless", "-u", "2", "-r", "2", "-t", "4s", "--host", api, "--only-summary",
                      "--csv", str(tmp_path / "run")], tmp_path, API_KEY=LOCUST_KEY, LOADTEST_WAIT_MIN="0.05",
                     LOADTEST_WAIT_MAX="0.2")
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as table:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(table)}
    assert int(rows[("POST", "/predict")]["Request Count"]) > 0, rows
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0, run.stderr[-3000:]
    assert LOCUST_KEY not in run.stdout + run.stderr


def test_load_beyond_capacity_is_reported_as_shedding(registered, tmp_path):
    """An API that admits one request at a time, loaded by 24 users without pause: the 503s it sheds are
    counted by Locust as failures named "shed by the API: busy (<reason>)", one line per reason (the
    report tells overload from breakage), and never anything else."""
    from .conftest import api_process

    url, process = api_process(tmp_path, registered.tracking_uri, registered.model_name,
                               MAX_IN_FLIGHT="1", MAX_IN_FLIGHT_BATCH="1")
    with process:
        from ..support import wait_http

        wait_http(f"{url}/ready", timeout=120)
        run = run_locust(["--headless", "-u", "24", "-r", "24", "-t", "5s", "--host", url, "--only-summary",
                          "--csv", str(tmp_path / "run")], tmp_path, API_KEY=LOCUST_KEY, LOADTEST_WAIT_MIN="0",
                         LOADTEST_WAIT_MAX="0.001")
    assert run.returncode != 0  # Locust's exit status when any request failed
    with open(tmp_path / "run_failures.csv", newline="") as table:
        failures = list(csv.DictReader(table))
    errors = {row["Error"] for row in failures}
    assert errors and all("shed by the API: busy (" in e for e in errors), errors  # CatchResponseError(...)
    assert sum(int(row["Occurrences"]) for row in failures) > 0
    with open(tmp_path / "run_stats.csv", newline="") as table:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(table)}
    predict = rows[("POST", "/predict")]
    assert int(predict["Request Count"]) > int(predict["Failure Count"]) > 0  # some admitted, some shed
