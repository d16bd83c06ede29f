"""Serving throughput and latency: this API vs `mlflow models serve` vs a no-op FastAPI endpoint.

Same model (the champion trained by the platform's own path, on the real file when present,
else synthetic data), same machine, same load: wrk, 8 connections, one encounter per request.
Prints req/s, p50 and p99 latency of each and the ratios, this API's /predict with and without
?explain=true (the explanation of the risk, 10 factors) among them; then batch rows/s of POST /predict/batch.

    python bench/serving.py [--seconds 15] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from tests.support import free_port, mlflow_server, started  # noqa: E402

MODEL = "diabetes-readmission-bench"
EXPLAINED = "  ?explain=true"
"""The row of POST /predict?explain=true (this API, the same model)."""


def train_champion(root: Path, tracking_uri: str) -> list[dict]:
    """CleanData through the platform's loaders, one HGB candidate trained, registered, made champion."""
    from readmit_contract import synthetic, validate
    from readmit_contract.dataset import read_raw_csv
    from readmit_contract.encounter import json_encounters
    from readmit_data.loading import load
    from readmit_data.preprocessing import preprocess_pending
    from readmit_data.registry import register_and_promote
    from readmit_data.settings import DataSettings
    from readmit_data.stores import engines
    from readmit_data.training import take_snapshot, train_candidate

    real = Path(os.environ.get("READMIT_REAL_DATA", REPO.parent / "shared" / "data" / "diabetic_data.csv"))
    frame = read_raw_csv(real) if real.exists() else synthetic.generate(30_000, seed=0)
    print(f"model data: {'real file' if real.exists() else 'synthetic'} ({len(frame):,} rows)")
    settings = DataSettings(MLFLOW_TRACKING_URI=tracking_uri, MODEL_NAME=MODEL, MLFLOW_EXPERIMENT_NAME=MODEL,
                            RAW_DB_URL=f"sqlite:///{root}/raw.db", CLEAN_DB_URL=f"sqlite:///{root}/clean.db")
    with engines(settings.raw_db_url, settings.clean_db_url) as (raw, clean_store):
        load(raw, frame, source="bench", batch="all", progress=False)
        preprocess_pending(raw, clean_store)
        result = train_candidate(settings, clean_store, "hist_gradient_boosting", take_snapshot(clean_store))
        register_and_promote(settings, clean_store, result)
    rows = validate(frame.head(2000)).valid
    rows = rows[~rows["discharge_disposition_id"].isin([11, 13, 14, 19, 20, 21])]
    return json_encounters(rows)


def wrk(url: str, body: dict, seconds: int, connections: int, workdir: Path,
        headers: dict[str, str] | None = None) -> dict[str, float]:
    script = workdir / "post.lua"  # headers (the API key) go in the script, not on wrk's command line
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      + "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in (headers or {}).items())
                      + f"wrk.body = {json.dumps(json.dumps(body))}\n")
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"), "non2xx": int(errors.group(1)) if errors else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install -y wrk)")
    root = Path(tempfile.mkdtemp(prefix="readmit-bench-"))
    try:
        with mlflow_server(root, f"sqlite:///{root}/mlflow.db", str(root / "artifacts")) as tracking:
            rows = train_champion(root, tracking)
            encounter = rows[0]
            key = secrets.token_urlsafe(24)  # this run's API key (the API does not start without API_KEYS)
            auth = {"X-API-Key": key}
            env = {"MLFLOW_TRACKING_URI": tracking, "MODEL_NAME": MODEL, "API_KEYS": f"bench:{key}",
                   "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
            api, mlf, noop = free_port(), free_port(), free_port()
            uvicorn = [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--no-access-log", "--workers", "1"]
            results = {}
            with started([*uvicorn, "--port", str(api), "readmit_serving.api.main:app"], env, root / "api.log",
                         ready_url=f"http://127.0.0.1:{api}/ready"), \
                 started([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager",
                          "local", "--host", "127.0.0.1", "--port", str(mlf), "--workers", "1"], env,
                         root / "mlflow-serve.log", ready_url=f"http://127.0.0.1:{mlf}/ping", timeout=180), \
                 started([*uvicorn, "--port", str(noop), "--app-dir", str(REPO / "bench"), "noop_app:app"], env,
                         root / "noop.log", ready_url=None):
                time.sleep(2)
                explained = httpx.post(f"http://127.0.0.1:{api}/predict?explain=true", json=encounter, headers=auth,
                                       timeout=30).json()
                assert explained["explanation"]["factors"], explained  # the model served can be explained
                targets = {
                    "no-op FastAPI": (f"http://127.0.0.1:{noop}/predict", encounter, {}),
                    "this API /predict": (f"http://127.0.0.1:{api}/predict", encounter, auth),
                    EXPLAINED: (f"http://127.0.0.1:{api}/predict?explain=true", encounter, auth),
                    "mlflow models serve": (f"http://127.0.0.1:{mlf}/invocations", {"dataframe_records": [encounter]},
                                            {}),
                }
                for name, (url, body, headers) in targets.items():
                    assert httpx.post(url, json=body, headers=headers, timeout=30).is_success, name
                    wrk(url, body, 3, args.connections, root, headers)  # warm-up
                    results[name] = wrk(url, body, args.seconds, args.connections, root, headers)
                batch = {"encounters": (rows * (1000 // len(rows) + 1))[:1000]}
                httpx.post(f"http://127.0.0.1:{api}/predict/batch", json=batch, headers=auth,
                           timeout=60).raise_for_status()
                started_at, n = time.perf_counter(), 0
                with httpx.Client(timeout=60, headers=auth) as client:
                    while time.perf_counter() - started_at < args.seconds:
                        client.post(f"http://127.0.0.1:{api}/predict/batch", json=batch).raise_for_status()
                        n += 1000
                batch_rps = n / (time.perf_counter() - started_at)
                scraped = httpx.get(f"http://127.0.0.1:{api}/metrics").text
                calls = float(re.search(r"^readmit_api_inference_batch_rows_count (\S+)", scraped, re.M).group(1))
                scored = float(re.search(r"^readmit_api_inference_batch_rows_sum (\S+)", scraped, re.M).group(1))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"single-row requests, {args.connections} connections, {args.seconds} s each (wrk):")
    print(f"{'server':22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, r in results.items():
        print(f"{name:22} {r['rps']:9,.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['non2xx']:8d}")
    ours, floor, mlflow_rps = (results[k]["rps"] for k in ("this API /predict", "no-op FastAPI", "mlflow models serve"))
    print(f"this API / mlflow models serve: {ours / mlflow_rps:.1f}x   this API / no-op floor: {ours / floor:.2f}")
    plain, why = results["this API /predict"], results[EXPLAINED]
    print(f"/predict?explain=true vs /predict (same run, same model): req/s x{why['rps'] / plain['rps']:.2f}, "
          f"p50 x{why['p50_ms'] / plain['p50_ms']:.1f}, p99 x{why['p99_ms'] / plain['p99_ms']:.1f}")
    print(f"batch: POST /predict/batch of 1000 encounters: {batch_rps:,.0f} rows/s")
    print(f"model calls: {calls:,.0f}, mean encounters per call {scored / calls:.1f} (micro-batching + batch endpoint)")


if __name__ == "__main__":
    main()
