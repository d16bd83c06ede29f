"""Capacity search: a Locust load shape that steps users up until the objective breaks.

Each step sets the user count, waits for the users to be spawned, then measures for
``CAPACITY_STEP_SECONDS`` (see capacity_report.py). The search stops at the first step whose
p95 of POST /predict exceeds ``CAPACITY_SLO_P95_MS`` or whose error ratio exceeds
``CAPACITY_MAX_ERROR_RATIO`` (or when the next step would pass ``CAPACITY_MAX_USERS``), then
writes capacity-report.json, capacity-report.md and latency-vs-users.png into
``CAPACITY_REPORT_DIR``. A run stopped otherwise (web UI, signal) reports the steps it measured.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from locust import LoadTestShape

from capacity_report import (
    Snapshot,
    Step,
    best_step,
    build_report,
    describe_step,
    measure,
    snapshot,
    verdict,
    write_report,
)
from loadtest_settings import LoadTestSettings

log = logging.getLogger(__name__)


class CapacitySearchShape(LoadTestShape):
    """The load shape; the locustfile makes a concrete subclass when CAPACITY_SEARCH=1."""

    abstract = True
    settings: ClassVar[LoadTestSettings]  # set by the concrete subclass (the settings need API_KEY)

    def __init__(self) -> None:
        super().__init__()
        self._reset_search()

    def reset_time(self) -> None:  # Locust calls it when a (new) test starts
        super().reset_time()
        self._reset_search()

    def _reset_search(self) -> None:
        self.steps: list[Step] = []
        self.users: int | None = None
        self.baseline: Snapshot | None = None
        self.step_started = 0.0
        self.finished = False
        self.stop_reason: str | None = None
        self.report_files: list[Path] = []
        self.started_at = datetime.now(UTC)

    def _goto(self, users: int) -> tuple[int, float]:
        self.users, self.baseline = users, None
        log.info("capacity search: step %d, %d users", len(self.steps) + 1, users)
        return users, self.settings.step_spawn_rate

    def tick(self) -> tuple[int, float] | None:
        if self.finished:
            return None
        if self.users is None:
            return self._goto(self.settings.start_users)
        target = (self.users, self.settings.step_spawn_rate)
        now = self.get_run_time()
        if self.baseline is None:  # first tick after the step's users were spawned: measure from here
            self.baseline, self.step_started = snapshot(self.runner.stats), now
            return target
        if now - self.step_started < self.settings.step_seconds:
            return target
        if self.runner.stats.total.num_requests < self.baseline.requests:  # statistics reset from the web UI
            self.baseline, self.step_started = snapshot(self.runner.stats), now
            return target
        step = measure(self.users, self.baseline, snapshot(self.runner.stats), self.settings)
        self.steps.append(step)
        self.baseline = None
        log.info("capacity search: step %d measured: %s", len(self.steps), describe_step(step))
        reason = verdict(step, self.settings)
        if reason is not None:
            self.finish(reason)
            return None
        return self._goto(self.users + self.settings.step_users)

    def finish(self, reason: str) -> None:
        """Close the search (measuring a partial step if one is running) and write the report."""
        if self.finished:
            return
        if self.baseline is not None and self.users is not None and self.runner is not None:
            partial = measure(self.users, self.baseline, snapshot(self.runner.stats), self.settings, complete=False)
            if partial.seconds >= 1 and partial.requests:
                self.steps.append(partial)
        self.finished, self.stop_reason, self.baseline = True, reason, None
        log.info("capacity search stopped: %s", reason)
        try:
            self.report_files = write_report(Path(self.settings.report_dir), self.report())
            log.info("capacity report written: %s", ", ".join(map(str, self.report_files)))
        except Exception:  # noqa: BLE001 - never take the Locust process down for a report
            log.exception("could not write the capacity report")

    def report(self) -> dict[str, Any]:
        host = getattr(getattr(self.runner, "environment", None), "host", None)
        return build_report(self.settings, self.steps, self.stop_reason, self.started_at, host)

    def progress(self) -> dict[str, tuple[str, float]]:
        """Gauges for the Prometheus endpoint (locust_capacity_*)."""
        best = best_step(self.steps)
        return {
            "step_users": ("Users of the current step of the capacity search", float(self.users or 0)),
            "steps_completed": ("Steps measured so far", float(len(self.steps))),
            "max_users_within_slo": ("Most users of a step within the SLO so far", float(best.users if best else 0)),
            "max_rps_within_slo": ("Most requests per second of a step within the SLO so far",
                                   float(max((s.rps for s in self.steps if s.within_slo and s.complete),
                                             default=0.0))),
            "finished": ("1 once the search stopped", float(self.finished)),
        }
