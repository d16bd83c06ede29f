"""MySQL mysql-data of node 1 on a private MariaDB, set up the way the cluster sets it up.

Shared by the tests of its identities (tests/deploy/test_history_reader.py: the API's patient history;
tests/deploy/test_monitoring_identities.py: the API's prediction log and Grafana's monitoring reader):

* ``mysql-data-init.sh`` as the mysql image's entrypoint runs it on an empty data directory
  (``fresh_install``), and as Job ``mysql-data-setup`` runs it against a running server (``run_job``), each
  with the environment its container gets in the rendered manifests (MariaDB stands in for MySQL 8.4, as in
  the three-host test: only ``IDENTIFIED WITH mysql_native_password BY`` is spelled differently);
* what its statements grant (``init_statements``, ``privileges``), read from the script itself.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..e2e.manifests import Manifests
from .conftest import REPO_ROOT

INIT_SCRIPT = REPO_ROOT / "server1-data" / "k8s" / "mysql-data-init.sh"
MYSQL_INITDB = "/docker-entrypoint-initdb.d"  # where the mysql image runs init scripts from
JOB = "mysql-data-setup"
# MariaDB spells this MySQL clause differently (its default plugin is the native one).
MYSQL_TO_MARIADB = "s/IDENTIFIED WITH mysql_native_password BY/IDENTIFIED BY/g"


# -- the script's statements ------------------------------------------------------------------------------


def init_statements() -> list[str]:
    """The SQL statements of mysql-data-init.sh (its one heredoc), whitespace collapsed."""
    text = INIT_SCRIPT.read_text()
    heredoc = re.search(r"<<SQL\n(.*?)\nSQL\n", text, re.DOTALL)
    assert heredoc, "mysql-data-init.sh has no <<SQL heredoc"
    return [" ".join(s.split()) for s in heredoc.group(1).split(";") if s.strip()]


def privileges(user: str, statements: list[str] | None = None) -> dict[str, set[str]]:
    """What the script leaves ``user`` with: target (``db.table`` or ``db.*``) -> privileges, GRANTs minus
    REVOKEs in order. Any other clause on a grant (GRANT OPTION, ...) fails; so does a statement naming the
    user that is neither one of these nor its CREATE USER / ALTER USER."""
    found: dict[str, set[str]] = {}
    for statement in init_statements() if statements is None else statements:
        matched = re.match(rf"^(GRANT|REVOKE) (.+?) ON (\S+) (TO|FROM) '{user}'@'%'(.*)$", statement)
        if matched is None:
            assert f"'{user}'" not in statement or statement.startswith(("CREATE USER", "ALTER USER")), statement
            continue
        verb, names, target, _, rest = matched.groups()
        assert rest == "", f"{statement}: no GRANT OPTION or other clause"
        named = {n.strip().upper() for n in names.split(",")}
        if verb == "GRANT":
            found.setdefault(target, set()).update(named)
        else:
            found[target] = found.get(target, set()) - named
    return {target: names for target, names in found.items() if names}


def max_user_connections(user: str) -> int | None:
    """The MAX_USER_CONNECTIONS the script gives ``user`` (None: unbounded)."""
    limits = [int(m.group(1)) for s in init_statements()
              if (m := re.match(rf"^ALTER USER '{user}'@'%' WITH .*MAX_USER_CONNECTIONS (\d+)", s))]
    return limits[-1] if limits else None


# -- a private server -------------------------------------------------------------------------------------


def tool(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
                                       if p.exists()), None)


@dataclass
class MariaDB:
    """A private MariaDB server on 127.0.0.1 (its own data folder, socket and port)."""

    client: str
    socket: Path
    port: int

    def root(self, sql: str, password: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([self.client, "--no-defaults", "--protocol=socket", f"--socket={self.socket}",
                               "--user=root", "--batch", "--skip-column-names"], input=sql, text=True,
                              capture_output=True, timeout=60, env={**os.environ, "MYSQL_PWD": password})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MARIADB_BINARIES = ("mariadbd", "mariadb-install-db", "mariadb")


def missing_binaries() -> list[str]:
    return [name for name in MARIADB_BINARIES if tool(name) is None]


@contextmanager
def running_mariadb(root: Path) -> Iterator[MariaDB]:
    """A fresh MariaDB in ``root`` (its data folder, socket, log), stopped on exit."""
    binaries = {name: tool(name) for name in MARIADB_BINARIES}
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    installed = subprocess.run([binaries["mariadb-install-db"], "--no-defaults", f"--datadir={root / 'data'}",
                                "--auth-root-authentication-method=normal", "--skip-test-db", *as_root],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    server = MariaDB(binaries["mariadb"], root / "mysqld.sock", free_port())
    log = (root / "mariadbd.log").open("w")
    process = subprocess.Popen([binaries["mariadbd"], "--no-defaults", f"--datadir={root / 'data'}",
                                f"--socket={server.socket}", f"--pid-file={root / 'mariadbd.pid'}",
                                f"--port={server.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
                                "--skip-log-bin", "--innodb-buffer-pool-size=64M", *as_root],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while server.root("SELECT 1").returncode != 0:
            assert process.poll() is None, (root / "mariadbd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "MariaDB did not start in 60 s"
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def mysql_error(exc: BaseException) -> int:
    orig = getattr(exc, "orig", None)
    return int(orig.args[0]) if orig is not None and orig.args else -1


def here(url: str, port: int) -> str:
    """A URL of the manifests (mysql-data:3306) pointed at the test server."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    assert (parsed.host, parsed.port) == ("mysql-data", 3306), url
    return parsed.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


# -- the two ways the script runs ---------------------------------------------------------------------------


def fresh_install(server: MariaDB, manifests: Manifests, secret_values, scratch: Path) -> str:
    """What the mysql image's entrypoint does on an empty data folder, with the StatefulSet's environment:
    root's password, root@localhost and root@'%' only (the image's MYSQL_ROOT_HOST; MariaDB's installer adds
    others without a password), then each init script of the mounted ConfigMap, sourced, with its
    docker_process_sql. Returns root's password."""
    server_container = manifests.container(service="mysql-data")
    server_env = manifests.environment(server_container, secret_values)
    root_password = server_env["MYSQL_ROOT_PASSWORD"]
    others = server.root("SELECT host FROM mysql.user WHERE user = 'root' AND host <> 'localhost';").stdout.split()
    done = server.root("".join(f"DROP USER 'root'@'{host}';\n" for host in others)
                       + f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{root_password}';\n"
                       f"CREATE USER 'root'@'%' IDENTIFIED BY '{root_password}';\n"
                       "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n")
    assert done.returncode == 0, done.stderr
    scripts = manifests.volume_config_map(server_container, MYSQL_INITDB)
    (scratch / "initdb").mkdir(parents=True)
    for name, content in scripts.items():
        (scratch / "initdb" / name).write_text(content)
    shim = ("docker_process_sql() { sed -e \"$SQL_SED\" | MYSQL_PWD=\"$MYSQL_ROOT_PASSWORD\" "
            f"{server.client} --no-defaults --protocol=socket --socket={server.socket} --user=root "
            "--comments \"$@\"; }\nset -eo pipefail\n. \"$1\"\n")
    for name in sorted(scripts):
        ran = subprocess.run(["/bin/bash", "-c", shim, "bash", str(scratch / "initdb" / name)],
                             env={**os.environ, **server_env, "SQL_SED": MYSQL_TO_MARIADB},
                             capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, f"{name}: {ran.stdout}\n{ran.stderr}"
    return root_password


def run_job(manifests: Manifests, server: MariaDB, secret_values, scratch: Path) -> subprocess.CompletedProcess:
    """The Job's own command line and environment, as the kubelet gives them; its ConfigMap's files in a
    scratch folder at its mount path, and a `mysql` first on PATH that is MariaDB's client at the address
    the Job names (and only that one: mysql-data:3306), with the SQL spelled for MariaDB."""
    (job,) = [c for c in manifests.containers() if c.workload_name == JOB]
    env = manifests.environment(job, secret_values)
    argv = manifests.argv(job, env)
    for mount_path, files in manifests.config_map_mounts(job).items():
        folder = scratch / "mounts" / mount_path.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (folder / name).write_text(content)
        argv = [a.replace(mount_path, str(folder)) for a in argv]
    bin_dir = scratch / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "mysql"
    wrapper.write_text(f"""#!/bin/bash
# MariaDB's client standing in for MySQL's, at the address of Service mysql-data.
args=()
host= port=
for arg in "$@"; do
  case "$arg" in
    --host=mysql-data) host=1; arg=--host=127.0.0.1 ;;
    --port=3306) port=1; arg=--port={server.port} ;;
    --host=*|--port=*|-h*|-P*) echo "mysql: unexpected address $arg" >&2; exit 2 ;;
  esac
  args+=("$arg")
done
[ -n "$host" ] && [ -n "$port" ] || {{ echo "mysql: no --host=mysql-data --port=3306" >&2; exit 2; }}
sed -e '{MYSQL_TO_MARIADB}' | exec {server.client} --no-defaults "${{args[@]}}"
""")
    wrapper.chmod(0o755)
    run_env = {**env, "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(scratch)}
    return subprocess.run(argv, env=run_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, cwd=scratch)
