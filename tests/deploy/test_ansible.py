"""The playbook: syntax, ansible-lint, the inventory group -> node label mapping, and its steps run
on this machine (connection local, a fake kubectl, no cluster) twice: the second run changes
nothing."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from . import policies
from .conftest import (
    ANSIBLE_DIR,
    INVENTORY,
    NAMESPACE,
    REPO_ROOT,
    ansible_env,
    built_images,
    created_secrets,
    deploy_servers,
    kubectl,
    node_selector_patch,
    playbook_recap,
    registry,
    role_defaults,
    role_playbook,
    run_playbook,
    stage_server,
    tool,
)

FAKE_KUBECTL = Path(__file__).with_name("fake_kubectl.py")
LABEL_GROUPS = ("data", "tracking", "serving")
# A domain other than the manifests' readmit.internal: the tests see it reach every place it must.
DOMAIN = "ward.example.org"
# The secrets file's keys that are not drawn by the password lookups: the ingress' certificate.
TLS_KEYS = {"tls_certificate", "tls_private_key"}


def test_playbook_syntax_check(tmp_path):
    result = subprocess.run(
        [tool("ansible-playbook"), "--syntax-check", "-i", str(INVENTORY), str(ANSIBLE_DIR / "site.yml")],
        capture_output=True, text=True, timeout=120, env=ansible_env(tmp_path), cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_passes_offline(tmp_path):
    """ansible-lint with ansible/.ansible-lint (production profile, offline: no collection installs)."""
    config = yaml.safe_load((ANSIBLE_DIR / ".ansible-lint").read_text())
    assert config["offline"] is True
    result = subprocess.run(
        [tool("ansible-lint"), "-c", str(ANSIBLE_DIR / ".ansible-lint"), "--offline", "--nocolor",
         str(ANSIBLE_DIR / "site.yml"), str(ANSIBLE_DIR / "roles")],
        capture_output=True, text=True, timeout=300, env=ansible_env(tmp_path), cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_roles_only_use_builtin_modules():
    """No collection is installed with the platform: every module is ansible.builtin.*."""
    actions = set()
    keywords = {"name", "when", "loop", "loop_control", "register", "changed_when", "failed_when", "vars", "no_log",
                "delegate_to", "become", "run_once", "notify", "args", "until", "retries", "delay", "throttle",
                "block", "tags", "environment", "listen", "ignore_errors", "check_mode", "delegate_facts"}
    for path in ANSIBLE_DIR.glob("roles/*/*/*.yml"):
        if path.parent.name not in ("tasks", "handlers"):
            continue
        stack = list(yaml.safe_load(path.read_text()) or [])
        while stack:
            task = stack.pop()
            stack.extend(task.get("block", []) + task.get("rescue", []) + task.get("always", []))
            actions |= {k for k in task if k not in keywords and k not in ("rescue", "always")}
    assert actions and all(a.startswith("ansible.builtin.") for a in actions), sorted(actions)


# -- inventory -> node labels -----------------------------------------------------------------------


def inventory_groups(path: Path, tmp_path: Path) -> dict[str, list[str]]:
    result = subprocess.run([tool("ansible-inventory"), "-i", str(path), "--list"], capture_output=True, text=True,
                            timeout=60, env=ansible_env(tmp_path))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)

    def hosts(group: str) -> list[str]:
        entry = data.get(group, {})
        found = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            found += hosts(child)
        return found

    return {group: hosts(group) for group in data if group != "_meta"}


def test_inventory_has_one_host_per_group_and_an_explicit_leader(tmp_path):
    groups = inventory_groups(INVENTORY, tmp_path)
    for group in LABEL_GROUPS:
        assert len(groups[group]) == 1, f"[{group}] needs exactly one host"
    assert len(set(groups["data"] + groups["tracking"] + groups["serving"])) == 3
    assert sorted(groups["microk8s"]) == sorted(groups["data"] + groups["tracking"] + groups["serving"])
    assert len(groups["cluster_leader"]) == 1 and groups["cluster_leader"][0] in groups["microk8s"]
    listing = subprocess.run([tool("ansible-inventory"), "-i", str(INVENTORY), "--list"],
                             capture_output=True, text=True, env=ansible_env(tmp_path))
    hostvars = json.loads(listing.stdout)["_meta"]["hostvars"]
    assert all("ansible_host" in hostvars[h] for h in groups["microk8s"])


def test_each_group_maps_to_its_folders_node_selector(node_label_key, node_labels):
    """The playbook labels a group's node with the value that group's server folder selects."""
    servers = deploy_servers()
    assert sorted(s.group for s in servers) == sorted(LABEL_GROUPS) == sorted(node_labels)
    for server in servers:
        assert node_selector_patch(server.folder) == {node_label_key: node_labels[server.group]}, server.folder
    assert role_defaults("microk8s_cluster")["microk8s_cluster_group"] == role_defaults("readmit_deploy")[
        "readmit_deploy_cluster_group"]


LABEL_PLAN_PLAYBOOK = """
- name: Plan the node labels
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Plan
      ansible.builtin.include_role:
        name: microk8s_cluster
        tasks_from: label_plan.yml
    - name: Save the plan
      ansible.builtin.copy:
        content: "{{ microk8s_cluster_label_plan | to_json }}"
        dest: "{{ plan_file }}"
        mode: "0644"
"""


def label_plan(tmp_path: Path, inventory: Path) -> subprocess.CompletedProcess:
    return run_playbook(tmp_path, LABEL_PLAN_PLAYBOOK, {"plan_file": str(tmp_path / "plan.json")}, inventory=inventory)


def test_the_playbooks_label_plan_labels_each_node_for_its_folder(tmp_path, node_label_key):
    """Run the role's own planning step on inventory.ini: each host gets the node label its
    group's server folder selects, and no other."""
    result = label_plan(tmp_path, INVENTORY)
    assert result.returncode == 0, result.stdout[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    groups = inventory_groups(INVENTORY, tmp_path)
    folder_of = {s.group: s.folder for s in deploy_servers()}
    assert sorted(entry["host"] for entry in plan) == sorted(groups["microk8s"])
    for entry in plan:
        (group,) = [g for g in LABEL_GROUPS if entry["host"] in groups[g]]
        assert entry["group"] == group
        assert {node_label_key: entry["value"]} == node_selector_patch(folder_of[group])
        assert entry["node"] == entry["host"].lower()  # no facts here: the inventory name


@pytest.mark.parametrize("inventory", [
    "[data]\nn1\nn2\n[tracking]\nn3\n[serving]\nn4\n[microk8s:children]\ndata\ntracking\nserving\n",
    "[data]\nn1\n[tracking]\nn1\n[serving]\nn3\n[microk8s:children]\ndata\ntracking\nserving\n",
    "[data]\nn1\n[tracking]\nn2\n[serving]\n[microk8s:children]\ndata\ntracking\nserving\n",
    "[data]\nn1\n[tracking]\nn2\n[serving]\nn3\n[microk8s]\nn4\n[microk8s:children]\ndata\ntracking\nserving\n",
])
def test_the_label_plan_refuses_an_inventory_without_one_host_per_group(tmp_path, inventory):
    path = tmp_path / "bad.ini"
    path.write_text(inventory)
    result = label_plan(tmp_path, path)
    assert result.returncode != 0
    assert "needs exactly one host" in result.stdout


# -- the playbook's steps, twice, without a cluster --------------------------------------------------


def fake_kube(tmp_path: Path) -> tuple[str, dict[str, str], Path]:
    """(kubectl command for the roles, environment, state file) of a fresh fake cluster."""
    state = tmp_path / "cluster.json"
    return (f"{sys.executable} {FAKE_KUBECTL}",
            {"FAKE_KUBE_STATE": str(state), "FAKE_KUBE_REAL": kubectl()}, state)


def secrets_setup(tmp_path: Path) -> tuple[dict[str, str], Path, Path, dict[str, str]]:
    command, env, state_file = fake_kube(tmp_path)
    secrets_file = tmp_path / "home" / ".readmit" / "secrets.yml"
    return env, state_file, secrets_file, {"readmit_secrets_kubectl": command, "readmit_secrets_file": str(secrets_file)}


def applied_secrets(state_file: Path) -> dict[str, dict[str, str]]:
    import base64

    state = json.loads(state_file.read_text())
    return {k.split("/")[2]: {key: base64.b64decode(v).decode() for key, v in obj["data"].items()}
            for k, obj in state["objects"].items() if k.startswith(f"Secret/{NAMESPACE}/")}


def secret_types(state_file: Path) -> dict[str, str]:
    state = json.loads(state_file.read_text())
    return {k.split("/")[2]: obj.get("type") for k, obj in state["objects"].items()
            if k.startswith(f"Secret/{NAMESPACE}/")}


def make_certificate(folder: Path, domain: str) -> tuple[str, str]:
    """A self-signed certificate for *.DOMAIN made with openssl (PEM certificate, PEM key); the
    files stay in ``folder`` (crt.pem, key.pem)."""
    openssl = tool("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=*.{domain}",
                    "-addext", f"subjectAltName=DNS:*.{domain}", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "crt.pem")], check=True, capture_output=True, timeout=60)
    return (folder / "crt.pem").read_text(), (folder / "key.pem").read_text()


def certificate_names(certificate: str, private_key: str) -> list[str]:
    """The certificate's DNS names, once checked that ``private_key`` is its key."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(certificate.encode())
    key = serialization.load_pem_private_key(private_key.encode(), password=None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers(), "the key is not the certificate's"
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def secret_texts(values: dict[str, str]) -> list[str]:
    """What must never show: every drawn value, and each line of the certificate's key."""
    texts = [str(v) for k, v in values.items() if not k.endswith("_user") and len(str(v)) > 8]
    key = values.get("tls_private_key", "")
    return texts + [line for line in key.splitlines() if len(line) > 8 and "PRIVATE KEY" not in line]


def test_secrets_are_generated_once_kept_private_and_applied_idempotently(tmp_path):
    pytest.importorskip("cryptography")
    from cryptography.fernet import Fernet

    env, state_file, secrets_file, extra = secrets_setup(tmp_path)
    extra["readmit_domain"] = DOMAIN  # inventory.ini's readmit_domain
    control_tmp = tmp_path / "control-tmp"  # where openssl writes the certificate's key on the control node
    control_tmp.mkdir()
    env["TMPDIR"] = str(control_tmp)
    first = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert first.returncode == 0, first.stdout[-4000:]
    assert playbook_recap(first.stdout)["changed"] > 0
    content, cluster = secrets_file.read_text(), applied_secrets(state_file)
    second = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert second.returncode == 0, second.stdout[-4000:]
    assert playbook_recap(second.stdout)["changed"] == 0, second.stdout[-4000:]
    assert secrets_file.read_text() == content, "the secrets were generated again"
    assert applied_secrets(state_file) == cluster, "a Secret changed on the second run (a new certificate?)"
    assert not list(control_tmp.iterdir()), "the certificate's temporary folder was left behind"

    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_file.parent.stat().st_mode) == 0o700
    values = yaml.safe_load(content)
    defaults = role_defaults("readmit_secrets")
    assert set(values) == set(defaults["readmit_secrets_generated"]) | TLS_KEYS
    drawn = {k: v for k, v in values.items() if not k.endswith("_user")}  # user names may repeat (admin)
    assert len(set(drawn.values())) == len(drawn)  # every value drawn separately
    assert all(values[k] == defaults[f"readmit_secrets_{k}"] for k in values if k.endswith("_user"))
    Fernet(values["airflow_fernet_key"].encode())
    assert all(len(values[f"api_key_{caller}"]) >= 16 for caller in ("ui", "locust", "hospital"))
    for name in ("secrets.yml",):
        assert not list(REPO_ROOT.rglob(name)), "a secrets file landed in the repository"

    state = json.loads(state_file.read_text())
    assert NAMESPACE in state["namespaces"]
    applied = applied_secrets(state_file)
    platform = role_defaults("readmit_secrets")["readmit_secrets_platform_secret"]
    assert {name: set(data) for name, data in applied.items() if name != platform} == created_secrets()
    assert applied[platform] == {k: str(v) for k, v in values.items()}  # the cluster's copy
    assert json.loads(applied["airflow-admin"]["passwords.json"]) == {"admin": values["airflow_admin_password"]}
    assert applied["object-store"] == {"access-key-id": values["minio_root_user"],
                                       "secret-access-key": values["minio_root_password"]}
    # MLflow's users, the API's callers' keys, the logins in front of the UI and of Locust.
    assert applied["mlflow-auth"] == {"admin-username": values["mlflow_admin_user"],
                                      "admin-password": values["mlflow_admin_password"],
                                      "flask-secret-key": values["mlflow_flask_secret_key"]}
    for secret, prefix in (("mlflow-training", "mlflow_training"), ("mlflow-reader", "mlflow_reader"),
                           ("ui-login", "ui"), ("locust-login", "locust")):
        assert applied[secret] == {"username": values[f"{prefix}_user"], "password": values[f"{prefix}_password"]}
    assert applied["api-keys"] == {caller: values[f"api_key_{caller}"] for caller in ("ui", "locust", "hospital")}
    # MySQL mysql-data's users: the API's read-only one (patient history), its prediction log's writer and
    # Grafana's monitoring reader among them.
    assert applied["mysql-data"] == {"root-password": values["mysql_data_root_password"],
                                     "readmit-password": values["mysql_data_readmit_password"],
                                     "airflow-password": values["mysql_data_airflow_password"],
                                     "history-password": values["mysql_data_history_password"],
                                     "prediction-writer-password": values["mysql_data_prediction_writer_password"],
                                     "grafana-reader-password": values["mysql_data_grafana_reader_password"]}
    # The ingress' certificate: a TLS Secret for *.DOMAIN, with its own key.
    assert applied["readmit-tls"] == {"tls.crt": values["tls_certificate"], "tls.key": values["tls_private_key"]}
    types = secret_types(state_file)
    assert types.pop("readmit-tls") == "kubernetes.io/tls"
    assert set(types.values()) == {"Opaque"}
    assert sorted(certificate_names(values["tls_certificate"], values["tls_private_key"])) == sorted(
        [f"*.{DOMAIN}", DOMAIN])
    # No secret went through a command line, nor into ansible's output.
    assert not any(text in " ".join(call) for call in state["calls"] for text in secret_texts(values))
    assert not any(text in first.stdout + second.stdout for text in secret_texts(values))


def test_the_hospitals_own_certificate_is_used_when_given(tmp_path):
    """readmit_secrets_tls_certificate and _private_key (from a vault file) go into Secret
    readmit-tls as given; a second run changes nothing; the key never shows."""
    env, state_file, _, extra = secrets_setup(tmp_path)
    certificate, key = make_certificate(tmp_path / "hospital", "hospital.example")
    extra = {**extra, "readmit_secrets_tls_certificate": certificate, "readmit_secrets_tls_private_key": key}
    first = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert first.returncode == 0, first.stdout[-4000:]
    second = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert second.returncode == 0, second.stdout[-4000:]
    assert playbook_recap(second.stdout)["changed"] == 0, second.stdout[-4000:]
    assert applied_secrets(state_file)["readmit-tls"] == {"tls.crt": certificate, "tls.key": key}
    assert secret_types(state_file)["readmit-tls"] == "kubernetes.io/tls"
    assert certificate_names(certificate, key) == ["*.hospital.example"]
    key_lines = [line for line in key.splitlines() if "PRIVATE KEY" not in line]
    assert not any(line in first.stdout + second.stdout for line in key_lines)


def test_a_lost_secrets_file_is_read_back_from_the_cluster_never_redrawn(tmp_path):
    """Run from another control machine (or after losing the file): the cluster's values come back
    into the file and no Secret changes (new passwords would lock the services out of MySQL)."""
    env, state_file, secrets_file, extra = secrets_setup(tmp_path)
    first = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert first.returncode == 0, first.stdout[-4000:]
    original, cluster = yaml.safe_load(secrets_file.read_text()), applied_secrets(state_file)

    secrets_file.unlink()
    again = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert again.returncode == 0, again.stdout[-4000:]
    assert yaml.safe_load(secrets_file.read_text()) == original
    assert applied_secrets(state_file) == cluster
    assert playbook_recap(again.stdout)["changed"] == 1, "only the file may be written"
    assert "read from the cluster" in again.stdout
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600


def test_a_secret_added_by_a_newer_version_is_drawn_once_and_the_others_kept(tmp_path):
    """An install made before the API's history identity existed (no mysql_data_history_password in the
    cluster nor in the file): the upgrade's run draws that value alone, adds it to the file, the platform's
    copy and Secret mysql-data, and keeps every other value; the next run changes nothing."""
    env, state_file, secrets_file, extra = secrets_setup(tmp_path)
    assert run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env).returncode == 0
    platform = role_defaults("readmit_secrets")["readmit_secrets_platform_secret"]
    state = json.loads(state_file.read_text())
    del state["objects"][f"Secret/{NAMESPACE}/{platform}"]["data"]["mysql_data_history_password"]
    del state["objects"][f"Secret/{NAMESPACE}/mysql-data"]["data"]["history-password"]
    state_file.write_text(json.dumps(state))
    older = yaml.safe_load(secrets_file.read_text())
    del older["mysql_data_history_password"]
    secrets_file.write_text(yaml.safe_dump(older))

    upgrade = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert upgrade.returncode == 0, upgrade.stdout[-4000:]
    values = yaml.safe_load(secrets_file.read_text())
    drawn = values.pop("mysql_data_history_password")
    assert values == older, "a value that existed changed"
    assert len(drawn) == role_defaults("readmit_secrets")["readmit_secrets_length"] and drawn.isalnum()
    applied = applied_secrets(state_file)
    assert applied["mysql-data"]["history-password"] == drawn
    assert applied[platform]["mysql_data_history_password"] == drawn
    assert drawn not in upgrade.stdout + upgrade.stderr, "the new password was printed"
    again = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert again.returncode == 0 and playbook_recap(again.stdout)["changed"] == 0, again.stdout[-4000:]


def test_a_secrets_file_that_disagrees_with_the_cluster_stops_the_play(tmp_path):
    env, state_file, secrets_file, extra = secrets_setup(tmp_path)
    assert run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env).returncode == 0
    cluster = applied_secrets(state_file)
    values = yaml.safe_load(secrets_file.read_text())
    values["mysql_data_readmit_password"] = "another0machine0drew0this0value0"
    secrets_file.write_text(yaml.safe_dump(values))

    result = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert result.returncode != 0
    assert "differs from the cluster" in result.stdout and "mysql_data_readmit_password" in result.stdout
    assert "another0machine0drew0this0value0" not in result.stdout
    assert applied_secrets(state_file) == cluster, "the cluster's Secrets were overwritten"


def test_rotation_changes_the_database_users_first_then_the_secrets(tmp_path):
    env, state_file, secrets_file, extra = secrets_setup(tmp_path)
    assert run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env).returncode == 0
    old = yaml.safe_load(secrets_file.read_text())

    result = run_playbook(tmp_path, role_playbook("readmit_secrets"), {**extra, "readmit_secrets_rotate": True},
                          env=env)
    assert result.returncode == 0, result.stdout[-4000:]
    new = yaml.safe_load(secrets_file.read_text())
    rotatable = role_defaults("readmit_secrets")["readmit_secrets_rotatable"]
    assert all(new[k] != old[k] for k in rotatable)
    assert new["airflow_fernet_key"] == old["airflow_fernet_key"], "the Fernet key encrypts Airflow's connections"
    assert list(secrets_file.parent.glob("secrets.yml.*")), "the previous file is kept as a backup"

    state = json.loads(state_file.read_text())
    execs = {entry["argv"][entry["argv"].index("exec") + 2]: entry["stdin"] for entry in state["stdin"]}
    data_sql = execs["statefulset/mysql-data"]
    assert f"ALTER USER 'readmit'@'%' IDENTIFIED WITH mysql_native_password BY '{new['mysql_data_readmit_password']}'" \
        in data_sql
    assert f"'root'@'%' IDENTIFIED BY '{new['mysql_data_root_password']}'" in data_sql
    # history_reader, prediction_writer and grafana_reader are made by the deploy's Job, after this role:
    # skipped when they do not exist yet (an upgrade that rotates at once), so that the other users' changes
    # are not left half done.
    for user, key in (("history_reader", "mysql_data_history_password"),
                      ("prediction_writer", "mysql_data_prediction_writer_password"),
                      ("grafana_reader", "mysql_data_grafana_reader_password")):
        assert f"ALTER USER IF EXISTS '{user}'@'%' IDENTIFIED WITH mysql_native_password BY '{new[key]}'" \
            in data_sql, user
    assert "ALTER USER IF EXISTS 'readmit'" not in data_sql
    assert f"'mlflow'@'%' IDENTIFIED WITH mysql_native_password BY '{new['mysql_tracking_mlflow_password']}'" \
        in execs["statefulset/mysql-tracking"]
    assert execs["deployment/grafana"] == new["grafana_admin_password"] + "\n"  # one line on stdin
    calls = state["calls"]
    sql_at = min(i for i, c in enumerate(calls) if "exec" in c)
    secret_at = max(i for i, c in enumerate(calls) if c[:1] == ["apply"])
    restart_at = max(i for i, c in enumerate(calls) if c[2:4] == ["rollout", "restart"])
    assert sql_at < secret_at < restart_at, "databases first, then the Secrets, then the restart"
    assert applied_secrets(state_file)["mysql-data"]["readmit-password"] == new["mysql_data_readmit_password"]
    everything = json.dumps(calls) + result.stdout
    assert not any(new[k] in everything or old[k] in everything for k in rotatable), "a secret was exposed"


def stage_repository(root: Path) -> None:
    """A copy of the repository's build inputs and manifests (the checkout may change under us)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", ".pytest_cache")
    for rel in ("shared", "requirements", "server1-data", "server2-tracking", "server3-serving"):
        shutil.copytree(REPO_ROOT / rel, root / rel, ignore=ignore, dirs_exist_ok=True)
    shutil.copy2(REPO_ROOT / ".dockerignore", root / ".dockerignore")


@pytest.mark.slow
def test_sources_are_packed_reproducibly_and_tags_follow_each_images_inputs(tmp_path):
    repo = tmp_path / "repo"
    stage_repository(repo)
    (repo / "server1-data" / "src" / "readmit_data.egg-info").mkdir(exist_ok=True)
    leader = tmp_path / "leader"
    extra = {"readmit_images_repo_dir": str(repo), "readmit_images_local_dir": str(tmp_path / "build"),
             "readmit_images_remote_dir": str(leader)}
    playbook = role_playbook("readmit_images", "sources.yml") + """
    - name: Save the tags
      ansible.builtin.copy:
        content: "{{ {'tags': readmit_images_tags, 'source_dir': readmit_images_source_dir} | to_json }}"
        dest: "{{ out_file }}"
        mode: "0644"
"""

    def run(out: str) -> tuple[dict, dict]:
        result = run_playbook(tmp_path, playbook, {**extra, "out_file": str(tmp_path / out)})
        assert result.returncode == 0, result.stdout[-4000:]
        return playbook_recap(result.stdout), json.loads((tmp_path / out).read_text())

    recap, first = run("first.json")
    assert recap["changed"] > 0
    recap, second = run("second.json")
    assert recap["changed"] == 1, "only the 'save the tags' step may change on a second run"
    assert second == first
    assert set(first["tags"]) == set(built_images())
    assert len(set(first["tags"].values())) == len(built_images())
    source_dir = Path(first["source_dir"])
    for dockerfile in built_images().values():
        assert (source_dir / dockerfile).is_file()
    assert (source_dir / "server1-data" / "k8s" / "kustomization.yaml").is_file()
    assert not list(source_dir.rglob("*.egg-info"))

    # A manifest change moves no tag; a server's code change moves its image's tag only.
    (repo / "server2-tracking" / "k8s" / "mlflow.yaml").write_text("# changed\n")
    (repo / "server1-data" / "src" / "readmit_data" / "settings.py").write_text("# changed\n")
    _, third = run("third.json")
    assert third["tags"]["readmit-tracking"] == first["tags"]["readmit-tracking"]
    assert third["tags"]["readmit-serving"] == first["tags"]["readmit-serving"]
    assert third["tags"]["readmit-data"] != first["tags"]["readmit-data"]
    assert third["source_dir"] != first["source_dir"]
    assert sorted(p.name for p in leader.glob("src-*")) == [Path(third["source_dir"]).name], "old sources left"


def fake_nodes(node_label_key: str, node_labels: dict[str, str], cpu: str = "4", memory: str = "16Gi") -> list[dict]:
    """Nodes as `kubectl get nodes -o json` lists them: one per group, labelled, with allocatable room."""
    return [{"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": f"node-{group}", "labels": {node_label_key: value}},
             "status": {"allocatable": {"cpu": cpu, "memory": memory}}}
            for group, value in node_labels.items()]


def deploy_setup(tmp_path: Path, node_label_key: str, node_labels: dict[str, str], **node_room: str):
    command, env, state_file = fake_kube(tmp_path)
    state_file.write_text(json.dumps({"namespaces": [NAMESPACE], "objects": {}, "calls": [], "stdin": [],
                                      "nodes": fake_nodes(node_label_key, node_labels, **node_room)}))
    repo = tmp_path / "src"
    for server in deploy_servers():
        stage_server(server.folder, repo)
    tags = {name: "t" + str(i) * 7 for i, name in enumerate(sorted(built_images()))}
    extra = {
        "readmit_deploy_kubectl": command,
        "readmit_deploy_source_dir": str(repo),
        "readmit_deploy_overlay_dir": str(tmp_path / "overlays"),
        "readmit_deploy_tools_dir": str(tmp_path / "tools"),
        "readmit_deploy_python": sys.executable,
        "readmit_deploy_image_tags": tags,
        "readmit_domain": DOMAIN,  # inventory.ini's readmit_domain
    }
    return env, state_file, repo, tags, extra


# Later runs skip the waits (read-only, and slow to run here item by item).
RENDER_AND_APPLY = role_playbook("readmit_deploy", "render.yml") + """
    - name: Apply
      ansible.builtin.include_role:
        name: readmit_deploy
        tasks_from: apply.yml
"""


@pytest.mark.slow
def test_deploy_renders_with_the_built_tags_applies_once_and_recreates_changed_jobs(tmp_path, node_label_key,
                                                                                   node_labels):
    env, state_file, repo, tags, extra = deploy_setup(tmp_path, node_label_key, node_labels)
    first = run_playbook(tmp_path, role_playbook("readmit_deploy"), extra, env=env)
    assert first.returncode == 0, first.stdout[-5000:]
    # the tools' folder and the capacity script, then one apply per server
    assert playbook_recap(first.stdout)["changed"] == len(deploy_servers()) + 2
    second = run_playbook(tmp_path, RENDER_AND_APPLY, extra, env=env)
    assert second.returncode == 0, second.stdout[-5000:]
    assert playbook_recap(second.stdout)["changed"] == 0, second.stdout[-5000:]

    state = json.loads(state_file.read_text())
    assert not any("load-restrictor" in " ".join(call) for call in state["calls"])
    objects = list(state["objects"].values())
    for server in deploy_servers():
        mine = [o for o in objects if o["metadata"].get("labels", {}).get("readmit.io/server") == server.folder]
        assert policies.check_node_selector(mine, node_label_key, node_labels[server.group]) == []
    images = {c["image"] for pod in policies.pod_templates(objects) for c in pod.all_containers}
    for name, tag in tags.items():
        assert f"{registry()}/{name}:{tag}" in images
    assert not {i for i in images if i.startswith(registry()) and not i.endswith(tuple(tags.values()))}
    config_maps = {o["metadata"]["name"].rsplit("-", 1)[0]: o for o in objects if o["kind"] == "ConfigMap"}
    settings = config_maps["mlflow-settings"]
    assert settings["data"]["MLFLOW_PUBLIC_HOSTS"] == f"mlflow.{DOMAIN}"
    airflow = config_maps["airflow-config"]
    assert airflow["data"]["AIRFLOW__API__BASE_URL"] == f"https://airflow.{DOMAIN}"
    ingresses = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Ingress"}
    listed = role_defaults("readmit_deploy")["readmit_deploy_ingresses"]
    assert sorted(ingresses) == sorted(n for names in listed.values() for n in names)
    assert all(o["spec"]["rules"][0]["host"] == f"{name}.{DOMAIN}" for name, o in ingresses.items())
    assert airflow["data"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api:8080/execution/"
    dashboards_map = next(o for o in objects if o["kind"] == "ConfigMap"
                          and o["metadata"]["name"].startswith("grafana-dashboards-"))
    dashboards = REPO_ROOT / "server3-serving" / "monitoring" / "grafana" / "dashboards"
    assert set(dashboards_map["data"]) == {p.name for p in dashboards.glob("*.json")}
    grafana = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "grafana")
    volumes = {v["name"]: v for v in grafana["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dashboards"]["configMap"]["name"] == dashboards_map["metadata"]["name"]
    assert policies.check_config_refs(objects) == []

    # A new tracking image: the bucket Job (immutable pod template) is deleted and created again.
    tags["readmit-tracking"] = "t9999999"
    third = run_playbook(tmp_path, RENDER_AND_APPLY, {**extra, "readmit_deploy_image_tags": tags}, env=env)
    assert third.returncode == 0, third.stdout[-5000:]
    calls = json.loads(state_file.read_text())["calls"]
    assert any(call[:4] == ["-n", NAMESPACE, "delete", "job"] and call[4] == "minio-bucket" for call in calls)
    job = json.loads(state_file.read_text())["objects"][f"Job/{NAMESPACE}/minio-bucket"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":t9999999")


@pytest.mark.slow
def test_deploy_prunes_what_a_folder_no_longer_declares_and_recreates_changed_statefulsets(
        tmp_path, node_label_key, node_labels):
    """A Service removed from a folder's manifests (and the old generated ConfigMap of a changed
    setting) are deleted; a StatefulSet whose volumeClaimTemplates changed is deleted with
    --cascade=orphan (pods and claims kept) and created again; the playbook's Secrets and volume
    claims are never pruned."""
    env, state_file, repo, tags, extra = deploy_setup(tmp_path, node_label_key, node_labels)
    first = run_playbook(tmp_path, RENDER_AND_APPLY, extra, env=env)
    assert first.returncode == 0, first.stdout[-5000:]
    state = json.loads(state_file.read_text())
    # What the cluster also holds: the playbook's Secret and a claim made from a claim template.
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "data-mysql-tracking-0", "namespace": NAMESPACE,
                          "labels": {"app.kubernetes.io/part-of": "readmit", "readmit.io/server": "server2-tracking"}}}
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "minio", "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "readmit"}}}
    state["objects"][f"PersistentVolumeClaim/{NAMESPACE}/data-mysql-tracking-0"] = claim
    state["objects"][f"Secret/{NAMESPACE}/minio"] = secret
    state_file.write_text(json.dumps(state))
    before = set(state["objects"])

    locust = repo / "server3-serving" / "k8s" / "locust.yaml"
    kust = repo / "server3-serving" / "k8s" / "kustomization.yaml"
    kust.write_text(kust.read_text().replace("  - locust.yaml\n", ""))
    settings = repo / "server2-tracking" / "k8s" / "kustomization.yaml"
    settings.write_text(settings.read_text().replace("MLFLOW_WORKERS=2", "MLFLOW_WORKERS=3"))
    sts = repo / "server2-tracking" / "k8s" / "mysql-tracking.yaml"
    sts.write_text(sts.read_text().replace("storage: 10Gi", "storage: 20Gi"))
    assert locust.exists()

    second = run_playbook(tmp_path, RENDER_AND_APPLY, extra, env=env)
    assert second.returncode == 0, second.stdout[-5000:]
    state = json.loads(state_file.read_text())
    after = set(state["objects"])
    gone = before - after
    assert {f"Deployment/{NAMESPACE}/locust", f"Service/{NAMESPACE}/locust"} <= gone
    assert any(k.startswith(f"ConfigMap/{NAMESPACE}/mlflow-settings-") for k in gone), "old ConfigMap not pruned"
    assert f"PersistentVolumeClaim/{NAMESPACE}/data-mysql-tracking-0" in after
    assert f"Secret/{NAMESPACE}/minio" in after
    assert not {k for k in gone if k.split("/")[0] in ("PersistentVolumeClaim", "Secret")}
    calls = state["calls"]
    (delete,) = [c for c in calls if c[2:4] == ["delete", "statefulset"]]
    assert delete[4] == "mysql-tracking" and "--cascade=orphan" in delete
    assert not state.get("pods_deleted")
    new = state["objects"][f"StatefulSet/{NAMESPACE}/mysql-tracking"]
    assert new["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"

    third = run_playbook(tmp_path, RENDER_AND_APPLY, extra, env=env)
    assert third.returncode == 0, third.stdout[-5000:]
    assert playbook_recap(third.stdout)["changed"] == 0, third.stdout[-5000:]


@pytest.mark.slow
def test_deploy_stops_before_applying_when_a_node_is_too_small(tmp_path, node_label_key, node_labels):
    env, state_file, _, _, extra = deploy_setup(tmp_path, node_label_key, node_labels, cpu="2", memory="4Gi")
    result = run_playbook(tmp_path, role_playbook("readmit_deploy"), extra, env=env)
    assert result.returncode != 0
    assert "Not enough room" in result.stdout and "node-data" in result.stdout and "MiB" in result.stdout
    assert "Provision a real cluster" in result.stdout  # the README's minimum sizes
    state = json.loads(state_file.read_text())
    assert state["objects"] == {}, "something was applied although a node is too small"
    assert not any(call[:1] == ["apply"] for call in state["calls"])


RENDER_ONLY = role_playbook("readmit_deploy", "render.yml") + """
    - name: Save the rendered objects
      ansible.builtin.copy:
        content: "{{ readmit_deploy_objects | to_json }}"
        dest: "{{ out_file }}"
        mode: "0644"
"""


def test_the_overlay_gives_each_ingress_the_clusters_domain(tmp_path, node_label_key, node_labels, all_objects):
    """The overlay the role writes (kustomization.yaml.j2) sets every Ingress host, in its rule and
    its TLS entry, to NAME.DOMAIN with inventory.ini's readmit_domain; nothing else of them changes."""
    env, _, _, _, extra = deploy_setup(tmp_path, node_label_key, node_labels)
    out = tmp_path / "objects.json"
    result = run_playbook(tmp_path, RENDER_ONLY, {**extra, "out_file": str(out)}, env=env)
    assert result.returncode == 0, result.stdout[-5000:]
    objects = json.loads(out.read_text())
    ingresses = {o["metadata"]["name"]: o for o in policies.of_kind(objects, "Ingress")}
    listed = role_defaults("readmit_deploy")["readmit_deploy_ingresses"]
    assert sorted(ingresses) == sorted(n for names in listed.values() for n in names)
    committed = {i["metadata"]["name"]: i for i in policies.of_kind(all_objects, "Ingress")}
    for name, ingress in ingresses.items():
        host = f"{name}.{DOMAIN}"
        assert [rule["host"] for rule in ingress["spec"]["rules"]] == [host], name
        assert [entry["hosts"] for entry in ingress["spec"]["tls"]] == [[host]], name
        assert all(entry["secretName"] == "readmit-tls" for entry in ingress["spec"]["tls"]), name
        assert ingress["spec"]["rules"][0]["http"] == committed[name]["spec"]["rules"][0]["http"], name


def ingress_backend(ingresses: list[dict], host: str, path: str) -> dict | None:
    """The Service backend ({name, port}) an ingress controller sends ``host`` + ``path`` to, by
    the Ingresses' rules (Exact first, then the longest Prefix, element-wise), or None (404)."""
    path = path.split("?", 1)[0]
    best: tuple[int, dict] | None = None
    for ingress in ingresses:
        for rule in ingress["spec"].get("rules") or []:
            if rule.get("host") != host:
                continue
            for entry in rule["http"]["paths"]:
                prefix = entry["path"].rstrip("/")
                if entry["pathType"] == "Exact" and path == entry["path"]:
                    return entry["backend"]["service"]
                if entry["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/")):
                    if best is None or len(prefix) > best[0]:
                        best = (len(prefix), entry["backend"]["service"])
    return best[1] if best else None


def test_smoke_urls_and_checks_cover_every_ingress_host(rendered, all_objects):
    """Every page behind the ingress (an Ingress host) is in the printed table and has a check; each
    check asks for a path the Ingress routes to a Service that exists (or expects the ingress'
    404 where nothing may be exposed); every page but the Streamlit UI (whose login is in the page)
    has a check that an anonymous request is refused. readmit_deploy_ingresses lists each folder's
    Ingresses (the overlay patches those)."""
    smoke, deploy = role_defaults("readmit_smoke"), role_defaults("readmit_deploy")
    ingresses = policies.of_kind(all_objects, "Ingress")
    per_folder = {folder: sorted(o["metadata"]["name"] for o in policies.of_kind(r.objects, "Ingress"))
                  for folder, r in rendered.items()}
    assert {folder: sorted(names) for folder, names in deploy["readmit_deploy_ingresses"].items()} == {
        folder: names for folder, names in per_folder.items() if names}
    hosts = {}
    for ingress in ingresses:
        name = ingress["metadata"]["name"]
        assert [rule["host"] for rule in ingress["spec"]["rules"]] == [f"{name}.readmit.internal"]
        assert ingress["spec"]["tls"] == [{"hosts": [f"{name}.readmit.internal"], "secretName": "readmit-tls"}]
        hosts[name] = f"{name}.readmit.internal"

    assert {u["host"] for u in smoke["readmit_smoke_urls"]} == set(hosts)
    for url in smoke["readmit_smoke_urls"]:
        assert ingress_backend(ingresses, hosts[url["host"]], url["path"]) is not None, url
    checks = smoke["readmit_smoke_checks"]
    assert set(hosts) <= {c["host"] for c in checks}
    services = {s["metadata"]["name"]: s for s in policies.of_kind(all_objects, "Service")}
    for check in checks:
        backend = ingress_backend(ingresses, hosts.get(check["host"], ""), check["path"])
        if check["status"] == [404]:
            assert backend is None, f"{check['name']}: the ingress routes {check['host']}{check['path']}"
            continue
        assert backend is not None, f"{check['name']}: the ingress does not route {check['host']}{check['path']}"
        assert backend["port"]["name"] in {p.get("name") for p in services[backend["name"]]["spec"]["ports"]}
    # Alive: a 200 from the page (Locust's login redirect says as much; the API's liveness is read
    # through the pod proxy below, /health being inside the cluster only).
    alive = {c["host"] for c in checks if 200 in c["status"]}
    refused = {c["host"] for c in checks if c["host"] in hosts and not {200, 404} & set(c["status"])}
    assert alive >= set(hosts) - {"locust", "api"}, "a page without a liveness check"
    assert refused >= set(hosts) - {"ui"}, "a page that holds data without an anonymous-refusal check"
    assert any(c["host"] == "prometheus" and c["status"] == [404] for c in checks), "Prometheus must stay inside"
    # No Service is reachable from outside the cluster but through the ingress.
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services.values())

    # The API's liveness and readiness are asked inside its pods: the container and port exist.
    api = next(o for o in policies.of_kind(all_objects, "Deployment") if o["metadata"]["name"] == "api")
    ports = {p["containerPort"] for c in api["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert smoke["readmit_smoke_api"]["port"] in ports
    label, _, value = smoke["readmit_smoke_api"]["selector"].partition("=")
    assert api["spec"]["template"]["metadata"]["labels"].get(label) == value
    containers = {c["name"] for c in api["spec"]["template"]["spec"]["containers"]}
    assert smoke["readmit_smoke_api"]["container"] in containers
    bootstrap = role_defaults("readmit_bootstrap")["readmit_bootstrap_api"]
    assert bootstrap["deployment"] == "api" and bootstrap["container"] in containers and bootstrap["port"] in ports
    assert bootstrap["host"] in hosts


def test_no_machine_paths_in_committed_files():
    """Nothing of this machine (its work or temporary folders) in the files this issue adds."""
    roots = [ANSIBLE_DIR, REPO_ROOT / "tests" / "deploy", REPO_ROOT / "inventory.ini", REPO_ROOT / ".dockerignore"]
    roots += [REPO_ROOT / s.folder / "k8s" for s in deploy_servers()]
    roots += [REPO_ROOT / d for d in built_images().values()]
    files = [p for r in roots for p in ([r] if r.is_file() else r.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]
    offenders = [str(p.relative_to(REPO_ROOT)) for p in files
                 if any(marker in p.read_text(errors="ignore") for marker in ("/" + "work/", "/" + "tmp/"))]
    assert not offenders, offenders


@pytest.fixture(autouse=True)
def _no_home_pollution(monkeypatch, tmp_path):
    """Keep ansible's per-user state of these tests in tmp_path."""
    monkeypatch.setenv("ANSIBLE_HOME", str(tmp_path / ".ansible-home"))


# -- the end of the play: smoke checks and the opt-in bootstrap ----------------------------------------

# Three nodes on this machine; the play runs on the leader, as site.yml's last play does.
LOCAL_INVENTORY = f"""
[data]
node1 ansible_host=127.0.0.1 ansible_connection=local
[tracking]
node2 ansible_host=127.0.0.1 ansible_connection=local
[serving]
node3 ansible_host=127.0.0.1 ansible_connection=local
[cluster_leader]
node1
[microk8s:children]
data
tracking
serving
[microk8s:vars]
readmit_domain={DOMAIN}
"""
# The hospital's key, as readmit_secrets settled it earlier in the play (readmit_secrets_values).
HOSPITAL_KEY = "hospital0key0for0the0stand0in0ingress0tests"
ANONYMOUS_REFUSED = {  # what each page answers an anonymous request, path prefix -> status (else the last)
    "mlflow": [("/health", 200), ("", 401)],  # MLflow's basic-auth app
    "airflow-api": [("/api/v2/monitor/health", 200), ("/api/", 401), ("", 200)],  # the API wants a token
    "jupyter": [("/api/", 403), ("/api", 200), ("", 302)],  # token; /api is its version
    "ui": [("", 200)],  # Streamlit: the login form is in the page
    "grafana": [("/api/health", 200), ("/api/", 401), ("", 302)],
    "locust": [("/login", 200), ("", 302)],  # --web-login
}


class StandInIngress:
    """MicroK8s' ingress on a node, without a cluster: HTTPS on one port (a self-signed certificate
    made here with openssl) that routes by Host header and path with the rendered Ingresses' rules
    (hosts NAME.DOMAIN) to a stand-in per Service, 404 for anything the Ingresses do not route; and
    plain HTTP on another port that redirects to HTTPS (308), as the controller does for a host with
    TLS. The stand-ins answer as the real pages do without credentials (ANONYMOUS_REFUSED); the
    API's /predict and /model want ``api_key`` (X-API-Key or a Bearer token), and /predict answers
    once the fake cluster holds a champion. ``open_pages`` are Services that answer 200 to anyone (a
    page left open); ``redirect=False`` serves the pages over plain HTTP too. Every request is kept
    in ``seen``. Stands in for services that cannot run here: the real API's behaviour is tested in
    tests/serving, the real ingress across hosts in tests/e2e."""

    def __init__(self, tmp_path: Path, state_file: Path, ingresses: list[dict], api_key: str = HOSPITAL_KEY,
                 open_pages: frozenset[str] = frozenset(), redirect: bool = True) -> None:
        import http.server
        import ssl
        import threading

        self.seen: list[dict] = []
        routes = [self._on_domain(i) for i in ingresses]
        seen, state = self.seen, state_file

        def answer(service: str, method: str, path: str, headers, body: bytes) -> tuple[int, dict, dict]:
            if service in open_pages:
                return 200, {"anonymous": True}, {}
            if service == "api":
                return api(method, path, headers, body)
            status = next(s for prefix, s in ANONYMOUS_REFUSED[service] if path.startswith(prefix))
            return status, {}, ({"Location": "/login"} if status == 302 else {})

        def api(method: str, path: str, headers, body: bytes) -> tuple[int, dict, dict]:
            if path.startswith(("/docs", "/openapi.json")):
                return 200, {"openapi": "3.1.0"}, {}
            bearer = (headers.get("Authorization") or "").removeprefix("Bearer ")
            if api_key not in (headers.get("X-API-Key"), bearer):
                return 401, {"detail": "A valid API key is required."}, {"WWW-Authenticate": "Bearer"}
            version = json.loads(state.read_text()).get("champion")
            if version is None:
                return 503, {"detail": "No model is served yet."}, {}
            if (method, path) == ("GET", "/model"):
                return 200, {"model_name": "diabetes-readmission", "model_version": version}, {}
            if (method, path) != ("POST", "/predict"):
                return 405, {"detail": "Method Not Allowed"}, {}
            from pydantic import ValidationError
            from readmit_contract.encounter import Encounter

            try:
                Encounter.model_validate_json(body)
            except ValidationError:
                return 422, {"detail": "The encounter does not match the contract."}, {}
            return 200, {"probability": 0.12, "risk_band": "medium", "scored": True, "reason": None,
                         "model_name": "diabetes-readmission", "model_version": version}, {}

        class Handler(http.server.BaseHTTPRequestHandler):
            scheme = "https"

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):  # the handshake in this request's thread
                    self.request.do_handshake()
                super().setup()

            def _handle(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append({"scheme": self.scheme, "method": self.command, "host": host, "path": self.path,
                             "headers": {k.lower(): v for k, v in self.headers.items()}})
                if self.scheme == "http" and redirect:
                    status, data, extra = 308, {}, {"Location": f"https://{host}{self.path}"}
                else:
                    backend = ingress_backend(routes, host, self.path)
                    status, data, extra = ((404, {"detail": "default backend - 404"}, {}) if backend is None
                                           else answer(backend["name"], self.command, self.path.split("?")[0],
                                                       self.headers, body))
                text = json.dumps(data).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", "Content-Length": str(len(text)),
                                    **extra}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(text)

            do_GET = do_POST = do_HEAD = _handle  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        class PlainHandler(Handler):
            scheme = "http"

        make_certificate(tmp_path / "ingress-tls", DOMAIN)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "ingress-tls" / "crt.pem", tmp_path / "ingress-tls" / "key.pem")
        https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        https.socket = context.wrap_socket(https.socket, server_side=True, do_handshake_on_connect=False)
        plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PlainHandler)
        self.servers = [https, plain]
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.https_port, self.http_port = https.server_address[1], plain.server_address[1]

    @staticmethod
    def _on_domain(ingress: dict) -> dict:
        """The Ingress as the overlay renders it: each host NAME.readmit.internal -> NAME.DOMAIN."""
        ingress = json.loads(json.dumps(ingress))
        for rule in ingress["spec"]["rules"]:
            rule["host"] = rule["host"].split(".", 1)[0] + "." + DOMAIN
        return ingress

    def requests(self, scheme: str = "https") -> list[dict]:
        return [r for r in self.seen if r["scheme"] == scheme]

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def end_of_play_vars(tmp_path: Path, command: str, ingress: StandInIngress, data: str = "",
                     api_key: str = HOSPITAL_KEY) -> dict:
    """The roles' own checks and settings, pointed at the fake cluster and at the stand-in ingress."""
    return {
        "readmit_bootstrap_data": data,
        "readmit_bootstrap_kubectl": command,
        "readmit_bootstrap_remote_dir": str(tmp_path / "leader-data"),
        "readmit_bootstrap_https_port": ingress.https_port,
        "readmit_bootstrap_poll": 1,
        "readmit_bootstrap_timeout": 60,
        "readmit_secrets_values": {"api_key_hospital": api_key},
        "readmit_smoke_kubectl": command,
        "readmit_smoke_https_port": ingress.https_port,
        "readmit_smoke_http_port": ingress.http_port,
        "readmit_smoke_retries": 2,
        "readmit_smoke_delay": 1,
    }


END_OF_PLAY = """
- name: The end of site.yml's last play
  hosts: cluster_leader
  gather_facts: false
  roles:
    - role: readmit_bootstrap
      when: readmit_bootstrap_data | default('') | length > 0
    - role: readmit_smoke
"""


def deployed_platform(state_file: Path, all_objects: list[dict], champion: str | None = None) -> None:
    """The fake cluster after readmit_deploy: the rendered Deployments of the API, JupyterLab and
    Airflow's scheduler (their pods run; the API's turn Ready once a champion exists) and the API's
    Service."""
    wanted = {("Deployment", "api"), ("Deployment", "jupyter"), ("Deployment", "airflow-scheduler"), ("Service", "api")}
    objects = {f"{o['kind']}/{NAMESPACE}/{o['metadata']['name']}": o for o in all_objects
               if (o["kind"], o["metadata"]["name"]) in wanted}
    assert len(objects) == len(wanted), sorted(objects)
    state = {"namespaces": [NAMESPACE], "calls": [], "stdin": [], "objects": objects}
    if champion:
        state["champion"] = champion
    state_file.write_text(json.dumps(state))


def end_of_play(tmp_path: Path, all_objects: list[dict], champion: str | None = None, **ingress_options):
    """(kubectl command, environment, state file, inventory, stand-in ingress) of a deployed platform."""
    command, env, state_file = fake_kube(tmp_path)
    deployed_platform(state_file, all_objects, champion)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(LOCAL_INVENTORY)
    ingress = StandInIngress(tmp_path, state_file, policies.of_kind(all_objects, "Ingress"), **ingress_options)
    return command, env, state_file, inventory, ingress


def api_probes(state_file: Path) -> list[tuple[str, str]]:
    """(pod or deployment/NAME, path) of every in-pod GET of the API the roles ran (`kubectl exec ... --
    python -c PROBE PORT PATH`: through the kubelet, which the NetworkPolicies do not close)."""
    probes = []
    for call in json.loads(state_file.read_text())["calls"]:
        if "exec" in call and "--" in call:
            rest = call[call.index("--") + 1:]
            if rest[:2] == ["python", "-c"]:
                assert rest[3] == "8000" and "127.0.0.1" in rest[2], call
                probes.append((call[call.index("exec") + 1], rest[4]))
    return probes


@pytest.mark.slow
def test_a_fresh_platform_ends_green_with_the_api_waiting_for_a_model(tmp_path, all_objects):
    """No champion yet: every page answers through the ingress (over TLS, by host name, refusing
    anonymous requests), plain HTTP redirects to HTTPS, the API's pod is alive but not Ready (its
    /ready, asked inside the pod, answers 503), and the play says it waits for a model."""
    command, env, state_file, inventory, ingress = end_of_play(tmp_path, all_objects)
    try:
        result = run_playbook(tmp_path, END_OF_PLAY, end_of_play_vars(tmp_path, command, ingress),
                              inventory=inventory, env=env)
    finally:
        ingress.close()
    assert result.returncode == 0, result.stdout[-4000:]
    assert "waiting for a model" in result.stdout
    assert "readmit_bootstrap_data=synthetic" in result.stdout
    for url in role_defaults("readmit_smoke")["readmit_smoke_urls"]:
        assert f"https://{url['host']}.{DOMAIN}{url['path']}" in result.stdout, url
    checks = role_defaults("readmit_smoke")["readmit_smoke_checks"]
    asked = {(r["host"], r["path"]) for r in ingress.requests("https")}
    assert asked == {(f"{c['host']}.{DOMAIN}", c["path"]) for c in checks}
    (plain,) = ingress.requests("http")
    assert plain["host"] == f"ui.{DOMAIN}"
    probes = api_probes(state_file)
    assert ("api-0", "/health") in probes and ("api-0", "/ready") in probes
    loads = [e for e in json.loads(state_file.read_text())["stdin"] if "python" not in e["argv"]]
    assert not loads, "nothing is loaded without the opt-in"


@pytest.mark.slow
@pytest.mark.parametrize("data", ["synthetic", "path"])
def test_the_opt_in_bootstrap_loads_trains_and_predicts_through_the_ingress(tmp_path, all_objects, data):
    """The bootstrap loads, triggers training, waits for /ready (asked inside an API pod: 200 once it
    serves a champion) and predicts as the hospital's systems do: https://api.DOMAIN with the
    hospital's API key, which never shows in the output."""
    command, env, state_file, inventory, ingress = end_of_play(tmp_path, all_objects)
    if data == "path":
        source = tmp_path / "control" / "diabetic_data.csv"
        source.parent.mkdir()
        source.write_text("encounter_id,patient_nbr\n")
        data = str(source)
    try:
        extra = end_of_play_vars(tmp_path, command, ingress, data)
        first = run_playbook(tmp_path, END_OF_PLAY, extra, inventory=inventory, env=env)
        assert first.returncode == 0, first.stdout[-4000:]
        state = json.loads(state_file.read_text())
        second = run_playbook(tmp_path, END_OF_PLAY, extra, inventory=inventory, env=env)
    finally:
        ingress.close()
    assert "serving model version 1" in first.stdout and "predicted 0.120 (medium)" in first.stdout
    assert f"https://api.{DOMAIN}" in first.stdout
    execs = [e["argv"][e["argv"].index("--") + 1:] for e in state["stdin"] if "python" not in e["argv"]]
    loader = "synthetic:20000" if data == "synthetic" else "/home/readmit/lab/.cache/readmit/diabetic_data.csv"
    assert execs == [["readmit-data", "load", "--source", loader, "--batch", "all", "--quiet"],
                     ["airflow", "dags", "trigger", "preprocess_incremental"]]
    copies = [c for c in state["calls"] if "cp" in c]
    if data == "synthetic":
        assert not copies
    else:
        (copy,) = copies
        assert copy[copy.index("cp") + 2] == "jupyter-0:/home/readmit/lab/.cache/readmit/diabetic_data.csv"
        assert (tmp_path / "leader-data" / "diabetic_data.csv").read_text() == source.read_text()
    assert api_probes(state_file).count(("deployment/api", "/ready")) >= 3, \
        "asked before loading, waited after, asked on the second run"
    # Both runs predicted through the ingress, with the hospital's key and the API's host name.
    predictions = [r for r in ingress.requests("https") if r["path"] == "/predict"]
    assert [(r["method"], r["host"], r["headers"].get("x-api-key")) for r in predictions] == [
        ("POST", f"api.{DOMAIN}", HOSPITAL_KEY)] * 2
    assert HOSPITAL_KEY not in first.stdout + second.stdout
    # A second run finds the champion: it only predicts.
    assert second.returncode == 0, second.stdout[-4000:]
    assert playbook_recap(second.stdout, "node1")["changed"] == 0, second.stdout[-4000:]
    assert len([e for e in json.loads(state_file.read_text())["stdin"] if "python" not in e["argv"]]) == len(execs)


@pytest.mark.slow
def test_the_bootstrap_stops_when_the_api_refuses_its_key(tmp_path, all_objects):
    """A champion exists, but the API does not know the key the play sends (e.g. api-keys not
    applied): the bootstrap stops with the API's answer, and the key it sent does not show."""
    command, env, state_file, inventory, ingress = end_of_play(tmp_path, all_objects, champion="3",
                                                               api_key="the0key0the0api0really0knows")
    try:
        result = run_playbook(tmp_path, END_OF_PLAY, end_of_play_vars(tmp_path, command, ingress, "synthetic"),
                              inventory=inventory, env=env)
    finally:
        ingress.close()
    assert result.returncode != 0
    assert f"POST https://api.{DOMAIN}/predict answered 401" in result.stdout
    assert HOSPITAL_KEY not in result.stdout
    execs = [e for e in json.loads(state_file.read_text())["stdin"] if "python" not in e["argv"]]
    assert not execs, "a served champion needs no loading"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["grafana answers anonymous requests", "plain HTTP serves the pages"])
def test_the_smoke_check_fails_when_a_page_is_open(tmp_path, all_objects, fault):
    """The point of the check: a page that answers an anonymous request with 200 where credentials
    are expected (Grafana with anonymous access on), or pages served over plain HTTP instead of
    being redirected to HTTPS, fail the play and name the check."""
    options = ({"open_pages": frozenset({"grafana"})} if fault.startswith("grafana") else {"redirect": False})
    command, env, state_file, inventory, ingress = end_of_play(tmp_path, all_objects, champion="1", **options)
    try:
        result = run_playbook(tmp_path, END_OF_PLAY, end_of_play_vars(tmp_path, command, ingress),
                              inventory=inventory, env=env)
    finally:
        ingress.close()
    assert result.returncode != 0
    assert playbook_recap(result.stdout, "node1")["failed"] == 1
    if fault.startswith("grafana"):
        assert "Grafana refuses anonymous requests" in result.stdout
        assert "Status code was 200 and not [401]" in result.stdout
        assert "Check that plain HTTP" not in result.stdout, "the play stops at the failed check"
    else:
        assert "TASK [readmit_smoke : Check that plain HTTP is sent to HTTPS" in result.stdout
        assert "Status code was 200 and not [301, 302, 307, 308]" in result.stdout.split("Check that plain HTTP")[1]
    assert "serving model version" not in result.stdout


def test_the_bootstrap_predicts_the_contracts_example_encounter():
    from readmit_contract.encounter import Encounter, example_encounter

    encounter = role_defaults("readmit_bootstrap")["readmit_bootstrap_encounter"]
    assert encounter == example_encounter()
    Encounter.model_validate(encounter)
