"""Policy checks on rendered Kubernetes objects.

Each ``check_*`` function takes a list of objects (dicts, as ``kubectl kustomize`` renders
them) and returns a list of problems, one sentence each; an empty list means the policy holds.
The tests run them on every server's manifests and, to prove each one bites, on small bad
objects (tests/deploy/test_policies.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}
RUN_TO_COMPLETION_KINDS = {"Job", "CronJob"}


@dataclass
class PodTemplate:
    owner: Obj
    metadata: dict[str, Any]
    spec: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.owner.get('kind')}/{self.owner.get('metadata', {}).get('name')}"

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.get("labels") or {}

    @property
    def containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("containers") or [])

    @property
    def init_containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("initContainers") or [])

    @property
    def all_containers(self) -> list[dict[str, Any]]:
        return self.init_containers + self.containers


def name_of(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_templates(objs: Iterable[Obj]) -> Iterator[PodTemplate]:
    """Every pod template: workloads' spec.template, CronJobs' job template, bare Pods."""
    for obj in objs:
        kind = obj.get("kind")
        if kind in POD_TEMPLATE_KINDS:
            template = obj.get("spec", {}).get("template") or {}
        elif kind == "CronJob":
            template = obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template") or {}
        elif kind == "Pod":
            template = obj
        else:
            continue
        yield PodTemplate(obj, template.get("metadata") or {}, template.get("spec") or {})


def of_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind]


def claim_templates(pod: PodTemplate) -> set[str]:
    """Names of the volumeClaimTemplates of a StatefulSet's pod template (volumes its pods get)."""
    return {t.get("metadata", {}).get("name") for t in pod.owner.get("spec", {}).get("volumeClaimTemplates") or []}


# -- placement -------------------------------------------------------------------------------------


def check_node_selector(objs: Iterable[Obj], key: str, value: str) -> list[str]:
    """Every pod template carries nodeSelector {key: value} (its server folder's node)."""
    problems = []
    for pod in pod_templates(objs):
        selector = pod.spec.get("nodeSelector") or {}
        if selector.get(key) != value:
            problems.append(f"{pod.where}: nodeSelector {selector or 'missing'}, expected {{{key}: {value}}}")
    return problems


# -- containers ------------------------------------------------------------------------------------


def check_resources_and_probes(objs: Iterable[Obj]) -> list[str]:
    """Every container has CPU and memory requests and limits; every long-running container has a
    liveness and a readiness probe (Jobs run to completion: no probes asked of them; init
    containers cannot have probes)."""
    problems = []
    for pod in pod_templates(objs):
        for container in pod.all_containers:
            where = f"{pod.where} container {container.get('name')}"
            resources = container.get("resources") or {}
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if not (resources.get(section) or {}).get(resource):
                        problems.append(f"{where}: no {resource} {section[:-1]}")
        if pod.owner.get("kind") in RUN_TO_COMPLETION_KINDS:
            continue
        for container in pod.containers:
            for probe in ("livenessProbe", "readinessProbe"):
                if not container.get(probe):
                    problems.append(f"{pod.where} container {container.get('name')}: no {probe}")
    return problems


def check_security_contexts(objs: Iterable[Obj]) -> list[str]:
    """Pods run as a non-root user and containers cannot gain privileges."""
    problems = []
    for pod in pod_templates(objs):
        pod_sc = pod.spec.get("securityContext") or {}
        for container in pod.all_containers:
            where = f"{pod.where} container {container.get('name')}"
            sc = container.get("securityContext") or {}
            run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if run_as_non_root is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if run_as_user == 0:
                problems.append(f"{where}: runs as user 0")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
    return problems


# -- labels ----------------------------------------------------------------------------------------

OBJECT_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of")
POD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")


def check_labels(objs: Iterable[Obj]) -> list[str]:
    """app.kubernetes.io/* labels: name and part-of on every object (generated ConfigMaps: part-of),
    name, component and part-of on every pod template."""
    problems = []
    objs = list(objs)
    for obj in objs:
        labels = obj.get("metadata", {}).get("labels") or {}
        wanted = ("app.kubernetes.io/part-of",) if obj.get("kind") == "ConfigMap" else OBJECT_LABELS
        for label in wanted:
            if label not in labels:
                problems.append(f"{name_of(obj)}: no label {label}")
    for pod in pod_templates(objs):
        for label in POD_LABELS:
            if label not in pod.labels:
                problems.append(f"{pod.where} pod template: no label {label}")
    return problems


def check_namespace(objs: Iterable[Obj], namespace: str) -> list[str]:
    return [
        f"{name_of(o)}: namespace {o.get('metadata', {}).get('namespace')!r}, expected {namespace!r}"
        for o in objs
        if o.get("kind") not in {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
        and o.get("metadata", {}).get("namespace") != namespace
    ]


# -- secrets ---------------------------------------------------------------------------------------

SENSITIVE_NAME = re.compile(
    r"(pass(word|wd)?s?|secret|token|fernet|private[_.-]?key|api[_.-]?key|access[_.-]?key|credential)",
    re.IGNORECASE,
)
NOT_A_VALUE = re.compile(r"(_FILE|_PATH|_DIR|_FILES)$", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:([^@\s/]+)@", re.IGNORECASE)
K8S_REFERENCE = re.compile(r"^\$\([A-Za-z_][A-Za-z0-9_]*\)$")
SHELL_REFERENCE = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$")
NAMED_REFERENCES = re.compile(r"^[a-z0-9_-]{1,32}:\$\([A-Za-z_][A-Za-z0-9_]*\)(,[a-z0-9_-]{1,32}:\$\([A-Za-z_][A-Za-z0-9_]*\))*$")
"""A list of name:$(VAR) pairs (the API's keys: each value a reference to a Secret)."""
GRAFANA_REFERENCE = re.compile(r"^\$__(env|file)\{[^{}\s]+\}$")
"""Grafana's provisioning expanders: $__env{VAR} (an environment variable), $__file{/path} (a mounted file)."""
PASSWORD_FLAG = re.compile(r"^(--password=|-p)(.+)$")
SQL_IDENTIFIED_BY = re.compile(r"IDENTIFIED\s+(?:WITH\s+\S+\s+)?BY\s+'([^']*)'", re.IGNORECASE)
KEY_VALUE_LINE = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*[:=]\s*(.*?)\s*$")


def is_sensitive_name(name: str) -> bool:
    return bool(SENSITIVE_NAME.search(name)) and not NOT_A_VALUE.search(name)


def is_reference(value: str) -> bool:
    value = value.strip().strip("'\"")
    return bool(K8S_REFERENCE.match(value) or SHELL_REFERENCE.match(value) or NAMED_REFERENCES.match(value)
                or GRAFANA_REFERENCE.match(value))


def plaintext_in_text(text: str) -> list[str]:
    """Literal credentials in a piece of text (a URL's password, an SQL password, a key=value line)."""
    found = []
    for match in URL_CREDENTIALS.finditer(text):
        if not is_reference(match.group(1)):
            found.append(f"password in URL {match.group(0)!r}")
    for match in SQL_IDENTIFIED_BY.finditer(text):
        if not is_reference(match.group(1)):
            found.append("literal password in IDENTIFIED BY")
    for line in text.splitlines():
        kv = KEY_VALUE_LINE.match(line)
        if kv and is_sensitive_name(kv.group(1)):
            value = kv.group(2).strip().strip("'\"")
            if value and not is_reference(value) and not value.startswith("/"):
                found.append(f"literal value for {kv.group(1)}")
    return found


def check_no_plaintext_secrets(objs: Iterable[Obj]) -> list[str]:
    """No password, key or token is written in a manifest: no Secret objects (the playbook makes
    them), no literal value for a sensitive environment variable, no credentials in URLs,
    arguments or ConfigMaps. References ($(VAR), ${VAR}) and file paths are fine."""
    problems = []
    objs = list(objs)
    for obj in objs:
        if obj.get("kind") == "Secret":
            problems.append(f"{name_of(obj)}: a Secret in the manifests (the playbook creates Secrets)")
        if obj.get("kind") == "ConfigMap":
            for key, value in (obj.get("data") or {}).items():
                if is_sensitive_name(key) and str(value).strip() and not is_reference(str(value)):
                    problems.append(f"{name_of(obj)} key {key}: literal secret")
                for finding in plaintext_in_text(str(value)):
                    problems.append(f"{name_of(obj)} key {key}: {finding}")
    for pod in pod_templates(objs):
        for container in pod.all_containers:
            where = f"{pod.where} container {container.get('name')}"
            for env in container.get("env") or []:
                if "value" not in env:
                    continue
                value = str(env["value"])
                if is_sensitive_name(env.get("name", "")) and value.strip() and not is_reference(value):
                    problems.append(f"{where} env {env.get('name')}: literal value (use a secretKeyRef)")
                for finding in plaintext_in_text(value):
                    problems.append(f"{where} env {env.get('name')}: {finding}")
            for arg in list(container.get("command") or []) + list(container.get("args") or []):
                arg = str(arg)
                flag = PASSWORD_FLAG.match(arg)
                if flag and not is_reference(flag.group(2)):
                    problems.append(f"{where}: password on the command line ({flag.group(1)}...)")
                for match in URL_CREDENTIALS.finditer(arg):
                    if not is_reference(match.group(1)):
                        problems.append(f"{where}: password in URL argument")
    return problems


def secret_references(objs: Iterable[Obj]) -> Iterator[tuple[str, str, str | None]]:
    """(where, Secret name, key or None) for every use of a Secret by a pod template or an Ingress."""
    objs = list(objs)
    for pod in pod_templates(objs):
        for container in pod.all_containers:
            where = f"{pod.where} container {container.get('name')}"
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    yield where, ref.get("name"), ref.get("key")
            for source in container.get("envFrom") or []:
                if source.get("secretRef"):
                    yield where, source["secretRef"].get("name"), None
        for volume in pod.spec.get("volumes") or []:
            if volume.get("secret"):
                yield f"{pod.where} volume {volume.get('name')}", volume["secret"].get("secretName"), None
            for source in (volume.get("projected") or {}).get("sources") or []:
                if source.get("secret"):
                    yield f"{pod.where} volume {volume.get('name')}", source["secret"].get("name"), None
        for pull in pod.spec.get("imagePullSecrets") or []:
            yield f"{pod.where} imagePullSecrets", pull.get("name"), None
    for ingress in of_kind(objs, "Ingress"):
        for tls in (ingress.get("spec") or {}).get("tls") or []:
            if tls.get("secretName"):
                yield f"{name_of(ingress)} tls", tls["secretName"], None


def check_secret_refs(objs: Iterable[Obj], created: Mapping[str, Iterable[str]]) -> list[str]:
    """Every Secret (and key) a pod uses is one the playbook creates: ``created`` maps Secret
    names to their keys."""
    created = {name: set(keys) for name, keys in created.items()}
    problems = []
    for where, name, key in secret_references(objs):
        if name not in created:
            problems.append(f"{where}: Secret {name!r} is not created by the playbook")
        elif key is not None and key not in created[name]:
            problems.append(f"{where}: Secret {name!r} has no key {key!r} in the playbook")
    return problems


# -- references between objects --------------------------------------------------------------------


def check_config_refs(objs: Iterable[Obj]) -> list[str]:
    """ConfigMaps, their keys and PersistentVolumeClaims that pods use exist among the objects."""
    objs = list(objs)
    config_maps = {o["metadata"]["name"]: set((o.get("data") or {}) | (o.get("binaryData") or {}))
                   for o in of_kind(objs, "ConfigMap")}
    claims = {o["metadata"]["name"] for o in of_kind(objs, "PersistentVolumeClaim")}
    problems = []
    for pod in pod_templates(objs):
        templates = claim_templates(pod)
        for container in pod.all_containers:
            where = f"{pod.where} container {container.get('name')}"
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
                if ref and (ref.get("name") not in config_maps or ref.get("key") not in config_maps[ref.get("name")]):
                    problems.append(f"{where}: ConfigMap key {ref.get('name')}/{ref.get('key')} does not exist")
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef")
                if ref and ref.get("name") not in config_maps:
                    problems.append(f"{where}: ConfigMap {ref.get('name')!r} does not exist")
            volume_names = {v.get("name") for v in pod.spec.get("volumes") or []} | templates
            for mount in container.get("volumeMounts") or []:
                if mount.get("name") not in volume_names:
                    problems.append(f"{where}: mounts volume {mount.get('name')!r} the pod does not have")
        for volume in pod.spec.get("volumes") or []:
            if volume.get("configMap") and volume["configMap"].get("name") not in config_maps:
                problems.append(f"{pod.where} volume {volume.get('name')}: ConfigMap "
                                f"{volume['configMap'].get('name')!r} does not exist")
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in claims:
                problems.append(f"{pod.where} volume {volume.get('name')}: PVC {claim!r} does not exist")
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        target = hpa.get("spec", {}).get("scaleTargetRef") or {}
        if not any(o.get("kind") == target.get("kind") and o["metadata"]["name"] == target.get("name") for o in objs):
            problems.append(f"{name_of(hpa)}: scale target {target.get('kind')}/{target.get('name')} does not exist")
    return problems


def check_state_on_volumes(objs: Iterable[Obj], stateful_images: Iterable[str]) -> list[str]:
    """Containers of stateful images (databases, object store, TSDB, Grafana) keep their data on a
    PersistentVolumeClaim. Jobs and CronJobs are not asked: they run to completion, so a container
    of theirs serves nothing (e.g. the database image's client applying users to the server)."""
    problems = []
    prefixes = tuple(stateful_images)
    for pod in pod_templates(objs):
        if pod.owner.get("kind") in RUN_TO_COMPLETION_KINDS:
            continue
        claims = claim_templates(pod)
        claims |= {v.get("name") for v in pod.spec.get("volumes") or [] if v.get("persistentVolumeClaim")}
        for container in pod.containers:
            if str(container.get("image", "")).startswith(prefixes):
                if not any(m.get("name") in claims for m in container.get("volumeMounts") or []):
                    problems.append(f"{pod.where} container {container.get('name')}: state not on a PVC")
    return problems


def selected_templates(service: Obj, objs: Iterable[Obj]) -> list[PodTemplate]:
    selector = service.get("spec", {}).get("selector") or {}
    if not selector:
        return []
    return [pod for pod in pod_templates(objs) if all(pod.labels.get(k) == v for k, v in selector.items())]


def check_services_select_pods(objs: Iterable[Obj]) -> list[str]:
    """Every Service's selector matches the pod template of some workload."""
    objs = list(objs)
    problems = []
    for service in of_kind(objs, "Service"):
        if service.get("spec", {}).get("type") == "ExternalName":
            continue
        if not service.get("spec", {}).get("selector"):
            problems.append(f"{name_of(service)}: no selector")
        elif not selected_templates(service, objs):
            problems.append(f"{name_of(service)}: selector {service['spec']['selector']} matches no pod template")
    return problems


def container_exposes(container: dict[str, Any], port: int | str) -> bool:
    for declared in container.get("ports") or []:
        if isinstance(port, str) and not port.isdigit():
            if declared.get("name") == port:
                return True
        elif int(declared.get("containerPort", -1)) == int(port):
            return True
    return False


def check_ports(objs: Iterable[Obj]) -> list[str]:
    """Probes point at a port their container declares; every Service port's targetPort is a port
    the containers of the pods it selects declare."""
    objs = list(objs)
    problems = []
    for pod in pod_templates(objs):
        for container in pod.containers:
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = container.get(probe_name) or {}
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    if handler in probe:
                        port = probe[handler].get("port")
                        if not container_exposes(container, port):
                            problems.append(f"{pod.where} container {container.get('name')} {probe_name}: "
                                            f"port {port!r} is not one of the container's ports")
    for service in of_kind(objs, "Service"):
        templates = selected_templates(service, objs)
        for port in service.get("spec", {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for pod in templates:
                if not any(container_exposes(c, target) for c in pod.containers):
                    problems.append(f"{name_of(service)} port {port.get('name') or port.get('port')}: "
                                    f"targetPort {target!r} is not exposed by {pod.where}")
    return problems


# -- images ----------------------------------------------------------------------------------------


def split_image(image: str) -> tuple[str, str | None]:
    """(repository, tag or digest) of an image reference."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, None


def container_images(objs: Iterable[Obj]) -> Iterator[tuple[str, str, str, str | None]]:
    """(where, image, repository, tag or digest) of every container and init container."""
    for pod in pod_templates(objs):
        for container in pod.all_containers:
            image = str(container.get("image", ""))
            yield f"{pod.where} container {container.get('name')}", image, *split_image(image)


def check_images(objs: Iterable[Obj], registry: str, built: Mapping[str, str], repo_root: Path) -> list[str]:
    """Every image of the platform's registry is one the playbook builds, from a Dockerfile that
    exists (``built`` maps image names to Dockerfile paths); every other image is pinned to a tag
    other than latest, or a digest."""
    problems = []
    for where, image, repository, tag in container_images(objs):
        if repository.startswith(registry + "/"):
            name = repository[len(registry) + 1:]
            if name not in built:
                problems.append(f"{where}: image {image} is not built by the playbook")
            elif not (repo_root / built[name]).is_file():
                problems.append(f"{where}: image {image} has no Dockerfile ({built[name]} missing)")
        elif tag in (None, "latest"):
            problems.append(f"{where}: image {image} is not pinned")
        elif "/" not in repository and repository.startswith("readmit"):
            problems.append(f"{where}: image {image} was not mapped to the registry (images: transformer)")
    return problems


# Repositories that no longer serve images, with why. An image from one of them cannot be pulled by
# a fresh install even though an old cluster may still have it cached.
GONE_REPOSITORIES = {
    # MinIO became a source-only distribution in October 2025 and its images were removed from
    # Docker Hub in September 2026; the same RELEASE.* tags are served from quay.io/minio/minio.
    "docker.io/minio/minio": "removed from Docker Hub; pull quay.io/minio/minio",
    "docker.io/minio/mc": "removed from Docker Hub; pull quay.io/minio/mc",
    # The old Kubernetes registry was frozen in April 2023 and is being shut down.
    "k8s.gcr.io/": "frozen; pull from registry.k8s.io",
    # Bitnami's public catalogue moved to docker.io/bitnamilegacy (no updates) in September 2025.
    "docker.io/bitnami/": "Bitnami's free images were withdrawn (docker.io/bitnamilegacy is frozen)",
}


def registry_of(repository: str) -> str | None:
    """The registry host an image repository names explicitly, or None (Docker Hub implied)."""
    first, sep, _ = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def check_image_sources(objs: Iterable[Obj], gone: Mapping[str, str] | None = None) -> list[str]:
    """Every image names its registry (no implied Docker Hub: which one a node pulls from must be
    readable in the manifest), is pinned to a tag other than latest (or a digest), and is not from
    a repository known to be gone (``gone``: repository or prefix ending in / -> why)."""
    gone = GONE_REPOSITORIES if gone is None else gone
    problems = []
    for where, image, repository, tag in container_images(objs):
        if registry_of(repository) is None:
            problems.append(f"{where}: image {image} names no registry (write e.g. docker.io/library/..., quay.io/...)")
        if tag in (None, "latest"):
            problems.append(f"{where}: image {image} is not pinned to a tag or digest")
        for prefix, why in gone.items():
            if repository == prefix or (prefix.endswith("/") and repository.startswith(prefix)):
                problems.append(f"{where}: image {image} comes from {prefix.rstrip('/')}: {why}")
    return problems


# -- state -----------------------------------------------------------------------------------------


def check_claim_templates_unlabelled(objs: Iterable[Obj]) -> list[str]:
    """StatefulSets' volumeClaimTemplates carry no labels: they are immutable (a label added or
    changed later makes the StatefulSet impossible to update) and a label-scoped prune must never
    select the claims they create."""
    problems = []
    for obj in of_kind(objs, "StatefulSet"):
        for template in obj.get("spec", {}).get("volumeClaimTemplates") or []:
            labels = (template.get("metadata") or {}).get("labels")
            if labels:
                problems.append(f"{name_of(obj)} volumeClaimTemplate {template.get('metadata', {}).get('name')}: "
                                f"labels {sorted(labels)}")
    return problems


def check_store_is_swappable(objs: Iterable[Obj], store: str, owners: Iterable[str]) -> list[str]:
    """Nothing names the object store ``store`` (e.g. "minio") except the objects of ``owners``
    (their app.kubernetes.io/name): clients reach "an S3 store" through generic settings."""
    owners = set(owners)
    problems = []
    for obj in objs:
        labels = obj.get("metadata", {}).get("labels") or {}
        if labels.get("app.kubernetes.io/name") in owners:
            continue
        text = repr(obj).lower()
        if store.lower() in text:
            problems.append(f"{name_of(obj)}: mentions {store}")
    return problems


# -- addresses -------------------------------------------------------------------------------------

SERVICE_ADDRESS = re.compile(r"(?:[a-z][a-z0-9+.-]*://(?:[^/\s@]+@)?|@)([a-z0-9][a-z0-9.-]*):(\d+)")
CLUSTER_NAME = re.compile(r"^([a-z0-9][a-z0-9-]*)(?:\.([a-z0-9-]+)(?:\.svc(?:\.cluster\.local)?)?)?$")
IP_ADDRESS = re.compile(r"^\d+(\.\d+){3}$")


def service_addresses(objs: Iterable[Obj]) -> Iterator[tuple[str, str, int]]:
    """(where, host, port) of every host:port in a URL of a pod's environment, arguments or ConfigMaps."""
    objs = list(objs)
    for obj in of_kind(objs, "ConfigMap"):
        for key, value in (obj.get("data") or {}).items():
            for match in SERVICE_ADDRESS.finditer(str(value)):
                yield f"{name_of(obj)} key {key}", match.group(1), int(match.group(2))
    for pod in pod_templates(objs):
        for container in pod.all_containers:
            texts = [str(e.get("value", "")) for e in container.get("env") or []]
            texts += [str(a) for a in list(container.get("command") or []) + list(container.get("args") or [])]
            for text in texts:
                for match in SERVICE_ADDRESS.finditer(text):
                    yield f"{pod.where} container {container.get('name')}", match.group(1), int(match.group(2))


def check_service_addresses(objs: Iterable[Obj], services: Iterable[Obj], namespace: str,
                            local_hosts: Iterable[str] = ("localhost",)) -> list[str]:
    """Every in-cluster host:port the settings name (a short name, or NAME.NAMESPACE[.svc[.cluster.local]])
    is a Service of ``services`` (the whole platform's) with that port. IP addresses, local hosts and
    other dotted names (outside the cluster) are not checked."""
    ports = {s["metadata"]["name"]: {int(p.get("port")) for p in s.get("spec", {}).get("ports") or []}
             for s in services}
    problems = []
    for where, host, port in service_addresses(objs):
        cluster_name = CLUSTER_NAME.match(host)
        if host in local_hosts or IP_ADDRESS.match(host) or not cluster_name:
            continue
        if cluster_name.group(2) not in (None, namespace):
            continue
        service = cluster_name.group(1)
        if service not in ports:
            problems.append(f"{where}: {host}:{port} names no Service")
        elif port not in ports[service]:
            problems.append(f"{where}: Service {service} has no port {port}")
    return problems


# -- exposure and credentials (issue: secure by default) ---------------------------------------------

def node_ports(objs: Iterable[Obj]) -> dict[str, list[int]]:
    """Service name -> the node ports it opens on every node (type NodePort or LoadBalancer)."""
    out: dict[str, list[int]] = {}
    for service in of_kind(objs, "Service"):
        if service["spec"].get("type") in ("NodePort", "LoadBalancer"):
            out[service["metadata"]["name"]] = [p.get("nodePort", 0) for p in service["spec"].get("ports", [])]
    return out


def check_node_ports_documented(objs: Iterable[Obj], documented: Mapping[str, str]) -> list[str]:
    """Every Service reachable on the nodes' own ports is one the README names, with its reason."""
    return [f"Service/{name}: opens node ports {ports} but the README gives no reason for it"
            for name, ports in node_ports(objs).items() if not (documented.get(name) or "").strip()]


DANGEROUS_FLAGS = {
    "--web.enable-lifecycle": "Prometheus' lifecycle API lets anyone who reaches it stop or reload it",
    "--web.enable-admin-api": "Prometheus' admin API lets anyone who reaches it delete series",
    "--web.enable-remote-write-receiver": "anyone who reaches Prometheus could write series",
}


def check_no_dangerous_flags(objs: Iterable[Obj]) -> list[str]:
    problems = []
    for pod in pod_templates(objs):
        for container in pod.all_containers:
            for arg in list(container.get("command") or []) + list(container.get("args") or []):
                flag = str(arg).split("=", 1)[0]
                if flag in DANGEROUS_FLAGS:
                    problems.append(f"{pod.where} container {container.get('name')}: {flag} ({DANGEROUS_FLAGS[flag]})")
    return problems


def _env_value(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in container.get("env") or [] if e.get("name") == name), None)


def _from_secret(container: dict[str, Any], name: str) -> bool:
    env = _env_value(container, name)
    return bool(env and (env.get("valueFrom") or {}).get("secretKeyRef"))


def check_streamlit_hides_error_details(objs: Iterable[Obj]) -> list[str]:
    """Every Streamlit server shows no exception text in the page (client.showErrorDetails none)."""
    problems = []
    for pod in pod_templates(objs):
        for container in pod.all_containers:
            argv = [str(a) for a in list(container.get("command") or []) + list(container.get("args") or [])]
            if not any(a == "streamlit" or a.endswith("/streamlit") for a in argv[:1]) or "run" not in argv:
                continue
            flag = "--client.showErrorDetails=none" in argv
            env = _env_value(container, "STREAMLIT_CLIENT_SHOW_ERROR_DETAILS")
            if not flag and not (env and str(env.get("value", "")).lower() == "none"):
                problems.append(f"{pod.where} container {container.get('name')}: Streamlit shows error details "
                                "(set --client.showErrorDetails=none)")
    return problems


# What each component needs to ask for credentials: environment variables from Secrets, and flags.
CREDENTIALS: dict[str, dict[str, Any]] = {
    "mlflow": {"secret_env": ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                              "MLFLOW_AUTH_TRAINING_PASSWORD", "MLFLOW_AUTH_READER_PASSWORD"]},
    "api": {"env": ["API_KEYS"], "secret_env": ["MLFLOW_TRACKING_PASSWORD"]},
    "ui": {"secret_env": ["UI_USERNAME", "UI_PASSWORD", "API_KEY"]},
    "locust": {"secret_env": ["LOCUST_USERNAME", "LOCUST_PASSWORD", "API_KEY"], "flags": ["--web-login"]},
    "grafana": {"secret_env": ["GF_SECURITY_ADMIN_PASSWORD"]},
    "jupyter": {"secret_env": ["JUPYTER_TOKEN", "MLFLOW_TRACKING_PASSWORD"]},
    "airflow-scheduler": {"secret_env": ["MLFLOW_TRACKING_PASSWORD"]},
    "minio": {"secret_env": ["MINIO_ROOT_PASSWORD"]},
}


def check_components_ask_for_credentials(objs: Iterable[Obj],
                                         required: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Each component's main container gets its credentials from Secrets and runs with its login flags."""
    required = CREDENTIALS if required is None else required
    problems, seen = [], set()
    for pod in pod_templates(objs):
        component = pod.labels.get("app.kubernetes.io/name")
        if component not in required:
            continue
        seen.add(component)
        need = required[component]
        container = pod.containers[0]
        argv = [str(a) for a in list(container.get("command") or []) + list(container.get("args") or [])]
        for name in need.get("secret_env", []):
            if not _from_secret(container, name):
                problems.append(f"{pod.where}: {name} does not come from a Secret")
        for name in need.get("env", []):
            if _env_value(container, name) is None:
                problems.append(f"{pod.where}: {name} is not set")
        for flag in need.get("flags", []):
            if flag not in argv:
                problems.append(f"{pod.where}: runs without {flag}")
    return problems


def check_ingresses_use_tls(objs: Iterable[Obj], secret: str = "readmit-tls", ingress_class: str = "public") -> list[str]:
    """Every Ingress serves each of its hosts over TLS (the platform's certificate) and redirects HTTP."""
    problems = []
    for ingress in of_kind(objs, "Ingress"):
        where = name_of(ingress)
        spec = ingress.get("spec") or {}
        if spec.get("ingressClassName") != ingress_class:
            problems.append(f"{where}: ingressClassName is not {ingress_class}")
        tls_hosts = {h for t in spec.get("tls") or [] if t.get("secretName") == secret for h in t.get("hosts") or []}
        for rule in spec.get("rules") or []:
            if not rule.get("host"):
                problems.append(f"{where}: a rule without a host")
            elif rule["host"] not in tls_hosts:
                problems.append(f"{where}: {rule['host']} is not served with Secret {secret}")
        annotations = (ingress.get("metadata") or {}).get("annotations") or {}
        if str(annotations.get("nginx.ingress.kubernetes.io/force-ssl-redirect", "")).lower() != "true":
            problems.append(f"{where}: plain HTTP is not redirected to HTTPS")
    return problems


def readme_node_ports(readme: str) -> dict[str, str]:
    """The README's table of NodePorts ("| Service | node port | why |" under a heading naming
    NodePorts): Service name -> reason. An empty table means none is allowed."""
    lines = readme.splitlines()
    out: dict[str, str] = {}
    inside = False
    for line in lines:
        if line.startswith("#"):
            inside = "nodeport" in line.lower()
            continue
        if inside and line.startswith("|") and not set(line.replace("|", "").strip()) <= set("-: "):
            cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
            if len(cells) >= 3 and cells[0].lower() != "service":
                out[cells[0]] = cells[2]
    return out
