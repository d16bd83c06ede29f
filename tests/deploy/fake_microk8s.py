"""A stand-in for ``/snap/bin/microk8s`` (and ``snap``) on three machines, so the MicroK8s roles run
without a cluster.

The tests give each inventory host its own command, ``python fake_microk8s.py --as node2``
(``... --as node2 snap`` for snap), so every call knows which machine made it. The "cluster" is
JSON in $FAKE_MICROK8S_STATE, shared by all hosts; every call is logged there as
``{"host", "argv", "rc"}``.

It behaves like MicroK8s 1.32 where the roles depend on it, failure modes included:

* ``add-node --token T [--token-ttl N]`` registers T (at least 32 characters). Without a lifetime
  a token is consumed by the first join that presents it (microk8s-cluster-agent
  ``ConsumeClusterToken``); with one it stays valid until it expires.
* ``join ADDR:PORT/T[/CHECK] [--worker]`` (exit 6 and MicroK8s' message on every refusal):
  an unknown, used or expired token is refused; a node dqlite already knows is refused with
  "the joining node (...) is already known to dqlite"; a node joining while another joined node
  is not Ready yet is refused (dqlite still settling). $FAKE_MICROK8S_FAIL_JOIN
  (``node2`` or ``node2:3``, comma-separated) makes that host's first join(s) fail with a message
  that repeats the connection string, token included, as MicroK8s does in some of its errors.
* A joined (or refreshed) node is NotReady for $FAKE_MICROK8S_READY_AFTER (default 2)
  ``kubectl wait``/``get`` calls about it, then Ready. A node in ``pending`` (known to dqlite,
  kubelet not registered yet) appears only when someone waits for it.
* ``enable rbac`` restarts the API server on every node: the next $FAKE_MICROK8S_RBAC_RESTART
  (default 3) calls that need the API server (kubectl, ``status --addon``, ``enable``) fail as
  MicroK8s fails then. ``status --wait-ready`` succeeds (it waits), but the restarts on the other
  nodes keep the API server flapping for those calls.
* ``enable registry`` accepts ``--size 40Gi`` and the deprecated ``registry:size=40Gi`` (with
  MicroK8s' deprecation warning), and checks the size as MicroK8s does. The other add-ons
  (``ingress`` included: its controller listens on 80/443 of every node, IngressClass ``public``)
  take no arguments here.
* ``snap install|refresh`` fail with snapd's "too early for operation, device not yet seeded or
  device model not acknowledged" until ``snap wait system seed.loaded`` ran on that host;
  ``snap refresh --channel`` of a node while another refreshed node is not Ready yet fails (two
  control-plane nodes down at once lose the dqlite quorum).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

API_DOWN = "The connection to the server 127.0.0.1:16443 was refused - did you specify the right host or port?"
NOT_RUNNING = "microk8s is not running. Use microk8s inspect for a deeper inspection."
TOO_EARLY = "error: too early for operation, device not yet seeded or device model not acknowledged"
REGISTRY_SIZE = re.compile(r"(^[2-9][0-9]{1,}|^[1-9][0-9]{2,})(Gi$)")
KNOWN_ADDONS = {"dns", "hostpath-storage", "registry", "metrics-server", "rbac", "ingress", "dashboard"}


class Exit(Exception):
    def __init__(self, rc: int, out: str = "", err: str = "") -> None:
        super().__init__(rc)
        self.rc, self.out, self.err = rc, out, err


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def initial_state() -> dict[str, Any]:
    return {"calls": [], "nodes": {}, "pending": {}, "tokens": {}, "used_tokens": [], "addons": {},
            "api_restart_calls": 0, "snaps": {}, "join_failures": None}


class Cluster:
    def __init__(self, state: dict[str, Any], host: str) -> None:
        self.s = state
        self.host = host
        if self.s["join_failures"] is None:
            failures = {}
            for entry in filter(None, os.environ.get("FAKE_MICROK8S_FAIL_JOIN", "").split(",")):
                name, _, count = entry.partition(":")
                failures[name] = int(count or 1)
            self.s["join_failures"] = failures

    # -- the API server ---------------------------------------------------------------------------

    def api(self, message: str = API_DOWN) -> None:
        """A call that needs the API server: fails while it restarts."""
        if self.s["api_restart_calls"] > 0:
            self.s["api_restart_calls"] -= 1
            raise Exit(1, err=message)

    # -- nodes ------------------------------------------------------------------------------------

    def node(self, name: str) -> dict[str, Any] | None:
        return self.s["nodes"].get(name)

    def progress(self, name: str) -> bool:
        """One wait on node ``name``: True when it is Ready."""
        if name in self.s["pending"]:
            del self.s["pending"][name]
            self.s["nodes"][name] = {"ready_in": env_int("FAKE_MICROK8S_READY_AFTER", 2), "labels": {},
                                     "settling": False, "refreshing": False}
            raise Exit(1, err=f'Error from server (NotFound): nodes "{name}" not found')
        node = self.node(name)
        if node is None:
            raise Exit(1, err=f'Error from server (NotFound): nodes "{name}" not found')
        if node["ready_in"] > 0:
            node["ready_in"] -= 1
            return False
        node["settling"] = node["refreshing"] = False
        return True

    def settling(self, but: str) -> list[str]:
        return [n for n, node in self.s["nodes"].items() if n != but and node["settling"] and node["ready_in"] > 0]

    # -- microk8s commands ------------------------------------------------------------------------

    def add_node(self, args: list[str]) -> str:
        token, ttl = None, -1
        for i, arg in enumerate(args):
            if arg in ("--token", "-t"):
                token = args[i + 1]
            elif arg in ("--token-ttl", "-l"):
                ttl = int(args[i + 1])
        if token is None:
            token = os.urandom(16).hex()
        if len(token) < 32:
            raise Exit(1, "Invalid token size.  It must be 32 characters long.")
        self.s["tokens"][token] = None if ttl == -1 else time.time() + ttl
        return (f"From the node you wish to join to this cluster, run the following:\n"
                f"microk8s join 127.0.0.1:25000/{token}/0123456789ab\n")

    def join(self, args: list[str]) -> str:
        connection = next(a for a in args if not a.startswith("--"))
        address, _, rest = connection.partition("/")
        token = rest.split("/")[0]
        out = f"Contacting cluster at {address.rsplit(':', 1)[0]}\n"
        if self.s["join_failures"].get(self.host, 0) > 0:
            self.s["join_failures"][self.host] -= 1
            raise Exit(1, out + f"Joining the cluster with {connection} failed: the cluster agent closed the "
                                "connection (simulated transient failure).\n")

        def refuse(error: str) -> Exit:
            return Exit(6, out + f"Connection failed. {error} (500).\n")

        expiry = self.s["tokens"].get(token, "unknown")
        if expiry == "unknown" or (expiry is not None and expiry < time.time()):
            raise refuse("Invalid token")
        if expiry is None:  # one-time token: consumed before anything else is checked
            del self.s["tokens"][token]
            self.s["used_tokens"].append(token)
        if self.host in self.s["nodes"] or self.host in self.s["pending"]:
            raise refuse(f"failed to retrieve dqlite cluster nodes: the joining node ({self.host}) is already "
                         "known to dqlite")
        if busy := self.settling(self.host):
            raise refuse("failed to retrieve dqlite cluster nodes: timed out waiting for cluster condition: "
                         f"context deadline exceeded (still settling after {', '.join(busy)} joined)")
        self.s["nodes"][self.host] = {"ready_in": env_int("FAKE_MICROK8S_READY_AFTER", 2), "labels": {},
                                      "settling": True, "refreshing": False}
        return out + "Waiting for this node to finish joining the cluster. .. \nSuccessfully joined the cluster.\n"

    def status(self, args: list[str]) -> str:
        if "--addon" in args or "-a" in args:
            self.api(NOT_RUNNING)
            name = args[args.index("--addon" if "--addon" in args else "-a") + 1]
            return "enabled\n" if name in self.s["addons"] else "disabled\n"
        # --wait-ready: MicroK8s polls until the API server answers with a Ready node.
        enabled = "\n".join(f"    {a}" for a in sorted(self.s["addons"]))
        return f"microk8s is running\nhigh-availability: no\naddons:\n  enabled:\n{enabled}\n"

    def enable(self, args: list[str]) -> str:
        first, _, inline = args[0].partition(":")
        name, rest = first, args[1:]
        if name not in KNOWN_ADDONS:
            return f"Addon core/{name} not found\n"
        if inline and rest:
            raise Exit(1, "Can't pass string arguments and flag arguments simultaneously!\n")
        self.api()
        if name in self.s["addons"]:
            return f"Addon core/{name} is already enabled\n"
        out = ""
        if name == "registry":
            size = "20Gi"
            if inline:
                key, _, value = inline.partition("=")
                if key != "size":
                    raise Exit(1, "ERROR: Failed to parse arguments. Use --size and --storageclass to specify "
                                  "custom size and storage class.\n")
                size = value
                out += "WARNING: This style of specifying size is deprecated. Use newer --size argument instead.\n"
            elif rest:
                if rest[0] != "--size" or len(rest) != 2:
                    raise Exit(2, err=f"Error: No such option: {rest[0]}\n")
                size = rest[1]
            if not REGISTRY_SIZE.match(size):
                raise Exit(1, out + "ERROR: The size of the registry should be higher or equal to 20Gi\n")
            out += f"The registry will be created with the size of {size}.\n"
        elif inline or rest:
            raise Exit(2, err=f"Error: unexpected arguments for {name}: {inline or rest}\n")
        self.s["addons"][name] = {"args": rest or ([inline] if inline else [])}
        if name == "rbac":
            # refresh_opt_in_config + restart_service apiserver: kubelite restarts on every node.
            self.s["api_restart_calls"] = env_int("FAKE_MICROK8S_RBAC_RESTART", 3)
            return out + "Enabling RBAC\nReconfiguring apiserver\nRestarting apiserver\nRBAC is enabled\n"
        return out + f"Addon {name} is enabled\n"

    def kubectl(self, args: list[str]) -> str:
        self.api()
        if "-n" in args:
            i = args.index("-n")
            args = args[:i] + args[i + 2:]
        verb = args[0]
        if verb == "get" and args[1] in ("nodes", "node") and len(args) > 2 and not args[2].startswith("-"):
            if not self.progress(args[2]):
                return f"{args[2]}   NotReady\n"
            return f"{args[2]}   Ready\n"
        if verb == "get" and args[1] in ("nodes", "node"):
            output = args[args.index("-o") + 1] if "-o" in args else ""
            if output.startswith("jsonpath={.items[*].metadata.name}"):
                return " ".join(self.s["nodes"])
            if output != "json":
                raise Exit(2, err=f"fake microk8s kubectl: unsupported output {output!r}")
            items = [{"metadata": {"name": n, "labels": node["labels"]},
                      "status": {"conditions": [{"type": "Ready", "status": str(node["ready_in"] == 0)}]}}
                     for n, node in self.s["nodes"].items()]
            return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        if verb == "wait":
            targets = [a for a in args[1:] if not a.startswith("--")]
            names = list(self.s["nodes"]) if "--all" in args else [t.split("/", 1)[1] for t in targets]
            not_ready = [n for n in names if not self.progress(n)]
            if not_ready:
                raise Exit(1, err=f"error: timed out waiting for the condition on nodes/{not_ready[0]}")
            return "".join(f"node/{n} condition met\n" for n in names)
        if verb == "label":
            node = self.node(args[2])
            if node is None:
                raise Exit(1, err=f'Error from server (NotFound): nodes "{args[2]}" not found')
            key, _, value = args[3].partition("=")
            node["labels"][key] = value
            return f"node/{args[2]} labeled\n"
        if verb == "rollout" and "deployment/registry" in args:
            if "registry" not in self.s["addons"]:
                raise Exit(1, err='Error from server (NotFound): deployments.apps "registry" not found')
            return 'deployment "registry" successfully rolled out\n'
        raise Exit(2, err=f"fake microk8s kubectl: unsupported {args}")

    # -- snap -------------------------------------------------------------------------------------

    def snap(self, args: list[str]) -> str:
        me = self.s["snaps"].setdefault(self.host, {"seeded": False, "installed": False})
        verb = args[0]
        if verb == "wait" and args[1:] == ["system", "seed.loaded"]:
            me["seeded"] = True
            return ""
        if verb == "list":
            if not me["installed"]:
                raise Exit(1, err="error: no matching snaps installed")
            notes = "classic,held" if me.get("held") else "classic"
            return ("Name      Version  Rev   Tracking     Publisher   Notes\n"
                    f"microk8s  v1.32.3  7964  {me['channel']}  canonical✓  {notes}\n")
        if verb == "install":
            if not me["seeded"]:
                raise Exit(1, err=TOO_EARLY)
            channel = next(a.split("=", 1)[1] for a in args if a.startswith("--channel="))
            me.update(installed=True, channel=channel, held=False, aliases=[])
            return f"microk8s ({channel}) v1.32.3 from Canonical✓ installed\n"
        if verb == "refresh" and "--hold" in args:
            me["held"] = True
            return 'General refreshes of "microk8s" held indefinitely\n'
        if verb == "refresh":
            if not me["seeded"]:
                raise Exit(1, err=TOO_EARLY)
            down = [n for n, node in self.s["nodes"].items()
                    if n != self.host and node["refreshing"] and node["ready_in"] > 0]
            if down:
                raise Exit(1, err=f'error: cannot refresh "microk8s" (simulated): {", ".join(down)} is still not '
                                  "Ready after its own refresh; two control-plane nodes down lose the dqlite quorum")
            channel = next(a.split("=", 1)[1] for a in args if a.startswith("--channel="))
            me["channel"] = channel
            if self.host in self.s["nodes"]:
                self.s["nodes"][self.host].update(ready_in=env_int("FAKE_MICROK8S_READY_AFTER", 2), refreshing=True)
            return f"microk8s ({channel}) v1.32.3 from Canonical✓ refreshed\n"
        if verb == "aliases":
            rows = "".join(f"microk8s.{cmd}  {alias}  manual\n" for cmd, alias in me.get("aliases", []))
            return "Command  Alias  Notes\n" + rows
        if verb == "alias":
            me.setdefault("aliases", []).append([args[1].split(".", 1)[1], args[2]])
            return f"Added:\n  - {args[1]} as {args[2]}\n"
        raise Exit(2, err=f"fake snap: unsupported {args}")

    def run(self, args: list[str]) -> str:
        if not args:
            raise Exit(2, err="fake microk8s: no command")
        command, rest = args[0], args[1:]
        handlers = {"add-node": self.add_node, "join": self.join, "status": self.status, "enable": self.enable,
                    "kubectl": self.kubectl, "snap": self.snap}
        if command not in handlers:
            raise Exit(2, err=f"fake microk8s: unsupported command {args}")
        return handlers[command](rest)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--as":
        print("usage: fake_microk8s.py --as HOST [snap|kubectl] ARGS...", file=sys.stderr)
        return 2
    host, args = argv[1], argv[2:]
    path = Path(os.environ["FAKE_MICROK8S_STATE"])
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # hosts run in parallel: one call at a time
        state = json.loads(path.read_text()) if path.exists() else initial_state()
        cluster = Cluster(state, host)
        try:
            out, err, rc = cluster.run(args), "", 0
        except Exit as exit_:
            out, err, rc = exit_.out, exit_.err, exit_.rc
        state["calls"].append({"host": host, "argv": args, "rc": rc})
        path.write_text(json.dumps(state, indent=1))
    sys.stdout.write(out)
    if err:
        print(err, file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
