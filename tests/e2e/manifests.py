"""What a container of the rendered Kubernetes manifests gets: its environment and its command.

The three-host test runs each component as a plain process configured exactly like its container in the
cluster, so both are configured from one source: the kustomizations. This module renders them
(``kubectl kustomize``) and computes, for one container,

* the environment Kubernetes would give it: ``envFrom`` (ConfigMaps and Secrets, in order, with their
  ``prefix``), then ``env`` (literal values, ``configMapKeyRef`` and ``secretKeyRef``), later entries
  winning, with ``$(VAR)`` references expanded from the variables defined before (``$$`` escapes,
  unknown references stay as written), as the kubelet does;
* its command line (``command`` + ``args``), with ``$(VAR)`` expanded from that environment.

Secrets are not in the manifests: the caller supplies their values (``{secret name: {key: value}}``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ManifestError(LookupError):
    """Something the caller asked for is not (or not unambiguously) in the manifests."""


def kubectl() -> str | None:
    return shutil.which("kubectl") or next((p for p in ("/usr/bin/kubectl", "/usr/local/bin/kubectl")
                                            if Path(p).exists()), None)


def render(k8s_dir: Path) -> list[dict[str, Any]]:
    """Every object of a kustomization, as plain ``kubectl kustomize DIR`` renders it."""
    binary = kubectl()
    if binary is None:
        raise FileNotFoundError("kubectl is not installed: cannot render the kustomizations")
    done = subprocess.run([binary, "kustomize", str(k8s_dir)],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {k8s_dir} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are substituted, ``$$`` is a literal ``$``,
    references to undefined variables are left untouched."""

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(substitute, value)


@dataclass(frozen=True)
class Container:
    """One container (or init container) of a workload's pod template."""

    workload: dict[str, Any]
    spec: dict[str, Any]
    init: bool

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def workload_name(self) -> str:
        return self.workload["metadata"]["name"]

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]["spec"]

    @property
    def raw_argv(self) -> list[str]:
        return [str(a) for a in [*(self.spec.get("command") or []), *(self.spec.get("args") or [])]]

    def __repr__(self) -> str:
        kind = "init container" if self.init else "container"
        return f"<{kind} {self.name} of {self.workload['kind']} {self.workload_name}>"


class Manifests:
    """The rendered objects of one or more kustomizations."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects

    @classmethod
    def of(cls, *k8s_dirs: Path) -> Manifests:
        return cls([obj for d in k8s_dirs for obj in render(d)])

    # -- objects ----------------------------------------------------------------------------------------

    def find(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o.get("kind") == kind and o["metadata"]["name"] == name]
        if len(found) != 1:
            raise ManifestError(f"{len(found)} {kind} named {name!r} in the manifests")
        return found[0]

    def config_map(self, name: str) -> dict[str, str]:
        """A ConfigMap's data (literals and files alike)."""
        return {k: str(v) for k, v in (self.find("ConfigMap", name).get("data") or {}).items()}

    def services(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == "Service"]

    def service_port(self, service: str, port_name: str | None = None) -> int:
        """The port of a Service (the only one, or the one named ``port_name``)."""
        ports = self.find("Service", service)["spec"]["ports"]
        if port_name is not None:
            ports = [p for p in ports if p.get("name") == port_name]
        if len(ports) != 1:
            raise ManifestError(f"Service {service!r} has {len(ports)} ports named {port_name!r}")
        return int(ports[0]["port"])

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") in WORKLOAD_KINDS]

    def node_selector_values(self, key: str) -> set[str]:
        """The values of node-selector ``key`` over every workload (one per server folder)."""
        return {(w["spec"]["template"]["spec"].get("nodeSelector") or {}).get(key) for w in self.workloads()}

    def containers(self) -> Iterator[Container]:
        for workload in self.workloads():
            pod = workload["spec"]["template"]["spec"]
            for spec in pod.get("initContainers") or []:
                yield Container(workload, spec, init=True)
            for spec in pod.get("containers") or []:
                yield Container(workload, spec, init=False)

    def container(self, *, argv_prefix: list[str] | None = None, image_prefix: str | None = None,
                  service: str | None = None) -> Container:
        """The one container whose command line starts with ``argv_prefix``, whose image starts with
        ``image_prefix``, and/or that runs the pods behind Service ``service``."""
        found = list(self.containers())
        if argv_prefix is not None:
            found = [c for c in found if c.raw_argv[:len(argv_prefix)] == argv_prefix]
        if image_prefix is not None:
            found = [c for c in found if str(c.spec.get("image", "")).startswith(image_prefix)]
        if service is not None:
            selector = self.find("Service", service)["spec"]["selector"]
            found = [c for c in found if not c.init and _matches(c.workload, selector)]
        if len(found) != 1:
            raise ManifestError(f"{len(found)} containers match argv {argv_prefix}, image {image_prefix!r}, "
                                f"service {service!r}: {found}")
        return found[0]

    # -- what a container gets -------------------------------------------------------------------------

    def environment(self, container: Container, secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        """The environment the kubelet gives ``container`` (Secret values from ``secrets``)."""

        def secret(name: str) -> Mapping[str, str]:
            if name not in secrets:
                raise ManifestError(f"{container!r} reads Secret {name!r}, which the caller did not supply")
            return secrets[name]

        env: dict[str, str] = {}
        for source in container.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self.config_map(source["configMapRef"]["name"])
            elif "secretRef" in source:
                data = secret(source["secretRef"]["name"])
            else:
                raise ManifestError(f"{container!r}: unsupported envFrom {source}")
            env.update({prefix + k: str(v) for k, v in data.items()})
        for entry in container.spec.get("env") or []:
            name = entry["name"]
            if "value" in entry:
                env[name] = expand(str(entry["value"]), env)
            elif "valueFrom" in entry:
                ref = entry["valueFrom"]
                if "secretKeyRef" in ref:
                    data, key = secret(ref["secretKeyRef"]["name"]), ref["secretKeyRef"]["key"]
                    if key not in data:
                        raise ManifestError(f"{container!r}: Secret {ref['secretKeyRef']['name']!r} has no {key!r}")
                    env[name] = str(data[key])
                elif "configMapKeyRef" in ref:
                    data, key = self.config_map(ref["configMapKeyRef"]["name"]), ref["configMapKeyRef"]["key"]
                    if key not in data:
                        raise ManifestError(f"{container!r}: ConfigMap has no {key!r}")
                    env[name] = data[key]
                else:
                    raise ManifestError(f"{container!r}: unsupported valueFrom {ref} of {name}")
            else:
                env[name] = ""
        return env

    def argv(self, container: Container, env: Mapping[str, str]) -> list[str]:
        """The container's command line, ``$(VAR)`` expanded from ``env`` (as the kubelet does)."""
        return [expand(a, env) for a in container.raw_argv]

    def config_map_mounts(self, container: Container) -> dict[str, dict[str, str]]:
        """{mount path: {file name: content}} of every ConfigMap volume ``container`` mounts (whole)."""
        volumes = {v["name"]: v for v in container.pod_spec.get("volumes") or []}
        mounts = {}
        for mount in container.spec.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            if "configMap" in volume and not mount.get("subPath"):
                data = self.config_map(volume["configMap"]["name"])
                items = volume["configMap"].get("items")
                if items:
                    data = {item["path"]: data[item["key"]] for item in items}
                mounts[mount["mountPath"]] = data
        return mounts

    def volume_config_map(self, container: Container, mount_path: str) -> dict[str, str]:
        """The files of the ConfigMap volume that ``container`` mounts at ``mount_path``."""
        mounts = self.config_map_mounts(container)
        if mount_path not in mounts:
            raise ManifestError(f"{container!r} mounts no ConfigMap at {mount_path}")
        return mounts[mount_path]


def _matches(workload: dict[str, Any], selector: Mapping[str, str]) -> bool:
    labels = workload["spec"]["template"]["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())
