"""A throwaway PostgreSQL server for tests: Debian's binaries, a data directory under the test's
temporary directory of its own, listening only on a Unix socket there (no TCP port at all)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

START_SECONDS = 30


def postgres_bin() -> Path:
    """The newest installed server's binaries (Debian package postgresql)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    assert found, "PostgreSQL (Debian package postgresql) is required"
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self):
        # A directory of its own: under root the server runs as the postgres account, which cannot
        # enter pytest's private temporary directories.
        root = Path(tempfile.mkdtemp(prefix="scd-postgres-"))
        self.root = root
        self.data = root / "pgdata"
        self.socket_dir = root / "pgsocket"
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
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(START_SECONDS), "-l", str(self.root / "pg.log"),
                  "-o", f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' -c fsync=off",
                  "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def connect_args(self, database: str = "postgres") -> dict:
        return {"database": database, "user": "postgres", "host": str(self.socket_dir)}

    def create_database(self, name: str) -> None:
        self._run("createdb", "-h", str(self.socket_dir), "-U", "postgres", name)

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        subprocess.run([*self._as, str(self._bin / tool), *args], check=check, capture_output=True, timeout=60,
                       cwd="/")
