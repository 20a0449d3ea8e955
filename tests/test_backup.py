"""Backups of the SQLite database: before every migration of an existing database, and with
``scd backup PATH`` while the server runs."""

import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from superchat.storage import StorageError, Store, schema
from tests.client import Client
from tests.server_process import SCD, ServerProcess, isolated_env

pytestmark = pytest.mark.timeout(60)

BACKUP_NAME = re.compile(r"superchat\.db\.backup-v(\d+)-\d{8}-\d{6}$")
FORUMS = [("general", "General discussion")]


def old_database(path: Path, monkeypatch, version: int) -> None:
    """A database as a server of schema ``version`` left it, with one message."""
    with monkeypatch.context() as old_code:
        old_code.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
        old = Store(path)
        old.seed_channels(FORUMS, 168)
        old.close()
    with closing(sqlite3.connect(path)) as db, db:
        cursor = db.execute("INSERT INTO Message (channel_id, author_nickname, content, created_at)"
                            " SELECT id, 'olga', 'from before', 7 FROM Channel WHERE name = 'general'")
        db.execute("UPDATE Message SET thread_root_id = id WHERE id = ?", (cursor.lastrowid,))


def backups_beside(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if BACKUP_NAME.search(p.name))


def read(path: Path, statement: str) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(statement).fetchall()


def test_a_database_is_backed_up_before_it_is_migrated(start_server, tmp_path, monkeypatch):
    database = tmp_path / "data" / "superchat" / "superchat.db"
    old_database(database, monkeypatch, 4)
    server = start_server(root=tmp_path)
    (backup,) = backups_beside(database)
    assert BACKUP_NAME.search(backup.name).group(1) == "4"
    assert read(backup, "PRAGMA user_version") == [(4,)]
    assert read(backup, "PRAGMA integrity_check") == [("ok",)]
    assert read(backup, "SELECT content FROM Message") == [("from before",)]
    assert not Path(f"{backup}-wal").exists()  # it stands alone
    line = server.wait_for_log("backed up before its migration")
    assert f"Database backed up before its migration from schema version 4: {backup}" in line
    assert read(database, "PRAGMA user_version") == [(len(schema.MIGRATIONS),)]


def test_a_fresh_or_current_database_is_not_backed_up(start_server, tmp_path):
    server = start_server(root=tmp_path)
    server.stop()
    server.start()  # the second start finds the schema current
    server.stop()
    assert backups_beside(tmp_path / "data" / "superchat" / "superchat.db") == []


def test_a_failed_migration_leaves_the_backup_and_says_where_it_is(tmp_path, monkeypatch):
    database = tmp_path / "superchat.db"
    old_database(database, monkeypatch, 5)
    with monkeypatch.context() as broken_code:
        broken_code.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, ("CREATE TABLE Channel (id INTEGER)",)))
        with pytest.raises(StorageError) as failure:
            Store(database)
    (backup,) = backups_beside(database)
    assert str(failure.value) == (f"the migration of {database} failed (table Channel already exists); "
                                  f"the database as it was before is in {backup}")
    # The migration ran in one transaction: the database is as it was, and so is its copy.
    assert read(database, "PRAGMA user_version") == read(backup, "PRAGMA user_version") == [(5,)]
    assert read(backup, "SELECT content FROM Message") == [("from before",)]


def scd_backup(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCD), "backup", *args, "--config", str(server.config_path)],
                          env=isolated_env(server.root), capture_output=True, text=True, timeout=30)


def test_scd_backup_copies_a_running_servers_database_with_every_acknowledged_post(start_server, tmp_path):
    server = start_server({"limits": {"message_rate_limit": 65535}})
    with Client(server.port) as client:
        client.handshake("poster")
        general = client.channel_id("general")
        acknowledged = [client.post(general, f"post {n}") for n in range(50)]
        target = tmp_path / "copy.db"
        done = scd_backup(server, str(target))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"Backed up {server.database} to {target} (")
        assert done.stderr == ""
        client.post(general, "after the backup")  # the server goes on
    assert read(target, "PRAGMA integrity_check") == [("ok",)]
    assert [row[0] for row in read(target, "SELECT id FROM Message ORDER BY id")] == acknowledged


def test_scd_backup_refuses_with_one_line(start_server, tmp_path):
    server = start_server()
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"keep me")
    cases = [
        ((str(existing),), 1, f"scd backup: {existing} exists: name a new file"),
        ((str(tmp_path / "no" / "such" / "dir.db"),), 1, "scd backup: cannot back up "),
        ((str(tmp_path / "x.db"), "--db", "postgresql://db.example/chat"), 2,
         "scd backup: the database is on PostgreSQL: back it up with pg_dump"),
        ((str(tmp_path / "y.db"), "--db", str(tmp_path / "missing.db")), 1,
         f"scd backup: no database at {tmp_path / 'missing.db'}"),
        ((), 2, "scd backup: the following arguments are required: PATH"),
    ]
    for args, status, line in cases:
        done = scd_backup(server, *args)
        assert (done.returncode, done.stdout) == (status, ""), (args, done)
        assert done.stderr.startswith(line) and done.stderr.count("\n") == 1, (args, done.stderr)
    assert existing.read_bytes() == b"keep me"
    assert not list(tmp_path.glob(".*partial*"))
