"""Serving throughput and latency: this API vs a no-op FastAPI floor vs its peers, for each promotable candidate.

For each candidate the gate can promote (HistGradientBoosting, the calibrated random forest; `--candidate`, by
default both, one after the other) the champion is trained and registered by the platform's own path (on the real
file when present, else synthetic data), then, in one run on one machine:

- single encounters (wrk, one encounter per request, at each `--connections`, 8 and 32 by default): the no-op
  FastAPI floor (bench/noop_app.py, same uvicorn settings), this API's /predict, and /predict?explain=true (at the
  first connection count); then the peers, serving the same fitted pipeline, each in its own virtualenv
  (bench/peers.py): Seldon's MLServer 1.7.1 with its scikit-learn runtime, adaptive batching off (max_batch_size
  1) and on (32 requests or 5 ms), and `mlflow models serve` of the registered version;
- batches: POST /predict/batch of 1000 encounters (wrk, `--batch-connections` concurrent clients) against the
  floor's /predict/batch (same body, parsed, constant answers) and the peers given the same 1000 encounters;
- the goals of issue 17, each with its baseline from the same run and PASS/MISS (a miss never fails the
  script): /predict >= 40 % of the floor's req/s; p99 <= 25 ms at 32 connections, every answer 2xx;
  /predict/batch >= 100,000 encounters/s; this API >= 30x the faster peer.

The API runs with its defaults; its settings set in the environment reach it (e.g. MAX_IN_FLIGHT=64 python
bench/serving.py). req/s counts 2xx answers only (beyond MAX_IN_FLIGHT requests at once the API sheds load with
fast 503s; those are counted apart as non-2xx, and fail the p99 goal). Latency percentiles are wrk's, of every
answer. "CPU ms/req" is the server's CPU time (its process and children) per 2xx
answer: where the time goes when two servers reach different rates on the same 2 cores.

    python bench/serving.py [--candidate both|hist_gradient_boosting|random_forest] [--seconds 10]
                            [--connections 8,32] [--batch-connections 2] [--no-peers]

The peers' virtualenvs are built on first use into READMIT_BENCH_CACHE (default ~/.cache/readmit-bench) and
reused; everything else lives in a temporary work folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import peers  # noqa: E402

from tests.support import free_port, mlflow_server, started  # noqa: E402

MODEL = "diabetes-readmission-bench"
CANDIDATES = ("hist_gradient_boosting", "random_forest")
SHORT = {"hist_gradient_boosting": "HGB", "random_forest": "RF"}
BATCH_ROWS = 1000
WARMUP_SECONDS = 2

FLOOR, API, EXPLAINED = "no-op FastAPI (floor)", "this API /predict", "this API /predict?explain=true"
API_BATCH = "this API /predict/batch"
MLSERVER_OFF, MLSERVER_ON, MLFLOW = ("MLServer, batching off", "MLServer, batching on",
                                     "mlflow models serve")
PEERS = (MLSERVER_OFF, MLSERVER_ON, MLFLOW)
MLSERVER_BATCHING = {MLSERVER_OFF: (1, 0.0), MLSERVER_ON: (32, 0.005)}
"""Adaptive batching of each MLServer configuration: (max_batch_size, max_batch_time in seconds)."""

FLOOR_SHARE_GOAL = 0.40
P99_GOAL_MS, P99_GOAL_CONNECTIONS = 25.0, 32
BATCH_GOAL = 100_000
PEER_GOAL = 30.0


# --- the champion ----------------------------------------------------------------------------------------------

def _data_settings(root: Path, tracking_uri: str, model: str):
    from readmit_data.settings import DataSettings

    return DataSettings(MLFLOW_TRACKING_URI=tracking_uri, MODEL_NAME=model, MLFLOW_EXPERIMENT_NAME=model,
                        RAW_DB_URL=f"sqlite:///{root}/raw.db", CLEAN_DB_URL=f"sqlite:///{root}/clean.db")


def load_data(root: Path, tracking_uri: str) -> list[dict]:
    """RawData and CleanData (SQLite under ``root``) through the platform's loaders; returns encounters to send
    (the contract's request bodies; none ending in death or hospice, which the API answers unscored)."""
    from readmit_contract import synthetic, validate
    from readmit_contract.dataset import read_raw_csv
    from readmit_contract.encounter import json_encounters
    from readmit_data.loading import load
    from readmit_data.preprocessing import preprocess_pending
    from readmit_data.stores import engines

    real = Path(os.environ.get("READMIT_REAL_DATA", REPO.parent / "shared" / "data" / "diabetic_data.csv"))
    frame = read_raw_csv(real) if real.exists() else synthetic.generate(30_000, seed=0)
    print(f"model data: {'real file' if real.exists() else 'synthetic'} ({len(frame):,} rows)", flush=True)
    settings = _data_settings(root, tracking_uri, MODEL)
    began = time.perf_counter()
    with engines(settings.raw_db_url, settings.clean_db_url) as (raw, clean_store):
        load(raw, frame, source="bench", batch="all", progress=False)
        preprocess_pending(raw, clean_store)
    print(f"RawData and CleanData loaded in {time.perf_counter() - began:.0f} s", flush=True)
    rows = validate(frame.head(2000)).valid
    rows = rows[~rows["discharge_disposition_id"].isin([11, 13, 14, 19, 20, 21])]
    return json_encounters(rows)


def train(root: Path, tracking_uri: str, candidate: str, model: str = MODEL):
    """One ``candidate`` trained on the loaded CleanData, registered as ``model`` and made its champion."""
    from readmit_data.registry import register_and_promote
    from readmit_data.stores import engines
    from readmit_data.training import take_snapshot, train_candidate

    settings = _data_settings(root, tracking_uri, model)
    with engines(settings.raw_db_url, settings.clean_db_url) as (_, clean_store):
        result = train_candidate(settings, clean_store, candidate, take_snapshot(clean_store))
        return register_and_promote(settings, clean_store, result)


def train_champion(root: Path, tracking_uri: str, candidate: str = "hist_gradient_boosting",
                   model: str = MODEL) -> list[dict]:
    """CleanData through the platform's loaders, one candidate trained, registered, made champion of ``model``."""
    rows = load_data(root, tracking_uri)
    train(root, tracking_uri, candidate, model)
    return rows


def export_pipeline(tracking_uri: str, model: str, path: Path) -> Path:
    """The champion's fitted Pipeline, loaded from the registry as the platform logged it, saved with joblib
    (the format MLServer's scikit-learn runtime loads)."""
    import joblib
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(tracking_uri)
    joblib.dump(mlflow.sklearn.load_model(f"models:/{model}@champion"), path)
    return path


# --- load ------------------------------------------------------------------------------------------------------

def _server_cpu(pid: int | None) -> dict[int, float] | None:
    """CPU time (user + system seconds) of each process of a server: its own and every process under it
    (MLServer's inference worker, the uvicorn that `mlflow models serve` starts)."""
    if pid is None:
        return None
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    found = {}
    for process in processes:
        try:
            times = process.cpu_times()
            found[process.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return found


def _cpu_spent(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
    """CPU seconds the server's processes spent between two ``_server_cpu`` snapshots (a process that started
    in between counts from zero; one that ended in between is not counted)."""
    if before is None or after is None:
        return None
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk(url: str, body: Any, seconds: int, connections: int, workdir: Path,
        headers: dict[str, str] | None = None, pid: int | None = None) -> dict[str, float]:
    """wrk (2 threads, ``connections`` connections, closed loop) POSTing ``body`` as JSON for ``seconds``.

    Returns rps (wrk's, every answer), ok_rps (2xx answers per second), p50_ms, p99_ms, non2xx, errors (socket
    errors and timeouts), requests, and cpu_ms (the server's CPU time per 2xx answer, when ``pid`` is given)."""
    body_file = workdir / "wrk-body.json"  # read by the script: a 1 MB batch does not fit a command line
    body_file.write_text(body if isinstance(body, str) else json.dumps(body, separators=(",", ":")))
    script = workdir / "post.lua"  # headers (the API key) go in the script, not on wrk's command line
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      + "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in (headers or {}).items())
                      + f"local f = assert(io.open({json.dumps(str(body_file))}, \"rb\"))\n"
                      + "wrk.body = f:read(\"*a\")\nf:close()\n")
    cpu_before = _server_cpu(pid)
    command = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s", "--latency",
               "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout  # noqa: S603, S607 - wrk, checked
    if f"{connections} connections" not in out:
        raise RuntimeError(f"wrk did not run as asked ({' '.join(command)}):\n{out}")
    cpu_spent = _cpu_spent(cpu_before, _server_cpu(pid))
    count, duration, unit = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out).groups()
    requests, duration_s = int(count), float(duration) * _UNITS_MS[unit] / 1e3
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        found = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s|m|h)", out)
        return float(found.group(1)) * _UNITS_MS[found.group(2)] if found else math.nan

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx_count = int(non2xx.group(1)) if non2xx else 0
    ok = requests - non2xx_count
    cpu = None if cpu_spent is None or ok <= 0 else cpu_spent / ok * 1e3
    return {"rps": rps, "ok_rps": ok / duration_s if duration_s else 0.0, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non2xx": non2xx_count, "errors": sum(map(int, socket.groups())) if socket else 0,
            "requests": requests, "cpu_ms": cpu}


def wait_until_idle(pid: int, timeout: float = 600.0, busy_share: float = 0.1) -> float:
    """Wait until a server's processes use less than ``busy_share`` of a core for 2 s in a row: the API does
    work in the background after it is ready (it compiles the served model's trees to C, with gcc, while it
    serves), and the benchmark measures it serving, not building. Returns the seconds waited."""
    began, quiet = time.perf_counter(), 0
    while time.perf_counter() - began < timeout and quiet < 2:
        before = _server_cpu(pid)
        time.sleep(1.0)
        spent = _cpu_spent(before, _server_cpu(pid))
        quiet = quiet + 1 if spent is not None and spent < busy_share else 0
    return time.perf_counter() - began


INFERENCE_METRICS = ("readmit_api_inference_batch_rows_count", "readmit_api_inference_batch_rows_sum",
                     "readmit_api_inference_duration_seconds_sum")


def _inference_counters(metrics_url: str) -> dict[str, float]:
    text = httpx.get(metrics_url, timeout=10).text
    return {name: _metric_sum(text, name) or 0.0 for name in INFERENCE_METRICS}


def measure(url: str, body: Any, seconds: int, connections: int, workdir: Path,
            headers: dict[str, str] | None = None, pid: int | None = None,
            metrics_url: str | None = None) -> dict[str, float]:
    """A warm-up run, then the measured one. ``metrics_url`` (this API's /metrics): also what its model calls
    were meanwhile: how many, encounters per call, and their summed duration over the run's (above 1 when calls
    overlap: small ones run on the event loop while the inference thread scores a batch slice)."""
    wrk(url, body, WARMUP_SECONDS, connections, workdir, headers)  # warm-up: connections, caches, JIT of numpy paths
    before = _inference_counters(metrics_url) if metrics_url else None
    result = wrk(url, body, seconds, connections, workdir, headers, pid)
    if before is not None:
        after = _inference_counters(metrics_url)
        calls, rows, busy = (after[n] - before[n] for n in INFERENCE_METRICS)
        result |= {"calls": calls, "rows_per_call": rows / calls if calls else math.nan,
                   "ms_per_call": busy / calls * 1e3 if calls else math.nan, "busy_share": busy / seconds}
    return result


# --- one candidate ---------------------------------------------------------------------------------------------

@dataclass
class CandidateRun:
    candidate: str
    version: str
    roc_auc: float
    connections: list[int]
    single: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    batch: dict[str, dict[str, float]] = field(default_factory=dict)
    peer_difference: dict[str, float] = field(default_factory=dict)
    """Largest |probability difference| between a peer's and this API's answers for the same 20 encounters."""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _metric_sum(text: str, name: str, labels: str = "") -> float | None:
    found = re.findall(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)", text, re.M)
    values = [float(v) for lab, v in found if all(part in lab for part in labels.split(",") if part)]
    return sum(values) if values else None


def bench_candidate(candidate: str, args: argparse.Namespace, root: Path, tracking: str, rows: list[dict],
                    envs: dict[str, peers.PeerEnv]) -> CandidateRun:
    began = time.perf_counter()
    work = root / candidate
    work.mkdir()
    model = f"{MODEL}-{candidate.replace('_', '-')}"
    print(f"[{SHORT[candidate]}] training {candidate} and registering it as {model}@champion", flush=True)
    promotion = train(root, tracking, candidate, model)
    print(f"[{SHORT[candidate]}] v{promotion.version} trained and promoted in {time.perf_counter() - began:.0f} s",
          flush=True)
    run = CandidateRun(candidate, promotion.version, promotion.candidate_roc_auc, args.connections)
    encounter, sample = rows[0], rows[:20]
    batch = {"encounters": (rows * (BATCH_ROWS // len(rows) + 1))[:BATCH_ROWS]}

    key = secrets.token_urlsafe(24)  # this run's API key (the API does not start without API_KEYS)
    auth = {"X-API-Key": key}
    env = {"MLFLOW_TRACKING_URI": tracking, "MODEL_NAME": model, "API_KEYS": f"bench:{key}",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    api, noop = free_port(), free_port()
    uvicorn = [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--no-access-log", "--workers", "1"]
    with started([*uvicorn, "--port", str(api), "readmit_serving.api.main:app"], env, work / "api.log",
                 ready_url=f"http://127.0.0.1:{api}/ready", timeout=180) as api_process, \
         started([*uvicorn, "--port", str(noop), "--app-dir", str(REPO / "bench"), "noop_app:app"], env,
                 work / "noop.log", ready_url=f"http://127.0.0.1:{noop}/openapi.json") as noop_process:
        api_url, noop_url = f"http://127.0.0.1:{api}", f"http://127.0.0.1:{noop}"
        waited = wait_until_idle(api_process.pid)
        predictor = re.search(r'^readmit_api_model_info\{[^}]*predictor="([^"]+)"', httpx.get(
            f"{api_url}/metrics", timeout=10).text, re.M)
        run.notes.append(f"this API was idle {waited:.0f} s after /ready"
                         + (f"; its trees: {predictor.group(1)}" if predictor else "")
                         + f"; the machine's load average then: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        answered = httpx.post(f"{api_url}/predict/batch", json={"encounters": sample}, headers=auth, timeout=60)
        answered.raise_for_status()
        reference = [p["probability"] for p in answered.json()["predictions"]]
        assert httpx.post(f"{noop_url}/predict", json=encounter, timeout=30).is_success

        for connections in args.connections:  # floor and API alternate: a drift of the machine hits both
            print(f"[{SHORT[candidate]}] wrk, {connections} connections: floor, this API", flush=True)
            run.single[FLOOR, connections] = measure(f"{noop_url}/predict", encounter, args.seconds, connections,
                                                     work, pid=noop_process.pid)
            run.single[API, connections] = measure(f"{api_url}/predict", encounter, args.seconds, connections,
                                                   work, auth, pid=api_process.pid, metrics_url=f"{api_url}/metrics")
        explained = httpx.post(f"{api_url}/predict?explain=true", json=encounter, headers=auth, timeout=30)
        if explained.is_success and explained.json()["explanation"]["factors"]:
            print(f"[{SHORT[candidate]}] wrk, {args.connections[0]} connections: /predict?explain=true", flush=True)
            run.single[EXPLAINED, args.connections[0]] = measure(
                f"{api_url}/predict?explain=true", encounter, args.seconds, args.connections[0], work, auth,
                pid=api_process.pid, metrics_url=f"{api_url}/metrics")
        else:
            run.notes.append(f"/predict?explain=true answered {explained.status_code}: not measured")

        # Batches with wrk, not a Python client: wrk sends the 1000-encounter body (~1 MB, serialised once) from
        # C, so nearly all of the 2 cores' time goes to the server; a Python client would spend ~10-20 ms of
        # CPU per request encoding and decoding 1000 encounters, on the same cores, and measure itself.
        # Two clients by default (`--batch-connections`): the server reads and parses one body on its event loop
        # while its inference thread scores the other, so neither waits on the client; more clients only queue
        # behind the one inference thread (and, past REQUEST_DEADLINE_MS, are shed with 503).
        print(f"[{SHORT[candidate]}] wrk, {args.batch_connections} connections, {BATCH_ROWS} encounters per "
              "request: floor, this API", flush=True)
        assert httpx.post(f"{noop_url}/predict/batch", json=batch, timeout=60).is_success
        httpx.post(f"{api_url}/predict/batch", json=batch, headers=auth, timeout=60).raise_for_status()
        run.batch[FLOOR] = measure(f"{noop_url}/predict/batch", batch, args.seconds, args.batch_connections, work,
                                   pid=noop_process.pid)
        run.batch[API_BATCH] = measure(f"{api_url}/predict/batch", batch, args.seconds, args.batch_connections, work,
                                       auth, pid=api_process.pid, metrics_url=f"{api_url}/metrics")
        scraped = httpx.get(f"{api_url}/metrics", timeout=10).text
        for route in ("/predict", "/predict/batch"):
            shed = {reason: _metric_sum(scraped, "readmit_api_shed_total", f'route="{route}",reason="{reason}"')
                    for reason in ("in_flight", "batch_queue", "deadline")}
            if any(shed.values()):
                run.notes.append(f"this API answered {route} 503 (shed) over this candidate's runs: "
                                 + ", ".join(f"{int(v):,} {k}" for k, v in shed.items() if v))

    if not args.no_peers:
        bench_peers(run, args, work, tracking, model, encounter, sample, batch, reference, envs)
    run.seconds = time.perf_counter() - began
    return run


def bench_peers(run: CandidateRun, args: argparse.Namespace, work: Path, tracking: str, model: str,
                encounter: dict, sample: list[dict], batch: dict, reference: list[float],
                envs: dict[str, peers.PeerEnv]) -> None:
    """Each peer started alone (nothing else serves meanwhile), checked to give this API's probabilities for
    the same encounters, then measured; a peer that fails is reported and the others still run."""
    pipeline = export_pipeline(tracking, model, work / "model.joblib")
    for number, name in enumerate(PEERS, start=1):
        log = work / f"peer-{number}-{name.split(',')[0].replace(' ', '-')}.log"
        try:
            bench_peer(name, run, args, work, log, tracking, model, pipeline, encounter, sample, batch, reference,
                       envs)
        except (RuntimeError, TimeoutError, OSError, ValueError, KeyError, httpx.HTTPError,
                subprocess.CalledProcessError) as exc:
            tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-12:]) if log.exists() else ""
            run.notes.append(f"{name}: not measured: {type(exc).__name__}: {str(exc)[:600]}"
                             + (f"\n  its log ends:\n    {tail}" if tail else ""))
            print(f"[{SHORT[run.candidate]}] {name} failed: {type(exc).__name__}", flush=True)


def bench_peer(name: str, run: CandidateRun, args: argparse.Namespace, work: Path, log: Path, tracking: str,
               model: str, pipeline: Path, encounter: dict, sample: list[dict], batch: dict,
               reference: list[float], envs: dict[str, peers.PeerEnv]) -> None:
    short = SHORT[run.candidate]
    with ExitStack() as stack:
        if name == MLFLOW:
            # --env-manager local, in its own virtualenv: MLflow's own managers (virtualenv, uv, conda) would
            # pip-install the model's requirements, which pin readmit-contract, this checkout's package, found on
            # no index; the peer's virtualenv holds the same pins and takes the contract from PYTHONPATH
            port = free_port()
            url = f"http://127.0.0.1:{port}/invocations"
            process = stack.enter_context(started(
                [str(envs[MLFLOW].bin("mlflow")), "models", "serve", "-m", f"models:/{model}@champion",
                 "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                {**peers.peer_environment(envs[MLFLOW]), "MLFLOW_TRACKING_URI": tracking}, log,
                ready_url=f"http://127.0.0.1:{port}/ping", timeout=240))

            def body(records: list[dict]) -> dict:
                return {"dataframe_records": records}

            def probabilities(answer: dict) -> list[float]:
                return [float(p[1]) for p in answer["predictions"]]
        else:
            size, wait = MLSERVER_BATCHING[name]
            port = free_port()
            folder = peers.mlserver_repository(
                work / f"mlserver-{size}", pipeline, max_batch_size=size, max_batch_time=wait, http_port=port,
                grpc_port=free_port(), metrics_port=free_port())
            url = f"http://127.0.0.1:{port}/v2/models/{peers.MLSERVER_MODEL}/infer"
            process = stack.enter_context(started(
                [str(envs[name].bin("mlserver")), "start", str(folder)], peers.peer_environment(envs[name]), log,
                ready_url=f"http://127.0.0.1:{port}/v2/models/{peers.MLSERVER_MODEL}/ready", timeout=240))
            body, probabilities = peers.v2_request, peers.v2_probabilities
        answer = httpx.post(url, json=body(sample), timeout=120)
        if not answer.is_success:
            raise RuntimeError(f"{name} answered {answer.status_code}: {answer.text[:2000]}")
        run.peer_difference[name] = max(abs(a - b) for a, b in zip(probabilities(answer.json()), reference,
                                                                  strict=True))
        for connections in args.connections:
            print(f"[{short}] wrk, {connections} connections: {name}", flush=True)
            run.single[name, connections] = measure(url, body([encounter]), args.seconds, connections, work,
                                                    pid=process.pid)
        if name != MLSERVER_ON:  # a 1000-row request is never merged with others: the same as batching off
            print(f"[{short}] wrk, {args.batch_connections} connections, {BATCH_ROWS} encounters per request: "
                  f"{name}", flush=True)
            run.batch[name] = measure(url, body(batch["encounters"]), args.seconds, args.batch_connections,
                                      work, pid=process.pid)


# --- report ----------------------------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns aligned: the first to the left, the others (figures) to the right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))))


def _ms(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _cpu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


@dataclass
class Goal:
    figure: str
    value: str
    baseline: str
    ratio: str
    goal: str
    ok: bool | None


def goals(run: CandidateRun) -> list[Goal]:
    found: list[Goal] = []
    for c in run.connections:
        api, floor = run.single[API, c], run.single[FLOOR, c]
        share = api["ok_rps"] / floor["ok_rps"]
        found.append(Goal(f"/predict req/s, {c} conns", f"{api['ok_rps']:,.0f}", f"floor {floor['ok_rps']:,.0f}",
                          f"{share:.2f}", f">= {FLOOR_SHARE_GOAL:.2f} of floor", share >= FLOOR_SHARE_GOAL))
    c = P99_GOAL_CONNECTIONS
    if (API, c) in run.single:
        api, floor = run.single[API, c], run.single[FLOOR, c]
        clean = api["non2xx"] == 0 and api["errors"] == 0
        found.append(Goal(f"/predict p99 ms, {c} conns",
                          f"{api['p99_ms']:.1f}" + ("" if clean else f" ({api['non2xx'] + api['errors']:,} non-2xx)"),
                          f"floor {floor['p99_ms']:.1f}", f"{api['p99_ms'] / floor['p99_ms']:.1f}x",
                          f"<= {P99_GOAL_MS:.0f} ms, all 2xx", api["p99_ms"] <= P99_GOAL_MS and clean))
    else:
        found.append(Goal(f"/predict p99 ms, {c} conns", "not measured", "", "", f"<= {P99_GOAL_MS:.0f} ms", None))
    api_batch, floor_batch = run.batch[API_BATCH]["ok_rps"] * BATCH_ROWS, run.batch[FLOOR]["ok_rps"] * BATCH_ROWS
    found.append(Goal("/predict/batch encounters/s", f"{api_batch:,.0f}", f"floor {floor_batch:,.0f}",
                      f"{api_batch / floor_batch:.2f}", f">= {BATCH_GOAL:,}", api_batch >= BATCH_GOAL))
    for c in run.connections:
        measured = {p: run.single[p, c]["ok_rps"] for p in PEERS if (p, c) in run.single}
        if not measured:
            found.append(Goal(f"this API vs faster peer, {c} conns", "no peer measured", "", "",
                              f">= {PEER_GOAL:.0f}x", None))
            continue
        best = max(measured, key=measured.get)
        api = run.single[API, c]["ok_rps"]
        ratio = api / measured[best] if measured[best] else math.inf
        found.append(Goal(f"this API vs faster peer, {c} conns", f"{api:,.0f}", f"{best} {measured[best]:,.1f}",
                          f"{ratio:.1f}x", f">= {PEER_GOAL:.0f}x", ratio >= PEER_GOAL))
    return found


def report(run: CandidateRun, args: argparse.Namespace) -> None:
    print(f"\n== {run.candidate}: champion v{run.version}, validation ROC-AUC {run.roc_auc:.3f} "
          f"({run.seconds:.0f} s for this candidate)")
    print(f"single encounter per request (wrk, {args.seconds} s each after {WARMUP_SECONDS} s of warm-up):")
    rows = []
    for (name, c), r in run.single.items():
        floor = run.single.get((FLOOR, c))
        rows.append([name, str(c), f"{r['ok_rps']:,.1f}", _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                     f"{r['non2xx'] + r['errors']:,}", _cpu(r["cpu_ms"]),
                     "" if name == FLOOR or not floor else f"{r['ok_rps'] / floor['ok_rps']:.3f}"])
    table(["server", "conns", "2xx req/s", "p50 ms", "p99 ms", "non-2xx", "CPU ms/req", "of floor"], rows)
    print(f"{BATCH_ROWS} encounters per request (wrk, {args.batch_connections} connections):")
    rows = []
    for name, r in run.batch.items():
        rows.append([name, f"{r['ok_rps'] * BATCH_ROWS:,.0f}", _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                     f"{r['non2xx'] + r['errors']:,}",
                     "n/a" if r["cpu_ms"] is None else f"{r['cpu_ms'] / BATCH_ROWS * 1e3:.1f}",
                     "" if name == FLOOR else f"{r['ok_rps'] / run.batch[FLOOR]['ok_rps']:.3f}"])
    table(["server", "encounters/s", "p50 ms", "p99 ms", "non-2xx", "CPU us/enc", "of floor"], rows)
    inference = [(f"{name}, {c} conns", r) for (name, c), r in run.single.items() if "calls" in r]
    inference += [(f"{name}, {args.batch_connections} conns", r) for name, r in run.batch.items() if "calls" in r]
    if inference:
        print("this API's model calls during each run (from its /metrics):")
        table(["run", "model calls/s", "encounters/call", "ms/call", "model time/wall"],
              [[name, f"{r['calls'] / args.seconds:,.0f}", f"{r['rows_per_call']:.1f}", _ms(r["ms_per_call"]),
                f"{r['busy_share']:.0%}"] for name, r in inference])
    if (EXPLAINED, run.connections[0]) in run.single:
        plain, why = run.single[API, run.connections[0]], run.single[EXPLAINED, run.connections[0]]
        print(f"/predict?explain=true vs /predict ({run.connections[0]} conns): "
              f"req/s x{why['ok_rps'] / plain['ok_rps']:.2f}, p50 x{why['p50_ms'] / plain['p50_ms']:.1f}, "
              f"p99 x{why['p99_ms'] / plain['p99_ms']:.1f}")
    if run.peer_difference:
        print("peers' probabilities vs this API's, same 20 encounters: "
              + ", ".join(f"{name} max |diff| {d:.1e}" for name, d in run.peer_difference.items()))
    for note in run.notes:
        print(note)
    print("goals (issue 17; baseline from the same run):")
    table(["figure", "value", "baseline", "ratio", "goal", "verdict"],
          [[g.figure, g.value, g.baseline, g.ratio, g.goal, verdict(g.ok)] for g in goals(run)])


def summary(runs: list[CandidateRun]) -> None:
    print("\n== goals, every candidate (value / baseline from the same run = ratio: verdict)")
    by_candidate = [goals(r) for r in runs]
    rows = []
    for i, g in enumerate(by_candidate[0]):
        rows.append([g.figure, g.goal, *(f"{gs[i].value} / {gs[i].baseline} = {gs[i].ratio}: {verdict(gs[i].ok)}"
                                         for gs in by_candidate)])
    table(["figure", "goal", *(f"{r.candidate} v{r.version}" for r in runs)], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", choices=[*CANDIDATES, "both"], default="both")
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run (after a 2 s warm-up)")
    parser.add_argument("--connections", default="8,32",
                        help="comma-separated connection counts of the single-encounter runs (default 8,32)")
    parser.add_argument("--batch-connections", type=int, default=2,
                        help="concurrent clients of the /predict/batch runs (default 2)")
    parser.add_argument("--no-peers", action="store_true", help="skip MLServer and mlflow models serve")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # here and in the servers' logs
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install -y wrk)")
    candidates = list(CANDIDATES) if args.candidate == "both" else [args.candidate]
    envs: dict[str, peers.PeerEnv] = {}
    if not args.no_peers:  # before training: a peer that cannot be installed stops the run at once
        mlserver, mlflow_peer = peers.ensure(peers.mlserver_env()), peers.ensure(peers.mlflow_env())
        envs = {MLSERVER_OFF: mlserver, MLSERVER_ON: mlserver, MLFLOW: mlflow_peer}
        found = peers.versions(mlserver, "mlserver", "mlserver-sklearn", "uvloop", "scikit-learn", "pandas")
        print("peers: " + ", ".join(f"{k} {v}" for k, v in found.items())
              + f"; mlflow {peers.versions(mlflow_peer, 'mlflow')['mlflow']} (own virtualenvs in {peers.cache_dir()})")
    root = Path(tempfile.mkdtemp(prefix="readmit-bench-"))
    runs: list[CandidateRun] = []
    try:
        with mlflow_server(root, f"sqlite:///{root}/mlflow.db", str(root / "artifacts")) as tracking:
            rows = load_data(root, tracking)
            for candidate in candidates:
                runs.append(bench_candidate(candidate, args, root, tracking, rows, envs))
                report(runs[-1], args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if len(runs) > 1:
        summary(runs)


if __name__ == "__main__":
    main()
