"""Measurement and report of the capacity search (no Locust import: importing Locust monkey-patches
the process with gevent, so the tests and tools use this module on its own).

A step is measured from two snapshots of Locust's cumulative statistics, at the step's start
and end: requests, failures, requests per second, and the latency quantiles of POST /predict
(the route of the SLO and of the Prometheus alert) from the difference of the response-time
histograms, so a step is measured exactly on a standalone runner as on a master. The report:

    capacity-report.json   settings, stop reason, max users and RPS within the SLO, every step
    capacity-report.md     the same for people
    latency-vs-users.png   p50/p95/p99 and RPS against users, the SLO line
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest_settings import LoadTestSettings

SLO_ROUTE = ("/predict", "POST")  # (name, method) of the Locust entry the objective applies to
REPORT_JSON, REPORT_MD, REPORT_PNG = "capacity-report.json", "capacity-report.md", "latency-vs-users.png"


@dataclass(frozen=True)
class Snapshot:
    at: float
    requests: int
    failures: int
    slo_requests: int
    slo_times: dict[int, int]
    all_times: dict[int, int]


@dataclass(frozen=True)
class Step:
    users: int
    seconds: float
    requests: int
    failures: int
    rps: float
    error_ratio: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    all_p95_ms: float | None
    """p95 of every request type (batch and /model included), for information."""
    within_slo: bool
    complete: bool = True
    """False for the step running when the search was stopped from outside (not counted in the results)."""


def percentile(times: dict[int, int], percent: float) -> float | None:
    """Percentile of a Locust response-time dict (rounded ms -> count), as Locust computes it."""
    count = sum(times.values())
    if not count:
        return None
    wanted, processed = int(count * percent), 0
    for response_time in sorted(times, reverse=True):
        processed += times[response_time]
        if count - processed <= wanted:
            return float(response_time)
    return 0.0


def difference(latest: dict[int, int], old: dict[int, int]) -> dict[int, int]:
    return {t: n - old.get(t, 0) for t, n in latest.items() if n - old.get(t, 0)}


def snapshot(stats: Any) -> Snapshot:
    """Snapshot of a Locust ``RequestStats``."""
    slo_entry = stats.get(*SLO_ROUTE)
    return Snapshot(time.monotonic(), stats.total.num_requests, stats.total.num_failures, slo_entry.num_requests,
                    dict(slo_entry.response_times), dict(stats.total.response_times))


def measure(users: int, before: Snapshot, after: Snapshot, settings: LoadTestSettings,
            complete: bool = True) -> Step:
    seconds = max(after.at - before.at, 1e-9)
    requests = after.requests - before.requests
    failures = after.failures - before.failures
    slo_times = difference(after.slo_times, before.slo_times)
    error_ratio = failures / requests if requests else 1.0
    p95 = percentile(slo_times, 0.95)
    within = requests > 0 and p95 is not None and p95 <= settings.slo_p95_ms and error_ratio <= settings.max_error_ratio
    return Step(users=users, seconds=round(seconds, 3), requests=requests, failures=failures,
                rps=round(requests / seconds, 3), error_ratio=round(error_ratio, 5),
                p50_ms=percentile(slo_times, 0.50), p95_ms=p95, p99_ms=percentile(slo_times, 0.99),
                all_p95_ms=percentile(difference(after.all_times, before.all_times), 0.95), within_slo=within,
                complete=complete)


def describe_step(step: Step) -> str:
    """One line for people: users, throughput, the SLO route's latency, errors and the verdict."""
    return (f"{step.users} users, {step.rps:.1f} req/s, p95 of {SLO_ROUTE[1]} {SLO_ROUTE[0]} {_ms(step.p95_ms)} ms "
            f"(p50 {_ms(step.p50_ms)}, p99 {_ms(step.p99_ms)}), errors {step.error_ratio:.2%}: "
            + ("within the SLO" if step.within_slo else "over the SLO"))


def verdict(step: Step, settings: LoadTestSettings) -> str | None:
    """Why the search stops after ``step`` (None: go on)."""
    if step.requests == 0:
        return "no request was answered during the step"
    if step.error_ratio > settings.max_error_ratio:
        return f"error ratio {step.error_ratio:.2%} > {settings.max_error_ratio:.2%}"
    if step.p95_ms is None:
        return "no POST /predict answered during the step"
    if step.p95_ms > settings.slo_p95_ms:
        return f"p95 of POST /predict {step.p95_ms:g} ms > SLO {settings.slo_p95_ms:g} ms"
    if step.users + settings.step_users > settings.max_users:
        return f"reached CAPACITY_MAX_USERS ({settings.max_users}) within the SLO"
    return None


def best_step(steps: list[Step]) -> Step | None:
    """The complete step with the most users within the SLO."""
    return max((s for s in steps if s.within_slo and s.complete), key=lambda s: s.users, default=None)


def build_report(settings: LoadTestSettings, steps: list[Step], stop_reason: str | None, started_at: datetime,
                 host: str | None) -> dict[str, Any]:
    best = best_step(steps)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "started_at": started_at.isoformat(timespec="seconds"),
        "host": host,
        "slo": {"route": f"{SLO_ROUTE[1]} {SLO_ROUTE[0]}", "p95_ms": settings.slo_p95_ms,
                "max_error_ratio": settings.max_error_ratio},
        "search": {"start_users": settings.start_users, "step_users": settings.step_users,
                   "step_seconds": settings.step_seconds, "max_users": settings.max_users,
                   "spawn_rate": settings.step_spawn_rate},
        "stop_reason": stop_reason,
        "max_users_within_slo": best.users if best else 0,
        "max_rps_within_slo": max((s.rps for s in steps if s.within_slo and s.complete), default=0.0),
        "p95_ms_at_max_users": best.p95_ms if best else None,
        "steps": [asdict(s) for s in steps],
    }


def write_report(directory: Path, report: dict[str, Any]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / REPORT_JSON, directory / REPORT_MD, directory / REPORT_PNG]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def markdown(report: dict[str, Any]) -> str:
    slo, search = report["slo"], report["search"]
    lines = [
        "# Capacity report",
        "",
        f"- API: {report['host']}",
        f"- run: {report['started_at']} → {report['generated_at']}",
        f"- objective: p95 of {slo['route']} ≤ {slo['p95_ms']:g} ms, errors ≤ {slo['max_error_ratio']:.1%}",
        f"- search: {search['start_users']} users, +{search['step_users']} every {search['step_seconds']:g} s, "
        f"at most {search['max_users']}",
        f"- stopped: {report['stop_reason']}",
        "",
        f"**Max users within the SLO: {report['max_users_within_slo']}** "
        f"(p95 {_ms(report['p95_ms_at_max_users'])} ms); "
        f"**max RPS within the SLO: {report['max_rps_within_slo']:.1f}**",
        "",
        "| users | seconds | requests | failures | RPS | errors | p50 ms | p95 ms | p99 ms | p95 all ms | within SLO |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in report["steps"]:
        within = ("yes" if s["within_slo"] else "no") + ("" if s["complete"] else " (partial step)")
        lines.append(
            f"| {s['users']} | {s['seconds']:.0f} | {s['requests']} | {s['failures']} | {s['rps']:.1f} | "
            f"{s['error_ratio']:.2%} | {_ms(s['p50_ms'])} | {_ms(s['p95_ms'])} | {_ms(s['p99_ms'])} | "
            f"{_ms(s['all_p95_ms'])} | {within} |"
        )
    lines += ["", f"![latency vs users]({REPORT_PNG})", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["steps"]
    users = [s["users"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key, label, style in (("p50_ms", "p50", ":"), ("p95_ms", "p95", "-"), ("p99_ms", "p99", "--")):
        ax.plot(users, [float("nan") if s[key] is None else s[key] for s in steps], style, marker="o", label=label)
    ax.axhline(report["slo"]["p95_ms"], color="red", linewidth=1, label=f"SLO p95 {report['slo']['p95_ms']:g} ms")
    if report["max_users_within_slo"]:
        ax.axvline(report["max_users_within_slo"], color="green", linewidth=1, linestyle="-.",
                   label=f"max users within SLO: {report['max_users_within_slo']}")
    ax.set_xlabel("users")
    ax.set_ylabel(f"latency of {report['slo']['route']} (ms)")
    rps_axis = ax.twinx()
    rps_axis.plot(users, [s["rps"] for s in steps], color="grey", marker="s", alpha=0.6, label="RPS")
    rps_axis.set_ylabel("requests per second")
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = rps_axis.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize="small")
    ax.set_title("Capacity search: latency and throughput against users")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
