"""Airflow's part of `make up`, in one process (started by run.py, which reads its output).

1. `airflow db migrate` (Airflow's metadata DB), then the modules the tasks use are imported, while run.py
   starts MLflow and loads the raw data (nothing here reads RawData or MLflow yet);
2. on ``go`` (a line on stdin: the raw load succeeded and MLflow answers): the status of the stores,
   ``preprocess_incremental``, the status again, and ``train_and_register`` when CleanData changed or no
   champion exists.

The DAGs run for real, each through Airflow's own ``airflow dags test`` command (its CLI function, called here:
one Airflow start-up and one in-process execution API for everything, instead of one per command, and no
``readmit-data status`` processes). Airflow's settings and the training identity come from the environment,
as for the ``airflow`` command.

Output: what Airflow and the tasks print on stdout, with control lines for run.py that start with ``@@``::

    @@migrated SECONDS | @@failed migrate
    @@dag DAG_ID LOG_PATH          a DAG starts; stderr goes to LOG_PATH meanwhile
    @@done DAG_ID success|failed SECONDS
    @@skip train_and_register      CleanData unchanged and a champion exists
    @@status JSON                  the stores' status after preprocessing (a JSON string)

    python embedded/pipeline.py LOG_DIR
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

STDOUT, STDERR = 1, 2


def control(message: str) -> None:
    sys.stdout.flush()
    print(f"@@{message}", flush=True)


@contextlib.contextmanager
def output_to(path: Path, streams: tuple[int, ...]):
    """File descriptors ``streams`` (1: stdout, 2: stderr) appended to ``path`` (truncated first) meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    path.write_text("")
    target = os.open(path, os.O_WRONLY | os.O_APPEND)
    saved = {fd: os.dup(fd) for fd in streams}
    try:
        for fd in streams:
            os.dup2(target, fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(target)


def airflow(*argv: str) -> None:
    """One ``airflow`` command, in this process (what ``airflow.__main__.main`` does, for these commands)."""
    from airflow import configuration  # noqa: F401 - first, as airflow.__main__ does (its settings' import order)
    from airflow.cli import cli_parser
    from airflow.configuration import write_default_airflow_configuration_if_needed

    args = cli_parser.get_parser().parse_args(list(argv))
    write_default_airflow_configuration_if_needed()
    args.func(args)


def status() -> str:
    """What ``readmit-data status`` prints."""
    from readmit_data.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if main(["status"]) != 0:
            raise SystemExit("readmit-data status failed")
    return out.getvalue()


def has_champion() -> bool:
    """Whether MODEL_NAME@MODEL_ALIAS exists (an error asking counts as no: training runs, as it would then)."""
    from mlflow import MlflowClient
    from readmit_data.mlflow_access import bounded_http
    from readmit_data.settings import DataSettings

    settings = DataSettings()
    try:
        with bounded_http(settings):
            MlflowClient(settings.mlflow_tracking_uri).get_model_version_by_alias(settings.model_name,
                                                                                  settings.model_alias)
    except Exception:  # noqa: BLE001 - whatever the answer, without a champion we train
        return False
    return True


def dag_test(dag_id: str, logs: Path) -> bool:
    log_path = logs / f"airflow-{dag_id}.log"
    started = time.perf_counter()
    ok = True
    with output_to(log_path, (STDERR,)):
        control(f"dag {dag_id} {log_path}")
        try:
            airflow("dags", "test", dag_id)
        except SystemExit as exc:  # "DagRun failed"
            ok = exc.code in (None, 0)
        except Exception:  # noqa: BLE001 - reported as the DAG's failure; the traceback is in its log
            import traceback

            traceback.print_exc()
            ok = False
    control(f"done {dag_id} {'success' if ok else 'failed'} {time.perf_counter() - started:.1f}")
    return ok


def warm_up() -> None:
    """Import what the tasks import (while run.py loads the raw data), so the DAGs do not wait for it."""
    import httpx
    import readmit_data.arrival  # noqa: F401
    import readmit_data.preprocessing  # noqa: F401
    import readmit_data.registry  # noqa: F401
    import readmit_data.training  # noqa: F401
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    # the in-process execution API the tasks talk to: built, and its routing set up by a first request (a few
    # seconds, paid by the first task otherwise)
    with httpx.Client(transport=in_process_api_server().transport, base_url="http://in-process/execution") as api:
        api.get("/health")


def main() -> int:
    logs = Path(sys.argv[1])
    started = time.perf_counter()
    try:
        with output_to(logs / "airflow-db-migrate.log", (STDOUT, STDERR)):
            airflow("db", "migrate")
    except (Exception, SystemExit):  # noqa: BLE001 - its log says why
        control("failed migrate")
        return 1
    control(f"migrated {time.perf_counter() - started:.1f}")
    with output_to(logs / "airflow-warm-up.log", (STDOUT, STDERR)), contextlib.suppress(Exception):
        warm_up()  # only a head start: what fails here fails again, and is reported, in the DAG
    if sys.stdin.readline().strip() != "go":
        return 0
    before = status()
    if not dag_test("preprocess_incremental", logs):
        return 1
    after = status()
    control("status " + json.dumps(after))
    if before == after and has_champion():
        control("skip train_and_register")
        return 0
    return 0 if dag_test("train_and_register", logs) else 1


if __name__ == "__main__":
    sys.exit(main())
