"""Run the real ``bin/scd`` as a subprocess on loopback and an ephemeral port.

With SUPERCHAT_TEST_DATABASE=postgresql every scd keeps its data in PostgreSQL instead of SQLite:
one throwaway server for the whole test session, a fresh database for each scd's root directory.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import tomli_w

from superchat.protocol import flags
from superchat.storage import Store
from tests.postgres_server import PostgresServer

REPO = Path(__file__).resolve().parent.parent
SCD = REPO / "bin" / "scd"
STARTED = re.compile(r"Server started on port (\d+)")
# "Metrics server listening on 127.0.0.1:41234 ...", "Profiling server listening on ..."
SIDE_LISTENER = re.compile(r"(Metrics|Profiling|WebSocket|SSH) server listening on \S+:(\d+)")
PORT_ATTRIBUTES = {"Metrics": "metrics_port", "Profiling": "pprof_port", "WebSocket": "http_port", "SSH": "ssh_port"}


TEST_DATABASE = os.environ.get("SUPERCHAT_TEST_DATABASE", "sqlite")
assert TEST_DATABASE in ("sqlite", "postgresql"), f"SUPERCHAT_TEST_DATABASE={TEST_DATABASE}: sqlite or postgresql"


class SharedPostgres:
    """The session's PostgreSQL server, started at first use, and a database per scd root."""

    def __init__(self):
        self._server: PostgresServer | None = None
        self._databases: dict[Path, str] = {}
        self._created = 0

    def url_for(self, root: Path) -> str:
        if self._server is None:
            self._server = PostgresServer().start()
        name = self._databases.get(root)
        if name is None:
            self._created += 1
            name = self._databases[root] = f"scd_{self._created}"
            self._server.create_database(name)
        return self._server.url(name)

    def drop_databases(self) -> None:
        """Drop every database made so far, with any connection still open on it."""
        if self._server is None:
            return
        for name in self._databases.values():
            self._server.drop_database(name)
        self._databases.clear()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


shared_postgres = SharedPostgres() if TEST_DATABASE == "postgresql" else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, for listeners whose port 0 means "off" (http, ssh)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def isolated_env(root: Path) -> dict:
    """The environment with HOME and the data directory under ``root`` and no SUPERCHAT_ overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERCHAT_")}
    env.update(HOME=str(root), XDG_DATA_HOME=str(root / "data"), PYTHONUNBUFFERED="1")
    return env


class ServerProcess:
    """One scd instance with its own HOME, data directory and config file under ``root``."""

    def __init__(self, root: Path, settings: dict | None = None, args: tuple[str, ...] = ()):
        self.root = root
        self.data_dir = root / "data" / "superchat"
        self.config_path = root / "config.toml"
        self.args = args
        self.env_overrides: dict[str, str] = {}
        # The open-files limit to start scd with (soft and hard), or None for this process's own.
        self.open_files: int | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.write_config(settings or {})
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0
        self.pprof_port = 0
        self.http_port = 0
        self.ssh_port = 0
        self.output: list[str] = []

    def write_config(self, settings: dict) -> None:
        # Every listener on loopback and an ephemeral port, so tests never collide; the WebSocket
        # and SSH ports (where 0 means off) only when a test asks for them.
        document: dict = {
            "server": {"bind_address": "127.0.0.1", "tcp_port": 0, "http_port": 0, "ssh_port": 0},
            "observability": {"metrics_bind": "127.0.0.1", "metrics_port": 0,
                              "pprof_bind": "127.0.0.1", "pprof_port": 0},
        }
        if shared_postgres is not None:
            document["server"]["database_url"] = shared_postgres.url_for(self.root)
        for section, values in settings.items():
            document.setdefault(section, {}).update(values)
        self.config_path.write_text(tomli_w.dumps(document))
        server = document["server"]
        self._configured_database = (server.get("database_url") or server.get("database_path")
                                     or self.data_dir / "superchat.db")

    @property
    def database(self):
        """The SQLite file or PostgreSQL URL this server keeps its data in."""
        if "--db" in self.args:
            return self.args[self.args.index("--db") + 1]
        return self._configured_database

    def create_admin(self, nickname: str, client_hash: str) -> int:
        """Make the admin account ``nickname`` in this server's database, as ``scd admin create`` stores
        it, but from the client's hash: the command's Argon2id takes seconds. Returns the user id."""
        store = Store(self.database)
        try:
            stored_hash = bcrypt.hashpw(client_hash.encode(), bcrypt.gensalt(4)).decode()
            return store.claim_account(nickname, stored_hash, flags.ADMIN)[0].id
        finally:
            store.close()

    @property
    def env(self) -> dict:
        return {**isolated_env(self.root), **self.env_overrides}

    def _limit_open_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.output = []
        self.proc = subprocess.Popen(
            [sys.executable, str(SCD), "--config", str(self.config_path), *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=None if self.open_files is None else self._limit_open_files,
        )
        started = threading.Event()

        def pump(stream):
            for line in stream:
                self.output.append(line.rstrip("\n"))
                side = SIDE_LISTENER.search(line)
                if side:
                    setattr(self, PORT_ATTRIBUTES[side.group(1)], int(side.group(2)))
                match = STARTED.search(line)
                if match:
                    self.port = int(match.group(1))
                    started.set()

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not started.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("scd did not start:\n" + "\n".join(self.output))
        return self

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def http_get(self, path: str, port: int | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
        """GET from the metrics server (or another port of this server); returns status, headers, body."""
        url = f"http://127.0.0.1:{port or self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def wait_for_log(self, text: str, name: str = "server.log", timeout: float = 5.0) -> str:
        """The log file once it contains ``text``: lines reach the files within a fraction of a second."""
        deadline = time.monotonic() + timeout
        while True:
            content = self.log_text(name)
            if text in content:
                return content
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in {name} after {timeout} s")
            time.sleep(0.02)

    def log_text(self, name: str = "server.log") -> str:
        return (self.data_dir / name).read_text()
