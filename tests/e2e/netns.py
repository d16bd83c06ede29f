"""Hosts made of Linux network namespaces on one bridge, for the three-host test (needs root and ``ip``).

``HostNetwork`` creates one namespace per host and a fourth, the "switch", holding a bridge; each host
gets a veth pair (``eth0`` in the host, the host's name on the bridge) with its address, and ``lo``. The
root namespace gets no address and no interface, and no namespace has a route anywhere but its own
subnet, so every byte between hosts goes over the bridge, to the hosts' addresses.

Name resolution is the cluster's Service DNS: for every host it writes ``/etc/netns/<ns>/hosts`` (the
names given, ``ip netns exec`` mounts it over /etc/hosts) and a ``resolv.conf`` pointing at a small DNS
server (``dns_server.py``) it runs on 127.0.0.1:53 in that namespace, answering from the same file.

Every process it starts (``start``, ``run``) is its own process group inside a host's namespace, with
exactly the environment given. ``close`` (also called on any failure by the ``with`` block) stops them
all, then anything else left in the namespaces, deletes the namespaces and the /etc/netns folders.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ETC_NETNS = Path("/etc/netns")
PYTHON = sys.executable


def ip_binary() -> str | None:
    return shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if Path(p).exists()),
                                      None)


def namespaces() -> set[str]:
    """Names of the network namespaces that exist (``ip netns list``)."""
    done = subprocess.run([ip_binary() or "ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


@dataclass(frozen=True)
class Host:
    name: str  # the inventory host name
    group: str  # its inventory group
    address: str
    netns: str


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path.name}: no output)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {path.name}:\n" + "\n".join(text)


class HostNetwork:
    """Hosts on a private bridge. Use as a context manager: everything is removed on exit."""

    def __init__(self, hosts: Mapping[str, tuple[str, str]], names: Mapping[str, str], logs: Path,
                 prefix: str | None = None, prefix_len: int = 24) -> None:
        """``hosts``: {group: (inventory host name, address)}; ``names``: {name: address} for the hosts
        files; ``logs``: where each process's output goes."""
        self.ip = ip_binary()
        if self.ip is None:
            raise FileNotFoundError("ip (iproute2) is not installed")
        self.prefix = prefix or f"rdm-{secrets.token_hex(2)}"
        self.switch = f"{self.prefix}-switch"
        self.hosts = {group: Host(name, group, address, f"{self.prefix}-{name}")
                      for group, (name, address) in hosts.items()}
        networks = {ipaddress.ip_interface(f"{h.address}/{prefix_len}").network for h in self.hosts.values()}
        if len(networks) != 1:
            raise ValueError(f"the hosts' addresses are not on one /{prefix_len} network: {hosts}")
        self.prefix_len = prefix_len
        self.names = dict(names)
        self.logs = logs
        self.processes: list[tuple[subprocess.Popen, str]] = []
        self._created: list[str] = []
        self._etc_dirs: list[Path] = []
        self._created_etc_netns = False

    # -- set-up and teardown ------------------------------------------------------------------------------

    def __enter__(self) -> HostNetwork:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _ipcmd(self, *args: str) -> None:
        done = subprocess.run([self.ip, *args], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")

    def _create(self) -> None:
        clash = {self.switch, *(h.netns for h in self.hosts.values())} & namespaces()
        if clash:
            raise RuntimeError(f"network namespaces already exist: {sorted(clash)}")
        self.logs.mkdir(parents=True, exist_ok=True)
        self._ipcmd("netns", "add", self.switch)
        self._created.append(self.switch)
        self._ipcmd("-n", self.switch, "link", "set", "lo", "up")
        self._ipcmd("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._ipcmd("-n", self.switch, "link", "set", "br0", "up")
        if not ETC_NETNS.exists():
            ETC_NETNS.mkdir(parents=True)
            self._created_etc_netns = True
        hosts_file = self._hosts_file()
        for host in self.hosts.values():
            self._ipcmd("netns", "add", host.netns)
            self._created.append(host.netns)
            etc = ETC_NETNS / host.netns
            etc.mkdir()
            self._etc_dirs.append(etc)
            (etc / "hosts").write_text(hosts_file)
            (etc / "resolv.conf").write_text("# the namespace's own DNS server (dns_server.py)\n"
                                             "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
            # both ends are created in their namespaces: no name is ever taken in the root namespace
            self._ipcmd("link", "add", "eth0", "netns", host.netns, "type", "veth",
                        "peer", "name", host.name[:15], "netns", self.switch)
            self._ipcmd("-n", self.switch, "link", "set", host.name[:15], "master", "br0", "up")
            self._ipcmd("-n", host.netns, "link", "set", "lo", "up")
            self._ipcmd("-n", host.netns, "addr", "add", f"{host.address}/{self.prefix_len}", "dev", "eth0")
            self._ipcmd("-n", host.netns, "link", "set", "eth0", "up")
        for host in self.hosts.values():
            self._start_dns(host)

    def _hosts_file(self) -> str:
        by_address: dict[str, list[str]] = {}
        for host in self.hosts.values():
            by_address.setdefault(host.address, []).append(host.name)
        for name, address in sorted(self.names.items()):
            by_address.setdefault(address, []).append(name)
        lines = ["# written by the three-host test: the cluster's Service names on the test hosts",
                 "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{address}\t{' '.join(names)}" for address, names in sorted(by_address.items())]
        return "\n".join(lines) + "\n"

    def _start_dns(self, host: Host) -> None:
        log = self.logs / f"{host.name}-dns.log"
        process = self.start(host, [PYTHON, str(HERE / "dns_server.py")], {"PATH": os.defpath}, log, cwd=self.logs)
        deadline = time.monotonic() + 20
        while "answering" not in (log.read_text() if log.exists() else ""):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the DNS server of {host.name} did not start\n{tail(log)}")
            time.sleep(0.1)

    def close(self) -> None:
        """Stop every process, delete the namespaces and their /etc/netns folders (errors collected)."""
        errors: list[str] = []
        for process, _ in reversed(self.processes):
            try:
                self.stop(process)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(f"stopping {process.args}: {exc}")
        for netns in reversed(self._created):
            try:  # anything still running in a namespace of ours was started by this test
                done = subprocess.run([self.ip, "netns", "pids", netns], capture_output=True, text=True,
                                      timeout=30, check=False)
                for pid in done.stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                subprocess.run([self.ip, "netns", "del", netns], capture_output=True, text=True, timeout=30,
                               check=True)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"deleting namespace {netns}: {exc}")
        self._created.clear()
        for etc in self._etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        self._etc_dirs.clear()
        if self._created_etc_netns:
            try:
                ETC_NETNS.rmdir()
            except OSError:
                pass
        if errors:
            raise RuntimeError("teardown errors:\n" + "\n".join(errors))

    def check_isolation(self) -> None:
        """Each host reaches its subnet over eth0 and nothing else; the root namespace has no such address."""
        subnet = ipaddress.ip_interface(f"{next(iter(self.hosts.values())).address}/{self.prefix_len}").network
        for host in self.hosts.values():
            done = subprocess.run([self.ip, "-n", host.netns, "-o", "route", "show"], capture_output=True, text=True,
                                  timeout=30, check=True)
            routes = [line.split() for line in done.stdout.splitlines() if line.strip()]
            assert routes and all(r[0] == str(subnet) and r[r.index("dev") + 1] == "eth0" for r in routes), (
                f"{host.name} has routes beyond {subnet}: {done.stdout}")
        done = subprocess.run([self.ip, "-o", "addr", "show"], capture_output=True, text=True, timeout=30, check=True)
        root_addresses = [ipaddress.ip_interface(f.split()[3]) for f in done.stdout.splitlines()
                          if f.split()[2] == "inet"]
        assert not [a for a in root_addresses if a.ip in subnet], f"the root namespace has an address in {subnet}"

    # -- processes ------------------------------------------------------------------------------------------

    def argv(self, host: Host, argv: Sequence[str]) -> list[str]:
        return [self.ip, "netns", "exec", host.netns, *argv]

    def start(self, host: Host, argv: Sequence[str], env: Mapping[str, str], log: Path,
              cwd: Path | None = None) -> subprocess.Popen:
        """Start ``argv`` in ``host``'s namespace, own process group, exactly ``env``; output to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            process = subprocess.Popen(self.argv(host, argv), env=dict(env), cwd=cwd, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append((process, str(log)))
        return process

    def run(self, host: Host, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path | None = None,
            timeout: float = 300, input_text: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` to its end in ``host``'s namespace; stdout is returned, stdout and stderr are logged."""
        log.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(self.argv(host, argv), env=dict(env), cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.PIPE if input_text else subprocess.DEVNULL,
                                   text=True, start_new_session=True)
        entry = (process, str(log))
        self.processes.append(entry)
        try:
            stdout, stderr = process.communicate(input_text, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(process)
            stdout, stderr = process.communicate()
            stderr += f"\n(timed out after {timeout} s)"
        finally:
            self.processes.remove(entry)
        try:  # what it left behind in its group
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        with open(log, "a") as out:
            out.write(f"$ {' '.join(argv)}\n{stdout}{stderr}\n(exit code {process.returncode})\n")
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)

    @staticmethod
    def stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left after ``timeout``. A leader that already
        ended is left alone (``close`` sweeps the namespaces for anything left)."""
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:  # children may outlive their leader: the whole group goes
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    # -- probes (probe.py inside a host) --------------------------------------------------------------------

    def probe(self, host: Host, *args: str, timeout: float = 120, headers: Mapping[str, str] | None = None) -> dict:
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PROBE_HEADERS": json.dumps(dict(headers or {}))}
        done = self.run(host, [PYTHON, str(HERE / "probe.py"), *args], env,
                        self.logs / f"{host.name}-probes.log", cwd=self.logs, timeout=timeout)
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"probe {args} on {host.name} failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wait_tcp(self, host: Host, name: str, port: int, timeout: float = 60, process: subprocess.Popen | None = None,
                 log: Path | None = None) -> None:
        result = self.probe(host, "tcp", name, str(port), "--timeout", str(timeout), timeout=timeout + 30)
        if not result["ok"]:
            exited = process is not None and process.poll() is not None
            dead = f" (process exited {process.returncode})" if exited else ""
            raise TimeoutError(f"{name}:{port} did not answer {host.name} within {timeout} s{dead}: "
                               f"{result['error']}\n{tail(log) if log else ''}")

    def http(self, host: Host, method: str, url: str, body: object = None, until_status: int | None = None,
             until: Mapping[str, object] | None = None, timeout: float = 0,
             headers: Mapping[str, str] | None = None) -> dict:
        """One HTTP request from ``host`` (or repeated until the answer matches, within ``timeout`` s)."""
        args = ["http", method, url, "--timeout", str(timeout)]
        if body is not None:
            args += ["--data", json.dumps(body)]
        if until_status is not None:
            args += ["--until-status", str(until_status)]
        for key, value in (until or {}).items():
            args += ["--until", f"{key}={json.dumps(value)}"]
        return self.probe(host, *args, timeout=timeout + 60, headers=headers)
