"""Running ``bin/scd import-upstream`` as the operator does, and what the import tests compare before
and after it: the upstream files byte for byte, and the target database."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import psycopg2

from tests.server_process import SCD, ServerProcess, shared_postgres


def scd(server: ServerProcess, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    """``bin/scd ARGS --config <the server's config>`` with the server's environment."""
    return subprocess.run([sys.executable, str(SCD), *args, "--config", str(server.config_path)], input=stdin,
                          capture_output=True, text=True, env=server.env, timeout=timeout)


def import_upstream(server: ServerProcess, path: Path) -> subprocess.CompletedProcess:
    return scd(server, "import-upstream", str(path))


def file_digests(path: Path) -> dict[str, str | None]:
    """SHA-256 of an SQLite file and of its -wal and -shm (None: absent)."""
    digests: dict[str, str | None] = {}
    for suffix in ("", "-wal", "-shm"):
        name = path.with_name(path.name + suffix)
        digests[name.name] = hashlib.sha256(name.read_bytes()).hexdigest() if name.exists() else None
    return digests


def target_state(server: ServerProcess) -> object:
    """The target database as a whole: its files' digests on SQLite; on PostgreSQL every table's rows
    and every sequence's position."""
    if shared_postgres is None:
        return file_digests(Path(server.database))
    with closing(psycopg2.connect(server.database)) as db, db.cursor() as cursor:
        cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
        state: dict = {}
        for (table,) in cursor.fetchall():
            cursor.execute(f'SELECT * FROM "{table}" ORDER BY 1')
            state[table] = cursor.fetchall()
        cursor.execute("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
        state["sequences"] = cursor.fetchall()
        return state


def assert_refused(server: ServerProcess, upstream: Path, *words: str) -> str:
    """The import exits 1 with one line on stderr naming ``words``, nothing on stdout, and neither the
    target nor the upstream files changed; returns the line."""
    target_before, upstream_before = target_state(server), file_digests(upstream)
    result = import_upstream(server, upstream)
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scd import-upstream: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert target_state(server) == target_before
    assert file_digests(upstream) == upstream_before
    return lines[0]


def target_rows(server: ServerProcess, sql: str) -> list[tuple]:
    """Rows of a query on the target database, SQLite or PostgreSQL."""
    if shared_postgres is None:
        with closing(sqlite3.connect(server.database)) as db:
            return db.execute(sql).fetchall()
    with closing(psycopg2.connect(server.database)) as db, db.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()
