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


def role_playbook(role: str, tasks_from: str = "main.yml") -> str:
    return f"""
- name: Run {role} here
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run the role's steps
      ansible.builtin.include_role:
        name: {role}
        tasks_from: {tasks_from}
"""


def test_secrets_are_generated_once_kept_private_and_applied_idempotently(tmp_path):
    pytest.importorskip("cryptography")
    from cryptography.fernet import Fernet

    command, env, state_file = fake_kube(tmp_path)
    secrets_file = tmp_path / "home" / ".readmit" / "secrets.yml"
    extra = {"readmit_secrets_kubectl": command, "readmit_secrets_file": str(secrets_file)}

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
    applied = {k.split("/")[2]: v for k, v in state["objects"].items() if k.startswith(f"Secret/{NAMESPACE}/")}
    assert {name: set(obj["data"]) for name, obj in applied.items()} == created_secrets()
    import base64

    passwords = json.loads(base64.b64decode(applied["airflow-admin"]["data"]["passwords.json"]))
    assert passwords == {"admin": values["airflow_admin_password"]}
    # No secret went through a command line.
    assert not any(values["mysql_data_root_password"] in " ".join(call) for call in state["calls"])


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


@pytest.mark.slow
def test_deploy_renders_with_the_built_tags_applies_once_and_recreates_changed_jobs(tmp_path, node_label_key,
                                                                                   node_labels):
    command, env, state_file = fake_kube(tmp_path)
    repo = tmp_path / "src"
    for server in deploy_servers():
        stage_server(server.folder, repo, extra_files={"monitoring/grafana/dashboards/capacity.json": "{}\n"}
                     if server.folder == "server3-serving" else None)
    tags = {name: "t" + str(i) * 7 for i, name in enumerate(sorted(built_images()))}
    extra = {
        "readmit_deploy_kubectl": command,
        "readmit_deploy_source_dir": str(repo),
        "readmit_deploy_repo_dir": str(repo),
        "readmit_deploy_overlay_dir": str(tmp_path / "overlays"),
        "readmit_deploy_image_tags": tags,
    }
    playbook = role_playbook("readmit_deploy")
    # Later runs skip the waits (read-only, and slow to run here item by item).
    render_and_apply = role_playbook("readmit_deploy", "render.yml") + """
    - name: Apply
      ansible.builtin.include_role:
        name: readmit_deploy
        tasks_from: apply.yml
"""

    first = run_playbook(tmp_path, playbook, extra, env=env)
    assert first.returncode == 0, first.stdout[-5000:]
    assert playbook_recap(first.stdout)["changed"] == len(deploy_servers())
    second = run_playbook(tmp_path, render_and_apply, extra, env=env)
    assert second.returncode == 0, second.stdout[-5000:]
    assert playbook_recap(second.stdout)["changed"] == 0, second.stdout[-5000:]

    objects = list(json.loads(state_file.read_text())["objects"].values())
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
    assert set(dashboards_map["data"]) == {"capacity.json"}
    grafana = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "grafana")
    volumes = {v["name"]: v for v in grafana["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dashboards"]["configMap"]["name"] == dashboards_map["metadata"]["name"]
    assert policies.check_config_refs(objects) == []

    # A new tracking image: the bucket Job (immutable pod template) is deleted and created again.
    tags["readmit-tracking"] = "t9999999"
    third = run_playbook(tmp_path, render_and_apply, extra, env=env)
    assert third.returncode == 0, third.stdout[-5000:]
    calls = json.loads(state_file.read_text())["calls"]
    assert any(call[:4] == ["-n", NAMESPACE, "delete", "job"] and call[4] == "minio-bucket" for call in calls)
    job = json.loads(state_file.read_text())["objects"][f"Job/{NAMESPACE}/minio-bucket"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":t9999999")


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
    assert {"/ready", "/health", "/api/v2/monitor/health"} <= paths


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
