"""A MariaDB server of the test's own (own datadir, port and socket), for tests that kill the database.

The shared test MariaDB on 3306 is never touched: this one is initialised with ``mariadb-install-db`` in a
temporary folder, listens on a free loopback port, ignores every option file (``--no-defaults``) and
takes no credentials (``--skip-grant-tables``: loopback only, for the test's lifetime).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import sqlalchemy

from ..support import free_port


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()),
                                           None)
        if found:
            return found
    raise FileNotFoundError(f"none of {names} is installed")


class PrivateMariaDB:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.datadir = root / "data"
        self.port = free_port()
        self.log = root / "mariadbd.log"
        self.process: subprocess.Popen | None = None
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [_binary("mariadb-install-db", "mysql_install_db"), "--no-defaults", f"--datadir={self.datadir}",
             "--auth-root-authentication-method=normal", "--skip-test-db", *as_root],
            check=True, capture_output=True, timeout=300,
        )
        self._argv = [
            _binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={root / 'mariadbd.sock'}", f"--pid-file={root / 'mariadbd.pid'}",
            f"--log-error={self.log}", "--skip-grant-tables", "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M", *as_root,
        ]

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        """Start (after a kill: InnoDB's crash recovery runs first) and wait until it answers."""
        self.process = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        engine = sqlalchemy.create_engine(self.url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mariadbd exited ({self.process.returncode}):\n{self._tail()}")
                try:
                    with engine.connect() as conn:
                        conn.exec_driver_sql("SELECT 1")
                    return
                except sqlalchemy.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"mariadbd did not answer within {timeout} s:\n{self._tail()}") from None
                    time.sleep(0.3)
        finally:
            engine.dispose()

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown, no flush."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def database(self, label: str) -> str:
        """URL of a new database on this server."""
        name = f"readmit_{label}_{os.urandom(4).hex()}"
        engine = sqlalchemy.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            engine.dispose()
        return f"{self.url}/{name}"

    def _tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
