"""A stand-in for ``microk8s kubectl`` so the playbook's Kubernetes steps run without a cluster.

The tests point the roles' kubectl setting at ``python fake_kubectl.py``. It keeps the "cluster" as
JSON in $FAKE_KUBE_STATE and implements the commands the roles use, with the API server's rules that
matter to them:

* ``kustomize`` runs the real kubectl ($FAKE_KUBE_REAL);
* ``get`` namespace | secret NAME | secrets | nodes | pods (-l, --field-selector phase, -o json or
  jsonpath of names) | several kinds (``configmaps,services,...`` -l SELECTOR -o json);
* ``get --raw`` of the API server's proxy to a pod (``/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH``)
  or to a Service (``.../services/NAME:PORT/proxy/PATH``), as the API server answers them: an unknown
  pod, Service or port is an error; a Service routes only to Ready pods ("no endpoints available"
  otherwise); PATH /health answers ``{"status": "ok"}``, /ready the API's readiness. The API's pods
  (label app.kubernetes.io/name=api) are Ready once a champion exists (``champion`` in the state:
  set by ``airflow dags trigger preprocess_incremental``, whose training registers version 1, or
  seeded by a test); until then their /ready answers 503, which ``kubectl get --raw`` reports as
  an error (exit 1). Other pods are Ready at once;
* ``apply``/``diff`` ``--server-side -f -`` (an object matches when it equals the last one applied),
  ``--dry-run=server``, ``--prune -l SELECTOR --prune-allowlist=GVK...`` (deletes the labelled
  objects of those kinds that the input does not declare); a StatefulSet whose selector,
  serviceName or volumeClaimTemplates change is refused with the API server's "Forbidden" error,
  as a real cluster does;
* ``delete job|statefulset NAME`` (``--cascade=orphan`` keeps the pods), ``create namespace``,
  ``rollout status|restart``, ``wait``, ``exec`` and ``cp`` (recorded with their standard input;
  ``airflow dags trigger`` marks the DAG triggered).

Every call is logged in the state (``calls``: argv; ``stdin``: what ``exec`` received).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import yaml

KINDS = {  # resource name (as the roles write it, before any ".group") -> kind
    "configmaps": "ConfigMap", "services": "Service", "serviceaccounts": "ServiceAccount",
    "deployments": "Deployment", "statefulsets": "StatefulSet", "jobs": "Job", "cronjobs": "CronJob",
    "horizontalpodautoscalers": "HorizontalPodAutoscaler", "poddisruptionbudgets": "PodDisruptionBudget",
    "networkpolicies": "NetworkPolicy", "ingresses": "Ingress", "roles": "Role", "rolebindings": "RoleBinding",
    "secrets": "Secret", "persistentvolumeclaims": "PersistentVolumeClaim",
}
PROXY = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/(?P<resource>pods|services)/(?P<name>[^/:]+)"
                   r"(?::(?P<port>[^/]+))?/proxy(?P<path>/.*)$")
API_POD_LABEL = ("app.kubernetes.io/name", "api")
MODEL_NAME = "diabetes-readmission"
UNAVAILABLE = "Error from server (ServiceUnavailable): the server is currently unable to handle the request"
NOT_FOUND = "Error from server (NotFound): the server could not find the requested resource"
IMMUTABLE_STATEFULSET_FIELDS = ("selector", "serviceName", "volumeClaimTemplates")
FORBIDDEN = ('The StatefulSet "{name}" is invalid: spec: Forbidden: updates to statefulset spec for fields other '
             "than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' "
             "and 'minReadySeconds' are forbidden")


def load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"namespaces": [], "objects": {}, "calls": [], "stdin": []}


def key(obj: dict, namespace: str | None) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('namespace') or namespace or 'default'}/{meta.get('name')}"


def pop_option(args: list[str], *names: str) -> str | None:
    """Remove ``--name=value`` / ``--name value`` / ``-n value`` from args; return the value."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
                del args[i:i + 2]
                return value
            if arg.startswith(name + "="):
                del args[i]
                return arg.split("=", 1)[1]
    return None


def pop_all(args: list[str], name: str) -> list[str]:
    values = []
    while (value := pop_option(args, name)) is not None:
        values.append(value)
    return values


def matches(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


def gvk_kind(gvk: str) -> str:
    return gvk.rsplit("/", 1)[-1]


def pods(state: dict, namespace: str | None) -> list[dict]:
    """One Running pod per Deployment/StatefulSet replica in ``namespace`` (plus any seeded ones)."""
    found = list(state.get("pods", []))
    for k, obj in state["objects"].items():
        kind, ns, name = k.split("/", 2)
        if kind not in ("Deployment", "StatefulSet") or (namespace and ns != namespace):
            continue
        template = obj["spec"]["template"]
        found.append({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": f"{name}-0", "namespace": ns,
                                   "labels": (template.get("metadata") or {}).get("labels") or {}},
                      "spec": template.get("spec") or {}, "status": {"phase": "Running"}})
    return found


def champion(state: dict) -> str | None:
    """The model version the API serves, once training registered a champion."""
    return state.get("champion")


def is_ready(state: dict, pod: dict) -> bool:
    if pod["metadata"]["labels"].get(API_POD_LABEL[0]) == API_POD_LABEL[1]:
        return champion(state) is not None
    return True


def readiness(state: dict) -> dict:
    """The API's /ready body (readmit_serving.api.schemas.Readiness)."""
    version = champion(state)
    return {"ready": version is not None, "model_name": MODEL_NAME, "model_alias": "champion",
            "model_version": version, "mlflow_reachable": True, "alias_version": version, "last_check": 0.0,
            "last_error": None if version else "No version carries the alias champion yet."}


def container_ports(pod: dict) -> set[str]:
    return {str(v) for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []
            for v in (p.get("name"), p.get("containerPort")) if v is not None}


def raw_proxy(state: dict, path: str) -> tuple[int, str]:
    """(exit code, stdout or stderr) of ``kubectl get --raw PATH`` through the API server's proxy."""
    found = PROXY.match(path)
    if found is None:
        return 1, NOT_FOUND
    namespace, name, port, sub = found["namespace"], found["name"], found["port"], found["path"]
    if found["resource"] == "pods":
        pod = next((p for p in pods(state, namespace) if p["metadata"]["name"] == name), None)
        if pod is None:
            return 1, f'Error from server (NotFound): pods "{name}" not found'
        if port and container_ports(pod) and port not in container_ports(pod):
            return 1, f'Error: error dialing backend: no port {port} on pod "{name}"'
        ready = is_ready(state, pod)
    else:
        service = state["objects"].get(f"Service/{namespace}/{name}")
        if service is None:
            return 1, f'Error from server (NotFound): services "{name}" not found'
        ports = {str(v) for p in service["spec"].get("ports") or [] for v in (p.get("name"), p.get("port")) if v}
        selector = service["spec"].get("selector") or {}
        endpoints = [p for p in pods(state, namespace)
                     if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items()) and is_ready(state, p)]
        if (port and port not in ports) or not endpoints:
            return 1, f'Error from server (ServiceUnavailable): no endpoints available for service "{name}:{port}"'
        ready = True
    if sub == "/health":
        return 0, json.dumps({"status": "ok"})
    if sub == "/ready":
        return (0, json.dumps(readiness(state))) if ready else (1, UNAVAILABLE)
    return 1, NOT_FOUND


def in_pod_probe(state: dict, namespace: str, target: str, port: str, path: str) -> tuple[int, str]:
    """``kubectl exec POD|deployment/NAME -- python -c PROBE PORT PATH``: the roles' in-pod GET of the API's
    /health or /ready (through the kubelet, not the pod network). A Deployment means its first pod, Ready
    or not, as kubectl picks one; the answer is the pod's own, like the pod proxy's."""
    if target.startswith("deployment/"):
        deployment = state["objects"].get(f"Deployment/{namespace}/{target.split('/', 1)[1]}")
        selector = ((deployment or {}).get("spec") or {}).get("selector", {}).get("matchLabels") or {}
        matching = [p for p in pods(state, namespace)
                    if deployment and all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        if not matching:
            return 1, f'Error from server (NotFound): deployments.apps "{target}" has no pods'
        target = matching[0]["metadata"]["name"]
    rc, text = raw_proxy(state, f"/api/v1/namespaces/{namespace}/pods/{target}:{port}/proxy{path}")
    if rc != 0 and "ServiceUnavailable" in text:  # the probe prints the 503's body and exits 1
        return 1, json.dumps(readiness(state))
    return rc, text


def refuse_immutable(state: dict, doc: dict, namespace: str | None) -> str | None:
    old = state["objects"].get(key(doc, namespace))
    if doc.get("kind") != "StatefulSet" or old is None:
        return None
    if any(old["spec"].get(f) != doc["spec"].get(f) for f in IMMUTABLE_STATEFULSET_FIELDS):
        return FORBIDDEN.format(name=doc["metadata"]["name"])
    return None


def main(argv: list[str]) -> int:
    state_path = Path(os.environ["FAKE_KUBE_STATE"])
    state = load(state_path)
    state.setdefault("stdin", [])
    state["calls"].append(argv)
    args = list(argv)
    namespace = pop_option(args, "-n", "--namespace")
    all_namespaces = "--all-namespaces" in args or "-A" in args
    args = [a for a in args if a not in ("--all-namespaces", "-A")]
    command = args[0] if args else ""
    if command == "kustomize":
        state_path.write_text(json.dumps(state))
        os.execv(os.environ["FAKE_KUBE_REAL"], [os.environ["FAKE_KUBE_REAL"], *args])
    rc = 0
    try:
        selector = pop_option(args, "-l", "--selector")
        output = pop_option(args, "-o", "--output")
        field_selector = pop_option(args, "--field-selector")
        ignore_not_found = "--ignore-not-found" in args
        if command == "get" and args[1] == "--raw":
            rc, text = raw_proxy(state, args[2])
            print(text, file=sys.stdout if rc == 0 else sys.stderr)
        elif command == "get" and args[1] == "namespace":
            if args[2] in state["namespaces"]:
                print(f"namespace/{args[2]}")
        elif command == "create" and args[1] == "namespace":
            state["namespaces"].append(args[2])
            print(f"namespace/{args[2]} created")
        elif command == "get" and args[1] in ("secret", "secrets") and len(args) > 2 and not args[2].startswith("-"):
            obj = state["objects"].get(f"Secret/{namespace}/{args[2]}")
            if obj is not None:
                print(json.dumps(obj))
            elif not ignore_not_found:
                print(f'Error from server (NotFound): secrets "{args[2]}" not found', file=sys.stderr)
                rc = 1
        elif command == "get" and args[1] in ("nodes", "node"):
            print(json.dumps({"apiVersion": "v1", "kind": "List", "items": state.get("nodes", [])}))
        elif command == "get" and args[1] in ("pods", "pod"):
            items = [p for p in pods(state, None if all_namespaces else namespace)
                     if matches(p["metadata"]["labels"], selector)
                     and (not field_selector or field_selector == f"status.phase={p['status']['phase']}")]
            if output and output.startswith("jsonpath"):
                print(" ".join(p["metadata"]["name"] for p in items), end="")
            else:
                print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        elif command == "get":
            kinds = {KINDS[r.split(".", 1)[0]] for r in args[1].split(",")}
            items = [o for k, o in state["objects"].items()
                     if k.split("/")[0] in kinds and k.split("/")[1] == namespace
                     and matches(o.get("metadata", {}).get("labels") or {}, selector)]
            print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        elif command in ("apply", "diff"):
            dry_run = pop_option(args, "--dry-run")
            prune = "--prune" in args
            allowlist = {gvk_kind(g) for g in pop_all(args, "--prune-allowlist")}
            docs = [d for d in yaml.safe_load_all(sys.stdin.read()) if d]
            refused = [r for d in docs if (r := refuse_immutable(state, d, namespace))]
            if command == "diff":
                differing = [key(d, namespace) for d in docs if state["objects"].get(key(d, namespace)) != d]
                for k in differing:
                    print(f"diff {k}")
                rc = 1 if differing else 0
            elif refused:
                print("\n".join(refused), file=sys.stderr)
                rc = 1
            elif dry_run:
                for doc in docs:
                    print(f"{doc['kind'].lower()}/{doc['metadata']['name']} serverside-applied (server dry run)")
            else:
                declared = set()
                for doc in docs:
                    declared.add(key(doc, namespace))
                    state["objects"][key(doc, namespace)] = doc
                    print(f"{doc['kind'].lower()}/{doc['metadata']['name']} serverside-applied")
                if prune:
                    assert selector and allowlist, "prune needs a selector and an allowlist"
                    for k in [k for k, o in state["objects"].items()
                              if k.split("/")[0] in allowlist and k not in declared
                              and matches(o.get("metadata", {}).get("labels") or {}, selector)]:
                        del state["objects"][k]
                        print(f"{k.split('/')[0].lower()}/{k.split('/')[2]} pruned")
        elif command == "delete" and args[1] in ("job", "statefulset"):
            kind = {"job": "Job", "statefulset": "StatefulSet"}[args[1]]
            k = f"{kind}/{namespace or 'default'}/{args[2]}"
            if k in state["objects"]:
                del state["objects"][k]
                print(f'{args[1]}.{"batch" if kind == "Job" else "apps"} "{args[2]}" deleted')
            if kind == "StatefulSet" and "--cascade=orphan" not in args:
                state.setdefault("pods_deleted", []).append(args[2])
        elif command == "exec":
            rest = args[args.index("--") + 1:]
            stdin = sys.stdin.read() if "-i" in args else ""
            state["stdin"].append({"argv": argv, "stdin": stdin})
            if rest[:3] == ["airflow", "dags", "trigger"]:
                state.setdefault("triggered", []).append(rest[3])
                if rest[3] == "preprocess_incremental":  # its asset runs train_and_register: version 1
                    state["champion"] = state.get("champion") or "1"
                print(f"Created <DagRun {rest[3]} @ now: manual>")
            elif rest[:2] == ["readmit-data", "load"]:
                print("batch 0 (validation): 1000 rows loaded")
            elif rest[:2] == ["python", "-c"] and len(rest) == 5 and rest[4] in ("/health", "/ready"):
                rc, text = in_pod_probe(state, namespace or "default", args[1], rest[3], rest[4])
                print(text, file=sys.stdout if rc == 0 else sys.stderr)
        elif command in ("cp", "rollout", "wait"):
            print("ok")
        else:
            print(f"fake kubectl: unsupported command {argv}", file=sys.stderr)
            rc = 2
    finally:
        state_path.write_text(json.dumps(state))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
