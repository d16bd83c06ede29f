"""The API's read-only identity in CleanData (patient history): MySQL user ``history_reader``.

What must hold for the API on node 3 to read CleanData's ``clean_encounters`` on node 1, and nothing else:

* its password is drawn by the readmit_secrets role (``mysql_data_history_password``), rotated with the
  other database users, and reaches the pods as key ``history-password`` of Secret ``mysql-data``;
* ``server1-data/k8s/mysql-data-init.sh`` creates the user with SELECT on ``cleandata.clean_encounters``
  only, on a fresh data directory (the mysql image's entrypoint) and again on an existing install (Job
  ``mysql-data-setup``, which runs the same script against the running server: every statement is
  idempotent);
* the API's ``HISTORY_DB_URL`` is composed in its pod from that Secret: user ``history_reader``, Service
  ``mysql-data:3306``, database ``cleandata``, no literal password;
* the NetworkPolicies let the API's pods, and the Job's, reach ``mysql-data:3306``, and nothing more.

The last test runs the real thing on a private MariaDB (standing in for MySQL 8.4, as in the three-host
test): the init script as the image runs it on a fresh install, the pipeline's own schema creation, then
an install from before the user existed brought up to date by the Job's own command line; after each,
the API's URL logs in and may read ``clean_encounters`` and nothing else.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ..e2e.manifests import Container, Manifests
from . import reachability as r
from .conftest import VENV_BIN, created_secrets, role_defaults
from .mariadb import (
    INIT_SCRIPT,
    JOB,
    MYSQL_INITDB,
    fresh_install,
    here,
    init_statements,
    mysql_error,
    privileges,
    run_job,
)
from .test_network_policies import AROUND

USER = "history_reader"
TABLE = "cleandata.clean_encounters"
SECRET, KEY, SECRET_VALUE = "mysql-data", "history-password", "mysql_data_history_password"


# -- the secret -----------------------------------------------------------------------------------------------


def test_the_password_is_drawn_rotated_and_given_to_the_pods_as_a_secret_key():
    """Drawn like the other database passwords (test_ansible runs the role), rotated with them."""
    defaults = role_defaults("readmit_secrets")
    drawn = defaults["readmit_secrets_generated"][SECRET_VALUE]
    assert "ansible.builtin.password" in drawn and "readmit_secrets_length" in drawn, drawn
    assert SECRET_VALUE in defaults["readmit_secrets_rotatable"]
    (user,) = [u for u in defaults["readmit_secrets_database_users"] if u["user"] == USER]
    assert user["statefulset"] == "mysql-data" and user["key"] == SECRET_VALUE
    # made by the deploy's Job, after the secrets role: a rotation must not stop on its absence
    assert user.get("may_be_missing") is True
    (secret,) = [s for s in defaults["readmit_secrets_kubernetes"] if s["name"] == SECRET]
    assert secret["data"][KEY] == "{{ readmit_secrets_values." + SECRET_VALUE + " }}"


# -- the grant ------------------------------------------------------------------------------------------------


IDEMPOTENT = re.compile(r"^(CREATE (DATABASE|USER) IF NOT EXISTS |GRANT |REVOKE |FLUSH PRIVILEGES$"
                        r"|ALTER USER '[^']+'@'[^']+' WITH (MAX_\w+ \d+ ?)+$)")


def test_every_statement_of_the_init_script_may_run_again():
    """Job mysql-data-setup runs the script on a server that has run it before: nothing may fail or
    change a password there (only rotate.yml changes passwords, with the Secrets)."""
    statements = init_statements()
    assert len(statements) > 5
    assert [s for s in statements if not IDEMPOTENT.match(s)] == []


def test_the_init_script_grants_select_on_clean_encounters_only():
    """GRANTs minus REVOKEs for the user: SELECT on the one table; the password is the pod's variable."""
    statements = init_statements()
    created = [s for s in statements if s.startswith(f"CREATE USER IF NOT EXISTS '{USER}'@'%'")]
    assert created == [f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED WITH mysql_native_password "
                       "BY '${HISTORY_DB_PASSWORD}'"]
    assert privileges(USER, statements) == {TABLE: {"SELECT"}}


# -- the manifests ---------------------------------------------------------------------------------------------


def env_entries(container: Container) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.spec.get("env") or []}


def secret_ref(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def api_container(manifests: Manifests) -> Container:
    return manifests.container(service="api")


def test_the_api_reads_cleandata_as_history_reader_with_the_secrets_password(manifests, secret_values):
    """HISTORY_DB_URL names the user, the Service and the database; the password only as $(VAR)."""
    from sqlalchemy import make_url

    api = api_container(manifests)
    entries = env_entries(api)
    names = list(entries)
    assert secret_ref(entries["HISTORY_DB_PASSWORD"]) == (SECRET, KEY)
    assert KEY in created_secrets()[SECRET]
    # the kubelet expands $(VAR) only from variables defined earlier in the list
    assert names.index("HISTORY_DB_PASSWORD") < names.index("HISTORY_DB_URL")
    written = make_url(entries["HISTORY_DB_URL"]["value"])
    reference = "$(HISTORY_DB_PASSWORD)"  # the kubelet's substitution, not a value
    assert written.password == reference, "the URL must not hold a literal password"
    assert (written.drivername, written.username, written.host, written.port, written.database) == (
        "mysql+pymysql", USER, "mysql-data", 3306, "cleandata")
    assert manifests.service_port("mysql-data") == 3306
    # what the pod gets: the Secret's value in the URL
    url = make_url(manifests.environment(api, secret_values)["HISTORY_DB_URL"])
    assert url.password == secret_values[SECRET][KEY]


def test_the_setup_job_runs_the_statefulsets_init_script_with_the_same_variables(manifests):
    """Day two runs exactly what a fresh install runs, with the same passwords, at the Service."""
    server = manifests.container(service="mysql-data")
    (job,) = [c for c in manifests.containers() if c.workload_name == JOB]
    assert job.workload["kind"] == "Job"
    assert manifests.volume_config_map(server, MYSQL_INITDB) == {"mysql-data-init.sh": INIT_SCRIPT.read_text()}
    mounts = manifests.config_map_mounts(job)
    (mount_path,) = [path for path, files in mounts.items() if files == {"mysql-data-init.sh": INIT_SCRIPT.read_text()}]
    script = job.raw_argv[-1]
    assert job.raw_argv[:2] == ["/bin/bash", "-c"]
    assert f". {mount_path}/mysql-data-init.sh" in script
    assert "--host=mysql-data --port=3306" in script
    used = set(re.findall(r"\$\{(\w+)\}", INIT_SCRIPT.read_text()))
    assert "HISTORY_DB_PASSWORD" in used
    server_env, job_env = env_entries(server), env_entries(job)
    for name in used:
        assert secret_ref(server_env[name]) is not None, name
        assert secret_ref(server_env[name]) == secret_ref(job_env[name]), name
    root = (SECRET, "root-password")
    assert secret_ref(job_env["MYSQL_PWD"]) == secret_ref(server_env["MYSQL_ROOT_PASSWORD"]) == root


# -- the network path ------------------------------------------------------------------------------------------


def test_the_api_may_reach_mysql_data_and_the_data_node_nothing_more_from_node_3(rendered, all_objects):
    """The new paths (api and the Job to mysql-data:3306) are open; nothing else of node 3 reaches node 1's
    pods but Grafana's monitoring reader."""
    policies = r.network_policies(all_objects)
    platform = [p for folder in rendered for p in r.platform_pods(rendered[folder].objects)]
    allowed = r.matrix([*platform, *AROUND], policies)
    assert ("api", "mysql-data:3306") in allowed
    assert ("mysql-data-setup", "mysql-data:3306") in allowed
    serving = {p.name for p in r.platform_pods(rendered["server3-serving"].objects)}
    data = {p.name for p in r.platform_pods(rendered["server1-data"].objects)}
    # (and Grafana's monitoring reader: tests/deploy/test_monitoring_identities.py)
    assert {(s, d) for s, d in allowed if s in serving and d.split(":")[0] in data} == {
        ("api", "mysql-data:3306"), ("grafana", "mysql-data:3306")}
    assert {d for s, d in allowed if s == "api"} == {"mlflow:5000", "mysql-data:3306", "kube-dns:53", "kube-dns:53/UDP"}
    assert {d for s, d in allowed if s == JOB} == {"mysql-data:3306", "kube-dns:53", "kube-dns:53/UDP"}
    assert not {s for s, d in allowed if d.startswith(f"{JOB}:")}, "nothing connects to the Job"


# -- the real thing: MariaDB -----------------------------------------------------------------------------------


def assert_reads_clean_encounters_only(url: str, tables_exist: bool) -> None:
    """Logged in with the API's URL: the grants are SELECT on clean_encounters (and at most 32
    connections); with the pipeline's tables there, it reads a patient's encounters (the columns the
    API's lookup selects) and nothing else."""
    from readmit_contract.history import HISTORY_INPUTS, PATIENT
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            grants = [" ".join(row[0].replace("`", "").split()) for row in conn.execute(text("SHOW GRANTS"))]
            found = {(m.group(1), m.group(2)) for g in grants if (m := re.match(r"^GRANT (.+?) ON (\S+) TO ", g))}
            assert found == {("USAGE", "*.*"), ("SELECT", TABLE)}, grants
            assert any("MAX_USER_CONNECTIONS 32" in g for g in grants), grants
            databases = {row[0] for row in conn.execute(text("SHOW DATABASES"))}
            assert databases == {"information_schema", "cleandata"}, databases
            if not tables_exist:
                return
            assert conn.execute(text("SELECT COUNT(*) FROM clean_encounters")).scalar() > 0
            # the API's query: the contract's column names (constants), the patient as a parameter
            patient = conn.execute(text(f"SELECT {PATIENT} FROM clean_encounters LIMIT 1")).scalar()  # noqa: S608
            rows = conn.execute(text(f"SELECT {', '.join(HISTORY_INPUTS)} FROM clean_encounters "  # noqa: S608
                                     f"WHERE {PATIENT} = :p"), {"p": patient}).all()
            assert rows and all(len(row) == len(HISTORY_INPUTS) for row in rows)
            refused = {
                "another CleanData table": "SELECT COUNT(*) FROM patient_history",
                "RawData": "SELECT COUNT(*) FROM rawdata.raw_encounters",
                "a write": "DELETE FROM clean_encounters",
                "a change of schema": "ALTER TABLE clean_encounters ADD COLUMN x INT",
                "a new table": "CREATE TABLE history_copy (x INT)",
            }
            for what, sql in refused.items():
                with pytest.raises(DBAPIError) as caught:
                    conn.execute(text(sql))
                assert mysql_error(caught.value) in (1142, 1044), f"{what}: {caught.value}"
    finally:
        engine.dispose()


def pipeline(command: list[str], data_env: Mapping[str, str], port: int, scratch: Path) -> None:
    """readmit-data as the DAG tasks run it (user readmit, their store URLs), on the test server."""
    env = {**os.environ, "RAW_DB_URL": here(data_env["RAW_DB_URL"], port),
           "CLEAN_DB_URL": here(data_env["CLEAN_DB_URL"], port)}
    done = subprocess.run([str(VENV_BIN / "readmit-data"), *command], env=env, capture_output=True, text=True,
                          timeout=300, cwd=scratch)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_fresh_install_and_day_two_give_the_api_select_on_clean_encounters_only(
        mariadb, manifests, secret_values, tmp_path):
    root_password = fresh_install(mariadb, manifests, secret_values, tmp_path)

    api_url = here(manifests.environment(api_container(manifests), secret_values)["HISTORY_DB_URL"], mariadb.port)
    # Fresh install: the user and its grant exist before the pipeline's tables do.
    assert_reads_clean_encounters_only(api_url, tables_exist=False)

    # The pipeline makes its stores and fills them as user readmit: a raw load, then what the DAG does.
    scheduler = manifests.container(argv_prefix=["airflow", "scheduler"])
    data_env = manifests.environment(scheduler, secret_values)
    pipeline(["load", "--source", "synthetic:600:3", "--quiet"], data_env, mariadb.port, tmp_path)
    pipeline(["preprocess"], data_env, mariadb.port, tmp_path)
    assert_reads_clean_encounters_only(api_url, tables_exist=True)

    # Day two: an install made before the user existed, its stores in use. The Job brings it up to date.
    assert mariadb.root(f"DROP USER '{USER}'@'%';", root_password).returncode == 0
    tables_before = mariadb.root("SHOW TABLES FROM cleandata;", root_password).stdout
    job = run_job(manifests, mariadb, secret_values, tmp_path / "job")
    assert job.returncode == 0, job.stdout + job.stderr
    assert "applied" in job.stdout
    assert_reads_clean_encounters_only(api_url, tables_exist=True)

    # Again (a later deploy re-creates the Job): no error, nothing changes, the other users still log in.
    again = run_job(manifests, mariadb, secret_values, tmp_path / "job-again")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_reads_clean_encounters_only(api_url, tables_exist=True)
    assert mariadb.root("SHOW TABLES FROM cleandata;", root_password).stdout == tables_before
    pipeline(["status"], data_env, mariadb.port, tmp_path)
    for text_ in (job.stdout, job.stderr, again.stdout, again.stderr):
        assert not any(v in text_ for v in secret_values[SECRET].values()), "a password was printed"
