#!/usr/bin/env python3
"""Capacity preflight: does each node have room for what its server folder's pods request?

Reads JSON on stdin:
    {"objects": [rendered objects of every folder],
     "nodes": `kubectl get nodes -o json`,
     "pods": `kubectl get pods -A -o json`,
     "label_key": "readmit.io/node", "namespace": "readmit"}
and prints one JSON object: {"ok": bool, "nodes": [{node, label, allocatable, others, platform,
free_after, shortfall}], "problems": [sentences]}.

What a folder needs on its node: every pod template's effective request (the larger of its
containers' sum and its largest init container) times its replicas, where a workload scaled by a
HorizontalPodAutoscaler counts at the autoscaler's maximum, plus the surge pod of the largest
rolling Deployment (a rollout runs one new pod beside the old ones). What the node already runs
outside the platform's namespace (add-ons: DNS, registry, CNI, metrics) is subtracted from its
allocatable CPU and memory first. Standard library only: it runs on the leader's system Python.
"""

from __future__ import annotations

import json
import sys
from typing import Any

MEMORY_UNITS = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}


def cpu_millicores(quantity: str | int | float | None) -> int:
    """Kubernetes CPU quantity -> millicores ("250m" -> 250, "2" -> 2000, "1.5" -> 1500)."""
    if quantity in (None, ""):
        return 0
    text = str(quantity).strip()
    if text.endswith("m"):
        return int(float(text[:-1]))
    if text.endswith("n"):
        return int(float(text[:-1]) / 1_000_000)
    if text.endswith("u"):
        return int(float(text[:-1]) / 1_000)
    return int(round(float(text) * 1000))


def memory_bytes(quantity: str | int | float | None) -> int:
    """Kubernetes memory quantity -> bytes ("768Mi", "2Gi", "512M", "1e9", 1024)."""
    if quantity in (None, ""):
        return 0
    text = str(quantity).strip()
    for suffix in sorted(MEMORY_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * MEMORY_UNITS[suffix])
    return int(float(text))


def requests_of(containers: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    cpu = [cpu_millicores(((c.get("resources") or {}).get("requests") or {}).get("cpu")) for c in containers]
    memory = [memory_bytes(((c.get("resources") or {}).get("requests") or {}).get("memory")) for c in containers]
    return cpu, memory


def pod_request(spec: dict[str, Any]) -> tuple[int, int]:
    """(millicores, bytes) the scheduler reserves for one pod of ``spec``."""
    cpu, memory = requests_of(spec.get("containers") or [])
    init_cpu, init_memory = requests_of(spec.get("initContainers") or [])
    return max(sum(cpu), max(init_cpu, default=0)), max(sum(memory), max(init_memory, default=0))


def platform_needs(objects: list[dict[str, Any]], label_key: str) -> dict[str, dict[str, int]]:
    """Node label value -> {"cpu": millicores, "memory": bytes} the platform's pods request there."""
    scaled = {(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"]): int(h["spec"]["maxReplicas"])
              for h in objects if h.get("kind") == "HorizontalPodAutoscaler"}
    needs: dict[str, dict[str, int]] = {}
    surge: dict[str, tuple[int, int]] = {}
    for obj in objects:
        kind = obj.get("kind")
        if kind not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = obj["spec"]["template"]["spec"]
        label = (spec.get("nodeSelector") or {}).get(label_key, "")
        replicas = scaled.get((kind, obj["metadata"]["name"]),
                              int(obj["spec"].get("parallelism", 1)) if kind == "Job" else int(obj["spec"].get("replicas", 1)))
        cpu, memory = pod_request(spec)
        total = needs.setdefault(label, {"cpu": 0, "memory": 0})
        total["cpu"] += cpu * replicas
        total["memory"] += memory * replicas
        strategy = (obj["spec"].get("strategy") or {}).get("type", "RollingUpdate")
        if kind == "Deployment" and strategy == "RollingUpdate":
            biggest = surge.get(label, (0, 0))
            surge[label] = (max(biggest[0], cpu), max(biggest[1], memory))
    for label, (cpu, memory) in surge.items():
        needs[label]["cpu"] += cpu
        needs[label]["memory"] += memory
    return needs


def others_on_nodes(pods: dict[str, Any], namespace: str) -> dict[str, dict[str, int]]:
    """Node name -> requests of the pods already there outside ``namespace`` (not finished)."""
    used: dict[str, dict[str, int]] = {}
    for pod in pods.get("items") or []:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or pod["metadata"].get("namespace") == namespace or phase in ("Succeeded", "Failed"):
            continue
        cpu, memory = pod_request(pod["spec"])
        total = used.setdefault(node, {"cpu": 0, "memory": 0})
        total["cpu"] += cpu
        total["memory"] += memory
    return used


def check(data: dict[str, Any]) -> dict[str, Any]:
    label_key, namespace = data["label_key"], data["namespace"]
    needs = platform_needs(data["objects"], label_key)
    others = others_on_nodes(data.get("pods") or {}, namespace)
    report: dict[str, Any] = {"ok": True, "nodes": [], "problems": []}
    nodes_by_label: dict[str, list[dict[str, Any]]] = {}
    for node in data["nodes"].get("items") or []:
        label = (node["metadata"].get("labels") or {}).get(label_key)
        if label is not None:
            nodes_by_label.setdefault(label, []).append(node)
    for label, need in sorted(needs.items()):
        candidates = nodes_by_label.get(label, [])
        if len(candidates) != 1:
            report["ok"] = False
            report["problems"].append(f"{len(candidates)} nodes are labelled {label_key}={label}; expected exactly one")
            continue
        node = candidates[0]
        name = node["metadata"]["name"]
        allocatable = node["status"].get("allocatable") or {}
        free = {"cpu": cpu_millicores(allocatable.get("cpu")), "memory": memory_bytes(allocatable.get("memory"))}
        taken = others.get(name, {"cpu": 0, "memory": 0})
        after = {k: free[k] - taken[k] - need[k] for k in ("cpu", "memory")}
        shortfall = {k: max(0, -v) for k, v in after.items()}
        report["nodes"].append({"node": name, "label": label, "allocatable": free, "others": taken,
                                "platform": need, "free_after": after, "shortfall": shortfall})
        if any(shortfall.values()):
            report["ok"] = False
            report["problems"].append(
                f"node {name} ({label_key}={label}) lacks {shortfall['cpu']}m CPU and {shortfall['memory'] // 2**20} MiB "
                f"memory: the platform's pods there request {need['cpu']}m and {need['memory'] // 2**20} MiB at the "
                f"autoscaler's maximum, other pods {taken['cpu']}m and {taken['memory'] // 2**20} MiB, and the node "
                f"can allocate {free['cpu']}m and {free['memory'] // 2**20} MiB")
    return report


def main() -> int:
    report = check(json.load(sys.stdin))
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
