"""Client probes the three-host test runs inside a host's network namespace (standard library only).

    probe.py tcp HOST PORT [--timeout S]
        wait until HOST:PORT accepts a TCP connection
    probe.py http METHOD URL [--data JSON] [--until-status N] [--until KEY=JSON ...] [--timeout S]
        one request, or repeated ones until the answer has that status and those top-level JSON fields

Each prints one JSON object on stdout: {"ok", "status", "body", "error", "seconds", "attempts"}, the last
answer seen, so the test's assertion shows what the host really got. No proxy is ever used. Request
headers (an API key, basic auth) come from the environment variable PROBE_HEADERS (a JSON object), never
from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def tcp(host: str, port: int, timeout: float) -> dict:
    start = time.monotonic()
    attempts, error = 0, None
    while True:
        attempts += 1
        try:
            socket.create_connection((host, port), timeout=2).close()
            return {"ok": True, "error": None, "seconds": time.monotonic() - start, "attempts": attempts}
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() - start > timeout:
            return {"ok": False, "error": error, "seconds": time.monotonic() - start, "attempts": attempts}
        time.sleep(0.25)


def request(method: str, url: str, data: str | None) -> tuple[int | None, object, str | None]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    body = data.encode() if data is not None else None
    headers = json.loads(os.environ.get("PROBE_HEADERS") or "{}")
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with opener.open(req, timeout=15) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, urllib.error.URLError) as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text), None
    except ValueError:
        return status, text, None


def http(method: str, url: str, data: str | None, until_status: int | None, until: dict, timeout: float) -> dict:
    start = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        status, body, error = request(method, url, data)
        ok = error is None and (until_status is None or status == until_status) and all(
            isinstance(body, dict) and body.get(k) == v for k, v in until.items())
        if ok or time.monotonic() - start > timeout:
            return {"ok": ok, "status": status, "body": body, "error": error,
                    "seconds": time.monotonic() - start, "attempts": attempts}
        time.sleep(0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_tcp = sub.add_parser("tcp")
    p_tcp.add_argument("host")
    p_tcp.add_argument("port", type=int)
    p_tcp.add_argument("--timeout", type=float, default=0.0)
    p_http = sub.add_parser("http")
    p_http.add_argument("method")
    p_http.add_argument("url")
    p_http.add_argument("--data")
    p_http.add_argument("--until-status", type=int)
    p_http.add_argument("--until", action="append", default=[], help="KEY=JSON value of a top-level field")
    p_http.add_argument("--timeout", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.command == "tcp":
        result = tcp(args.host, args.port, args.timeout)
    else:
        until = {}
        for item in args.until:
            key, _, value = item.partition("=")
            until[key] = json.loads(value)
        result = http(args.method.upper(), args.url, args.data, args.until_status, until, args.timeout)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
