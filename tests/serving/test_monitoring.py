"""Prometheus and Grafana as code: Debian's real ``prometheus`` scrapes the real API under a short Locust
run with the repository's configuration and rules; every Grafana panel's query must return data."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from ..support import BIN, free_port, started
from .conftest import KEYS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING = REPO_ROOT / "server3-serving" / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
RULES = MONITORING / "rules.yml"
RULES_TESTS = MONITORING / "rules_test.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARDS = {"api-overview.json": "readmit-api-overview", "capacity-review.json": "readmit-capacity-review"}
LOCUSTFILE = REPO_ROOT / "server3-serving" / "loadtest" / "locustfile.py"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}

# Grafana's built-in variables, as Grafana would set them for a short range at a 1 s scrape interval
GRAFANA_VARIABLES = {"__rate_interval": "30s", "__interval": "5s", "__range": "5m", "__range_s": "300",
                     "__range_ms": "300000", "__interval_ms": "5000"}


def tool(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if Path(p).exists()),
                                      None)


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def dashboard(name: str) -> dict:
    return json.loads((GRAFANA / "dashboards" / name).read_text())


def panel_targets():
    """(dashboard file, panel title, target) of every query of both dashboards."""
    for name in DASHBOARDS:
        board = dashboard(name)
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield name, panel["title"], target, board


def substitute(expr: str, board: dict) -> str:
    """A panel's expression with Grafana's variables replaced the way Grafana would."""
    values = dict(GRAFANA_VARIABLES)
    for variable in board.get("templating", {}).get("list", []):
        current = (variable.get("current") or {}).get("value")
        values[variable["name"]] = ".*" if current in (None, "$__all", ["$__all"]) else current
    for name in sorted(values, key=len, reverse=True):  # $__range_s before $__range
        value = values[name] if isinstance(values[name], str) else "|".join(values[name])
        expr = expr.replace(f"${{{name}}}", value).replace(f"[[{name}]]", value).replace(f"${name}", value)
    assert "$" not in expr, f"unknown variable left in {expr!r}"
    return expr


# -- the files as provisioned (no server) ------------------------------------------------------------


def test_grafana_datasource_and_provider_parse():
    datasources = load_yaml(GRAFANA / "datasources" / "prometheus.yml")
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and source["access"] == "proxy"

    provider = load_yaml(GRAFANA / "dashboards" / "provider.yml")
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    # the Grafana Deployment mounts the dashboards ConfigMap there
    grafana_manifest = (REPO_ROOT / "server3-serving" / "k8s" / "grafana.yaml").read_text()
    assert entry["options"]["path"] == "/etc/grafana/dashboards"
    assert "mountPath: /etc/grafana/dashboards" in grafana_manifest


def test_dashboards_are_provisioning_json():
    uids = set()
    for name, uid in DASHBOARDS.items():
        board = dashboard(name)
        assert board["uid"] == uid and board["title"] and board.get("id") is None
        assert isinstance(board["schemaVersion"], int) and board["panels"]
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in board["panels"]:
            assert panel["title"] and panel["type"] and panel["targets"], f"{name}: {panel}"
            assert panel["datasource"] == DATASOURCE, f"{name} / {panel['title']}"
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, f"{name} / {panel['title']}"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{name} / {panel['title']}: duplicate refIds"
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE and target["expr"].strip(), f"{name} / {panel['title']}"
    assert len(uids) == len(DASHBOARDS)

    def exprs(name: str) -> str:
        return "\n".join(t["expr"] for p in dashboard(name)["panels"] for t in p["targets"])

    api = exprs("api-overview.json")
    for needed in ("readmit_api_requests_total", "histogram_quantile(0.5,", "histogram_quantile(0.95,",
                   "histogram_quantile(0.99,", 'status=~"5.."', "readmit_api_predictions_total",
                   "readmit_api_model_version", "readmit_api_model_info"):
        assert needed in api, f"API overview lacks {needed}"
    capacity = exprs("capacity-review.json")
    for needed in ("locust_users", "locust_requests_total", "locust_failures_total",
                   "locust_response_time_seconds_bucket", "readmit_api_requests_total"):
        assert needed in capacity, f"Capacity review lacks {needed}"


def test_promtool_accepts_the_repository_config_and_rules():
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    for args in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", str(RULES)],
                 ["test", "rules", str(RULES_TESTS)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=MONITORING)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


# -- Prometheus scraping the API under load ---------------------------------------------------------------


def scrape_config_for_test(tmp_path: Path, targets: dict[str, str]) -> Path:
    """The repository's prometheus.yml with only the targets (loopback) and the intervals (1 s) changed."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str((PROMETHEUS_CONFIG.parent / f).resolve()) for f in config["rule_files"]]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == set(targets), f"jobs of prometheus.yml {jobs} != jobs this test knows {set(targets)}"
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        job.update(scrape_interval="1s", scrape_timeout="1s")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def prometheus_under_load(api, tmp_path_factory):
    """Prometheus scraping the API, a running Locust and itself. Yields (Prometheus URL, start of the run)."""
    binary = tool("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: apt-get install prometheus (see .ci/run)")
    root = tmp_path_factory.mktemp("prometheus")
    prometheus_port, locust_port, locust_web = free_port(), free_port(), free_port()
    api_target = urlsplit(api).netloc
    config = scrape_config_for_test(root, {"readmit-api": api_target, "locust": f"127.0.0.1:{locust_port}",
                                "prometheus": f"127.0.0.1:{prometheus_port}"})
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    prometheus_cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                      f"--web.listen-address=127.0.0.1:{prometheus_port}", "--storage.tsdb.retention.time=1h"]
    locust_cmd = [str(BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "-u", "8", "-r", "4", "-t", "90s",
                  "--host", api, "--only-summary", "--web-port", str(locust_web)]
    locust_env = {"LOCUST_METRICS_PORT": str(locust_port), "LOCUST_METRICS_HOST": "127.0.0.1",
                  "LOADTEST_WAIT_MIN": "0.1", "LOADTEST_WAIT_MAX": "0.5", "CAPACITY_SEARCH": "0",
                  "API_KEY": KEYS["locust"]}
    with started(prometheus_cmd, {}, root / "prometheus.log", ready_url=f"{prometheus_url}/-/ready", timeout=60):
        begin = time.time()
        with started(locust_cmd, locust_env, root / "locust.log", ready_url=f"http://127.0.0.1:{locust_port}/metrics",
                     timeout=60):
            yield prometheus_url, begin


def query(prometheus: str, expr: str, begin: float, instant: bool) -> list:
    if instant:
        response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
    else:
        response = httpx.get(f"{prometheus}/api/v1/query_range", timeout=30,
                             params={"query": expr, "start": begin, "end": time.time(), "step": 1})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def has_data(result: list) -> bool:
    """At least one finite sample (a series of NaN only, e.g. a quantile of nothing, is no data)."""
    for series in result:
        values = series.get("values") or [series.get("value")]
        if any(v is not None and math.isfinite(float(v[1])) for v in values):
            return True
    return False


def test_every_dashboard_query_returns_data(prometheus_under_load):
    prometheus, begin = prometheus_under_load
    queries = [(f"{name} / {title} / {target['refId']}", substitute(target["expr"], board),
                bool(target.get("instant")) and not target.get("range", False))
               for name, title, target, board in panel_targets()]
    assert len(queries) >= 20
    pending = dict.fromkeys(q[0] for q in queries)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        time.sleep(2)
        for label, expr, instant in queries:
            if label in pending and has_data(query(prometheus, expr, begin, instant)):
                del pending[label]
    assert not pending, "panel queries without data:\n" + "\n".join(
        f"{label}: {expr}" for label, expr, _ in queries if label in pending)


def test_both_jobs_are_scraped_and_the_rules_loaded(prometheus_under_load):
    prometheus, _ = prometheus_under_load
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {"readmit-api": "up", "locust": "up",
                                                                  "prometheus": "up"}

    expected = {g["name"]: {r["alert"] for r in g["rules"]} for g in load_yaml(RULES)["groups"]}
    assert {"ReadmitApiHighErrorRatio", "ReadmitApiHighLatencyP95", "ReadmitApiDown",
            "ReadmitApiMlflowUnreachable", "ReadmitApiNoModelLoaded"} <= set().union(*expected.values())
    deadline = time.monotonic() + 30
    while True:  # every rule evaluated at least once, without error
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("health") == "ok" for r in rules) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {g["name"]: {r["name"] for r in g["rules"]} for g in groups} == expected
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # a healthy API: up, MLflow reachable, a model loaded; and nothing fires (every rule waits a minute or more)
    states = {r["name"]: r["state"] for r in rules}
    assert all(states[name] == "inactive" for name in ("ReadmitApiDown", "ReadmitApiInstanceDown",
                                                        "ReadmitApiMlflowUnreachable", "ReadmitApiNoModelLoaded",
                                                        "ReadmitApiModelVersionRefused"))
    assert "firing" not in states.values(), states


def test_the_api_and_locust_expose_what_the_dashboards_read(prometheus_under_load):
    prometheus, _ = prometheus_under_load
    names = set()
    for _, _, target, _board in panel_targets():
        names |= set(re.findall(r"\b((?:readmit_api|locust)_[a-z0-9_]+)", target["expr"]))
    series = httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"]
    assert names <= set(series), f"queried but never scraped: {sorted(names - set(series))}"
