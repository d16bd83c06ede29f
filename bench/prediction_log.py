"""The prediction log's cost: POST /predict with every answer logged to MariaDB vs the same API without the log.

Same model (the champion trained by the platform's own path, on the real file when present, else synthetic data),
same machine, same load: two APIs side by side, one with PREDICTIONS_DB_URL on a fresh database of the MariaDB at
127.0.0.1:3306 (TEST_MYSQL_URL), one without; wrk with 8 connections, one encounter per request, runs alternating
between them (off, on, on, off, ...) so drift of the machine hits both. Prints the medians of req/s, p50 and p99
and the server's CPU time per request, the ratios on/off, and checks the log: every answer written, none dropped.

    python bench/prediction_log.py [--seconds 10] [--rounds 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "bench"))

from serving import MODEL, train_champion, wrk  # noqa: E402

from tests.support import free_port, mlflow_server, started  # noqa: E402

MYSQL_URL = os.environ.get("TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    figures = {}
    for name in ("readmit_api_prediction_log_written_total", "readmit_api_prediction_log_buffered_rows",
                 "readmit_api_prediction_log_write_duration_seconds_count",
                 "readmit_api_prediction_log_write_duration_seconds_sum"):
        figures[name] = float(re.search(rf"^{name} (\S+)", text, re.M).group(1))
    figures["dropped"] = sum(float(v) for v in re.findall(r"^readmit_api_prediction_log_dropped_total\{[^}]*\} (\S+)",
                                                          text, re.M))
    figures["answered"] = sum(float(v) for v in re.findall(
        r'^readmit_api_requests_total\{[^}]*route="/predict"[^}]*status="200"[^}]*\} (\S+)', text, re.M))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install -y wrk)")
    import sqlalchemy

    server = sqlalchemy.create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
    database = f"readmit_bench_predlog_{uuid.uuid4().hex[:10]}"
    with server.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    root = Path(tempfile.mkdtemp(prefix="readmit-bench-predlog-"))
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        with mlflow_server(root, f"sqlite:///{root}/mlflow.db", str(root / "artifacts")) as tracking:
            encounter = train_champion(root, tracking)[0]
            key = secrets.token_urlsafe(24)
            auth = {"X-API-Key": key}
            env = {"MLFLOW_TRACKING_URI": tracking, "MODEL_NAME": MODEL, "API_KEYS": f"bench:{key}",
                   "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
            ports = {"off": free_port(), "on": free_port()}
            uvicorn = [str(BIN / "uvicorn"), "readmit_serving.api.main:app", "--host", "127.0.0.1", "--no-access-log"]
            logged = env | {"PREDICTIONS_DB_URL": f"{MYSQL_URL}/{database}"}
            with started([*uvicorn, "--port", str(ports["off"])], env, root / "api-off.log",
                         ready_url=f"http://127.0.0.1:{ports['off']}/ready", timeout=180) as off, \
                 started([*uvicorn, "--port", str(ports["on"])], logged, root / "api-on.log",
                         ready_url=f"http://127.0.0.1:{ports['on']}/ready", timeout=180) as on:
                processes = {"off": off, "on": on}
                urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
                for name, url in urls.items():
                    answer = httpx.post(f"{url}/predict", json=encounter, headers=auth, timeout=30)
                    assert answer.is_success and answer.headers["x-request-id"], name
                    wrk(f"{url}/predict", encounter, 3, args.connections, root, auth)  # warm-up
                for round_ in range(args.rounds):
                    for name in (("off", "on") if round_ % 2 == 0 else ("on", "off")):
                        pid = processes[name].pid
                        cpu = cpu_seconds(pid)
                        result = wrk(f"{urls[name]}/predict", encounter, args.seconds, args.connections, root, auth)
                        result["cpu_us"] = (cpu_seconds(pid) - cpu) / (result["rps"] * args.seconds) * 1e6
                        runs[name].append(result)
                        print(f"round {round_ + 1} log {name:3}: {result['rps']:8,.0f} req/s  p50 "
                              f"{result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                              f"{result['cpu_us']:.0f} us CPU/request  non-2xx {result['non2xx']}", flush=True)
                deadline = time.monotonic() + 30
                while (log := scrape(urls["on"]))["readmit_api_prediction_log_buffered_rows"] > 0:
                    assert time.monotonic() < deadline, "the writer did not catch up within 30 s"
                    time.sleep(0.5)
                engine = sqlalchemy.create_engine(f"{MYSQL_URL}/{database}")
                with engine.connect() as conn:
                    rows = conn.exec_driver_sql("SELECT COUNT(*) FROM prediction_log").scalar_one()
                engine.dispose()
    finally:
        with server.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database}`")
        server.dispose()
        shutil.rmtree(root, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    print(f"\nPOST /predict, {args.connections} connections, {args.rounds} x {args.seconds} s per API (wrk), medians:")
    print(f"{'prediction log':16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}")
    for name, label in (("off", "off"), ("on", "on (MariaDB)")):
        print(f"{label:16} {median(name, 'rps'):9,.0f} {median(name, 'p50_ms'):8.2f} {median(name, 'p99_ms'):8.2f} "
              f"{median(name, 'cpu_us'):11.0f}")
    print(f"on / off: req/s x{median('on', 'rps') / median('off', 'rps'):.3f}, "
          f"p50 x{median('on', 'p50_ms') / median('off', 'p50_ms'):.3f}, "
          f"p99 x{median('on', 'p99_ms') / median('off', 'p99_ms'):.3f}, "
          f"CPU per request x{median('on', 'cpu_us') / median('off', 'cpu_us'):.3f}")
    inserts = log["readmit_api_prediction_log_write_duration_seconds_count"]
    written = log["readmit_api_prediction_log_written_total"]
    print(f"log: {log['answered']:,.0f} answers (200), {written:,.0f} rows written, {rows:,} in the table, "
          f"{log['dropped']:,.0f} dropped; {inserts:,.0f} INSERTs of {written / max(inserts, 1):.0f} rows on "
          f"average, {log['readmit_api_prediction_log_write_duration_seconds_sum'] / max(inserts, 1) * 1000:.1f} ms "
          "each (in the writer thread)")
    if not (written == rows == log["answered"] and log["dropped"] == 0):
        sys.exit("the prediction log lost or duplicated rows")


if __name__ == "__main__":
    main()
