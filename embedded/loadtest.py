"""`make loadtest`: the capacity review of the API that `make up` started, on this machine.

Runs the cluster's capacity search (server3-serving/loadtest: Locust, headless, CAPACITY_SEARCH=1) against
the embedded API: users are stepped up until the p95 of POST /predict passes the objective
(CAPACITY_SLO_P95_MS) or errors pass CAPACITY_MAX_ERROR_RATIO, or CAPACITY_MAX_USERS is reached. The
report (capacity-report.md, capacity-report.json, latency-vs-users.png) and Locust's log go to
STATE/loadtest/<UTC time>/; the summary says where, and the capacity found.

    make loadtest
    make loadtest LOADTEST_ARGS="--seconds 10 --max-users 100"     # a short search

The API is the one of `make up`: API_URL when set, else API_HOST:API_PORT of .env.embedded (as embedded/run.py);
its key is API_KEY_LOCUST of STATE/credentials.env (STATE: ./var, or $READMIT_STATE_DIR), handed to Locust
in its environment (API_KEY), never on a command line, in the output or in the report. The options set the
load test's variables (the names of loadtest_settings.py and the cluster's); any other of them (LOADTEST_*,
CAPACITY_*) is read from the environment. On a terminal the running step is shown in place; other output
(logs, CI) gets one line per step.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as embedded  # noqa: E402 - embedded/run.py: the state folder, .env.embedded, the API's address

LOADTEST = embedded.ROOT / "server3-serving" / "loadtest"
sys.path.insert(0, str(LOADTEST))
from loadtest_settings import LoadTestSettings, SettingsError  # noqa: E402 - no Locust import (see that module)

LOCUSTFILE = LOADTEST / "locustfile.py"
KEY_NAME = "API_KEY_LOCUST"
"""The key of credentials.env the load is sent with: the load test's own caller (``locust``, as in the cluster), so
that the drift check of live predictions leaves its synthetic traffic out (DRIFT_EXCLUDED_CALLERS)."""
SECRET_VARIABLES = frozenset(embedded.CREDENTIAL_NAMES) | {"API_KEY", "LOCUST_USERNAME", "LOCUST_PASSWORD"}
REPORT_FILES = ("capacity-report.md", "capacity-report.json", "latency-vs-users.png")

OPTIONS = (
    # (flag, variable, type, metavar, help)
    ("--start-users", "CAPACITY_START_USERS", int, "N", "users of the first step"),
    ("--step-users", "CAPACITY_STEP_USERS", int, "N", "users added at each step"),
    ("--seconds", "CAPACITY_STEP_SECONDS", float, "S", "how long each step is measured"),
    ("--max-users", "CAPACITY_MAX_USERS", int, "N", "the search stops there even within the objective"),
    ("--slo-p95-ms", "CAPACITY_SLO_P95_MS", float, "MS", "the objective: p95 of POST /predict"),
    ("--max-error-ratio", "CAPACITY_MAX_ERROR_RATIO", float, "R", "failed requests / requests allowed in a step"),
)


def parse_args(argv: list[str] | None = None) -> dict[str, str]:
    """The options given, as the load test's variables (name -> value)."""
    parser = argparse.ArgumentParser(
        description="Capacity search against the API of `make up`; writes the report under STATE/loadtest/.",
        epilog="Each option sets the variable named in its help (the same names as in the cluster); an option wins "
               "over the environment, which wins over the defaults of server3-serving/loadtest/loadtest_settings.py. "
               "The API: API_URL, else API_HOST:API_PORT; its key: API_KEY_LOCUST of STATE/credentials.env.")
    for flag, variable, kind, metavar, text in OPTIONS:
        parser.add_argument(flag, type=kind, dest=variable, metavar=metavar, help=f"{text} ({variable})")
    args = vars(parser.parse_args(argv))
    return {variable: f"{value:g}" if isinstance(value, float) else str(value)
            for variable, value in args.items() if value is not None}


# -- the API of make up ---------------------------------------------------------------------------------------


def api_url(env: dict[str, str]) -> str:
    """API_URL when set in the environment, else the address make up starts the API at."""
    url = (os.environ.get("API_URL") or embedded.base_url(env, "API_PORT")).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SystemExit("loadtest: API_URL must be an http:// or https:// address")
    return url


def read_key() -> str:
    """The load test's key from credentials.env (read only: make up draws it)."""
    shown = embedded.shown_path(embedded.CREDENTIALS)
    if not embedded.CREDENTIALS.exists():
        raise SystemExit(f"loadtest: no credentials at {shown}: run `make up` first (it draws them)")
    for line in embedded.CREDENTIALS.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == KEY_NAME and value.strip():
            return value.strip()
    raise SystemExit(f"loadtest: {shown} has no {KEY_NAME} (drawn by `make up` since the load test has a key of its "
                     "own): run `make down`, then `make up` (it completes the file and restarts the API with it)")


def get(url: str, key: str | None = None) -> tuple[int | None, dict[str, Any]]:
    """(status, JSON body) of a GET; status None when nothing answers."""
    request = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the API of make up
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except (urllib.error.URLError, OSError):
        return None, {}
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {}
    return status, parsed if isinstance(parsed, dict) else {}


def check_up(url: str) -> None:
    """Nothing when the API answers; else a sentence saying what to do."""
    status, _ = get(f"{url}/health")
    if status is None:
        raise SystemExit(f"loadtest: no API answers at {url}: run `make up` first "
                         "(or set API_URL to the API of `make up`)")


def check_api(url: str, key: str) -> dict[str, Any]:
    """The served model's description, once the API has a model and takes the key; else a sentence saying what
    to do."""
    status, ready = get(f"{url}/ready")
    if status != 200:
        raise SystemExit(f"loadtest: the API at {url} has no model loaded yet ({ready.get('detail') or status}): "
                         "wait until `make up` says the API is ready, then run `make loadtest` again")
    status, model = get(f"{url}/model", key)
    if status in (401, 403):
        credentials = embedded.shown_path(embedded.CREDENTIALS)
        raise SystemExit(f"loadtest: the API at {url} refused {KEY_NAME} of {credentials}: "
                         "it was not started by `make up` with this state folder (READMIT_STATE_DIR)")
    if status != 200:
        raise SystemExit(f"loadtest: the API at {url} answered GET /model with {status}: see {embedded.LOGS}")
    return model


# -- the search -----------------------------------------------------------------------------------------------


def report_folder() -> Path:
    """STATE/loadtest/<UTC time>/ (not made yet: made once the settings are valid)."""
    base = embedded.VAR / "loadtest" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def locust_environment(env: dict[str, str], url: str, key: str, folder: Path,
                       options: dict[str, str]) -> dict[str, str]:
    """Locust's environment: the platform's settings without any credential, the search's variables, the key."""
    child = {k: v for k, v in env.items() if k not in SECRET_VARIABLES}
    child.setdefault("LOCUST_METRICS_PORT", "0")  # no Prometheus on one machine: no endpoint unless asked for
    return {**child, **options, "API_URL": url, "CAPACITY_SEARCH": "1", "CAPACITY_REPORT_DIR": str(folder),
            "PYTHONUNBUFFERED": "1", "API_KEY": key}


def settings_of(child: dict[str, str]) -> LoadTestSettings:
    try:
        return LoadTestSettings.from_env(child)
    except SettingsError as exc:  # names the variables, never a value
        raise SystemExit(f"loadtest: {exc}") from None


def plan(settings: LoadTestSettings) -> str:
    steps = (settings.max_users - settings.start_users) // settings.step_users + 1
    seconds = steps * (settings.step_seconds + 1.5) + 10  # a step's users are spawned within a second or two
    longest = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return (f"{settings.start_users} users, +{settings.step_users} every {settings.step_seconds:g} s, at most "
            f"{settings.max_users} users ({steps} steps: {longest} at most)")


@dataclass
class Progress:
    """What Locust says, for people: one line per step (and, on a terminal, the running step in place)."""

    out: TextIO
    step_seconds: float
    live: bool
    step: str | None = None
    step_started: float = 0.0
    shown: bool = False
    stopped: str | None = None

    def line(self, line: str) -> None:
        level, message = parse_log_line(line)
        if message is None:
            if line.startswith("locustfile:"):  # the locustfile refused to start
                self.print(line.strip())
            return
        if message.startswith("capacity search: step ") and " measured: " in message:
            number, figures = message.removeprefix("capacity search: step ").split(" measured: ", 1)
            self.print(f"  step {number}: {figures}")
            self.step = None
        elif message.startswith("capacity search: step "):
            self.step, self.step_started = message.removeprefix("capacity search: step "), time.monotonic()
            self.tick()
        elif message.startswith("capacity search stopped: "):
            self.stopped = message.removeprefix("capacity search stopped: ")
            self.print(f"  stopped: {self.stopped}")
        elif level in ("WARNING", "ERROR", "CRITICAL"):
            self.print(f"  locust {level.lower()}: {message}")

    def tick(self) -> None:
        if self.live and self.step is not None:
            elapsed = time.monotonic() - self.step_started
            self.out.write(f"\r\033[K  step {self.step}: {elapsed:.0f} s of about {self.step_seconds + 1:.0f} s")
            self.out.flush()
            self.shown = True

    def print(self, text: str) -> None:
        if self.shown:
            self.out.write("\r\033[K")
            self.shown = False
        print(text, file=self.out, flush=True)


def parse_log_line(line: str) -> tuple[str | None, str | None]:
    """(level, message) of a line of Locust's log ("[time] host/LEVEL/logger: message"); (None, None) otherwise."""
    if not line.startswith("["):
        return None, None
    try:
        _, rest = line.rstrip("\n").split("] ", 1)
        origin, message = rest.split(": ", 1)
        _, level, _ = origin.split("/", 2)
    except ValueError:
        return None, None
    return level, message


def run_search(child: dict[str, str], url: str, folder: Path, progress: Progress) -> int:
    """Run Locust to its end; its output goes to folder/locust.log and, for people, through ``progress``."""
    command = [str(embedded.BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "--host", url, "--only-summary",
               "--exit-code-on-error", "0"]
    lines: queue.Queue[str | None] = queue.Queue()
    with open(folder / "locust.log", "w") as log:
        process = subprocess.Popen(command, env=child, cwd=folder, stdin=subprocess.DEVNULL,  # noqa: S603
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")

        def pump() -> None:
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

        def drain() -> None:
            while (line := next_line()) is not None:
                log.write(line)
                log.flush()
                progress.line(line)

        def next_line() -> str | None:
            while True:
                try:
                    return lines.get(timeout=1.0)
                except queue.Empty:
                    progress.tick()

        try:
            drain()
        except KeyboardInterrupt:  # Locust got the same Ctrl-C: it stops and reports the steps measured so far
            progress.print("  interrupted: Locust writes the report of the steps measured so far (Ctrl-C again: "
                           "stop now)")
            try:
                drain()
            except KeyboardInterrupt:
                process.kill()
        return process.wait()


# -- the summary ----------------------------------------------------------------------------------------------


def summary(report: dict[str, Any], folder: Path) -> list[str]:
    slo = report["slo"]
    objective = f"p95 of {slo['route']} <= {slo['p95_ms']:g} ms, errors <= {slo['max_error_ratio']:.1%}"
    users, rps = report["max_users_within_slo"], report["max_rps_within_slo"]
    complete = [s for s in report["steps"] if s["complete"]]
    lines = ["", f"capacity review ({objective}):"]
    if users:
        p95 = report["p95_ms_at_max_users"]
        lines.append(f"  capacity: {users} users, {rps:.1f} req/s within the objective "
                     f"(p95 {p95:.0f} ms at {users} users)")
        if "CAPACITY_MAX_USERS" in (report["stop_reason"] or ""):
            lines.append(f"  the objective held up to CAPACITY_MAX_USERS ({report['search']['max_users']} users): "
                         "the capacity is higher; raise --max-users to find it")
    elif complete:
        first = complete[0]
        p95 = "-" if first["p95_ms"] is None else f"{first['p95_ms']:.0f} ms"
        lines.append(f"  capacity: none found: the first step ({first['users']} users) already missed the objective "
                     f"(p95 {p95}, errors {first['error_ratio']:.2%}); start lower (--start-users)")
    else:
        lines.append("  capacity: no step was measured to its end")
    lines.append(f"  note: Locust ran beside the API on this machine's {os.cpu_count()} cores: the API alone "
                 "(as in the cluster) has more room")
    lines.append(f"report: {embedded.shown_path(folder)}/")
    lines += [f"  {name}" for name in REPORT_FILES]
    return lines


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    env = embedded.read_env()
    url = api_url(env)
    check_up(url)
    key = read_key()
    model = check_api(url, key)
    folder = report_folder()
    child = locust_environment(env, url, key, folder, options)
    settings = settings_of(child)
    folder.mkdir(parents=True)
    out = sys.stdout
    print(f"capacity review of the API at {url}: {model.get('model_name')} v{model.get('model_version')} "
          f"(predictor: {model.get('predictor', 'scikit-learn')})", flush=True)
    print(f"  objective: p95 of POST /predict <= {settings.slo_p95_ms:g} ms, errors <= {settings.max_error_ratio:.1%}",
          flush=True)
    print(f"  search: {plan(settings)}", flush=True)
    print(f"  report and Locust's log: {embedded.shown_path(folder)}/", flush=True)
    progress = Progress(out, settings.step_seconds, live=out.isatty())
    code = run_search(child, url, folder, progress)
    report_json = folder / "capacity-report.json"
    if not report_json.exists():
        tail = (folder / "locust.log").read_text(errors="replace")[-3000:]
        print(tail, file=sys.stderr)
        print(f"loadtest: no report was written (Locust exit {code}); Locust's log: "
              f"{embedded.shown_path(folder)}/locust.log", file=sys.stderr)
        return 1
    for line in summary(json.loads(report_json.read_text()), folder):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
