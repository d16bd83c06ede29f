"""The embedded default: the whole platform on one machine (`make up`, `make down`).

Same code as the cluster, with SQLite stores, a local MLflow (SQLite + local artifacts)
and Airflow on a SQLite metadata DB, everything under ./var:

    up [--source download|PATH|synthetic[:ROWS]]
        1. starts MLflow (unless it already answers); it comes up while step 2 runs, and Airflow's
           metadata DB is migrated meanwhile (embedded/pipeline.py)
        2. gets the data and loads every raw batch into RawData (batches already there are kept)
        3. runs preprocess_incremental and, when CleanData changed or no champion exists yet,
           train_and_register, for real, through `airflow dags test` (one Airflow process for both);
           the Streamlit UI starts meanwhile, the API once the champion's test metrics are recorded
        4. waits until the API (its model loaded) and the UI answer
        5. prints their URLs and a summary (rows per store, champion version and metrics)
       Each step says how long it took; a DAG, how long each of its tasks took.
    down      stops what `up` started
    status    what is running

Settings: the variables of .env.embedded (same names as the cluster's ConfigMaps). Credentials
(MLflow's users, the API's keys, the UI's login) are drawn on the first run into
STATE/credentials.env (mode 0600) and kept: each service gets only the ones it needs.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("READMIT_STATE_DIR", ROOT / "var")).resolve()
RUN = VAR / "run"
LOGS = VAR / "log"
BIN = Path(sys.executable).parent
ENV_FILE = ROOT / ".env.embedded"
CREDENTIALS = VAR / "credentials.env"

SERVICES = {
    # name: (command, health URL path, port variable)
    "mlflow": ([str(BIN / "readmit-tracking"), "serve"], "/health", "MLFLOW_PORT"),
    "api": ([str(BIN / "uvicorn"), "readmit_serving.api.main:app", "--host", "{API_HOST}", "--port", "{API_PORT}",
             "--no-access-log", "--no-server-header"], "/health", "API_PORT"),
    "ui": ([str(BIN / "streamlit"), "run", str(ROOT / "server3-serving" / "ui" / "app.py"), "--server.port",
            "{UI_PORT}", "--server.address", "{API_HOST}", "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none"], "/_stcore/health", "UI_PORT"),
}

# The credentials drawn on the first run: name -> fixed value (user names) or None (a random secret).
CREDENTIAL_NAMES: dict[str, str | None] = {
    "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
    "MLFLOW_AUTH_ADMIN_PASSWORD": None,
    "MLFLOW_FLASK_SERVER_SECRET_KEY": None,
    "MLFLOW_AUTH_TRAINING_USERNAME": "training",
    "MLFLOW_AUTH_TRAINING_PASSWORD": None,
    "MLFLOW_AUTH_READER_USERNAME": "reader",
    "MLFLOW_AUTH_READER_PASSWORD": None,
    "API_KEY_UI": None,
    "API_KEY_HOSPITAL": None,
    "API_KEY_LOCUST": None,
    "UI_USERNAME": "clinician",
    "UI_PASSWORD": None,
}


@functools.cache
def credentials() -> dict[str, str]:
    """STATE/credentials.env: read, completed with values for names it lacks (drawn once), kept 0600. Read
    once per run (every service and the summary ask for it)."""
    values: dict[str, str] = {}
    if CREDENTIALS.exists():
        for line in CREDENTIALS.read_text().splitlines():
            if line.strip() and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
    missing = {k: v for k, v in CREDENTIAL_NAMES.items() if not values.get(k)}
    if missing or not CREDENTIALS.exists():
        for key, fixed in missing.items():
            values[key] = fixed or secrets.token_urlsafe(32)
        CREDENTIALS.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(CREDENTIALS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("# Credentials of the embedded platform (`make up`), drawn on its first run. Keep private.\n"
                      "# Streamlit UI: UI_USERNAME / UI_PASSWORD. MLflow: MLFLOW_AUTH_READER_* (read-only),\n"
                      "# MLFLOW_AUTH_ADMIN_* (admin). The API: header X-API-Key: API_KEY_HOSPITAL.\n")
            out.writelines(f"{key}={values[key]}\n" for key in sorted(values))
    os.chmod(CREDENTIALS, 0o600)
    return values


def service_env(env: dict[str, str], name: str) -> dict[str, str]:
    """The environment of one service: only the credentials it needs."""
    creds = credentials()
    out = {k: v for k, v in env.items() if k not in CREDENTIAL_NAMES}
    if name == "mlflow":
        out |= {k: creds[k] for k in CREDENTIAL_NAMES if k.startswith(("MLFLOW_AUTH_", "MLFLOW_FLASK_"))}
    elif name == "training":  # Airflow's tasks: MLflow's training identity
        out |= {"MLFLOW_TRACKING_USERNAME": creds["MLFLOW_AUTH_TRAINING_USERNAME"],
                "MLFLOW_TRACKING_PASSWORD": creds["MLFLOW_AUTH_TRAINING_PASSWORD"]}
    elif name == "api":
        out |= {"MLFLOW_TRACKING_USERNAME": creds["MLFLOW_AUTH_READER_USERNAME"],
                "MLFLOW_TRACKING_PASSWORD": creds["MLFLOW_AUTH_READER_PASSWORD"],
                "API_KEYS": f"ui:{creds['API_KEY_UI']},hospital:{creds['API_KEY_HOSPITAL']},"
                            f"locust:{creds['API_KEY_LOCUST']}"}
    elif name == "ui":
        out |= {"UI_USERNAME": creds["UI_USERNAME"], "UI_PASSWORD": creds["UI_PASSWORD"], "API_KEY": creds["API_KEY_UI"]}
    return out


STEP_SECONDS: list[tuple[str, float]] = []
"""The steps of this run so far and how long each took."""
_current_step: list = []


def step(message: str | None) -> None:
    """Start step ``message`` (None: none), saying how long the previous one took."""
    if _current_step:
        name, started = _current_step.pop(), _current_step.pop()
        seconds = time.perf_counter() - started
        STEP_SECONDS.append((name, seconds))
        print(f"  [{name}: {seconds:.1f} s]", flush=True)
    if message is not None:
        print(f"\n==> {message}", flush=True)
        _current_step.extend([time.perf_counter(), message.split(" ", 1)[0]])


def shown_path(path: Path) -> Path:
    """``path`` as people are shown it: relative to the checkout when inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def read_env() -> dict[str, str]:
    """.env.embedded, with ${VAR} references to earlier entries and to the process environment expanded."""
    env: dict[str, str] = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        value = value.replace("${ROOT}", str(ROOT)).replace("${STATE}", str(VAR))
        env[key] = os.environ.get(key) or value
    return {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - loopback URL of our own service
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def wait_for(url: str, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if answers(url):
            return
        time.sleep(0.5)
    raise SystemExit(f"{what} did not answer at {url} within {seconds:.0f} s (see {LOGS})")


def base_url(env: dict[str, str], port_var: str) -> str:
    return f"http://{env['API_HOST']}:{env[port_var]}"


def launch(name: str, env: dict[str, str]) -> float | None:
    """Start service ``name`` unless it answers already, without waiting for it: when it was started (``ready``
    waits for it), or None when it was running."""
    command, health, port_var = SERVICES[name]
    if answers(base_url(env, port_var) + health):
        print(f"{name}: already running at {base_url(env, port_var)}")
        return None
    RUN.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    argv = [part.format(**env) for part in command]
    with open(LOGS / f"{name}.log", "ab") as log:
        process = subprocess.Popen(argv, env=service_env(env, name), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    (RUN / f"{name}.pid").write_text(str(process.pid))
    print(f"{name}: starting (log: {LOGS / (name + '.log')})", flush=True)
    return time.perf_counter()


def ready(name: str, env: dict[str, str], launched: float | None) -> None:
    """Wait until service ``name``, started at ``launched`` by ``launch``, answers (nothing when it was running)."""
    if launched is None:
        return
    _, health, port_var = SERVICES[name]
    wait_for(base_url(env, port_var) + health, 180, name)
    print(f"{name}: started at {base_url(env, port_var)}, {time.perf_counter() - launched:.1f} s after its launch",
          flush=True)


def start(name: str, env: dict[str, str]) -> None:
    ready(name, env, launch(name, env))


def run(argv: list[str], env: dict[str, str], quiet: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env=env, cwd=ROOT, text=True, capture_output=quiet, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        if quiet:
            print(done.stdout[-4000:], done.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(argv[:4])} ... (exit {done.returncode})")
    return done


_TASK_EVENT = re.compile(r"^(\S+Z) .*\[DAG TEST\] (starting|end task) task_id=(\S+) map_index=(-?\d+)")


class DagOutput:
    """What a DAG run prints on stdout: into its log, the tasks' own lines to the screen, and the time of each
    task from Airflow's "[DAG TEST] starting / end task" lines."""

    def __init__(self, dag_id: str, log_path: Path) -> None:
        self.dag_id, self.log_path = dag_id, log_path
        self.log = open(log_path, "a")  # noqa: SIM115 - closed by finish(); stderr appends to the same file
        self.started = time.perf_counter()
        self.running: dict[tuple[str, int], datetime] = {}
        self.tasks: list[tuple[str, float]] = []

    def line(self, line: str) -> None:
        self.log.write(line + "\n")
        event = _TASK_EVENT.match(line)
        if event:
            stamp, kind, task, index = event.groups()
            key, at = (task, int(index)), datetime.fromisoformat(stamp)
            if kind == "starting":
                self.running[key] = at
            elif key in self.running:
                name = task if key[1] < 0 else f"{task}[{key[1]}]"
                self.tasks.append((name, (at - self.running.pop(key)).total_seconds()))
        elif line and not line.startswith(("20", "[", " ", "\t")) and "graphviz" not in line:
            print(f"  {line}", flush=True)

    def finish(self, ok: bool, seconds: float | None = None) -> None:
        self.log.close()
        seconds = time.perf_counter() - self.started if seconds is None else seconds
        shown = shown_path(self.log_path)
        if not ok:
            raise SystemExit(f"DAG {self.dag_id} failed; see {shown}")
        print(f"  {self.dag_id}: success in {seconds:.0f} s (log: {shown})")
        if self.tasks:
            outside = seconds - sum(s for _, s in self.tasks)
            print("    tasks: " + ", ".join(f"{name} {s:.1f} s" for name, s in self.tasks)
                  + f"; Airflow around them {outside:.1f} s", flush=True)


def dag_test(dag_id: str, env: dict[str, str], conf: dict | None = None) -> None:
    """Run one DAG for real (with ``conf``, the run's parameters) in an `airflow dags test` process; Airflow's own
    log goes to var/log/airflow-DAG.log, the tasks' lines to the screen as they come."""
    log_path = LOGS / f"airflow-{dag_id}.log"
    log_path.write_text("")
    output = DagOutput(dag_id, log_path)
    argv = [str(BIN / "airflow"), "dags", "test", dag_id, *(["--conf", json.dumps(conf)] if conf else [])]
    with open(log_path, "a") as errors:
        process = subprocess.Popen(argv, env=service_env(env, "training"), cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        for line in process.stdout:
            output.line(line.rstrip("\n"))
        process.wait()
    output.finish(process.returncode == 0)


class Pipeline:
    """embedded/pipeline.py: Airflow's part of `up` in one process. Started with step 1 (it migrates Airflow's
    metadata DB and imports the tasks' modules meanwhile), told to go once the raw data is in and MLflow answers."""

    def __init__(self, env: dict[str, str]) -> None:
        self.errors = open(LOGS / "airflow-pipeline.log", "w")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(  # noqa: S603 - our own script, with our interpreter
            [sys.executable, str(ROOT / "embedded" / "pipeline.py"), str(LOGS)], env=service_env(env, "training"),
            cwd=ROOT, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors)
        self.status = ""

    def _lines(self):
        for line in self.process.stdout:
            yield line.rstrip("\n")

    def migrated(self) -> None:
        """Wait until Airflow's metadata DB is migrated."""
        for line in self._lines():
            if line.startswith("@@migrated "):
                print(f"airflow db migrate: done in {float(line.split()[1]):.1f} s (beside steps 1-2)")
                return
            if line.startswith("@@failed"):
                break
        log = LOGS / "airflow-db-migrate.log"
        print(log.read_text()[-4000:] if log.exists() else "")
        raise SystemExit(f"failed: airflow db migrate (see {log} and {LOGS / 'airflow-pipeline.log'})")

    def run_dags(self, on_line) -> None:
        """Go: preprocess_incremental, then train_and_register if needed; ``on_line(line)`` sees every line."""
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        output: DagOutput | None = None
        for line in self._lines():
            on_line(line)
            if line.startswith("@@dag "):
                _, dag_id, path = line.split(" ", 2)
                output = DagOutput(dag_id, Path(path))
            elif line.startswith("@@done "):
                _, dag_id, result, seconds = line.split()
                output.finish(result == "success", float(seconds))
                output = None
            elif line.startswith("@@skip "):
                print("  CleanData unchanged and a champion exists: train_and_register not needed")
            elif line.startswith("@@status "):
                self.status = json.loads(line.split(" ", 1)[1])
            elif output is not None:
                output.line(line)
        if self.process.wait() != 0:
            raise SystemExit(f"failed: Airflow (exit {self.process.returncode}); see {LOGS / 'airflow-pipeline.log'}")

    def stop(self) -> None:
        """End the process if it still runs (an earlier step failed)."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # it waits for "go" (after the migration): a closed stdin ends it
                self.process.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                self.process.terminate()
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self.errors.close()


def champion(env: dict[str, str]) -> dict | None:
    creds = credentials()
    user = f"{creds['MLFLOW_AUTH_READER_USERNAME']}:{creds['MLFLOW_AUTH_READER_PASSWORD']}"
    request = urllib.request.Request(
        f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/registered-models/alias?"
        f"name={env['MODEL_NAME']}&alias={env['MODEL_ALIAS']}",
        headers={"Authorization": "Basic " + base64.b64encode(user.encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own MLflow on loopback
            return json.load(response)["model_version"]
    except (urllib.error.URLError, OSError, KeyError):
        return None


def up(source: str) -> None:
    started = time.perf_counter()
    env = read_env()
    env["DATA_SOURCE"] = source
    for folder in (VAR, LOGS, RUN, Path(env["AIRFLOW_HOME"])):
        folder.mkdir(parents=True, exist_ok=True)
    credentials()

    step("1/5 MLflow tracking server (SQLite backend, local artifacts)")
    mlflow_started = launch("mlflow", env)
    pipeline = Pipeline(env)
    print(f"airflow: migrating its metadata DB meanwhile (log: {LOGS / 'airflow-db-migrate.log'})")
    launched: dict[str, float | None] = {}

    def on_line(line: str) -> None:  # the API reads the champion's test metrics once, when it loads the model
        if line.startswith("champion test metrics:") and "api" not in launched:
            launched["api"] = launch("api", env)

    try:
        step(f"2/5 raw data from {source} into RawData ({env['RAW_DB_URL']})")
        loading = time.perf_counter()
        run([str(BIN / "readmit-data"), "load", "--batch", "all"], env)
        print(f"raw load: {time.perf_counter() - loading:.1f} s")
        ready("mlflow", env, mlflow_started)
        pipeline.migrated()

        step("3/5 Airflow: preprocess_incremental, then train_and_register")
        launched["ui"] = launch("ui", env)  # needs nothing from the DAGs: it starts while they run
        pipeline.run_dags(on_line)
    except SystemExit as failed:
        running = [name for name in ("mlflow", "ui", "api") if (RUN / f"{name}.pid").exists()]
        if running:  # started before the failure (the UI and the API no longer wait for the DAGs' end)
            raise SystemExit(f"{failed.code}\n{', '.join(running)} keep running: `make down` stops them, "
                             "`make up` starts again from where this run stopped") from None
        raise
    finally:
        pipeline.stop()
    after = pipeline.status

    step("4/5 inference API and Streamlit UI")
    if "api" not in launched:
        launched["api"] = launch("api", env)
    ready("api", env, launched["api"])
    waiting = time.perf_counter()
    wait_for(base_url(env, "API_PORT") + "/ready", 180, "API readiness")
    print(f"api: ready (model loaded) {time.perf_counter() - waiting:.1f} s later")
    ready("ui", env, launched["ui"])

    step("5/5 summary")
    print(after.strip())
    request = urllib.request.Request(base_url(env, "API_PORT") + "/model",
                                     headers={"X-API-Key": credentials()["API_KEY_HOSPITAL"]})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own API on loopback
        model = json.load(response)
    metrics = model["metrics"]
    print(f"champion: {model['model_name']} v{model['model_version']} (run {model['run_id']})")
    print("  validation: " + ", ".join(f"{k[4:]} {metrics[k]:.4f}" for k in
                                       ("val_roc_auc", "val_pr_auc", "val_brier") if k in metrics))
    if "test_roc_auc" in metrics:
        print(f"  test: roc_auc {metrics['test_roc_auc']:.4f}, pr_auc {metrics.get('test_pr_auc', float('nan')):.4f}")
    print("\nURLs:")
    print(f"  Streamlit UI   {base_url(env, 'UI_PORT')}")
    print(f"  API docs       {base_url(env, 'API_PORT')}/docs")
    print(f"  API metrics    {base_url(env, 'API_PORT')}/metrics")
    print(f"  MLflow         {base_url(env, 'MLFLOW_PORT')}")
    print(f"\nCredentials (drawn on the first run, mode 0600): {shown_path(CREDENTIALS)}")
    print("  Streamlit UI: UI_USERNAME / UI_PASSWORD; MLflow: MLFLOW_AUTH_READER_USERNAME / _PASSWORD (read-only);")
    print("  API: header X-API-Key with API_KEY_HOSPITAL (e.g. in /docs, Authorize)")
    step(None)
    print("\nseconds per step: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in STEP_SECONDS))
    print(f"up in {time.perf_counter() - started:.0f} s; `make down` stops the services.")


def _pids() -> dict[str, int]:
    pids = {}
    for pid_file in sorted(RUN.glob("*.pid")) if RUN.exists() else []:
        try:
            pids[pid_file.stem] = int(pid_file.read_text())
        except ValueError:
            pid_file.unlink()
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a service's process group; one that ended meanwhile is fine."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def down() -> None:
    pids = _pids()
    if not pids:
        print("down: nothing is running")
    for name, pid in pids.items():
        if _alive(pid):
            _signal_group(pid, signal.SIGTERM)
            for _ in range(150):  # MLflow's job runner takes 10-15 s to stop
                if not _alive(pid):
                    break
                time.sleep(0.2)
            else:
                _signal_group(pid, signal.SIGKILL)
            print(f"{name}: stopped")
        (RUN / f"{name}.pid").unlink(missing_ok=True)


def status() -> None:
    env = read_env()
    for name, (_, health, port_var) in SERVICES.items():
        state = "up" if answers(base_url(env, port_var) + health) else "down"
        print(f"{name:7} {state:5} {base_url(env, port_var)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--source", default="download",
                      help='"download" (UCI, checksum-verified), a path to diabetic_data.csv, or "synthetic[:ROWS]"')
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args()
    if args.command == "up":
        up("synthetic:30000" if args.source == "synthetic" else args.source)
    elif args.command == "down":
        down()
    else:
        status()


if __name__ == "__main__":
    main()
