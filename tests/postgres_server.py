"""A real PostgreSQL cluster for the tests: `initdb` in a temporary directory, a free
loopback port, started and stopped by `pg_ctl`.

Debian's `postgresql` package provides the binaries (`.ci/run` installs it when missing).
PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres`
system user and every command runs as that user. Without the binaries the tests that
need the server are skipped, unless SURELAY_POSTGRES_TESTS=required (as in CI), where
that is a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.helpers import free_port, listening, wait_until

__all__ = ["PostgresServer", "find_bin"]


def find_bin(name: str) -> str | None:
    """`name` from PATH, else from the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


class PostgresServer:
    """One cluster of its own. `url()` for a database; `stop()` and `start()` keep the
    data (so a test can take the database away and bring it back)."""

    def __init__(self, *, durable: bool = False) -> None:
        """`durable`: PostgreSQL's own defaults (fsync, synchronous commit), as a real
        database runs; else neither, for speed (what the tests need)."""
        initdb = find_bin("initdb")
        pg_ctl = find_bin("pg_ctl")
        assert initdb and pg_ctl, "PostgreSQL is missing: apt-get install postgresql"
        self._pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="surelay-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        if os.geteuid() == 0:
            os.chmod(self.root, 0o755)  # the postgres user must reach it
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
            )
            if not durable:
                conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        subprocess.run(
            _as_postgres(
                [self._pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"]
            ),
            check=True,
            capture_output=True,
        )
        wait_until(lambda: listening(self.port), 30)
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres([self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=False,
            capture_output=True,
        )

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
