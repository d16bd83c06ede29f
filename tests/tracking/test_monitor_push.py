"""A drift check's figures reach Prometheus through a real Pushgateway, and the repository's alert rules fire on
them in a real Prometheus; a Pushgateway that is away costs the check nothing."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from readmit_contract import clean, synthetic, validate
from readmit_data.drift import compare
from readmit_data.monitor import PUSH_JOB, DriftCheck, push_check
from readmit_data.settings import DataSettings

from ..support import free_port, started

RULES = Path(__file__).resolve().parents[2] / "server3-serving" / "monitoring" / "rules.yml"


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install {name} (see .ci/run)")
    return found


def _clean(n: int, seed: int, drift: float = 0.0) -> pd.DataFrame:
    return clean(validate(synthetic.generate(n, seed=seed, drift=drift)).valid).clean


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory):
    """A Pushgateway and a Prometheus scraping it (honor_labels, 1 s) with the repository's rules."""
    root = tmp_path_factory.mktemp("push")
    gateway_port, prometheus_port = free_port(), free_port()
    gateway = f"http://127.0.0.1:{gateway_port}"
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)],
              "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                                  "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}]}]}
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    gateway_cmd = [_binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{gateway_port}"]
    prometheus_cmd = [_binary("prometheus"), f"--config.file={root / 'prometheus.yml'}",
                      f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{prometheus_port}"]
    with started(gateway_cmd, {}, root / "gateway.log", ready_url=f"{gateway}/-/ready", timeout=60), \
            started(prometheus_cmd, {}, root / "prometheus.log", ready_url=f"{prometheus}/-/ready", timeout=60):
        yield gateway, prometheus


def _eventually(fetch, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_a_drifted_check_reaches_prometheus_and_fires_the_alert(monitoring):
    gateway, prometheus = monitoring
    settings = DataSettings(PUSHGATEWAY_URL=gateway, MODEL_NAME="readmission-push")
    result = compare(_clean(8000, seed=1), _clean(3000, seed=2, drift=1.0), html=False)
    check = DriftCheck("4", "batches train-0005", result.share, result.drifted_features(), True,
                       ["data drift: ..."])
    assert push_check(settings, check, result)

    pushed = httpx.get(f"{gateway}/metrics", timeout=10).text
    assert f'job="{PUSH_JOB}"' in pushed and "readmit_drift_share{" in pushed

    def series(expr: str) -> list:
        return httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()["data"]["result"]

    # the live traffic's check is pushed beside it (its own group: neither push replaces the other)
    live = compare(_clean(8000, seed=1), _clean(3000, seed=4), html=False)
    assert push_check(settings, DriftCheck("4", "predictions ...", live.share, [], False, [],
                                           population="predictions"), live)
    share = _eventually(lambda: (found := series('readmit_drift_share{model_name="readmission-push"}'))
                        and len(found) == 2 and found)
    by_population = {s["metric"]["population"]: float(s["value"][1]) for s in share}
    assert by_population == pytest.approx({"batches": result.share, "predictions": live.share})
    assert {s["metric"]["model_version"] for s in share} == {"4"} and share[0]["metric"]["job"] == PUSH_JOB
    drifted = series('readmit_feature_drifted{model_name="readmission-push", population="batches"} == 1')
    assert {s["metric"]["feature"] for s in drifted} == set(result.drifted_features())
    scores = series('readmit_feature_drift_score{model_name="readmission-push", population="batches"}')
    assert len(scores) == len(result.features)
    assert not series('readmit_feature_drifted{model_name="readmission-push", population="predictions"} == 1')

    def firing() -> set[str]:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    assert {"ReadmitDataDrift", "ReadmitModelRetrainAdvised"} <= _eventually(
        lambda: {"ReadmitDataDrift", "ReadmitModelRetrainAdvised"} <= firing() and firing())
    drift_alerts = [a for a in httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
                    if a["labels"]["alertname"] == "ReadmitDataDrift"]
    assert [a["labels"]["population"] for a in drift_alerts] == ["batches"]
    assert "ReadmitMonitorStale" not in firing()

    # the next check replaces the push: no drift, no advice, the alerts resolve
    calm = compare(_clean(8000, seed=1), _clean(3000, seed=3), html=False)
    assert calm.drifted == 0
    assert push_check(settings, DriftCheck("4", "batches train-0006", calm.share, [], False, []), calm)
    assert _eventually(lambda: not ({"ReadmitDataDrift", "ReadmitModelRetrainAdvised"} & firing()), timeout=60)


def test_a_pushgateway_away_is_logged_not_raised(caplog):
    settings = DataSettings(PUSHGATEWAY_URL=f"http://127.0.0.1:{free_port()}")
    assert push_check(settings, DriftCheck("1", "none", retrain=False)) is False
    assert "could not be pushed" in caplog.text
    assert push_check(DataSettings(PUSHGATEWAY_URL=""), DriftCheck("1", "none")) is False  # not configured
