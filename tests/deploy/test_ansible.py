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


def test_secrets_are_generated_once_kept_private_and_applied_idempotently(tmp_path):
    pytest.importorskip("cryptography")
    from cryptography.fernet import Fernet

    env, state_file, secrets_file, extra = secrets_setup(tmp_path)
    first = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert first.returncode == 0, first.stdout[-4000:]
    assert playbook_recap(first.stdout)["changed"] > 0
    content = secrets_file.read_text()
    second = run_playbook(tmp_path, role_playbook("readmit_secrets"), extra, env=env)
    assert second.returncode == 0, second.stdout[-4000:]
    assert playbook_recap(second.stdout)["changed"] == 0, second.stdout[-4000:]
    assert secrets_file.read_text() == content, "the secrets were generated again"

    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_file.parent.stat().st_mode) == 0o700
    values = yaml.safe_load(content)
    assert set(values) == set(role_defaults("readmit_secrets")["readmit_secrets_generated"])
    assert len(set(values.values())) == len(values)  # every value drawn separately
    Fernet(values["airflow_fernet_key"].encode())
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
    # No secret went through a command line, nor into ansible's output.
    assert not any(values["mysql_data_root_password"] in " ".join(call) for call in state["calls"])
    assert not any(v in first.stdout + second.stdout for v in values.values() if len(v) > 8)


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
    assert "192.0.2.12:30500" in settings["data"]["MLFLOW_NODE_HOSTS"].split(",")
    airflow = config_maps["airflow-config"]
    assert airflow["data"]["AIRFLOW__API__BASE_URL"] == "http://192.0.2.11:30080"
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


def test_smoke_urls_cover_every_user_facing_service(all_objects):
    """The printed table lists Airflow, JupyterLab, MLflow, MinIO console, API docs, Streamlit,
    Prometheus, Grafana and Locust at NodePorts their Services declare; the smoke checks hit
    API /ready, MLflow and Airflow health."""
    defaults = role_defaults("readmit_smoke")
    node_ports = {p["nodePort"]: s["metadata"]["name"] for s in policies.of_kind(all_objects, "Service")
                  for p in s["spec"]["ports"] if "nodePort" in p}
    services = {u["service"] for u in defaults["readmit_smoke_urls"]}
    assert services == {"Airflow", "JupyterLab", "MLflow", "MinIO console", "API docs", "Streamlit", "Prometheus",
                        "Grafana", "Locust"}
    for entry in defaults["readmit_smoke_urls"] + defaults["readmit_smoke_checks"]:
        assert entry["port"] in node_ports, entry
    folder_of_service = {o["metadata"]["name"]: o["metadata"]["labels"]["readmit.io/server"]
                         for o in policies.of_kind(all_objects, "Service")}
    group_of_folder = {s.folder: s.group for s in deploy_servers()}
    for entry in defaults["readmit_smoke_urls"] + defaults["readmit_smoke_checks"]:
        assert group_of_folder[folder_of_service[node_ports[entry["port"]]]] == entry["group"], entry
    paths = {c["path"] for c in defaults["readmit_smoke_checks"]}
    assert {"/health", "/api/v2/monitor/health"} <= paths
    # The API is not checked through its Service (no Ready pod before a champion exists).
    api = defaults["readmit_smoke_api"]
    assert node_ports[api["node_port"]] == "api" and api["node_port"] not in {c["port"] for c in
                                                                               defaults["readmit_smoke_checks"]}


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

LOCAL_INVENTORY = """
[data]
node1 ansible_host=127.0.0.1
[tracking]
node2 ansible_host=127.0.0.1
[serving]
node3 ansible_host=127.0.0.1
[cluster_leader]
node1
[microk8s:children]
data
tracking
serving
"""


class StandIn:
    """What the leader sees at the NodePorts, without a cluster: every service's liveness on one port,
    and the API at another whose /ready turns 200 once the fake cluster ran `airflow dags trigger`
    (the champion then exists). Stands in for services that cannot run here; the real API's
    behaviour is tested in tests/serving and across hosts in tests/e2e."""

    def __init__(self, state_file: Path, api: bool = True) -> None:
        import http.server
        import threading

        state = state_file

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/ready":
                    trained = "preprocess_incremental" in json.loads(state.read_text()).get("triggered", [])
                    self._send(200 if trained else 503, {"ready": trained, "model_version": "1" if trained else None})
                else:
                    self._send(200, {"status": "ok"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                from readmit_contract.encounter import Encounter

                Encounter.model_validate(body)
                self._send(200, {"probability": 0.12, "risk_band": "medium", "scored": True, "reason": None,
                                 "model_name": "diabetes-readmission", "model_version": "1"})

            def log_message(self, *args) -> None:
                pass

        self.servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)]
        if api:
            self.servers.append(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.health_port = self.servers[0].server_address[1]
        if api:
            self.api_port = self.servers[1].server_address[1]
        else:  # nothing listens: a Service without Ready pods refuses connections
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.api_port = probe.getsockname()[1]

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def end_of_play_vars(tmp_path: Path, command: str, stand_in: StandIn, data: str = "") -> dict:
    api = {"group": "serving", "node_port": stand_in.api_port}
    return {
        "readmit_bootstrap_data": data,
        "readmit_bootstrap_kubectl": command,
        "readmit_bootstrap_remote_dir": str(tmp_path / "leader-data"),
        "readmit_bootstrap_api": api,
        "readmit_bootstrap_poll": 1,
        "readmit_bootstrap_timeout": 60,
        "readmit_smoke_kubectl": command,
        "readmit_smoke_checks": [{"name": "every service", "group": "data", "port": stand_in.health_port,
                                  "path": "/health"}],
        "readmit_smoke_api": {"selector": "app.kubernetes.io/name=api", "port": 8000, "group": "serving",
                              "node_port": stand_in.api_port},
        "readmit_smoke_retries": 2,
        "readmit_smoke_delay": 1,
    }


END_OF_PLAY = """
- name: The end of site.yml's last play
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: readmit_bootstrap
      when: readmit_bootstrap_data | default('') | length > 0
    - role: readmit_smoke
"""


def deployed_api(state_file: Path) -> None:
    """The fake cluster after readmit_deploy: the API's Deployment (its pod runs, not Ready)."""
    state = {"namespaces": [NAMESPACE], "calls": [], "stdin": [], "objects": {
        f"Deployment/{NAMESPACE}/{name}": {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"template": {"metadata": {"labels": {"app.kubernetes.io/name": name}}, "spec": {}}}}
        for name in ("api", "jupyter", "airflow-scheduler")}}
    state_file.write_text(json.dumps(state))


@pytest.mark.slow
def test_a_fresh_platform_ends_green_with_the_api_waiting_for_a_model(tmp_path):
    """No champion yet: the API's Service has no Ready pod, so its NodePort refuses connections. The
    play checks the API's liveness through the pod proxy instead, and says it waits for a model."""
    command, env, state_file = fake_kube(tmp_path)
    deployed_api(state_file)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(LOCAL_INVENTORY)
    stand_in = StandIn(state_file, api=False)
    try:
        result = run_playbook(tmp_path, END_OF_PLAY, end_of_play_vars(tmp_path, command, stand_in),
                              inventory=inventory, env=env)
    finally:
        stand_in.close()
    assert result.returncode == 0, result.stdout[-4000:]
    assert "waiting for a model" in result.stdout
    assert "readmit_bootstrap_data=synthetic" in result.stdout
    calls = json.loads(state_file.read_text())["calls"]
    assert any(c[:2] == ["get", "--raw"] and c[2].endswith("/pods/api-0:8000/proxy/health") for c in calls)
    assert not any("exec" in c for c in calls), "nothing is loaded without the opt-in"


@pytest.mark.slow
@pytest.mark.parametrize("data", ["synthetic", "path"])
def test_the_opt_in_bootstrap_loads_trains_and_predicts_through_the_node_port(tmp_path, data):
    command, env, state_file = fake_kube(tmp_path)
    deployed_api(state_file)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(LOCAL_INVENTORY)
    if data == "path":
        source = tmp_path / "control" / "diabetic_data.csv"
        source.parent.mkdir()
        source.write_text("encounter_id,patient_nbr\n")
        data = str(source)
    stand_in = StandIn(state_file)
    try:
        extra = end_of_play_vars(tmp_path, command, stand_in, data)
        first = run_playbook(tmp_path, END_OF_PLAY, extra, inventory=inventory, env=env)
        assert first.returncode == 0, first.stdout[-4000:]
        state = json.loads(state_file.read_text())
        second = run_playbook(tmp_path, END_OF_PLAY, extra, inventory=inventory, env=env)
    finally:
        stand_in.close()
    assert "serving model version 1" in first.stdout and "predicted 0.120 (medium)" in first.stdout
    execs = [e["argv"][e["argv"].index("--") + 1:] for e in state["stdin"]]
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
    # A second run finds the champion: it only predicts.
    assert second.returncode == 0, second.stdout[-4000:]
    assert playbook_recap(second.stdout)["changed"] == 0, second.stdout[-4000:]
    assert len(json.loads(state_file.read_text())["stdin"]) == len(execs)


def test_the_bootstrap_predicts_the_contracts_example_encounter():
    from readmit_contract.encounter import Encounter, example_encounter

    encounter = role_defaults("readmit_bootstrap")["readmit_bootstrap_encounter"]
    assert encounter == example_encounter()
    Encounter.model_validate(encounter)
