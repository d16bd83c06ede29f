"""Model monitoring's identities on MySQL mysql-data (issue 16), and the SQL of Grafana's "Model monitoring".

* Database ``predictions`` holds the API's prediction log (``readmit_contract.prediction_log``). The API (node 3)
  writes it as ``prediction_writer``: INSERT into ``prediction_log`` and the CREATE that lets it make the table
  on its first write (``readmit_serving.api.prediction_log.create_table``: one statement, indexes inline, so no
  INDEX privilege), nothing else, at most 32 connections. Node 1's DAG tasks read and prune it as ``readmit``
  (ALL on ``predictions.*``, like RawData and CleanData), with ``PREDICTIONS_DB_URL``.
* Grafana (node 3) reads CleanData's monitoring tables as ``grafana_reader``: SELECT on ``arrival_performance``,
  ``drift_checks`` and ``feature_drift`` only (granted before the tables exist: CREATE is granted with SELECT,
  then revoked), at most 8 connections; its datasource file reads the password from the pod's environment.
* Both passwords are drawn and rotated by the readmit_secrets role and delivered as keys of Secret
  ``mysql-data``; the URLs are composed in the pods; the NetworkPolicies open ``grafana`` -> ``mysql-data:3306``
  (``api`` -> ``mysql-data:3306`` is open already) and the Pushgateway to exactly its two clients.

The slow test runs the real thing on a private MariaDB: the init script as the image runs it on a fresh install,
the API's own table creation and inserts as ``prediction_writer``, CleanData made by the pipeline's code
(``create_clean_schema``) and filled as ``readmit``, then every SQL panel of the dashboard, its Grafana macros
expanded as Grafana's MySQL data source expands them, as ``grafana_reader``: each returns rows, and each identity
is refused everything else. Then an install from before the users existed is brought up to date by the Job's
own command line, and everything holds again.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import yaml

from ..e2e.manifests import Container
from . import reachability as r
from .conftest import REPO_ROOT, created_secrets, role_defaults
from .mariadb import fresh_install, here, init_statements, max_user_connections, mysql_error, privileges, run_job
from .test_network_policies import AROUND

SECRET = "mysql-data"  # noqa: S105 (a Secret's name)
MONITORING_TABLES = ("arrival_performance", "drift_checks", "feature_drift")
GRAFANA = REPO_ROOT / "server3-serving" / "monitoring" / "grafana"
DATASOURCE_FILE = GRAFANA / "datasources" / "cleandata.yml"
DASHBOARD = GRAFANA / "dashboards" / "model-monitoring.json"


@dataclass(frozen=True)
class Identity:
    user: str
    key: str  # of Secret mysql-data
    value: str  # of the secrets file / Secret readmit-platform
    variable: str  # the init script's (and the StatefulSet's, the Job's) variable
    grants: dict[str, set[str]]
    connections: int


PREDICTION_WRITER = Identity("prediction_writer", "prediction-writer-password", "mysql_data_prediction_writer_password",
                             "PREDICTIONS_DB_PASSWORD",
                             {"predictions.prediction_log": {"INSERT", "CREATE"}}, 32)
GRAFANA_READER = Identity("grafana_reader", "grafana-reader-password", "mysql_data_grafana_reader_password",
                          "GRAFANA_READER_DB_PASSWORD",
                          {f"cleandata.{table}": {"SELECT"} for table in MONITORING_TABLES}, 8)
IDENTITIES = {i.user: i for i in (PREDICTION_WRITER, GRAFANA_READER)}


# -- the secrets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", sorted(IDENTITIES))
def test_the_passwords_are_drawn_rotated_and_given_to_the_pods_as_secret_keys(user):
    identity = IDENTITIES[user]
    defaults = role_defaults("readmit_secrets")
    drawn = defaults["readmit_secrets_generated"][identity.value]
    assert "ansible.builtin.password" in drawn and "readmit_secrets_length" in drawn, drawn
    assert identity.value in defaults["readmit_secrets_rotatable"]
    (entry,) = [u for u in defaults["readmit_secrets_database_users"] if u["user"] == user]
    # made by the deploy's Job, after the secrets role: a rotation must not stop on its absence
    assert entry == {"statefulset": "mysql-data", "container": "mysql", "user": user, "key": identity.value,
                     "may_be_missing": True}
    (secret,) = [s for s in defaults["readmit_secrets_kubernetes"] if s["name"] == SECRET]
    assert secret["data"][identity.key] == "{{ readmit_secrets_values." + identity.value + " }}"


# -- the grants -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", sorted(IDENTITIES))
def test_the_init_script_grants_each_identity_what_it_needs_and_nothing_more(user):
    identity = IDENTITIES[user]
    statements = init_statements()
    created = [s for s in statements if s.startswith(f"CREATE USER IF NOT EXISTS '{user}'@'%'")]
    assert created == [f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED WITH mysql_native_password "
                       f"BY '${{{identity.variable}}}'"]
    assert privileges(user, statements) == identity.grants
    assert max_user_connections(user) == identity.connections


def test_the_predictions_database_belongs_to_the_data_tasks_identity():
    statements = init_statements()
    assert "CREATE DATABASE IF NOT EXISTS predictions CHARACTER SET utf8mb4" in statements
    assert privileges("readmit", statements) == {f"{db}.*": {"ALL PRIVILEGES"}
                                                 for db in ("rawdata", "cleandata", "predictions")}


# -- the manifests -----------------------------------------------------------------------------------------------


def env_entries(container: Container) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.spec.get("env") or []}


def secret_ref(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def composed_url(container: Container, url_variable: str, password_variable: str) -> Any:
    """The URL the pod composes: the password only as $(VAR), that VAR defined earlier (the kubelet expands
    only those)."""
    from sqlalchemy import make_url

    entries = env_entries(container)
    names = list(entries)
    assert names.index(password_variable) < names.index(url_variable)
    url = make_url(entries[url_variable]["value"])
    assert url.password == f"$({password_variable})", "the URL must not hold a literal password"
    return url


def test_the_api_writes_its_prediction_log_as_prediction_writer(manifests, secret_values):
    api = manifests.container(service="api")
    entries = env_entries(api)
    assert secret_ref(entries["PREDICTIONS_DB_PASSWORD"]) == (SECRET, PREDICTION_WRITER.key)
    url = composed_url(api, "PREDICTIONS_DB_URL", "PREDICTIONS_DB_PASSWORD")
    assert (url.drivername, url.username, url.host, url.port, url.database) == (
        "mysql+pymysql", "prediction_writer", "mysql-data", 3306, "predictions")
    got = manifests.environment(api, secret_values)["PREDICTIONS_DB_URL"]
    assert secret_values[SECRET][PREDICTION_WRITER.key] in got


def test_the_data_tasks_read_and_prune_the_prediction_log_as_readmit(manifests, secret_values):
    """The scheduler runs monitor_drift (LocalExecutor): PREDICTIONS_DB_URL beside CLEAN_DB_URL, same identity;
    the retention is written out with the code's default (test_manifests checks it against DataSettings)."""
    scheduler = manifests.container(argv_prefix=["airflow", "scheduler"])
    url = composed_url(scheduler, "PREDICTIONS_DB_URL", "READMIT_DB_PASSWORD")
    clean = composed_url(scheduler, "CLEAN_DB_URL", "READMIT_DB_PASSWORD")
    assert (url.drivername, url.username, url.host, url.port, url.database) == (
        clean.drivername, "readmit", "mysql-data", 3306, "predictions")
    env = manifests.environment(scheduler, secret_values)
    assert env["PREDICTION_LOG_RETENTION_DAYS"] == "180"
    assert env["PUSHGATEWAY_URL"] == "http://pushgateway:9091"
    assert manifests.service_port("pushgateway") == 9091


def datasource() -> dict[str, Any]:
    (source,) = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"]
    return source


def test_grafana_reads_cleandata_as_grafana_reader_with_the_secrets_password(manifests, secret_values):
    """The datasource file (provisioned from ConfigMap grafana-datasources) names the Service, the database and
    the user; its password is $__env{VAR} of a variable the Grafana pod takes from the Secret. Its pool stays
    within the user's connection limit; its session is UTC, as CleanData's times are."""
    source = datasource()
    assert (source["uid"], source["type"], source["access"]) == ("cleandata", "mysql", "proxy")
    assert (source["url"], source["user"], source["jsonData"]["database"]) == (
        "mysql-data:3306", "grafana_reader", "cleandata")
    assert source["jsonData"]["timezone"] == "+00:00"
    assert 0 < source["jsonData"]["maxOpenConns"] <= GRAFANA_READER.connections // 2
    assert source["jsonData"]["maxIdleConns"] <= source["jsonData"]["maxOpenConns"]
    assert source.get("editable") is False and "password" not in source
    variable = re.fullmatch(r"\$__env\{(\w+)\}", source["secureJsonData"]["password"]).group(1)
    grafana = manifests.container(service="grafana")
    assert secret_ref(env_entries(grafana)[variable]) == (SECRET, GRAFANA_READER.key)
    assert manifests.environment(grafana, secret_values)[variable] == secret_values[SECRET][GRAFANA_READER.key]
    mounted = manifests.volume_config_map(grafana, "/etc/grafana/provisioning/datasources")
    assert mounted["cleandata.yml"] == DATASOURCE_FILE.read_text()
    assert manifests.service_port("mysql-data") == 3306


def test_the_setup_job_and_the_server_know_both_passwords(manifests):
    """What the init script reads, the StatefulSet (fresh install) and the Job (day two) both get from the
    Secret (test_history_reader checks every variable the same way)."""
    server = env_entries(manifests.container(service="mysql-data"))
    (job,) = [c for c in manifests.containers() if c.workload_name == "mysql-data-setup"]
    for identity in IDENTITIES.values():
        assert secret_ref(server[identity.variable]) == secret_ref(env_entries(job)[identity.variable]) == (
            SECRET, identity.key)
        assert identity.key in created_secrets()[SECRET]


# -- the network paths ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def allowed(rendered, all_objects) -> set[tuple[str, str]]:
    platform = [p for folder in rendered for p in r.platform_pods(rendered[folder].objects)]
    return r.matrix([*platform, *AROUND], r.network_policies(all_objects))


DNS = {"kube-dns:53", "kube-dns:53/UDP"}


def test_grafana_reaches_prometheus_and_mysql_data_only(allowed):
    assert {d for s, d in allowed if s == "grafana"} == {"prometheus:9090", "mysql-data:3306", *DNS}


def test_only_the_scheduler_pushes_and_only_prometheus_scrapes_the_pushgateway(allowed):
    """No Ingress, no other pod (a pod that could push could fake the figures the alerts read); the Pushgateway
    itself connects nowhere but to DNS."""
    assert {s for s, d in allowed if d.split(":")[0] == "pushgateway"} == {"airflow-scheduler", "prometheus"}
    assert {d for s, d in allowed if d.split(":")[0] == "pushgateway"} == {"pushgateway:9091"}
    assert {d for s, d in allowed if s == "pushgateway"} <= DNS
    assert ("prometheus", "pushgateway:9091") in allowed and ("airflow-scheduler", "pushgateway:9091") in allowed


# -- the dashboard's SQL, as Grafana's MySQL data source runs it ------------------------------------------------

# grafana/grafana pkg/tsdb/mysql/macros.go: a macro is $name(args); Grafana refuses these functions outright.
GRAFANA_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
GRAFANA_RESTRICTED = re.compile(r"(?im)([\s]*show[\s]+grants|[\s,]session_user\([^\)]*\)|[\s,]current_user"
                                r"(\([^\)]*\))?|[\s,]system_user\([^\)]*\)|[\s,]user\([^\)]*\))([\s,;]|$)")


def sql_panels() -> list[tuple[str, dict[str, Any]]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target) for panel in board["panels"] for target in panel.get("targets", [])
            if target["datasource"]["uid"] == datasource()["uid"]]


def dashboard_range() -> tuple[int, int]:
    """The dashboard's default time range (now-Nd / now-Nh to now) as Unix seconds."""
    board = json.loads(DASHBOARD.read_text())
    found = re.fullmatch(r"now-(\d+)([dh])", board["time"]["from"])
    assert found and board["time"]["to"] == "now", board["time"]
    span = int(found.group(1)) * (86400 if found.group(2) == "d" else 3600)
    now = int(time.time())
    return now - span, now


def grafana_mysql_sql(sql: str, start: int, end: int, interval_ms: int = 60_000) -> str:
    """A panel's rawSql as Grafana's MySQL data source sends it (sqleng.Interpolate's global substitutions,
    then macros.go's macros), for the time range [start, end] in Unix seconds."""
    sql = sql.replace("$__interval_ms", str(interval_ms)).replace("$__interval", f"{interval_ms // 1000}s")
    sql = sql.replace("$__unixEpochFrom()", str(start)).replace("$__unixEpochTo()", str(end))
    assert not GRAFANA_RESTRICTED.search(sql), "Grafana refuses SHOW GRANTS and user functions"

    def macro(found: re.Match) -> str:
        name, args = found.group(1), [a.strip() for a in found.group(2).split(",")]
        expansions = {
            "__time": lambda: f"UNIX_TIMESTAMP({args[0]}) as time_sec",
            "__timeEpoch": lambda: f"UNIX_TIMESTAMP({args[0]}) as time_sec",
            "__timeFilter": lambda: f"{args[0]} BETWEEN FROM_UNIXTIME({start}) AND FROM_UNIXTIME({end})",
            "__timeFrom": lambda: f"FROM_UNIXTIME({start})",
            "__timeTo": lambda: f"FROM_UNIXTIME({end})",
            "__unixEpochFilter": lambda: f"{args[0]} >= {start} AND {args[0]} <= {end}",
        }
        assert name in expansions, f"macro ${name} is not one this test expands"
        return expansions[name]()

    expanded = GRAFANA_MACRO.sub(macro, sql)
    assert "$" not in expanded, f"a variable or macro left in {expanded!r}"
    return expanded


def test_grafana_macros_expand_as_grafanas_mysql_data_source_does():
    assert grafana_mysql_sql("SELECT 1 FROM t WHERE $__timeFilter(checked_at) AND x < $__unixEpochTo()", 10, 20) == (
        "SELECT 1 FROM t WHERE checked_at BETWEEN FROM_UNIXTIME(10) AND FROM_UNIXTIME(20) AND x < 20")
    assert grafana_mysql_sql("SELECT $__time(t), $__timeFrom()", 1, 2) == (
        "SELECT UNIX_TIMESTAMP(t) as time_sec, FROM_UNIXTIME(1)")
    with pytest.raises(AssertionError):
        grafana_mysql_sql("SELECT $__timeGroup(t, 1h)", 1, 2)  # not used by the dashboard: not modelled
    with pytest.raises(AssertionError):
        grafana_mysql_sql("SELECT current_user", 1, 2)


TABLE_NAMES = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_.]*)", re.IGNORECASE)
QUOTED = re.compile(r"`[^`]*`|'[^']*'")
"""Quoted names and strings: column aliases such as `drop from validation` name no table."""


def test_the_sql_panels_read_only_what_grafana_reader_may_read():
    """Every SQL panel reads the three monitoring tables (subqueries aside), on the cleandata datasource."""
    panels = sql_panels()
    assert len(panels) >= 6
    read = set()
    for title, target in panels:
        assert target["rawQuery"] is True and target["format"] in ("table", "time_series"), title
        names = set(TABLE_NAMES.findall(QUOTED.sub("", target["rawSql"]))) - {"latest"}  # a derived table's alias
        assert names and names <= set(MONITORING_TABLES), f"{title}: reads {names}"
        read |= names
    assert read == set(MONITORING_TABLES)


# -- the real thing: MariaDB ------------------------------------------------------------------------------------


def engine(url: str, **kwargs):
    from sqlalchemy import create_engine

    return create_engine(url, **kwargs)


def grants_of(conn) -> tuple[set[tuple[str, str]], list[str]]:
    from sqlalchemy import text

    grants = [" ".join(row[0].replace("`", "").split()) for row in conn.execute(text("SHOW GRANTS"))]
    found = {(m.group(1), m.group(2)) for g in grants if (m := re.match(r"^GRANT (.+?) ON (\S+) TO ", g))}
    return found, grants


def refused(conn, statements: Mapping[str, str]) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    for what, sql in statements.items():
        with pytest.raises(DBAPIError) as caught:
            conn.execute(text(sql))
        assert mysql_error(caught.value) in (1142, 1143, 1044, 1045, 1049), f"{what}: {caught.value}"
        conn.rollback()


def fill_cleandata(url: str) -> None:
    """CleanData made by the pipeline's code, with what monitoring writes (as user readmit): three batches scored
    on arrival by two champion versions, and measured checks of both populations with their features."""
    from readmit_data import stores

    clean = engine(url)
    try:
        stores.create_clean_schema(clean)
        now = stores.utcnow()
        with clean.begin() as conn:
            conn.execute(stores.arrival_performance.insert(), [
                {"batch_id": f"train-000{n}", "model_name": "diabetes-readmission", "model_version": version,
                 "split": "train", "rows": 15000, "positives": 1680 + n, "new_patient_rows": 11000,
                 "roc_auc": 0.66 - 0.01 * n, "roc_auc_new_patients": 0.65 - 0.01 * n, "pr_auc": 0.21,
                 "brier": 0.097 + 0.001 * n, "observed_rate": 0.112 + 0.002 * n, "predicted_rate": 0.113,
                 "champion_val_roc_auc": 0.668, "scored_at": now - timedelta(days=4 - n, hours=int(version)),
                 "mlflow_run_id": f"{n:032x}"}
                for n in (2, 3, 4) for version in ("3", "4")])
            for population, hours, share, drifted in (("batches", 30, 2 / 47, 2), ("predictions", 6, 4 / 47, 4),
                                                      ("batches", 2, 1 / 47, 1)):
                check_id = conn.execute(stores.drift_checks.insert().values(
                    checked_at=now - timedelta(hours=hours), model_name="diabetes-readmission", model_version="4",
                    population=population, current_source="batches train-0003,train-0004",
                    current_key="0" * 64, reference_rows=20000, current_rows=30000, features=47,
                    drifted=drifted, share=share, retrain=int(share >= 0.05),
                    reason="data drift in the encounters scored: ..." if share >= 0.05 else None,
                    triggered=0)).inserted_primary_key[0]
                conn.execute(stores.feature_drift.insert(), [
                    {"check_id": check_id, "feature": f"feature_{i:02d}",
                     "method": "Wasserstein distance (normed)" if i % 2 else "Jensen-Shannon distance",
                     "score": 0.15 if i < drifted else 0.01 * (i % 7), "threshold": 0.1, "drifted": int(i < drifted)}
                    for i in range(47)])
    finally:
        clean.dispose()


def assert_grafana_reader_runs_every_sql_panel(url: str) -> None:
    """As grafana_reader, in Grafana's UTC session: exactly its grants, its connection bound, every panel's query
    returns rows (a time column for time series), and everything else is refused."""
    from sqlalchemy import text

    start, end = dashboard_range()
    reader = engine(url, connect_args={"init_command": f"SET time_zone = '{datasource()['jsonData']['timezone']}'"})
    try:
        with reader.connect() as conn:
            found, grants = grants_of(conn)
            assert found == {("USAGE", "*.*")} | {("SELECT", t) for t in GRAFANA_READER.grants}, grants
            assert any(f"MAX_USER_CONNECTIONS {GRAFANA_READER.connections}" in g for g in grants), grants
            assert {row[0] for row in conn.execute(text("SHOW DATABASES"))} == {"information_schema", "cleandata"}
            for title, target in sql_panels():
                result = conn.execute(text(grafana_mysql_sql(target["rawSql"], start, end)))
                rows = result.all()
                assert rows, f"{title}: no rows"
                if target["format"] == "time_series":
                    assert "time" in list(result.keys()), f"{title}: a time series needs a time column"
            refused(conn, {
                "clean encounters": "SELECT COUNT(*) FROM clean_encounters",
                "the prediction log": "SELECT COUNT(*) FROM predictions.prediction_log",
                "RawData": "SELECT COUNT(*) FROM rawdata.raw_encounters",
                "a write": "DELETE FROM drift_checks",
                "an insert": "INSERT INTO feature_drift (check_id, feature, method, threshold, drifted) "
                             "VALUES (1, 'x', 'y', 0.1, 0)",
                "a change of schema": "ALTER TABLE drift_checks ADD COLUMN x INT",
                "a new table": "CREATE TABLE monitoring_copy (x INT)",
            })
    finally:
        reader.dispose()


def log_predictions(url: str, rows: int) -> None:
    """What the API does on its first writes, as prediction_writer, with its own code: create the table when
    missing (with its indexes), insert rows."""
    from readmit_contract.prediction_log import prediction_log
    from readmit_data.stores import utcnow
    from readmit_serving.api.prediction_log import create_table

    writer = engine(url)
    try:
        with writer.begin() as conn:
            create_table(conn)
        with writer.begin() as conn:
            conn.execute(prediction_log.insert(), [
                {"request_id": f"{i:032x}", "position": 0, "predicted_at": utcnow() - timedelta(days=200 * (i % 2)),
                 "caller": "hospital", "endpoint": "predict", "model_name": "diabetes-readmission",
                 "model_version": "4", "encounter_id": 1000 + i, "patient_nbr": 50 + i, "encounter": "{}",
                 "scored": True, "probability": 0.2, "risk_band": "medium", "reason": None, "history": "off"}
                for i in range(rows)])
    finally:
        writer.dispose()


def assert_prediction_writer_only_appends(url: str) -> None:
    from sqlalchemy import text

    writer = engine(url)
    try:
        with writer.connect() as conn:
            found, grants = grants_of(conn)
            assert found == {("USAGE", "*.*"), ("INSERT, CREATE", "predictions.prediction_log")}, grants
            assert any(f"MAX_USER_CONNECTIONS {PREDICTION_WRITER.connections}" in g for g in grants), grants
            assert {row[0] for row in conn.execute(text("SHOW DATABASES"))} == {"information_schema", "predictions"}
            refused(conn, {
                "reading its own log": "SELECT COUNT(*) FROM prediction_log",
                "CleanData": "SELECT COUNT(*) FROM cleandata.drift_checks",
                "clean encounters": "SELECT COUNT(*) FROM cleandata.clean_encounters",
                "RawData": "SELECT COUNT(*) FROM rawdata.raw_encounters",
                "a delete": "DELETE FROM prediction_log",
                "an update": "UPDATE prediction_log SET scored = 0",
                "dropping the log": "DROP TABLE prediction_log",
                "another table": "CREATE TABLE predictions.other_table (x INT)",
                "an index": "CREATE INDEX ix_caller ON prediction_log (caller)",
            })
            indexes = {row[2] for row in conn.execute(text("SHOW INDEX FROM prediction_log"))}
            assert indexes == {"PRIMARY", "ix_prediction_log_predicted_at", "ix_prediction_log_request"}
    finally:
        writer.dispose()


def assert_readmit_reads_and_prunes_the_log(url: str, logged: int, old: int) -> None:
    """The data tasks' identity reads the log and deletes what is past the retention (``old`` rows are 200 days
    old; the default retention is 180)."""
    from readmit_contract.prediction_log import prediction_log
    from readmit_data.stores import utcnow
    from sqlalchemy import func, select

    store = engine(url)
    try:
        with store.begin() as conn:
            assert conn.execute(select(func.count()).select_from(prediction_log)).scalar() == logged
            deleted = conn.execute(prediction_log.delete().where(
                prediction_log.c.predicted_at < utcnow() - timedelta(days=180))).rowcount
            assert deleted == old
    finally:
        store.dispose()


@pytest.mark.slow
def test_fresh_install_and_day_two_give_each_monitoring_identity_exactly_its_part(
        mariadb, manifests, secret_values, tmp_path):
    root_password = fresh_install(mariadb, manifests, secret_values, tmp_path / "fresh")
    api_url = here(manifests.environment(manifests.container(service="api"), secret_values)["PREDICTIONS_DB_URL"],
                   mariadb.port)
    scheduler = manifests.environment(manifests.container(argv_prefix=["airflow", "scheduler"]), secret_values)
    source = datasource()
    grafana_env = manifests.environment(manifests.container(service="grafana"), secret_values)
    password = grafana_env[re.fullmatch(r"\$__env\{(\w+)\}", source["secureJsonData"]["password"]).group(1)]
    # what the datasource connects with (its url is mysql-data:3306: the test server here)
    grafana_url = here(f"mysql+pymysql://{source['user']}:{password}@{source['url']}/{source['jsonData']['database']}",
                       mariadb.port)

    # Fresh install: the API logs before the data node ever opened its store; CleanData made by the pipeline.
    log_predictions(api_url, rows=6)
    assert_prediction_writer_only_appends(api_url)
    fill_cleandata(here(scheduler["CLEAN_DB_URL"], mariadb.port))
    assert_grafana_reader_runs_every_sql_panel(grafana_url)
    assert_readmit_reads_and_prunes_the_log(here(scheduler["PREDICTIONS_DB_URL"], mariadb.port), logged=6, old=3)

    # Day two: an install from before the two users (and the predictions database's grants) existed, its stores
    # in use. The Job brings it up to date.
    dropped = mariadb.root("DROP USER 'prediction_writer'@'%';\nDROP USER 'grafana_reader'@'%';\n"
                           "REVOKE ALL PRIVILEGES ON predictions.* FROM 'readmit'@'%';\n", root_password)
    assert dropped.returncode == 0, dropped.stderr
    job = run_job(manifests, mariadb, secret_values, tmp_path / "job")
    assert job.returncode == 0, job.stdout + job.stderr
    log_predictions(api_url, rows=4)
    assert_prediction_writer_only_appends(api_url)
    assert_grafana_reader_runs_every_sql_panel(grafana_url)
    assert_readmit_reads_and_prunes_the_log(here(scheduler["PREDICTIONS_DB_URL"], mariadb.port), logged=3 + 4,
                                            old=2)

    # Again (a later deploy re-creates the Job): no error, nothing changes.
    again = run_job(manifests, mariadb, secret_values, tmp_path / "job-again")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_prediction_writer_only_appends(api_url)
    assert_grafana_reader_runs_every_sql_panel(grafana_url)
    for text_ in (job.stdout, job.stderr, again.stdout, again.stderr):
        assert not any(v in text_ for v in secret_values[SECRET].values()), "a password was printed"
