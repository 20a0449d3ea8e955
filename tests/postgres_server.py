"""A throwaway PostgreSQL server for tests: Debian's binaries, a data directory under a temporary
directory of its own, listening on a Unix socket there and on 127.0.0.1 at a free port."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

import psycopg2

from tests.tools import require

START_SECONDS = 30
# Each scd keeps a pool of up to 20 connections, and a test may run several scd at once.
MAX_CONNECTIONS = 300


def postgres_bin() -> Path:
    """The newest installed server's binaries (Debian package postgresql)."""
    return Path(require("initdb")).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    def __init__(self, **settings: str):
        """``settings``: server settings beyond the defaults here, e.g. track_commit_timestamp="on"."""
        # A directory of its own: under root the server runs as the postgres account, which cannot
        # enter pytest's private temporary directories.
        root = Path(tempfile.mkdtemp(prefix="scd-postgres-"))
        self.root = root
        self.data = root / "pgdata"
        self.socket_dir = root / "pgsocket"
        self.port = _free_port()
        self.settings = settings
        self._bin = postgres_bin()
        # The server refuses to run as root; under root it runs as the postgres account.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> PostgresServer:
        self.socket_dir.mkdir()
        if self._as:
            account = pwd.getpwnam("postgres")
            for path in (self.root, self.socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start_again()
        return self

    def start_again(self) -> None:
        """Start the server on its existing data directory, after ``shut_down``."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "unix_socket_directories": self.socket_dir,
            "max_connections": MAX_CONNECTIONS,
            "fsync": "off",
            **self.settings,
        }
        options = " ".join(f"-c {name}='{value}'" for name, value in settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(START_SECONDS), "-l", str(self.root / "pg.log"),
                  "-o", options, "start")

    def shut_down(self) -> None:
        """Stop the server as an administrator would, keeping its data: clients are disconnected."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def connect_args(self, database: str = "postgres") -> dict:
        return {"database": database, "user": "postgres", "host": str(self.socket_dir), "port": self.port}

    def create_database(self, name: str) -> None:
        with closing(psycopg2.connect(**self.connect_args())) as admin:
            admin.autocommit = True  # CREATE DATABASE refuses to run in a transaction
            admin.cursor().execute(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        with closing(psycopg2.connect(**self.connect_args())) as admin:
            admin.autocommit = True
            # FORCE: a connection of a killed scd may not have been noticed yet.
            admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        subprocess.run([*self._as, str(self._bin / tool), *args], check=check, capture_output=True, timeout=60,
                       cwd="/")
