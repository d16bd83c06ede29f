"""Fixtures of the deployment tests: the playbook's settings, and every server's rendered manifests.

No cluster is needed: kustomizations are rendered with plain ``kubectl kustomize DIR`` (no flags:
as a user types it) from a copy of each server folder in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO_ROOT / "ansible"
ROLES_DIR = ANSIBLE_DIR / "roles"
INVENTORY = REPO_ROOT / "inventory.ini"
NAMESPACE = "readmit"
VENV_BIN = Path(sys.executable).parent

def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def role_defaults(role: str) -> dict[str, Any]:
    return load_yaml(ROLES_DIR / role / "defaults" / "main.yml")


def tool(name: str) -> str | None:
    """A command-line tool: the virtualenv's first (ansible-*), then PATH, then /usr/bin."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/bin") / name
    return str(fallback) if fallback.exists() else None


def kubectl() -> str:
    path = tool("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: cannot render the kustomizations")
    return path


def ansible_env(tmp_path: Path) -> dict[str, str]:
    """Environment of ansible commands run by the tests: roles from ansible/, scratch in tmp_path."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / ".ansible-remote"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    env.pop("ANSIBLE_CONFIG", None)
    return env


def kubernetes_version() -> str:
    """The Kubernetes version of the pinned MicroK8s channel ("1.32/stable" -> "1.32.0")."""
    channel = role_defaults("microk8s")["microk8s_channel"]
    return channel.split("/", 1)[0] + ".0"


# -- the playbook's view of the platform ----------------------------------------------------------


@dataclass(frozen=True)
class Server:
    folder: str
    group: str
    images: tuple[str, ...]


def deploy_servers() -> list[Server]:
    return [Server(s["folder"], s["group"], tuple(s["images"]))
            for s in role_defaults("readmit_deploy")["readmit_deploy_servers"]]


def created_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, as the readmit_secrets role creates them."""
    return {s["name"]: set(s["data"]) for s in role_defaults("readmit_secrets")["readmit_secrets_kubernetes"]}


def built_images() -> dict[str, str]:
    """Image name -> Dockerfile, as the readmit_images role builds them."""
    return {i["name"]: i["dockerfile"] for i in role_defaults("readmit_images")["readmit_images_list"]}


def registry() -> str:
    return role_defaults("readmit_images")["readmit_images_registry"]


# -- rendering -------------------------------------------------------------------------------------


def kustomization(folder: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    return load_yaml(root / folder / "k8s" / "kustomization.yaml")


def referenced_files(kust: dict[str, Any]) -> list[str]:
    """Paths (relative to the kustomization's folder) of the files its generators read."""
    paths = []
    for generator in (kust.get("configMapGenerator") or []) + (kust.get("secretGenerator") or []):
        for entry in (generator.get("files") or []) + (generator.get("envs") or []):
            paths.append(entry.split("=", 1)[-1])
        if generator.get("env"):
            paths.append(generator["env"])
    return paths


STAGE_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", ".pytest_cache", ".ipynb_checkpoints")


def stage_server(folder: str, root: Path, extra_files: dict[str, str] | None = None) -> None:
    """Copy the server folder (its k8s/ and the kustomizations it lists) under ``root``, plus
    ``extra_files`` (paths relative to the server folder) where they do not exist."""
    shutil.copytree(REPO_ROOT / folder, root / folder, ignore=STAGE_IGNORE, dirs_exist_ok=True)
    for rel, text in (extra_files or {}).items():
        path = root / folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text)


def kustomize(k8s_dir: Path) -> subprocess.CompletedProcess:
    """Plain ``kubectl kustomize DIR``: the default load restrictor, no flag a user would not type."""
    return subprocess.run([kubectl(), "kustomize", str(k8s_dir)], capture_output=True, text=True, timeout=120)


def render(k8s_dir: Path) -> list[dict[str, Any]]:
    result = kustomize(k8s_dir)
    assert result.returncode == 0, f"kustomize failed for {k8s_dir}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass
class Rendered:
    server: Server
    objects: list[dict[str, Any]]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, Rendered]:
    """Every server folder's kustomization, rendered as committed (folder -> objects)."""
    root = tmp_path_factory.mktemp("rendered")
    out = {}
    for server in deploy_servers():
        stage_server(server.folder, root)
        out[server.folder] = Rendered(server, render(root / server.folder / "k8s"))
    return out


@pytest.fixture(scope="session")
def all_objects(rendered) -> list[dict[str, Any]]:
    return [obj for r in rendered.values() for obj in r.objects]


@pytest.fixture(scope="session")
def node_label_key() -> str:
    return role_defaults("microk8s_cluster")["microk8s_cluster_node_label_key"]


@pytest.fixture(scope="session")
def node_labels() -> dict[str, str]:
    """Inventory group -> node label value (what the playbook labels the group's node with)."""
    return role_defaults("microk8s_cluster")["microk8s_cluster_node_labels"]


def node_selector_patch(folder: str) -> dict[str, str]:
    """The node selector the one placement patch of ``folder``'s kustomization sets."""
    patches = [p for p in kustomization(folder).get("patches") or [] if "nodeSelector" in str(p.get("patch", ""))]
    assert len(patches) == 1, f"{folder}: expected one nodeSelector patch, found {len(patches)}"
    operations = yaml.safe_load(patches[0]["patch"])
    (operation,) = [op for op in operations if op.get("path", "").endswith("/nodeSelector")]
    return operation["value"]


def role_playbook(role: str, tasks_from: str = "main.yml", hosts: str = "localhost") -> str:
    """A playbook that runs one task file of a role on ``hosts`` (localhost: on this machine)."""
    connection = "\n  connection: local" if hosts == "localhost" else ""
    return f"""
- name: Run {role} on {hosts}
  hosts: {hosts}{connection}
  gather_facts: false
  tasks:
    - name: Run the role's steps
      ansible.builtin.include_role:
        name: {role}
        tasks_from: {tasks_from}
"""


def playbook_recap(output: str, host: str = "localhost") -> dict[str, int]:
    """The PLAY RECAP counters of ``host`` in ansible-playbook's output."""
    for line in output.splitlines():
        if line.startswith(host) and "ok=" in line:
            return {k: int(v) for k, v in (part.split("=") for part in line.split(":", 1)[1].split())}
    raise AssertionError(f"no PLAY RECAP line for {host}:\n{output[-3000:]}")


def run_playbook(tmp_path: Path, playbook: str, extra_vars: dict[str, Any] | None = None,
                 inventory: Path = INVENTORY, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a playbook (YAML text) against ``inventory`` with the roles of ansible/."""
    path = tmp_path / f"playbook-{len(list(tmp_path.glob('playbook-*.yml')))}.yml"
    path.write_text(playbook)
    command = [tool("ansible-playbook"), "-i", str(inventory), str(path)]
    if extra_vars:
        vars_file = path.with_suffix(".vars.yml")
        vars_file.write_text(yaml.safe_dump(extra_vars))
        command += ["-e", f"@{vars_file}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**ansible_env(tmp_path), **(env or {})}, cwd=tmp_path)


# -- mysql-data on a private MariaDB (tests/deploy/mariadb.py) ---------------------------------------------


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    """A private MariaDB standing in for MySQL mysql-data (one per module; nothing set up on it yet)."""
    from .mariadb import missing_binaries, running_mariadb

    missing = missing_binaries()
    if missing:
        pytest.skip(f"MariaDB is not installed (no {', '.join(missing)}); .ci/run installs mariadb-server")
    with running_mariadb(tmp_path_factory.mktemp("mysql-data")) as server:
        yield server


@pytest.fixture(scope="module")
def manifests(all_objects):
    """The whole platform's rendered manifests, as the three-host test reads them."""
    from ..e2e.manifests import Manifests

    return Manifests(all_objects)


@pytest.fixture(scope="module")
def secret_values() -> dict[str, dict[str, str]]:
    """A value for every key of every Secret the playbook creates (letters and digits, as drawn)."""
    import secrets
    import string

    alphabet = string.ascii_letters + string.digits
    return {name: {key: "".join(secrets.choice(alphabet) for _ in range(32)) for key in keys}
            for name, keys in created_secrets().items()}
