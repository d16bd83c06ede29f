"""Overload: the API under open-loop load at 2x its measured capacity, with bounded admission vs without.

Same model and machine as bench/serving.py (the champion trained by the platform's own path, on the real
file when present, else synthetic data; the API under uvicorn, one process). Steps:

1. capacity: closed loop, N connections each sending POST /predict back to back (one encounter per
   request) for a few seconds: capacity = answers per second;
2. open loop at RATE x capacity for SECONDS: requests are sent at fixed arrival times whatever the answers
   (a new connection is opened when none is free), latency is measured from the arrival time (no
   coordinated omission): p50/p99 of admitted (200) requests against the SLO, the share answered 503 and
   how fast, other answers (must be 0), the API's memory before and after;
3. recovery: once the load stops, requests one at a time until one is answered 200 within the normal
   latency (2x the idle p99): the time that took.

Steps 2-3 run twice on fresh API processes: with the API's default limits (MAX_IN_FLIGHT, deadlines...) and
with admission unbounded (the limits set out of reach), the baseline of the same run.

    python bench/overload.py [--seconds 60] [--rate 2.0] [--slo-ms 250] [--connections 16] [--no-baseline]

(env OVERLOAD_SECONDS overrides --seconds, for short runs on a busy machine.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from bench.serving import MODEL, train_champion  # noqa: E402
from tests.support import free_port, mlflow_server, started  # noqa: E402

UNBOUNDED = {"MAX_IN_FLIGHT": "1000000", "MAX_IN_FLIGHT_BATCH": "1000000", "MAX_QUEUED_BATCH_ROWS": "100000000",
             "REQUEST_DEADLINE_MS": "3600000"}
TIMEOUT_S = 30.0
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; the answer's status."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.answered = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        match = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
        size = end + 4 + (int(match.group(1)) if match else 0)
        if len(self.buffer) >= size:
            status = int(self.buffer[9:12])
            self.buffer = self.buffer[size:]
            self.answered = True
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(status)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(0)  # 0: no answer (connection closed)

    async def request(self, payload: bytes) -> int:
        if self.closed or self.transport.is_closing():
            self.closed = True
            return 0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter

    def close(self) -> None:
        self.closed = True
        self.transport.close()


@dataclass
class Client:
    """Keep-alive connections to the API, reused most recent first (a new one is opened when none is idle, up
    to ``max_connections``; beyond, a request waits for one, and that wait counts in its latency)."""

    host: str
    port: int
    payloads: list[bytes]
    max_connections: int = 2048
    idle: list[Connection] = field(default_factory=list)
    waiting: deque = field(default_factory=deque)
    live: int = 0
    opened: int = 0
    sent: int = 0
    retried: int = 0

    async def _new(self) -> Connection:
        self.live += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(Connection, self.host, self.port)
        except OSError:
            self.live -= 1
            raise
        self.opened += 1
        return conn

    async def open(self, count: int) -> None:
        """Open ``count`` idle connections ahead of the load."""
        for _ in range(count):
            self.idle.append(await self._new())

    async def acquire(self) -> Connection:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn
                self.live -= 1
            if self.live < self.max_connections:
                return await self._new()
            waiter = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            conn = await waiter
            if conn is not None:
                return conn

    def release(self, conn: Connection) -> None:
        if conn.closed:
            self.live -= 1
            conn = None
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # None: a place to open a new connection
                return
        if conn is not None:
            self.idle.append(conn)

    async def send(self) -> int:
        """One POST /predict: its status; 0: connection closed; -2: no socket."""
        payload = self.payloads[self.sent % len(self.payloads)]
        self.sent += 1
        for attempt in range(2):
            try:
                conn = await self.acquire()
            except OSError:
                return -2
            reused = conn.answered
            try:
                status = await conn.request(payload)  # no per-request timer (cheap client): see open_loop
            except asyncio.CancelledError:
                conn.close()
                self.release(conn)
                raise
            self.release(conn)
            # an idle connection the server closed (keep-alive timeout) before reading the request: once more
            if status == 0 and reused and attempt == 0:
                self.retried += 1
                continue
            return status
        return 0


def payloads(host: str, encounters: list[dict], key: str) -> list[bytes]:
    out = []
    for encounter in encounters[:64]:
        body = json.dumps(encounter).encode()
        out.append(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


async def closed_loop(client: Client, connections: int, seconds: float) -> tuple[float, list[float]]:
    """Answers per second of ``connections`` back-to-back senders, and their latencies (s)."""
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def sender() -> None:
        while time.perf_counter() < stop:
            started_at = time.perf_counter()
            status = await client.send()
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - started_at)

    begin = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(connections)))
    elapsed = time.perf_counter() - begin
    if set(statuses) != {200}:
        print(f"  closed loop answers: {statuses}")
    return len(latencies) / elapsed, latencies


async def open_loop(client: Client, rate: float, seconds: float, slo_s: float) -> dict:
    """Requests at fixed arrival times (``rate`` per second for ``seconds``); latencies from the arrival time."""
    loop = asyncio.get_running_loop()
    results: list[tuple[int, float, float]] = []  # status, latency, arrival (s from the start)
    lags: list[float] = []
    tasks: set[asyncio.Task] = set()

    async def one(due: float) -> None:
        lags.append(loop.time() - due)
        status = await client.send()
        results.append((status, loop.time() - due, due - start))

    await client.open(min(1024, int(rate * slo_s)))  # connections enough for answers within the SLO
    start = loop.time() + 0.05
    cpu_start = time.process_time()
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    stopped = loop.time()
    cpu = (time.process_time() - cpu_start) / (stopped - start)
    if tasks:
        _, pending = await asyncio.wait(list(tasks), timeout=TIMEOUT_S)
        for task in pending:  # no answer TIMEOUT_S after the end of the load
            task.cancel()
            results.append((-1, float("inf"), 0.0))
        await asyncio.gather(*pending, return_exceptions=True)
    return {"results": results, "lag_p99": float(np.percentile(lags, 99)), "stopped": stopped, "cpu": cpu,
            "offered": total / seconds}


async def recovery(client: Client, normal_s: float, stopped: float) -> float:
    """Seconds from the end of the load until a request is answered 200 within ``normal_s``."""
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        status = await client.send()
        if status == 200 and loop.time() - began <= normal_s:
            return loop.time() - stopped
        if loop.time() - stopped > 120:
            return float("inf")
        await asyncio.sleep(0.005)


async def measure_capacity(url: str, encounters: list[dict], key: str, connections: int,
                           seconds: float) -> tuple[float, list[float]]:
    host, port = url.removeprefix("http://").split(":")
    client = Client(host, int(port), payloads(f"{host}:{port}", encounters, key))
    await closed_loop(client, connections, 3)  # warm-up
    return await closed_loop(client, connections, seconds)


def run(coroutine):
    """``asyncio.run`` on uvloop when installed (the client's own overhead stays small)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def in_app_buckets(url: str) -> dict[float, float]:
    """The API's own histogram of POST /predict durations (from its first middleware to its answer)."""
    text = httpx.get(f"{url}/metrics", timeout=60).text
    found = re.findall(r'readmit_api_request_duration_seconds_bucket\{le="([^"]+)",method="POST",route="/predict"\} '
                       r"(\S+)", text)
    return {float(le): float(count) for le, count in found}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound of the bucket holding quantile ``q`` of the observations between two scrapes."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    return next((le for le, count in counts if count >= q * total), float("nan")) if total else float("nan")


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def scenario(url: str, encounters: list[dict], key: str, rate: float, seconds: float, slo_s: float,
                   normal_s: float | None, process: psutil.Process) -> dict:
    host, port = url.removeprefix("http://").split(":")
    client = Client(host, int(port), payloads(f"{host}:{port}", encounters, key))
    idle: list[float] = []
    for _ in range(200):  # warm-up and idle latency, one request at a time
        began = time.perf_counter()
        assert await client.send() == 200
        idle.append(time.perf_counter() - began)
    rss_before = process.memory_info().rss
    buckets_before = in_app_buckets(url)
    load = await open_loop(client, rate, seconds, slo_s)
    load["in_app_p99_ms"] = bucket_quantile(buckets_before, in_app_buckets(url), 0.99) * 1000
    rss_after = process.memory_info().rss
    normal = normal_s if normal_s is not None else 2 * np.percentile(idle, 99)
    recovered = await recovery(client, normal, load["stopped"])
    rss_settled = process.memory_info().rss
    return {"load": load, "idle_p99_ms": percentile_ms(idle, 99), "normal_ms": normal * 1000,
            "rss": (rss_before, rss_after, rss_settled), "recovery_s": recovered, "connections": client.opened}


def report(label: str, outcome: dict, slo_ms: float) -> None:
    load = outcome["load"]
    results = load["results"]
    ok = [latency for status, latency, _ in results if status == 200]
    shed = [latency for status, latency, _ in results if status == 503]
    other: dict[int, int] = {}
    for status, _, _ in results:
        if status not in (200, 503):
            other[status] = other.get(status, 0) + 1
    n = len(results)
    p99 = percentile_ms(ok, 99)
    before, after, settled = (v / 2**20 for v in outcome["rss"])
    print(f"{label}:")
    print(f"  offered {load['offered']:,.0f} req/s, {n:,} requests ({outcome['connections']:,} connections opened; "
          f"generator: lag p99 {load['lag_p99'] * 1000:.1f} ms, {load['cpu']:.0%} of a core)")
    print(f"  admitted (200): {len(ok):,} ({len(ok) / n:.1%}), p50 {percentile_ms(ok, 50):.1f} ms, p99 {p99:.1f} ms "
          f"-> {'within' if p99 <= slo_ms else 'ABOVE'} the {slo_ms:.0f} ms SLO")
    print(f"  inside the API (its own histogram, all /predict answers): p99 <= {load['in_app_p99_ms']:,.0f} ms; "
          f"the rest of a request's time is spent queued before the app sees it (sockets, event loop, client)")
    windows: dict[int, list[float]] = {}
    for status, latency, arrival in results:
        if status == 200:
            windows.setdefault(int(arrival // 5), []).append(latency)
    timeline = " ".join(f"{percentile_ms(windows[w], 99):,.0f}" for w in sorted(windows))
    print(f"  p99 of admitted per 5 s of arrivals (ms): {timeline}")
    print(f"  answered 503: {len(shed):,} ({len(shed) / n:.1%}), p50 {percentile_ms(shed, 50):.1f} ms, "
          f"p99 {percentile_ms(shed, 99):.1f} ms")
    fives = sum(c for s, c in other.items() if 500 <= s < 600)
    print(f"  other answers: {other or 'none'} (5xx other than 503: {fives}; -1: no answer {TIMEOUT_S:.0f} s after "
          f"the load; 0: connection closed)")
    print(f"  API memory (RSS): {before:,.0f} MiB before, {after:,.0f} MiB at the end of the load, "
          f"{settled:,.0f} MiB after recovery ({after - before:+,.0f} MiB)")
    print(f"  recovery: {outcome['recovery_s'] * 1000:,.0f} ms after the load stopped, a request was answered 200 "
          f"within the normal latency ({outcome['normal_ms']:.1f} ms = 2x idle p99)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("OVERLOAD_SECONDS", 60)))
    parser.add_argument("--rate", type=float, default=2.0, help="open-loop load as a multiple of capacity")
    parser.add_argument("--slo-ms", type=float, default=250.0, help="p99 objective of admitted requests")
    parser.add_argument("--connections", type=int, default=16, help="closed-loop connections (capacity)")
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the run with unbounded admission")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="readmit-bench-overload-"))
    outcomes: dict[str, dict] = {}
    try:
        with mlflow_server(root, f"sqlite:///{root}/mlflow.db", str(root / "artifacts")) as tracking:
            encounters = train_champion(root, tracking)
            key = secrets.token_urlsafe(24)
            env = {"MLFLOW_TRACKING_URI": tracking, "MODEL_NAME": MODEL, "API_KEYS": f"bench:{key}"}
            runs = {"bounded admission (the API's defaults)": {}}
            if not args.no_baseline:
                runs["unbounded admission (baseline)"] = UNBOUNDED
            capacity = None
            normal_s = None
            for label, extra in runs.items():
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                cmd = [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                       "readmit_serving.api.main:app"]
                with started(cmd, env | extra, root / f"api-{port}.log", ready_url=f"{url}/ready", timeout=180) as proc:
                    process = psutil.Process(proc.pid)
                    if capacity is None:
                        capacity, latencies = run(measure_capacity(url, encounters, key, args.connections,
                                                                   args.capacity_seconds))
                        print(f"capacity (closed loop, {args.connections} connections, {args.capacity_seconds:.0f} s): "
                              f"{capacity:,.0f} req/s, p50 {percentile_ms(latencies, 50):.1f} ms, "
                              f"p99 {percentile_ms(latencies, 99):.1f} ms")
                        print(f"open loop: {args.rate:g}x capacity = {capacity * args.rate:,.0f} req/s for "
                              f"{args.seconds:g} s; SLO: p99 of admitted requests <= {args.slo_ms:.0f} ms; "
                              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
                    outcome = run(scenario(url, encounters, key, capacity * args.rate, args.seconds,
                                           args.slo_ms / 1000, normal_s, process))
                    normal_s = outcome["normal_ms"] / 1000  # the same "normal latency" for both runs
                    outcomes[label] = outcome
                    report(label, outcome, args.slo_ms)
                    shed = httpx.get(f"{url}/metrics").text
                    counted = sum(float(line.split()[-1]) for line in shed.splitlines()
                                  if line.startswith("readmit_api_shed_total{"))
                    print(f"  readmit_api_shed_total: {counted:,.0f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if len(outcomes) == 2:
        (bounded, baseline) = outcomes.values()

        def p99(outcome: dict) -> float:
            return percentile_ms([lat for status, lat, _ in outcome["load"]["results"] if status == 200], 99)

        print(f"p99 of admitted requests, bounded / unbounded: {p99(bounded) / p99(baseline):.3f} "
              f"({p99(bounded):.0f} ms vs {p99(baseline):,.0f} ms)")


if __name__ == "__main__":
    main()
