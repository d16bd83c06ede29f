"""The MicroK8s roles on three machines without a cluster: each inventory host (node1..node3, all
connection local) runs its own fake ``microk8s``/``snap`` (fake_microk8s.py ``--as <host>``),
which shares one "cluster" state, logs every call with the host that made it, and fails the way
MicroK8s and snapd fail (a join while dqlite settles, one-time tokens, a node dqlite already knows,
the API server restarting after ``enable rbac``, snap operations before the seed is loaded, two
nodes refreshing at once). Each scenario runs the roles' own task files with ansible-playbook."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import playbook_recap, role_defaults, role_playbook, run_playbook
from .fake_microk8s import initial_state

FAKE = Path(__file__).with_name("fake_microk8s.py")
HOSTS = {"node1": "data", "node2": "tracking", "node3": "serving"}
LEADER = "node1"
ADDONS = ("rbac", "dns", "hostpath-storage", "registry", "metrics-server", "ingress")
# No pauses between retries here: the fake answers at once.
FAST = {
    "microk8s_cluster_join_retry_delay": 0,
    "microk8s_cluster_api_retries": 10,
    "microk8s_cluster_api_delay": 0,
    "microk8s_ready_retries": 10,
    "microk8s_ready_delay": 0,
}


def inventory(tmp_path: Path) -> Path:
    """Three hosts in the playbook's groups, each with its own fake MicroK8s and snap."""

    def host_vars(host: str) -> dict[str, Any]:
        fake = f"{sys.executable} {FAKE} --as {host}"
        return {
            "ansible_connection": "local",
            "ansible_host": "127.0.0.1",
            "ansible_python_interpreter": sys.executable,
            "microk8s_cluster_snap_bin": fake,
            "microk8s_cluster_kubectl": f"{fake} kubectl",
            "microk8s_snap_bin": fake,
            "microk8s_snap_command": f"{fake} snap",
        }

    groups: dict[str, Any] = {group: {"hosts": {host: host_vars(host)}} for host, group in HOSTS.items()}
    groups["cluster_leader"] = {"hosts": {LEADER: {}}}
    groups["microk8s"] = {"children": {group: {} for group in HOSTS.values()}}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"children": groups}}, sort_keys=False))
    return path


def node(ready: bool = True) -> dict[str, Any]:
    return {"ready_in": 0 if ready else 2, "labels": {}, "settling": False, "refreshing": False}


def write_state(tmp_path: Path, **state: Any) -> Path:
    """A fake cluster: the leader alone and Ready, unless ``state`` says otherwise."""
    path = tmp_path / "microk8s.json"
    path.write_text(json.dumps({**initial_state(), "nodes": {LEADER: node()}, **state}))
    return path


def read_state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def run_role(tmp_path: Path, role: str, tasks_from: str, state: Path, switches: dict[str, str] | None = None,
             extra: dict[str, Any] | None = None) -> subprocess.CompletedProcess:
    playbook = role_playbook(role, tasks_from, hosts="microk8s")
    env = {"FAKE_MICROK8S_STATE": str(state), "ANSIBLE_HOME": str(tmp_path / ".ansible-home"), **(switches or {})}
    return run_playbook(tmp_path, playbook, {**FAST, **(extra or {})}, inventory=inventory(tmp_path), env=env)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def changed(result: subprocess.CompletedProcess) -> int:
    return sum(playbook_recap(result.stdout, host)["changed"] for host in HOSTS)


def story(calls: list[dict[str, Any]]) -> list[str]:
    """The join-related calls in order: add-node, join:<host>:<rc>, ready:<node> (a successful wait)."""
    steps = []
    for call in calls:
        argv = call["argv"]
        if argv[0] == "add-node":
            steps.append("add-node")
        elif argv[0] == "join":
            steps.append(f"join:{call['host']}:{call['rc']}")
        elif argv[:2] == ["kubectl", "wait"] and call["rc"] == 0:
            steps += [f"ready:{a.split('/', 1)[1]}" for a in argv if a.startswith("node/")]
    return steps


def join_tokens(calls: list[dict[str, Any]], host: str) -> list[str]:
    return [re.search(r":25000/([^/\s]+)", c["argv"][1]).group(1) for c in calls
            if c["argv"][0] == "join" and c["host"] == host]


def registered_tokens(calls: list[dict[str, Any]]) -> list[str]:
    return [c["argv"][c["argv"].index("--token") + 1] for c in calls if c["argv"][0] == "add-node"]


# -- joins ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nodes_join_one_at_a_time_and_a_second_run_changes_nothing(tmp_path):
    """Token, add-node, join and Ready for node2 all happen before anything of node3: the fake
    refuses a join while the previous joiner is not Ready (dqlite settling), as MicroK8s does."""
    state = write_state(tmp_path, addons={a: {"args": []} for a in ADDONS})
    first = run_role(tmp_path, "microk8s_cluster", "main.yml", state)
    assert first.returncode == 0, output(first)[-5000:]
    calls = read_state(state)["calls"]
    assert story(calls) == ["add-node", "join:node2:0", "ready:node2", "add-node", "join:node3:0", "ready:node3"]
    # The waits mattered: each joined node was NotReady at first.
    assert any(c["argv"][:2] == ["kubectl", "wait"] and "node/node2" in c["argv"] and c["rc"] != 0 for c in calls)
    assert all(c["host"] == LEADER for c in calls if c["argv"][0] in ("add-node", "kubectl"))
    nodes = read_state(state)["nodes"]
    assert sorted(nodes) == sorted(HOSTS)
    key = role_defaults("microk8s_cluster")["microk8s_cluster_node_label_key"]
    assert {n: v["labels"][key] for n, v in nodes.items()} == HOSTS

    before = len(calls)
    second = run_role(tmp_path, "microk8s_cluster", "main.yml", state)
    assert second.returncode == 0, output(second)[-5000:]
    assert changed(second) == 0, second.stdout[-5000:]
    assert not [c for c in read_state(state)["calls"][before:] if c["argv"][0] in ("add-node", "join", "enable")]


@pytest.mark.slow
def test_a_failed_join_is_retried_with_a_fresh_token_and_an_already_known_node_counts_as_joined(tmp_path):
    """node2's first join fails with an error that repeats the connection string: the play shows
    that error with the token masked, never a token, and joins node2 with a new token. node3 is
    already known to dqlite (a join of an earlier run got that far): MicroK8s refuses it as
    "already known", which the role takes as joined and waits for node3 to be Ready."""
    state = write_state(tmp_path, addons={a: {"args": []} for a in ADDONS}, pending={"node3": True})
    result = run_role(tmp_path, "microk8s_cluster", "main.yml", state, {"FAKE_MICROK8S_FAIL_JOIN": "node2"})
    assert result.returncode == 0, output(result)[-5000:]
    calls = read_state(state)["calls"]

    # node2: a failed join, a fresh token, a join, Ready; then node3: one join ("already known"), Ready.
    assert story(calls) == ["add-node", "join:node2:1", "add-node", "join:node2:0", "ready:node2",
                            "add-node", "join:node3:6", "ready:node3"]
    first_token, second_token = join_tokens(calls, "node2")
    assert first_token != second_token
    assert registered_tokens(calls)[:2] == [first_token, second_token]

    text = output(result)
    assert "the cluster agent closed the connection (simulated transient failure)" in text
    assert "127.0.0.1:25000/*** failed" in text
    for token in registered_tokens(calls):
        assert token not in text, "a join token reached ansible's output"

    node3_joins = [c for c in calls if c["argv"][0] == "join" and c["host"] == "node3"]
    assert [c["rc"] for c in node3_joins] == [6], "node3: one join, answered 'already known', and no retry"
    assert "node3 is a member already: join exited with 6" in text
    assert "already known to dqlite" in text
    key = role_defaults("microk8s_cluster")["microk8s_cluster_node_label_key"]
    assert read_state(state)["nodes"]["node3"]["labels"][key] == "serving"

    second = run_role(tmp_path, "microk8s_cluster", "main.yml", state)
    assert second.returncode == 0 and changed(second) == 0, second.stdout[-5000:]


def test_a_join_that_keeps_failing_stops_the_play_with_its_error_and_never_the_token(tmp_path):
    """Every join of node2 fails: after the bounded attempts (each with its own token) the play
    stops with every attempt's error, tokens masked, and node3 never starts joining."""
    state = write_state(tmp_path, addons={a: {"args": []} for a in ADDONS})
    result = run_role(tmp_path, "microk8s_cluster", "main.yml", state, {"FAKE_MICROK8S_FAIL_JOIN": "node2:9"},
                      extra={"microk8s_cluster_join_attempts": 3})
    assert result.returncode != 0
    calls = read_state(state)["calls"]
    tokens = join_tokens(calls, "node2")
    assert len(tokens) == 3 and len(set(tokens)) == 3, "three attempts, each with its own token"
    assert not [c for c in calls if c["host"] == "node3" and c["argv"][0] == "join"], "node3 waited for node2"
    text = output(result)
    assert "node2 did not join the cluster of node1 in 3 attempts" in text
    assert text.count("simulated transient failure") >= 3
    for token in registered_tokens(calls):
        assert token not in text


# -- add-ons --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rbac_is_enabled_first_the_api_restart_is_survived_and_registry_uses_its_current_flags(tmp_path):
    """All three nodes are in the cluster, no add-on is on. Enabling rbac makes the next calls that
    need the API server fail (kubelite restarting on every node): the role enables rbac before
    anything else and retries what follows. The registry gets `--size 40Gi` (MicroK8s 1.32's
    flag; `registry:size=40Gi` is deprecated)."""
    state = write_state(tmp_path, nodes={h: node() for h in HOSTS})
    result = run_role(tmp_path, "microk8s_cluster", "main.yml", state, {"FAKE_MICROK8S_RBAC_RESTART": "4"})
    assert result.returncode == 0, output(result)[-5000:]
    calls = read_state(state)["calls"]
    enables = [c for c in calls if c["argv"][0] == "enable"]
    assert enables[0]["argv"] == ["enable", "rbac"]
    assert ["enable", "registry", "--size", "40Gi"] in [c["argv"] for c in enables]
    # The ingress (the platform's pages over TLS on 443 of every node) comes after rbac, so its
    # controller gets its RBAC objects; it succeeded once the API server answered again.
    (ingress,) = [c for c in enables if c["argv"] == ["enable", "ingress"] and c["rc"] == 0]
    assert calls.index(ingress) > calls.index(enables[0])
    rbac_at = calls.index(enables[0])
    after = calls[rbac_at + 1:]
    assert after[0]["argv"][:2] == ["status", "--wait-ready"], "waits for the API server right after rbac"
    assert sum(1 for c in after if c["rc"] != 0) == 4, "the restart hit calls after rbac, which were retried"
    assert all(c["rc"] == 0 for c in calls[:rbac_at]), "nothing failed before rbac"
    assert set(read_state(state)["addons"]) == set(ADDONS)
    assert not [c for c in enables if ":" in c["argv"][1]], "no deprecated name:args form"

    second = run_role(tmp_path, "microk8s_cluster", "main.yml", state, {"FAKE_MICROK8S_RBAC_RESTART": "4"})
    assert second.returncode == 0 and changed(second) == 0, second.stdout[-5000:]


def test_addons_are_listed_by_name_with_the_current_registry_flags():
    addons = role_defaults("microk8s_cluster")["microk8s_cluster_addons"]
    assert [a["name"] for a in addons][0] == "rbac"
    assert {a["name"] for a in addons} == set(ADDONS)
    assert next(a for a in addons if a["name"] == "registry")["args"] == ["--size", "40Gi"]
    assert not next(a for a in addons if a["name"] == "ingress").get("args"), "IngressClass public, as shipped"


# -- the snap -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_snap_is_installed_only_once_snapd_has_seeded(tmp_path):
    """Three fresh machines still seeding: snapd refuses `snap install` until the seed is loaded."""
    state = write_state(tmp_path)
    channel = role_defaults("microk8s")["microk8s_channel"]
    first = run_role(tmp_path, "microk8s", "snap.yml", state)
    assert first.returncode == 0, output(first)[-5000:]
    calls = read_state(state)["calls"]
    for host in HOSTS:
        mine = [c["argv"] for c in calls if c["host"] == host and c["argv"][0] == "snap"]
        assert mine[0] == ["snap", "wait", "system", "seed.loaded"], mine
        assert ["snap", "install", "microk8s", "--classic", f"--channel={channel}"] in mine
    snaps = read_state(state)["snaps"]
    assert all(s["installed"] and s["channel"] == channel and s["held"] for s in snaps.values())
    assert all(["kubectl", "kubectl"] in s["aliases"] for s in snaps.values())

    second = run_role(tmp_path, "microk8s", "snap.yml", state)
    assert second.returncode == 0 and changed(second) == 0, second.stdout[-5000:]


@pytest.mark.slow
def test_a_channel_change_moves_one_node_at_a_time(tmp_path):
    """Three nodes of a cluster on 1.31: each moves to the pinned channel only once the node before
    it is Ready again (the fake refuses a refresh while another refreshed node is not Ready)."""
    channel = role_defaults("microk8s")["microk8s_channel"]
    old = {"seeded": True, "installed": True, "channel": "1.31/stable", "held": True,
           "aliases": [["kubectl", "kubectl"]]}
    state = write_state(tmp_path, nodes={h: node() for h in HOSTS}, snaps={h: dict(old) for h in HOSTS})
    first = run_role(tmp_path, "microk8s", "snap.yml", state)
    assert first.returncode == 0, output(first)[-5000:]
    calls = read_state(state)["calls"]
    steps = []
    for call in calls:
        if call["argv"][:2] == ["snap", "refresh"] and "--hold" not in call["argv"]:
            steps.append(f"refresh:{call['host']}:{call['rc']}")
        elif call["argv"][:2] == ["kubectl", "wait"] and call["rc"] == 0:
            steps.append(f"ready:{call['host']}")
    # refresh A, A Ready, refresh B, B Ready, refresh C, C Ready: never two refreshes in a row.
    assert [s.split(":")[0] for s in steps] == ["refresh", "ready"] * len(HOSTS), steps
    moved = [s.split(":")[1] for s in steps[0::2]]
    assert sorted(moved) == sorted(HOSTS) and all(s.endswith(":0") for s in steps[0::2])
    assert [s.split(":")[1] for s in steps[1::2]] == moved
    assert all(f"node/{c['host']}" in c["argv"] for c in calls if c["argv"][:2] == ["kubectl", "wait"])
    assert {s["channel"] for s in read_state(state)["snaps"].values()} == {channel}

    second = run_role(tmp_path, "microk8s", "snap.yml", state)
    assert second.returncode == 0 and changed(second) == 0, second.stdout[-5000:]
