"""Seconds of `make up` end to end on the real file (the issue's goal: under 90 s on 2 cores), and of each step.

Runs ``embedded/run.py up`` as `make up` does, in a fresh state folder with free ports (nothing of a running
`make up` is touched), prints what run.py says each step and each DAG task took, then ``down``. Uses the real
diabetic_data.csv ($READMIT_REAL_DATA or ../shared/data beside the checkout), else 101,766 synthetic rows.
The machine's load average before the run is printed beside the figure: on 2 shared cores a busy neighbour
makes every step slower, and this figure is a wall-clock time, not a ratio.

    python bench/make_up.py [--keep]    (--keep: leave the state folder, and say where)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import free_port  # noqa: E402

GOAL_SECONDS = 90.0


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "embedded" / "run.py"), *command], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    real = Path(os.environ.get("READMIT_REAL_DATA", REPO.parent / "shared" / "data" / "diabetic_data.csv"))
    source, label = (str(real), f"real file ({real.name})") if real.exists() else ("synthetic:101766", "synthetic")
    state = Path(tempfile.mkdtemp(prefix="readmit-bench-up-"))
    ports = {name: str(free_port()) for name in ("MLFLOW_PORT", "API_PORT", "UI_PORT")}
    env = {**os.environ, **ports, "READMIT_STATE_DIR": str(state),
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
           "API_URL": f"http://127.0.0.1:{ports['API_PORT']}"}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        done = run(["up", "--source", source], env)
        seconds = time.perf_counter() - started
    finally:
        down = run(["down"], env)
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        print(f"make up failed (exit {done.returncode})")
        return 1
    print(f"make up, {label}, load average before {load:.1f} on {os.cpu_count()} cores")
    for line in done.stdout.splitlines():
        if re.match(r"\s*(seconds per step|tasks:|raw load:|airflow db migrate:|\S+: started at|api: ready|"
                    r"\S+: success in)", line):
            print("  " + line.strip())
    verdict = "PASS" if seconds < GOAL_SECONDS else "MISS"
    print(f"make up end to end: {seconds:.1f} s (goal < {GOAL_SECONDS:.0f} s: {verdict})")
    if down.returncode != 0:
        print("make down failed:", down.stdout[-1000:], down.stderr[-1000:])
    if args.keep:
        print(f"state kept in {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
