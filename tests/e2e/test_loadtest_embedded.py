"""`make loadtest` (embedded/loadtest.py) for real, with a short search: a real API (uvicorn, in front of a real
MLflow with a registered champion), laid out as `make up` leaves it (a state folder with credentials.env, the API
started with the hospital's key from it), found through the variables embedded/run.py reads (READMIT_STATE_DIR,
API_URL). The report's files hold the search's figures; the output has one line per step; the key is nowhere."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..serving.conftest import api_process, log_and_register
from ..support import free_port, wait_http

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
LOADTEST = ROOT / "embedded" / "loadtest.py"
SECRET_VARIABLES = ("API_KEY", "API_KEYS", "LOCUST_USERNAME", "LOCUST_PASSWORD", "API_KEY_HOSPITAL", "API_KEY_UI",
                    "API_KEY_LOCUST")
MODEL_NAME = "readmission-loadtest"
SHORT_SEARCH = ["--start-users", "2", "--step-users", "2", "--seconds", "3", "--max-users", "4", "--slo-p95-ms", "2000"]


@dataclass(frozen=True)
class Embedded:
    url: str
    state: Path
    key: str


def write_credentials(state: Path, **values: str) -> None:
    state.mkdir(parents=True, exist_ok=True)
    path = state / "credentials.env"
    path.write_text("# as make up writes it\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)


def register_champion(tracking_uri: str, frame) -> str:
    """A boosted-trees pipeline of the contract fitted on synthetic encounters, registered as training registers
    (skops, checksum tag) and made champion: the kind of model `make up` serves, in seconds rather than a
    training run's minute."""
    from mlflow import MlflowClient
    from readmit_contract import TARGET, EncounterFeatures, clean, validate
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    rows = clean(validate(frame).valid).clean
    pipeline = Pipeline([("features", EncounterFeatures()),
                         ("model", HistGradientBoostingClassifier(max_iter=30, random_state=0))])
    version = log_and_register(tracking_uri, MODEL_NAME, pipeline.fit(rows, rows[TARGET]))
    MlflowClient(tracking_uri).set_registered_model_alias(MODEL_NAME, "champion", version)
    return version


@pytest.fixture(scope="module")
def embedded(sqlite_tracking, synthetic_frame, tmp_path_factory) -> Embedded:
    """A state folder as `make up` leaves it and its API (the API knows the UI's, the hospital's and the load
    test's keys)."""
    root = tmp_path_factory.mktemp("loadtest-embedded")
    register_champion(sqlite_tracking.uri, synthetic_frame)
    keys = {name: secrets.token_urlsafe(32) for name in ("API_KEY_UI", "API_KEY_HOSPITAL", "API_KEY_LOCUST")}
    state = root / "state"
    write_credentials(state, UI_USERNAME="clinician", **keys)
    url, process = api_process(root, sqlite_tracking.uri, MODEL_NAME,
                               API_KEYS=f"ui:{keys['API_KEY_UI']},hospital:{keys['API_KEY_HOSPITAL']},"
                                        f"locust:{keys['API_KEY_LOCUST']}")
    with process:
        wait_http(f"{url}/ready", timeout=120)
        yield Embedded(url, state, keys["API_KEY_LOCUST"])


def run_loadtest(state: Path, url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**{k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES},
                   "READMIT_STATE_DIR": str(state), "API_URL": url, **env}
    return subprocess.run([sys.executable, str(LOADTEST), *args], env=environment, capture_output=True, text=True,  # noqa: S603
                          timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)


def test_make_loadtest_writes_the_capacity_report(embedded):
    run = run_loadtest(embedded.state, embedded.url, *SHORT_SEARCH, LOADTEST_WAIT_MIN="0.05",
                       LOADTEST_WAIT_MAX="0.2", LOADTEST_POOL_SIZE="200")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout

    # the report's folder: one per run under STATE/loadtest/, said in the output
    (folder,) = (embedded.state / "loadtest").iterdir()
    assert f"report: {folder}/" in out and re.fullmatch(r"\d{8}T\d{6}Z", folder.name)
    assert {p.name for p in folder.iterdir()} == {"capacity-report.json", "capacity-report.md",
                                                  "latency-vs-users.png", "locust.log"}
    report = json.loads((folder / "capacity-report.json").read_text())
    steps = report["steps"]
    assert report["host"] == embedded.url and report["slo"]["p95_ms"] == 2000.0
    assert report["search"] == {"start_users": 2, "step_users": 2, "step_seconds": 3.0, "max_users": 4,
                                "spawn_rate": 2.0}
    assert [s["users"] for s in steps] == [2, 4][: len(steps)] and steps
    assert all(s["complete"] and s["requests"] > 0 and s["rps"] > 0 and s["failures"] == 0 and s["seconds"] >= 2.5
               and s["p95_ms"] is not None and 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] for s in steps)
    within = [s for s in steps if s["within_slo"]]
    assert report["max_users_within_slo"] == max((s["users"] for s in within), default=0)
    assert report["max_rps_within_slo"] == max((s["rps"] for s in within), default=0.0)

    # the markdown names the capacity and lists every step; the chart is a PNG
    markdown = (folder / "capacity-report.md").read_text()
    assert f"**Max users within the SLO: {report['max_users_within_slo']}**" in markdown
    assert f"max RPS within the SLO: {report['max_rps_within_slo']:.1f}" in markdown
    assert sum(line.startswith(f"| {s['users']} | ") for line in markdown.splitlines() for s in steps) == len(steps)
    png = folder / "latency-vs-users.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    # the output: the plan, one line per step (no progress redrawn in place: not a terminal), the capacity
    assert "capacity review of the API at " + embedded.url in out and "readmission-loadtest v1" in out
    assert "\r" not in out and "\033" not in out
    step_lines = [line for line in out.splitlines() if line.startswith("  step ")]
    assert len(step_lines) == len(steps), out
    for number, (line, step) in enumerate(zip(step_lines, steps, strict=True), start=1):
        assert line.startswith(f"  step {number}: {step['users']} users, {step['rps']:.1f} req/s, p95 of POST "
                               f"/predict {step['p95_ms']:.0f} ms"), line
        assert line.endswith("within the SLO" if step["within_slo"] else "over the SLO"), line
    if steps[-1]["within_slo"]:  # a healthy API keeps 4 users under 2 s: stopped at the ceiling
        assert len(steps) == 2 and "CAPACITY_MAX_USERS" in report["stop_reason"]
        assert (f"capacity: 4 users, {report['max_rps_within_slo']:.1f} req/s within the objective "
                f"(p95 {steps[-1]['p95_ms']:.0f} ms at 4 users)") in out
        assert "raise --max-users" in out
    assert out.count(f"  stopped: {report['stop_reason']}\n") == 1

    # the key: in Locust's environment only, never in the output, the log or the report
    for text in (out, run.stderr, *(p.read_text(errors="replace") for p in folder.iterdir() if p.suffix != ".png")):
        assert embedded.key not in text


def test_it_says_what_to_do_when_the_api_is_not_up(embedded, tmp_path):
    # nothing answers: run make up first; no report folder is made
    run = run_loadtest(embedded.state, f"http://127.0.0.1:{free_port()}", *SHORT_SEARCH)
    assert run.returncode == 1 and "run `make up` first" in run.stderr, run.stderr
    # an API that answers, but no credentials in the state folder (make up never ran with it)
    run = run_loadtest(tmp_path / "fresh", embedded.url, *SHORT_SEARCH)
    assert run.returncode == 1 and "no credentials" in run.stderr and "run `make up` first" in run.stderr
    # credentials of another state folder: the API refuses that key, and says nothing of it
    other = secrets.token_urlsafe(32)
    write_credentials(tmp_path / "other", API_KEY_LOCUST=other)
    run = run_loadtest(tmp_path / "other", embedded.url, *SHORT_SEARCH)
    assert run.returncode == 1 and "refused API_KEY_LOCUST" in run.stderr and other not in run.stderr
    # a setting out of range: named, before any load
    write_credentials(tmp_path / "same", API_KEY_LOCUST=embedded.key)
    run = run_loadtest(tmp_path / "same", embedded.url, "--start-users", "8", "--max-users", "4")
    assert run.returncode == 1 and "CAPACITY_MAX_USERS must be >= CAPACITY_START_USERS" in run.stderr
    assert embedded.key not in run.stdout + run.stderr
    assert not any((tmp_path / name / "loadtest").exists() for name in ("fresh", "other", "same"))
