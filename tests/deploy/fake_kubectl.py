"""A stand-in for ``microk8s kubectl`` so the playbook's Kubernetes steps run without a cluster.

The tests point the roles' kubectl setting at ``python fake_kubectl.py``. It keeps the
"cluster" as JSON in $FAKE_KUBE_STATE and implements the few commands the roles use:
kustomize (the real kubectl, $FAKE_KUBE_REAL), get namespace|secrets|nodes, create namespace,
apply/diff -f - (server-side: an object matches when it equals the last one applied),
delete job, rollout status, wait. Every call is logged in the state.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml


def load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"namespaces": [], "objects": {}, "calls": []}


def key(obj: dict, namespace: str | None) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('namespace') or namespace or 'default'}/{meta.get('name')}"


def main(argv: list[str]) -> int:
    state_path = Path(os.environ["FAKE_KUBE_STATE"])
    state = load(state_path)
    state["calls"].append(argv)
    args = list(argv)
    namespace = None
    if "-n" in args:
        i = args.index("-n")
        namespace = args[i + 1]
        del args[i:i + 2]
    command = args[0] if args else ""
    if command == "kustomize":
        state_path.write_text(json.dumps(state))
        os.execv(os.environ["FAKE_KUBE_REAL"], [os.environ["FAKE_KUBE_REAL"], *args])
    rc = 0
    try:
        if command == "get" and args[1] == "namespace":
            if args[2] in state["namespaces"]:
                print(f"namespace/{args[2]}")
        elif command == "create" and args[1] == "namespace":
            state["namespaces"].append(args[2])
            print(f"namespace/{args[2]} created")
        elif command == "get" and args[1] in ("secrets", "secret"):
            items = [o for k, o in state["objects"].items() if k.startswith(f"Secret/{namespace}/")]
            print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        elif command == "get" and args[1] in ("nodes", "node"):
            print(json.dumps({"apiVersion": "v1", "kind": "List", "items": state.get("nodes", [])}))
        elif command in ("apply", "diff"):
            docs = [d for d in yaml.safe_load_all(sys.stdin.read()) if d]
            if command == "apply":
                for doc in docs:
                    state["objects"][key(doc, namespace)] = doc
                    print(f"{doc['kind'].lower()}/{doc['metadata']['name']} serverside-applied")
            else:
                differing = [key(d, namespace) for d in docs if state["objects"].get(key(d, namespace)) != d]
                for k in differing:
                    print(f"diff {k}")
                rc = 1 if differing else 0
        elif command == "delete" and args[1] == "job":
            k = f"Job/{namespace or 'default'}/{args[2]}"
            if k in state["objects"]:
                del state["objects"][k]
                print(f'job.batch "{args[2]}" deleted')
        elif command in ("rollout", "wait"):
            print("ok")
        else:
            print(f"fake kubectl: unsupported command {argv}", file=sys.stderr)
            rc = 2
    finally:
        state_path.write_text(json.dumps(state))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
