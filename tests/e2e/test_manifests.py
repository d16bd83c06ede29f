"""manifests.py: a container's environment and command as the kubelet computes them (the three-host test
configures every process with it), and the test hosts' DNS server."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from . import dns_server
from .manifests import Manifests, ManifestError, expand, kubectl

REPO_ROOT = Path(__file__).resolve().parents[2]


def workload(containers: list[dict], init: list[dict] | None = None, volumes: list[dict] | None = None) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": containers, "initContainers": init or [],
                                           "volumes": volumes or []}}}}


def config_map(name: str, data: dict) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


SECRETS = {"db": {"password": "s3cret", "user": "admin"}, "bulk": {"TOKEN": "t0k", "KEY": "k"}}


def test_expand_follows_kubernetes():
    env = {"A": "1", "B": "two"}
    assert expand("x-$(A)-$(B)", env) == "x-1-two"
    assert expand("$(MISSING) stays", env) == "$(MISSING) stays"
    assert expand("$$(A) is escaped, $$ is a dollar", env) == "$(A) is escaped, $ is a dollar"
    assert expand("$A and ${A} are not references", env) == "$A and ${A} are not references"


def test_environment_pulls_config_maps_secrets_and_expands_in_order():
    container = {
        "name": "app", "image": "example/app:1", "command": ["serve", "--db", "$(DB_URL)"], "args": ["--$(LEVEL)"],
        "envFrom": [{"configMapRef": {"name": "settings-abc123"}}, {"secretRef": {"name": "bulk"}, "prefix": "X_"},
                    {"configMapRef": {"name": "override"}}],
        "env": [
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "DB_URL", "value": "mysql://$(DB_USER):$(DB_PASSWORD)@$(DB_HOST):3306/app"},
            {"name": "TOO_EARLY", "value": "$(LATER)"},
            {"name": "LATER", "value": "now"},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings-abc123", "key": "MODE"}}},
            {"name": "EMPTY"},
        ],
    }
    manifests = Manifests([
        config_map("settings-abc123", {"DB_HOST": "db-service", "DB_USER": "app", "LEVEL": "debug", "MODE": "fast",
                                       "PORT": 8080}),
        config_map("override", {"LEVEL": "info"}),
        workload([container]),
    ])
    found = manifests.container(argv_prefix=["serve"])
    env = manifests.environment(found, SECRETS)
    assert env == {
        "DB_HOST": "db-service", "DB_USER": "app", "LEVEL": "info", "MODE": "fast", "PORT": "8080",
        "X_TOKEN": "t0k", "X_KEY": "k",
        "DB_PASSWORD": "s3cret", "DB_URL": "mysql://app:s3cret@db-service:3306/app",
        "TOO_EARLY": "$(LATER)", "LATER": "now", "EMPTY": "",
    }
    assert manifests.argv(found, env) == ["serve", "--db", "mysql://app:s3cret@db-service:3306/app", "--info"]


def test_missing_secrets_and_ambiguous_lookups_are_errors():
    container = {"name": "app", "command": ["run", "app"],
                 "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope"}}}]}
    manifests = Manifests([workload([container, {"name": "side", "command": ["run", "side"]}])])
    app = manifests.container(argv_prefix=["run", "app"])
    with pytest.raises(ManifestError, match="no 'nope'"):
        manifests.environment(app, SECRETS)
    with pytest.raises(ManifestError, match="did not supply"):
        manifests.environment(app, {})
    with pytest.raises(ManifestError, match="2 containers"):
        manifests.container(argv_prefix=["run"])


def test_config_map_mounts_and_services():
    container = {"name": "prom", "image": "prom/prometheus:v3", "args": ["--config.file=/etc/prom/p.yml"],
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/prom"}, {"name": "data", "mountPath": "/d"}]}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "prometheus"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 9090}]}}
    manifests = Manifests([config_map("prom-config-x1", {"p.yml": "global: {}\n"}), service,
                           workload([container], volumes=[{"name": "config", "configMap": {"name": "prom-config-x1"}},
                                                          {"name": "data", "emptyDir": {}}])])
    found = manifests.container(service="prometheus")
    assert found is not None and found.name == "prom"
    assert manifests.config_map_mounts(found) == {"/etc/prom": {"p.yml": "global: {}\n"}}
    assert manifests.service_port("prometheus") == 9090


@pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed: cannot render the kustomizations")
def test_every_container_of_the_rendered_manifests_resolves():
    """Every $(VAR) an env entry or command of the real manifests uses is defined for that container."""
    manifests = Manifests.of(*(REPO_ROOT / folder / "k8s" for folder in
                               ("server1-data", "server2-tracking", "server3-serving")))

    secrets: dict[str, dict[str, str]] = {}  # a value for every Secret key the containers read
    for container in manifests.containers():
        for source in container.spec.get("envFrom") or []:
            if "secretRef" in source:
                secrets.setdefault(source["secretRef"]["name"], {})["FROM_SECRET_REF"] = "whole"
        for entry in container.spec.get("env") or []:
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secrets.setdefault(ref["name"], {})[ref["key"]] = f"secret-{ref['key']}"
    count = 0
    for container in manifests.containers():
        env = manifests.environment(container, secrets)
        raw = {e["name"]: e.get("value", "") for e in container.spec.get("env") or []}
        for name, value in raw.items():
            if "$(" in value:
                assert "$(" not in env[name], f"{container!r}: {name}={env[name]!r}"
                count += 1
        for argument in manifests.argv(container, env):
            assert "$(" not in argument, f"{container!r}: {argument}"
    assert count > 0  # the manifests do build values from others (database URLs from Secrets)


# -- dns_server.py --------------------------------------------------------------------------------------------


def query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def test_dns_answers_a_records_from_the_hosts_file(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n10.77.0.13 api api-headless  # serving\n")
    names = dns_server.load_hosts(str(hosts))
    assert names == {"localhost": "127.0.0.1", "api": "10.77.0.13", "api-headless": "10.77.0.13"}

    reply = dns_server.answer(query("API-Headless"), names)
    ident, flags, qd, an = struct.unpack("!HHHH", reply[:8])
    assert ident == 0x1234 and flags & 0x8000 and flags & 0x000F == 0 and (qd, an) == (1, 1)
    assert socket.inet_ntoa(reply[-4:]) == "10.77.0.13"

    unknown = dns_server.answer(query("example.com"), names)
    assert struct.unpack("!H", unknown[2:4])[0] & 0x000F == 3 and struct.unpack("!H", unknown[6:8])[0] == 0
    aaaa = dns_server.answer(query("api", qtype=28), names)
    assert struct.unpack("!H", aaaa[2:4])[0] & 0x000F == 0 and struct.unpack("!H", aaaa[6:8])[0] == 0
    assert dns_server.answer(b"\x00" * 5, names) is None
