"""`make simulate`: the monitoring loop seen end to end on one machine, with drifted synthetic data.

A hospital's later encounters differ from those the champion learnt from. This replays that, on the
embedded default's own code and services, in a state folder of its own (``var/simulate``, its own ports:
it runs beside `make up`):

1. a synthetic source whose later rows drift (older patients, other admission sources, more prior
   visits: ``synthetic:ROWS:SEED:DRIFT@FROM``) is split as usual; the first ``--initial-batches`` train
   batches are loaded, cleaned and trained on (the first champion); MLflow, the API and the UI start;
2. then, for each later batch, as a hospital would see it:
   - its encounters are scored by the API at discharge (``POST /predict/batch``): the live traffic the
     API logs to the prediction log (``PREDICTIONS_DB_URL``);
   - the batch is loaded with its outcomes and cleaned (``preprocess_incremental``: the champion's
     performance on arrival is recorded);
   - ``monitor_drift`` compares the new batches and the logged predictions with the champion's training
     rows; when it asks for retraining, ``train_and_register`` runs with the reason (tag
     ``trigger.reason``), and the API follows a new champion;
3. a table per batch: drift share of the batches and of the predictions, ROC-AUC on arrival, predictions
   logged, whether retraining was triggered, the champion after it.

Retraining here happens only when monitoring asks for it (in the cluster, train_and_register also runs on
each new clean batch, through its Asset). The figures stay in the simulation's stores: CleanData
(``arrival_performance``, ``drift_checks``, ``feature_drift``), the prediction log, MLflow's
``<experiment>-monitoring`` experiment (Evidently's HTML reports) and the API's /metrics.

    python embedded/simulate.py [--rows 30000] [--drift 1.5] [--drift-from 0.5] [--batch-size 5000]
                                [--initial-batches 2]
    python embedded/simulate.py down      stops the simulation's services
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIMULATION_PORTS = {"MLFLOW_PORT": "5100", "API_PORT": "8100", "UI_PORT": "8601"}
os.environ.setdefault("READMIT_STATE_DIR", str(ROOT / "var" / "simulate"))
for _name, _port in SIMULATION_PORTS.items():
    os.environ.setdefault(_name, _port)
os.environ.setdefault("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}")
os.environ.setdefault("API_URL", f"http://127.0.0.1:{os.environ['API_PORT']}")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402 - after the simulation's state folder and ports are set

REPLAY_CHUNK = 500
"""Encounters per POST /predict/batch while replaying a batch."""


def _api(env: dict[str, str], path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(run.base_url(env, "API_PORT") + path, method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"X-API-Key": run.credentials()["API_KEY_HOSPITAL"],
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - our own API on loopback
        return json.load(response)


def replay(env: dict[str, str], raw_rows) -> tuple[int, int]:
    """Score a batch's encounters through the API as discharges (no outcome sent); (answered, scored)."""
    from readmit_contract import validate
    from readmit_contract.prediction_log import ENCOUNTER_NAMES

    valid = validate(raw_rows).valid
    bodies = json.loads(valid[list(ENCOUNTER_NAMES)].to_json(orient="records"))
    answered = scored = 0
    for start in range(0, len(bodies), REPLAY_CHUNK):
        answer = _api(env, "/predict/batch", {"encounters": bodies[start:start + REPLAY_CHUNK]})
        answered += len(answer["predictions"])
        scored += sum(p["scored"] for p in answer["predictions"])
    return answered, scored


def _checks_since(env: dict[str, str], check_id: int) -> list[dict]:
    from readmit_data.stores import drift_checks, engine_for
    from sqlalchemy import select

    with engine_for(env["CLEAN_DB_URL"]) as engine, engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            select(drift_checks).where(drift_checks.c.check_id > check_id).order_by(drift_checks.c.check_id)
        ).mappings()]


def _last_check_id(env: dict[str, str]) -> int:
    from readmit_data.stores import create_clean_schema, drift_checks, engine_for
    from sqlalchemy import func, select

    with engine_for(env["CLEAN_DB_URL"]) as engine:
        create_clean_schema(engine)
        with engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(drift_checks.c.check_id), 0))).scalar_one())


def _arrival_auc(env: dict[str, str], batch_id: str) -> float | None:
    from readmit_data.stores import arrival_performance, engine_for
    from sqlalchemy import select

    with engine_for(env["CLEAN_DB_URL"]) as engine, engine.connect() as conn:
        row = conn.execute(select(arrival_performance.c.roc_auc).where(arrival_performance.c.batch_id == batch_id)
                           .order_by(arrival_performance.c.scored_at.desc()).limit(1)).first()
    return None if row is None else row[0]


def _logged(env: dict[str, str]) -> int:
    from readmit_contract.prediction_log import metadata, prediction_log
    from readmit_data.stores import engine_for
    from sqlalchemy import func, select

    with engine_for(env["PREDICTIONS_DB_URL"]) as engine:
        metadata.create_all(engine)
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(prediction_log)).scalar_one())


def _wait_logged(env: dict[str, str], expected: int, seconds: float = 30.0) -> int:
    """The prediction log is written in the background: wait until it holds ``expected`` rows."""
    deadline = time.monotonic() + seconds
    while (logged := _logged(env)) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return logged


def _serving(env: dict[str, str]) -> str:
    return str(_api(env, "/model")["model_version"])


def _wait_for_version(env: dict[str, str], version: str, seconds: float = 120.0) -> str:
    deadline = time.monotonic() + seconds
    while (serving := _serving(env)) != version and time.monotonic() < deadline:
        time.sleep(1.0)
    return serving


def _share(checks: list[dict], population: str) -> str:
    found = [c for c in checks if c["population"] == population]
    return f"{found[-1]['share']:.0%}" if found and found[-1]["features"] else "-"


def simulate(rows: int, seed: int, drift: float, drift_from: float, batch_size: int, initial: int) -> None:
    from readmit_data.loading import SplitPlan, read_source, train_batch_id

    started = time.perf_counter()
    source = f"synthetic:{rows}:{seed}:{drift:g}@{drift_from:g}"
    env = run.read_env() | {"DATA_SOURCE": source, "BATCH_SIZE": str(batch_size)}
    for folder in (run.VAR, run.LOGS, run.RUN, Path(env["AIRFLOW_HOME"])):
        folder.mkdir(parents=True, exist_ok=True)
    run.credentials()
    plan = SplitPlan.of(read_source(source), batch_size, int(env["SPLIT_SEED"]))
    batches = plan.n_train_batches
    if not 1 <= initial < batches:
        raise SystemExit(f"--initial-batches must be 1 to {batches - 1}: the source makes {batches} train batches")
    first_drifted = int(drift_from * rows)
    print(f"simulation in {run.VAR}: {source}, {batches} train batches of {batch_size}; rows from the "
          f"{first_drifted:,}th of the source on are drifted")

    run.step(f"1/3 MLflow, the first {initial} train batches, the first champion")
    run.start("mlflow", env)
    for number in range(1, initial + 1):
        run.run([str(run.BIN / "readmit-data"), "load", "--batch", str(number), "--quiet"], env)
    run.run([str(run.BIN / "airflow"), "db", "migrate"], env, quiet=True)
    run.dag_test("preprocess_incremental", env)
    if run.champion(env) is None:
        run.dag_test("train_and_register", env)
    run.start("api", env)
    run.wait_for(run.base_url(env, "API_PORT") + "/ready", 180, "API readiness")
    run.start("ui", env)

    run.step(f"2/3 batches {initial + 1} to {batches} arrive")
    table = []
    for number in range(initial + 1, batches + 1):
        batch_id = train_batch_id(number)
        raw = plan.train_batch(number)
        drifted_rows = int((raw.index >= first_drifted).sum())
        before_logged, before_check = _logged(env), _last_check_id(env)
        answered, scored = replay(env, raw.drop(columns=["split"]))
        logged = _wait_logged(env, before_logged + answered) - before_logged
        print(f"{batch_id}: {answered} encounters scored by the API at discharge ({scored} in scope), "
              f"{logged} logged; {drifted_rows} of {len(raw)} from the drifted part of the source")
        run.run([str(run.BIN / "readmit-data"), "load", "--batch", str(number), "--quiet"], env)
        run.dag_test("preprocess_incremental", env)
        run.dag_test("monitor_drift", env)
        checks = _checks_since(env, before_check)
        triggered = [c for c in checks if c["triggered"]]
        version = _serving(env)
        if triggered:
            reason = "; ".join(c["reason"] for c in triggered if c["reason"])
            print(f"  monitoring asks for retraining: {reason}")
            run.dag_test("train_and_register", env, conf={"reason": reason})
            now = run.champion(env)
            if now is not None and str(now["version"]) != version:
                version = _wait_for_version(env, str(now["version"]))
                print(f"  the API now serves v{version}")
            else:
                print(f"  the champion stays v{version}: the retrained candidate was not promoted (its run's gate.* "
                      "tags say why)")
        table.append((batch_id, f"{drifted_rows / len(raw):.0%}", _share(checks, "batches"),
                      _share(checks, "predictions"), _arrival_auc(env, batch_id), logged,
                      "yes" if triggered else "no", version))

    run.step("3/3 what monitoring saw")
    header = ("batch", "drifted rows", "drift (batch)", "drift (live)", "AUC on arrival", "logged", "retrained",
              "serving")
    print("  " + "  ".join(f"{h:>14}" for h in header))
    for batch_id, part, share, live, auc, logged, retrained, version in table:
        auc_text = "-" if auc is None else f"{auc:.3f}"
        print("  " + "  ".join(f"{v:>14}" for v in (batch_id, part, share, live, auc_text, logged, retrained,
                                                       f"v{version}")))
    print(f"\nCleanData ({env['CLEAN_DB_URL']}): arrival_performance, drift_checks, feature_drift")
    print(f"prediction log ({env['PREDICTIONS_DB_URL']}): prediction_log")
    print(f"MLflow {run.base_url(env, 'MLFLOW_PORT')}: experiment {env['MLFLOW_EXPERIMENT_NAME']}-monitoring "
          "(Evidently's reports), retraining runs tagged trigger.reason")
    print(f"API {run.base_url(env, 'API_PORT')}/metrics (readmit_api_prediction_log_*), UI "
          f"{run.base_url(env, 'UI_PORT')}; credentials: {run.CREDENTIALS}")
    print(f"\nsimulated in {time.perf_counter() - started:.0f} s; `make simulate-down` stops its services.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=("run", "down", "status"))
    parser.add_argument("--rows", type=int, default=30_000, help="encounters of the synthetic source")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift", type=float, default=1.5, help="strength of the drift (0: none)")
    parser.add_argument("--drift-from", type=float, default=0.5,
                        help="share of the source (in source order) before the drift starts")
    parser.add_argument("--batch-size", type=int, default=5_000, help="train rows per batch")
    parser.add_argument("--initial-batches", type=int, default=2, help="batches the first champion learns from")
    args = parser.parse_args()
    if args.command == "down":
        run.down()
    elif args.command == "status":
        run.status()
    else:
        simulate(args.rows, args.seed, args.drift, args.drift_from, args.batch_size, args.initial_batches)


if __name__ == "__main__":
    main()
