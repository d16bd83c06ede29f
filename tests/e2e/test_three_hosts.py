"""The three-node split over a network (issue 7): three hosts made of network namespaces on one bridge.

As root, ``netns.HostNetwork`` makes one namespace per host of ``inventory.ini`` (beside this file) and
a switch namespace holding their bridge; the hosts resolve the cluster's Service names to the host
running them. Every server folder runs on the host of its inventory group (the folder's node selector
-> ``microk8s_cluster_node_labels`` -> group), as the playbook places it:

* node 1 (data): MariaDB as ``mysql-data``, the raw loads (``readmit-data load``, the notebook's job),
  ``airflow db migrate`` on that MySQL, ``airflow dags test`` of ``preprocess_incremental`` and
  ``train_and_register``;
* node 2 (tracking): MariaDB as ``mysql-tracking``, moto's S3 server as ``minio``, the bucket Job,
  ``readmit-tracking serve``;
* node 3 (serving): the API, Prometheus (its ConfigMap), a headless Locust run.

Each process gets exactly the environment and command line its container gets in the rendered
manifests (``manifests.py``), with generated values for the Secrets; the only differences are listed
right below: in-image paths (``image_paths``), the run parameters, and MariaDB standing in for MySQL.
Then: the prediction from node 3 is the champion registered on node 2 by the DAG run on node 1 (MLflow
asks every host for a user: node 1 trains as the training identity, node 3 reads as the read-only one,
which cannot move the alias; the API asks callers for a key); moving the alias reaches node 3; a version
whose artifact was changed in node 2's store after training is refused and the previous one keeps serving; Prometheus on node 3 scraped the API and Locust; with node 2's MLflow stopped,
node 3 still predicts. Everything is torn down, also on failure, and no namespace is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from readmit_contract import example_encounter

from .manifests import Container, Manifests, kubectl
from .netns import ETC_NETNS, Host, HostNetwork, ip_binary, namespaces, tail

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
INVENTORY = HERE / "inventory.ini"
FOLDERS = ("server1-data", "server2-tracking", "server3-serving")
ROLES = REPO_ROOT / "ansible" / "roles"
VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_paths(scratch: Path) -> dict[str, Path]:
    """Absolute paths the manifests name that exist only in the images or as pod volumes -> their
    counterpart here: the checkout's files the Dockerfiles copy, or the host's scratch folder."""
    return {
        "/opt/airflow/dags": REPO_ROOT / "server1-data" / "dags",  # COPY server1-data/dags
        "/opt/readmit/loadtest": REPO_ROOT / "server3-serving" / "loadtest",  # COPY server3-serving/loadtest
        "/opt/readmit/ui": REPO_ROOT / "server3-serving" / "ui",  # COPY server3-serving/ui
        "/opt/airflow/logs": scratch / "airflow-logs",  # volume
        "/home/readmit": scratch / "home",  # the images' user's home and work dir (JupyterLab's volume below)
        "/var/cache/readmit": scratch / "model-cache",  # emptyDir
        "/etc/prometheus": scratch / "prometheus-config",  # ConfigMap volume
        "/prometheus": scratch / "prometheus-data",  # volume
        "/docker-entrypoint-initdb.d": scratch / "mysql-init",  # ConfigMap volume of the MySQL pods
    }


# Run parameters: how this run is driven, not how the platform is configured.
SOURCE = "synthetic:6000:21"  # the user's input of a raw load (the notebook's data_source)
LOADS = 3  # raw loads: validation + test + train-0001, then train-0002, train-0003
LOAD_PARAMETERS = {"BATCH_SIZE": "2000"}  # several small train batches from 6,000 rows
CANDIDATES = ["logistic_regression", "hist_gradient_boosting"]  # the DAG's `candidates` param (speed)
# + AIRFLOW_HOME, a scratch folder. SEARCH_SECONDS: the cluster's 300-s parameter search is the training's own
# affair (tests/tracking); here 20 s still runs it on node 1 against MLflow on node 2, five minutes sooner
AIRFLOW_PARAMETERS = {"AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "0", "SEARCH_SECONDS": "20"}
API_PARAMETERS = {"MODEL_POLL_SECONDS": "1"}
LOCUST_RUN = ["--headless", "-u", "4", "-r", "4", "-t", "300s", "--only-summary"]
SCRAPE_INTERVAL = "2s"  # Prometheus' scrape intervals (and timeouts, which may not exceed them)

# MariaDB stands in for the MySQL 8.4 image: options and SQL of MySQL that MariaDB spells differently.
MYSQL_ONLY_OPTIONS = {"--mysql-native-password"}  # MariaDB always has the native password plugin
MYSQL_TO_MARIADB_SQL = {"IDENTIFIED WITH mysql_native_password BY": "IDENTIFIED BY"}  # its default plugin
MYSQL_INITDB = "/docker-entrypoint-initdb.d"  # the mysql image's init scripts (sourced by its entrypoint)


def tool(name: str) -> str | None:
    return shutil.which(name) or next((p for d in ("/usr/sbin", "/usr/bin") if Path(p := f"{d}/{name}").exists()),
                                      None)


def inventory_hosts(scratch: Path) -> dict[str, tuple[str, str]]:
    """{group: (host name, ansible_host)} of the test inventory, read by Ansible's own parser."""
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(scratch / ".ansible-local"), "ANSIBLE_NOCOLOR": "1"}
    done = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(INVENTORY), "--list"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    listing = json.loads(done.stdout)
    hostvars = listing["_meta"]["hostvars"]
    hosts = {}
    for group in role_defaults("microk8s_cluster")["microk8s_cluster_node_labels"]:
        (name,) = listing[group]["hosts"]
        hosts[group] = (name, hostvars[name]["ansible_host"])
    return hosts


def role_defaults(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())


def generated_secrets() -> dict[str, dict[str, str]]:
    """A value for every key of every Secret the playbook creates (readmit_secrets_kubernetes)."""
    from cryptography.fernet import Fernet

    values = {}
    for secret in role_defaults("readmit_secrets")["readmit_secrets_kubernetes"]:
        values[secret["name"]] = {key: Fernet.generate_key().decode() if key.endswith("FERNET_KEY")
                                  else secrets.token_hex(16) for key in secret["data"]}
    return values


def map_paths(value: str, paths: Mapping[str, Path]) -> str:
    """``value`` (an env value or an argument, also ``--flag=PATH``) with a mapped path prefix replaced."""
    head, sep, rest = value.partition("=") if value.startswith("-") else ("", "", value)
    for image, here in sorted(paths.items(), key=lambda item: -len(item[0])):
        if rest == image or rest.startswith(image + "/"):
            return head + sep + str(here) + rest[len(image):]
    return value


def query_url(expr: str) -> str:
    return "http://prometheus:9090/api/v1/query?" + urllib.parse.urlencode({"query": expr})


@dataclass
class Platform:
    """The rendered manifests, where each folder runs, the Secrets, and the processes' set-up."""

    net: HostNetwork
    manifests: dict[str, Manifests]
    host_of: dict[str, Host]  # folder -> host
    secrets: dict[str, dict[str, str]]
    root: Path
    timings: list[tuple[str, float]] = field(default_factory=list)

    def scratch(self, host: Host) -> Path:
        return self.root / host.name

    def paths(self, host: Host) -> dict[str, Path]:
        return image_paths(self.scratch(host))

    def env(self, folder: str, container: Container, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The container's environment (image paths mapped) on top of what the image sets, + run parameters."""
        paths = self.paths(self.host_of[folder])
        image = {"PATH": f"{VENV_BIN}:{SYSTEM_PATH}", "HOME": "/home/readmit", "LANG": "C.UTF-8"}
        env = {**image, **self.manifests[folder].environment(container, self.secrets)}
        return {**{k: map_paths(v, paths) for k, v in env.items()}, **(extra or {})}

    def argv(self, folder: str, container: Container, env: Mapping[str, str]) -> list[str]:
        paths = self.paths(self.host_of[folder])
        return [map_paths(a, paths) for a in self.manifests[folder].argv(container, env)]

    def cwd(self, host: Host) -> Path:
        return self.paths(host)["/home/readmit"]  # the images' WORKDIR (no stray .env is read)

    def log(self, host: Host, name: str) -> Path:
        return self.root / "logs" / f"{host.name}-{name}.log"

    def step(self, label: str, since: float) -> None:
        self.timings.append((label, time.monotonic() - since))

    def python(self, folder: str, container: Container, code: str, extra: Mapping[str, str] | None = None,
               label: str = "python") -> dict:
        """Run ``code`` on the folder's host with that container's environment; its last stdout line is JSON."""
        host = self.host_of[folder]
        done = self.net.run(host, [PYTHON, "-c", code], self.env(folder, container, extra), self.log(host, label),
                            cwd=self.cwd(host), timeout=300)
        assert done.returncode == 0, f"{label} on {host.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def platform(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the three-host test needs root (network namespaces, veth pairs, a bridge)")
    if ip_binary() is None:
        pytest.skip("the three-host test needs `ip` (iproute2)")
    missing = [name for name in ("mariadbd", "mariadb-install-db", "mariadb", "prometheus") if tool(name) is None]
    if kubectl() is None:
        missing.append("kubectl")
    assert not missing, f"not installed: {missing} (.ci/run installs mariadb-server, prometheus; kubectl renders)"

    manifests = {folder: Manifests.of(REPO_ROOT / folder / "k8s") for folder in FOLDERS}
    hosts = inventory_hosts(tmp_path)
    cluster = role_defaults("microk8s_cluster")
    group_of_label = {label: group for group, label in cluster["microk8s_cluster_node_labels"].items()}
    folder_group = {}
    for folder, objects in manifests.items():
        (label,) = objects.node_selector_values(cluster["microk8s_cluster_node_label_key"])
        folder_group[folder] = group_of_label[label]
    names = {service["metadata"]["name"]: hosts[folder_group[folder]][1]
             for folder, objects in manifests.items() for service in objects.services()}

    root = tmp_path
    with HostNetwork(hosts, names, root / "logs") as net:
        prefix = net.prefix
        host_of = {folder: net.hosts[group] for folder, group in folder_group.items()}
        for host in net.hosts.values():
            for path in image_paths(root / host.name).values():
                if root in path.parents:
                    path.mkdir(parents=True, exist_ok=True)
        yield Platform(net, manifests, host_of, generated_secrets(), root)
    # after the teardown: nothing of this run is left
    for host_dir in root.iterdir():  # the MariaDB data folders are big; the logs stay
        for datadir in host_dir.glob("*-datadir"):
            shutil.rmtree(datadir, ignore_errors=True)
    left = sorted(n for n in namespaces() if n.startswith(prefix))
    assert not left, f"network namespaces left behind: {left}"
    assert not list(ETC_NETNS.glob(f"{prefix}-*")), "/etc/netns folders left behind"


# -- node steps -------------------------------------------------------------------------------------------


def start_mysql(p: Platform, folder: str, service: str):
    """MariaDB as the MySQL StatefulSet behind ``service``: its args, port and environment, then what
    the mysql image's entrypoint does on an empty data folder (root's password, the init scripts)."""
    since = time.monotonic()
    m, host = p.manifests[folder], p.host_of[folder]
    container = m.container(service=service)
    env = p.env(folder, container)
    port = m.service_port(service)
    scratch = p.scratch(host)
    datadir, socket_path = scratch / f"{service}-datadir", scratch / f"{service}.sock"
    log = p.log(host, service)
    installed = p.net.run(host, [tool("mariadb-install-db"), "--no-defaults", f"--datadir={datadir}",
                                 "--auth-root-authentication-method=normal", "--user=root", "--skip-test-db"],
                          env, log, cwd=scratch, timeout=120)
    assert installed.returncode == 0, tail(log)
    args = [a for a in p.argv(folder, container, env) if a.split("=", 1)[0] not in MYSQL_ONLY_OPTIONS]
    argv = [tool("mariadbd"), "--no-defaults", f"--datadir={datadir}", f"--socket={socket_path}",
            f"--pid-file={scratch / f'{service}.pid'}", f"--port={port}", f"--bind-address={host.address}",
            "--user=root", "--skip-log-bin", "--skip-name-resolve", *args]
    process = p.net.start(host, argv, env, log, cwd=scratch)
    p.net.wait_tcp(host, service, port, timeout=60, process=process, log=log)

    client = [tool("mariadb"), "--no-defaults", "--protocol=socket", f"--socket={socket_path}", "-uroot"]
    root_password = p.net.run(host, client, env, log, cwd=scratch, timeout=60, input_text=(
        f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{env['MYSQL_ROOT_PASSWORD']}';\n"
        f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{env['MYSQL_ROOT_PASSWORD']}';\n"
        "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\nFLUSH PRIVILEGES;\n"))
    assert root_password.returncode == 0, tail(log)
    sed = "; ".join(f"s/{mysql}/{mariadb}/g" for mysql, mariadb in MYSQL_TO_MARIADB_SQL.items())
    shim = (  # the entrypoint's docker_process_sql: SQL on stdin, as root over the socket
        'docker_process_sql() { sed -e "$E2E_SED" | MYSQL_PWD="$MYSQL_ROOT_PASSWORD" '
        f'{" ".join(client)} --comments "$@"; }}\n'
        'set -eo pipefail\n. "$1"\n')
    init_dir = map_paths(MYSQL_INITDB, p.paths(host))
    scripts = p.manifests[folder].volume_config_map(container, MYSQL_INITDB)
    assert scripts, f"no init script mounted at {MYSQL_INITDB} in {container!r}"
    for name, text in sorted(scripts.items()):
        path = Path(init_dir) / name
        path.write_text(text)
        if name.endswith(".sh"):
            argv = ["/bin/bash", "-c", shim, "bash", str(path)]
        elif name.endswith(".sql"):
            argv = ["/bin/bash", "-c", shim.replace('. "$1"', 'docker_process_sql < "$1"'), "bash", str(path)]
        else:
            continue
        ran = p.net.run(host, argv, {**env, "E2E_SED": sed}, log, cwd=scratch, timeout=120)
        assert ran.returncode == 0, f"{name} failed on {host.name}:\n{ran.stdout}\n{ran.stderr}"
    p.step(f"{host.name}: {service} (MariaDB) up and initialised", since)
    return process


def start_tracking(p: Platform):
    """Node 2: mysql-tracking, the S3 endpoint, the bucket Job, the MLflow server."""
    folder = "server2-tracking"
    m, host = p.manifests[folder], p.host_of[folder]
    start_mysql(p, folder, "mysql-tracking")

    since = time.monotonic()
    mlflow = m.container(argv_prefix=["readmit-tracking", "serve"])
    mlflow_env = p.env(folder, mlflow)
    s3 = urllib.parse.urlsplit(mlflow_env["MLFLOW_S3_ENDPOINT_URL"])  # where node 2's S3 endpoint is (MinIO)
    minio = m.container(service=s3.hostname)
    log = p.log(host, "s3")
    moto = p.net.start(host, [str(VENV_BIN / "moto_server"), "-H", host.address, "-p", str(s3.port)],
                       p.env(folder, minio), log, cwd=p.cwd(host))
    p.net.wait_tcp(host, s3.hostname, s3.port, timeout=60, process=moto, log=log)
    bucket_job = m.container(argv_prefix=["readmit-tracking", "create-bucket"])
    bucket_env = p.env(folder, bucket_job)
    created = p.net.run(host, p.argv(folder, bucket_job, bucket_env), bucket_env, p.log(host, "create-bucket"),
                        cwd=p.cwd(host), timeout=120)
    assert created.returncode == 0 and "bucket" in created.stdout, created.stdout + created.stderr
    p.step(f"{host.name}: S3 endpoint (moto) and bucket", since)

    since = time.monotonic()
    log = p.log(host, "mlflow")
    process = p.net.start(host, p.argv(folder, mlflow, mlflow_env), mlflow_env, log, cwd=p.cwd(host))
    # the clients' address of MLflow, asked from node 1 (its first client), across the bridge
    tracking_uri = p.env("server1-data", p.manifests["server1-data"].container(argv_prefix=["airflow", "scheduler"]))[
        "MLFLOW_TRACKING_URI"]
    health = p.net.http(p.host_of["server1-data"], "GET", f"{tracking_uri}/health", until_status=200, timeout=120)
    assert health["ok"], f"MLflow did not answer node 1: {health}\n{tail(log)}"
    p.step(f"{host.name}: MLflow server", since)
    return process


def start_serving(p: Platform):
    """Node 3: the API (no champion yet: not ready) and Prometheus."""
    folder = "server3-serving"
    m, host = p.manifests[folder], p.host_of[folder]
    since = time.monotonic()
    api = m.container(service="api")
    api_env = p.env(folder, api, API_PARAMETERS)
    log = p.log(host, "api")
    api_process = p.net.start(host, p.argv(folder, api, api_env), api_env, log, cwd=p.cwd(host))
    port = m.service_port("api")
    health = p.net.http(host, "GET", f"http://api:{port}/health", until_status=200, timeout=120)
    assert health["ok"], f"API: {health}\n{tail(log)}"

    prometheus = m.container(service="prometheus")
    prometheus_env = p.env(folder, prometheus)
    paths = p.paths(host)
    for mount_path, files in m.config_map_mounts(prometheus).items():
        for name, text in files.items():
            Path(map_paths(mount_path, paths), name).write_text(text)
    argv = [tool("prometheus"), *p.argv(folder, prometheus, prometheus_env)]
    config_path = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("--config.file=")))
    config = yaml.safe_load(config_path.read_text())
    for section in [config.setdefault("global", {}), *config.get("scrape_configs", [])]:
        if section is config["global"] or "scrape_interval" in section:
            section["scrape_interval"] = SCRAPE_INTERVAL
        if "scrape_timeout" in section or section is config["global"]:
            section["scrape_timeout"] = SCRAPE_INTERVAL
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = p.log(host, "prometheus")
    prometheus_process = p.net.start(host, argv, prometheus_env, log, cwd=p.cwd(host))
    ready = p.net.http(host, "GET", f"http://prometheus:{m.service_port('prometheus')}/-/ready", until_status=200,
                       timeout=60)
    assert ready["ok"], f"Prometheus: {ready}\n{tail(log)}"
    p.step(f"{host.name}: API (waiting for a champion) and Prometheus", since)
    return api_process, prometheus_process


def run_data_pipeline(p: Platform) -> None:
    """Node 1: mysql-data, raw loads, Airflow's metadata DB, both DAGs."""
    folder = "server1-data"
    m, host = p.manifests[folder], p.host_of[folder]
    start_mysql(p, folder, "mysql-data")

    since = time.monotonic()
    notebook = m.container(argv_prefix=["jupyter", "lab"])  # the raw loads are the notebook's job
    env = p.env(folder, notebook, LOAD_PARAMETERS)
    for _ in range(LOADS):
        loaded = p.net.run(host, ["readmit-data", "load", "--source", SOURCE, "--quiet"], env, p.log(host, "load"),
                           cwd=p.cwd(host), timeout=300)
        assert loaded.returncode == 0, loaded.stdout[-3000:] + loaded.stderr[-3000:]
    assert "train-0003" in loaded.stdout, loaded.stdout
    p.step(f"{host.name}: {LOADS} raw loads into mysql-data", since)

    since = time.monotonic()
    airflow = {**AIRFLOW_PARAMETERS, "AIRFLOW_HOME": str(p.scratch(host) / "airflow-home")}
    migrate = m.container(argv_prefix=["airflow", "db", "migrate"])
    migrate_env = p.env(folder, migrate, airflow)
    migrated = p.net.run(host, p.argv(folder, migrate, migrate_env), migrate_env, p.log(host, "airflow-db-migrate"),
                         cwd=p.cwd(host), timeout=300)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    p.step(f"{host.name}: airflow db migrate (MySQL)", since)

    scheduler = m.container(argv_prefix=["airflow", "scheduler"])  # LocalExecutor: tasks run there
    scheduler_env = p.env(folder, scheduler, airflow)
    for dag, extra in (("preprocess_incremental", []),
                       ("train_and_register", ["--conf", json.dumps({"candidates": CANDIDATES})])):
        since = time.monotonic()
        done = p.net.run(host, ["airflow", "dags", "test", dag, *extra], scheduler_env, p.log(host, dag),
                         cwd=p.cwd(host), timeout=900)  # SEARCH_SECONDS (20 here) + card and gate
        assert done.returncode == 0, f"{dag}:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
        p.step(f"{host.name}: airflow dags test {dag}", since)


# -- what the hosts are asked -------------------------------------------------------------------------------

CHAMPION_LINEAGE = """
import json, os, sqlalchemy
from mlflow import MlflowClient
client = MlflowClient()
version = client.get_model_version_by_alias(os.environ["MODEL_NAME"], os.environ["MODEL_ALIAS"])
run = client.get_run(version.run_id)
engine = sqlalchemy.create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
with engine.connect() as db:
    dag_runs = [list(r) for r in db.execute(sqlalchemy.text("SELECT dag_id, run_id, state FROM dag_run"))]
print(json.dumps({"version": version.version, "run_id": version.run_id, "source": version.source,
                  "model_id": getattr(version, "model_id", None), "tags": run.data.tags, "dag_runs": dag_runs},
                 default=str))
"""

TRACKING_STORES = """
import json, os, boto3, sqlalchemy
bucket = os.environ["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/", 1)[0]
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1")
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])]
engine = sqlalchemy.create_engine(os.environ["MLFLOW_BACKEND_STORE_URI"])
with engine.connect() as db:
    rows = db.execute(sqlalchemy.text("SELECT name, version, run_id FROM model_versions"))
    versions = [[str(v) for v in row] for row in rows]
print(json.dumps({"bucket": bucket, "keys": keys, "versions": versions}, default=str))
"""

ALIAS_MOVE_REFUSED = """
import json, os
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
client = MlflowClient()
name, alias = os.environ["MODEL_NAME"], os.environ["MODEL_ALIAS"]
champion = client.get_model_version_by_alias(name, alias)  # reading is allowed
try:
    client.set_registered_model_alias(name, alias, champion.version)
    refused = None
except MlflowException as exc:
    refused = exc.error_code
print(json.dumps({"champion": champion.version, "refused": refused}))
"""

REGISTER_AGAIN = """
import json, os, mlflow
from mlflow import MlflowClient
from readmit_data.registry import record_artifact_digest
from readmit_data.settings import DataSettings
client = MlflowClient()
name = os.environ["MODEL_NAME"]
first = client.get_model_version(name, "1")
version = mlflow.register_model(f"runs:/{first.run_id}/model", name)
digest = record_artifact_digest(DataSettings(), version.version)  # what training records
registered = client.get_model_version(name, version.version)
print(json.dumps({"version": version.version, "digest": digest, "source": registered.source,
                  "model_id": getattr(registered, "model_id", None), "run_id": first.run_id}))
"""

TAMPER = """
import json, os, sys, boto3
bucket = os.environ["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/", 1)[0]
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1")
model_key = os.environ["E2E_MODEL_KEY"]
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", []) if f"/{model_key}/" in o["Key"] and o["Key"].endswith("model.skops")]
(key,) = keys
body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
s3.put_object(Bucket=bucket, Key=key, Body=body + b"!")  # one byte more: a file changed after training
print(json.dumps({"key": key}))
"""

SET_ALIAS = """
import json, os
from mlflow import MlflowClient
client = MlflowClient()
client.set_registered_model_alias(os.environ["MODEL_NAME"], os.environ["MODEL_ALIAS"], os.environ["E2E_VERSION"])
print(json.dumps({"alias": os.environ["E2E_VERSION"]}))
"""

MOVE_ALIAS = """
import json, os, mlflow
from mlflow import MlflowClient
from readmit_data.registry import record_artifact_digest
from readmit_data.settings import DataSettings
client = MlflowClient()
name, alias = os.environ["MODEL_NAME"], os.environ["MODEL_ALIAS"]
champion = client.get_model_version_by_alias(name, alias)
run = client.get_run(champion.run_id)
siblings = client.search_runs([run.info.experiment_id],
                              filter_string=f"tags.`airflow.dag_run` = '{run.data.tags['airflow.dag_run']}'")
other = next(r for r in siblings if r.info.run_id != champion.run_id)
version = mlflow.register_model(f"runs:/{other.info.run_id}/model", name)
record_artifact_digest(DataSettings(), version.version)  # what training records before an alias moves
client.set_registered_model_alias(name, alias, version.version)
print(json.dumps({"version": version.version, "run_id": other.info.run_id, "previous": champion.version,
                  "candidate": other.data.tags.get("candidate")}))
"""


def test_three_hosts(platform: Platform):
    p = platform
    start = time.monotonic()
    m1, m3 = p.manifests["server1-data"], p.manifests["server3-serving"]
    h1, h3 = p.host_of["server1-data"], p.host_of["server3-serving"]
    assert len({h.address for h in p.host_of.values()}) == 3, "each server folder on its own host"
    p.net.check_isolation()  # hosts talk over the bridge only, to their 10.x addresses
    scheduler = m1.container(argv_prefix=["airflow", "scheduler"])
    airflow = {**AIRFLOW_PARAMETERS, "AIRFLOW_HOME": str(p.scratch(h1) / "airflow-home")}
    api_url = p.env("server3-serving", m3.container(service="locust"))["API_URL"]  # the clients' API address
    prometheus_port = m3.service_port("prometheus")
    assert prometheus_port == 9090  # query_url's address

    mlflow_process = start_tracking(p)
    start_serving(p)
    run_data_pipeline(p)

    # node 3 picks up the champion that node 1 trained and registered on node 2
    since = time.monotonic()
    ready = p.net.http(h3, "GET", f"{api_url}/ready", until_status=200, timeout=90)
    assert ready["ok"], f"the API on {h3.name} never became ready: {ready}\n{tail(p.log(h3, 'api'))}"
    p.step(f"{h3.name}: API ready with the champion", since)
    locust = m3.container(service="locust")
    locust_env = p.env("server3-serving", locust)
    p.net.start(h3, [*p.argv("server3-serving", locust, locust_env), *LOCUST_RUN], locust_env, p.log(h3, "locust"),
                cwd=p.cwd(h3))

    # the API asks for a key (the hospital's: what its systems send)
    key = {"X-API-Key": p.secrets["api-keys"]["hospital"]}
    refused = p.net.http(h3, "POST", f"{api_url}/predict", example_encounter())
    assert refused["status"] == 401 and p.secrets["api-keys"]["hospital"] not in json.dumps(refused), refused
    answer = p.net.http(h3, "POST", f"{api_url}/predict", example_encounter(), headers=key)
    assert answer["status"] == 200, answer
    served = answer["body"]["model_version"]
    assert answer["body"]["scored"] is True and 0 <= answer["body"]["probability"] <= 1

    lineage = p.python("server1-data", scheduler, CHAMPION_LINEAGE, airflow, label="champion-lineage")
    assert served == lineage["version"] == "1", (answer, lineage)
    train_runs = {run_id: state for dag_id, run_id, state in lineage["dag_runs"] if dag_id == "train_and_register"}
    assert train_runs.get(lineage["tags"].get("airflow.dag_run")) == "success", lineage
    assert lineage["tags"]["airflow.dag"] == "train_and_register" and lineage["tags"]["candidate"] in CANDIDATES
    assert {dag_id for dag_id, _, state in lineage["dag_runs"] if state == "success"} == {
        "preprocess_incremental", "train_and_register"}, lineage["dag_runs"]

    mlflow_container = p.manifests["server2-tracking"].container(argv_prefix=["readmit-tracking", "serve"])
    stores = p.python("server2-tracking", mlflow_container, TRACKING_STORES, label="tracking-stores")
    model_name = p.env("server1-data", scheduler)["MODEL_NAME"]
    assert [model_name, "1", lineage["run_id"]] in stores["versions"], stores["versions"]
    source = lineage["source"]  # MLflow 3: models:/<logged model id>, stored under .../models/<id>/artifacts
    model_key = lineage["model_id"] or (source.removeprefix("models:/").split("/")[0] if source.startswith("models:/")
                                        else lineage["run_id"])
    model_files = [k for k in stores["keys"] if f"/{model_key}/" in k]
    assert any(k.endswith("/MLmodel") for k in model_files), (model_key, stores["keys"][:50])
    assert any(k.endswith("model.skops") for k in model_files), model_files

    # MLflow on node 2 asks every host for a user: anonymous requests are refused, and node 3's
    # read-only identity (the API's) reads the champion but cannot move the alias
    since = time.monotonic()
    tracking_uri = p.env("server1-data", scheduler)["MLFLOW_TRACKING_URI"]
    anonymous = p.net.http(h3, "GET", f"{tracking_uri}/api/2.0/mlflow/registered-models/search")
    assert anonymous["status"] == 401, anonymous
    api_container = m3.container(service="api")
    reader = p.python("server3-serving", api_container, ALIAS_MOVE_REFUSED, API_PARAMETERS, label="reader-alias")
    assert reader == {"champion": "1", "refused": "PERMISSION_DENIED"}, reader
    p.step(f"{h3.name}: MLflow refuses anonymous and read-only alias moves", since)

    # moving the alias (to the other candidate of the same DAG run) reaches node 3
    since = time.monotonic()
    moved = p.python("server1-data", scheduler, MOVE_ALIAS, airflow, label="move-alias")
    assert moved["previous"] == "1" and moved["version"] == "2", moved
    switched = p.net.http(h3, "POST", f"{api_url}/predict", example_encounter(), until_status=200,
                          until={"model_version": moved["version"]}, timeout=30, headers=key)
    assert switched["ok"], f"node 3 still answers {switched}\n{tail(p.log(h3, 'api'))}"
    p.step(f"{h3.name}: serves version {moved['version']} after the alias moved", since)

    # a version whose artifact changed in node 2's store after training is refused by node 3, which keeps
    # serving the previous version and says why in /ready
    since = time.monotonic()
    again = p.python("server1-data", scheduler, REGISTER_AGAIN, airflow, label="register-again")
    assert again["version"] == "3" and len(again["digest"]) == 64, again
    model_key = again["model_id"] or again["source"].removeprefix("models:/").split("/")[0]
    p.python("server2-tracking", mlflow_container, TAMPER, {"E2E_MODEL_KEY": model_key}, label="tamper")
    p.python("server1-data", scheduler, SET_ALIAS, {**airflow, "E2E_VERSION": "3"}, label="alias-to-tampered")
    refusal = p.net.http(h3, "GET", f"{api_url}/ready", until={"refused_version": "3"}, timeout=30)
    assert refusal["ok"] and refusal["status"] == 200, f"{refusal}\n{tail(p.log(h3, 'api'))}"
    assert refusal["body"]["refusal"] == "checksum_mismatch" and refusal["body"]["model_version"] == moved["version"]
    assert tracking_uri.split("//")[1] not in json.dumps(refusal["body"]), refusal  # no internal host in the body
    kept = p.net.http(h3, "POST", f"{api_url}/predict", example_encounter(), headers=key)
    assert kept["status"] == 200 and kept["body"]["model_version"] == moved["version"], kept
    p.step(f"{h3.name}: refuses version 3 (artifact changed after training), keeps serving {moved['version']}", since)

    # Prometheus on node 3 scraped the API (found by DNS) and Locust, by their Service names, and counted the
    # refusal
    since = time.monotonic()
    expectations = {
        'up{job="readmit-api"}': lambda v: v == 1,
        'up{job="locust"}': lambda v: v == 1,
        'sum(readmit_api_requests_total{route="/predict", status="200"})': lambda v: v > 0,
        'sum(locust_requests_total)': lambda v: v > 0,
        'sum(readmit_api_model_refusals_total{reason="checksum_mismatch"})': lambda v: v >= 1,
    }
    pending, seen = dict(expectations), {}
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for expr, check in list(pending.items()):
            result = p.net.http(h3, "GET", query_url(expr))
            samples = (result["body"] or {}).get("data", {}).get("result", []) if result["status"] == 200 else []
            seen[expr] = [s["value"][1] for s in samples] or result
            if samples and all(check(float(s["value"][1])) for s in samples):
                del pending[expr]
        time.sleep(1)
    assert not pending, f"Prometheus on {h3.name}: {seen}\n{tail(p.log(h3, 'prometheus'))}"
    targets = p.net.http(h3, "GET", f"http://prometheus:{prometheus_port}/api/v1/targets")["body"]["data"]
    api_targets = {t["labels"]["instance"] for t in targets["activeTargets"] if t["labels"]["job"] == "readmit-api"}
    assert api_targets == {f"{h3.address}:{m3.service_port('api')}"}, targets
    p.step(f"{h3.name}: Prometheus scraped the API and Locust", since)

    # node 2's MLflow stops: node 3 keeps predicting with the model it has
    since = time.monotonic()
    p.net.stop(mlflow_process)
    gone = p.net.http(h1, "GET", f"{tracking_uri}/health")
    assert gone["status"] is None, f"MLflow still answers: {gone}"
    unreachable = p.net.http(h3, "GET", f"{api_url}/ready", until={"mlflow_reachable": False}, timeout=30)
    assert unreachable["ok"] and unreachable["status"] == 200, unreachable
    assert unreachable["body"]["model_version"] == moved["version"]
    for body in (example_encounter(), example_encounter() | {"time_in_hospital": 9}):
        still = p.net.http(h3, "POST", f"{api_url}/predict", body, headers=key)
        assert still["status"] == 200 and still["body"]["model_version"] == moved["version"], still
    p.step(f"{h3.name}: predicts with node 2's MLflow stopped", since)

    p.timings.append(("total", time.monotonic() - start))
    report = "\n".join(f"{seconds:7.1f} s  {label}" for label, seconds in p.timings)
    (p.root / "logs" / "timings.txt").write_text(report + "\n")
    print(f"\nthree-host run ({p.net.prefix}):\n{report}")
