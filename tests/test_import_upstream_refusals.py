"""``bin/scd import-upstream`` refuses what it cannot import, with one line and status 1, and leaves
the target and the upstream files exactly as they were; a failure in the middle of an import undoes
all of it; rows the upstream server can hold but this server's schema would refuse as they are
still go over."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest

from superchat.storage import Store
from tests import upstream_db as up
from tests.client import Client
from tests.import_run import assert_refused, file_digests, import_upstream, target_state
from tests.server_process import SCD, ServerProcess, shared_postgres

pytestmark = pytest.mark.timeout(120)

HOUR = 3_600_000


@pytest.fixture
def target(tmp_path):
    """An scd configuration whose database does not exist yet (SQLite) or is empty (PostgreSQL)."""
    return ServerProcess(tmp_path / "scd")


def upstream(tmp_path: Path, fill=None, **options) -> Path:
    """An upstream database, with a few rows or what ``fill(db)`` writes."""
    folder = tmp_path / "upstream"
    folder.mkdir(exist_ok=True)
    path = folder / "superchat.db"
    db = up.UpstreamDatabase(path, up.now_ms() - 10 * HOUR, **options)
    if fill is None:
        user = db.add_user("olga", up.client_hash("olga"))
        db.add_message("general", "olga", "hello", author_user_id=user, at=up.now_ms() - HOUR)
    else:
        fill(db)
    db.close()
    return path


def used_once(target: ServerProcess, register: bool) -> None:
    """Start scd on the target, leave an account or an anonymous post in it, stop it."""
    target.start()
    with Client(target.port) as client:
        client.handshake("newcomer")
        if register:
            client.register("newcomer", up.client_hash("newcomer"))
        else:
            client.post(client.channel_id("general"), "posted before the import")
    assert target.stop() == 0


# -- not an upstream database --


def test_a_text_file_is_refused(tmp_path, target):
    path = tmp_path / "superchat.db"
    path.write_text("id,nickname\n1,olga\n")
    assert_refused(target, path, str(path), "is not an SQLite database")


def test_another_sqlite_schema_is_refused(tmp_path, target):
    scd_database = tmp_path / "scd.db"
    Store(scd_database).close()  # this server's own schema
    assert_refused(target, scd_database, "is not an upstream SuperChat database (it has no schema_migrations table)")
    # Another program's tables, with a schema_migrations table of its own.
    other = tmp_path / "rails.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY)")
        db.execute("INSERT INTO schema_migrations VALUES ('20240101120000')")
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    db.close()
    assert_refused(target, other, "is not an upstream SuperChat database (its schema_migrations table is another")
    # One with upstream's columns but text versions.
    with sqlite3.connect(other) as db:
        db.execute("DROP TABLE schema_migrations")
        db.execute("CREATE TABLE schema_migrations (version TEXT, name TEXT, applied_at INTEGER)")
        db.execute("INSERT INTO schema_migrations VALUES ('v9', 'nine', 0)")
    db.close()
    assert_refused(target, other, "is not an upstream SuperChat database (schema_migrations holds version 'v9')")


@pytest.mark.skipif(shared_postgres is not None, reason="the target is an SQLite file")
def test_the_upstream_file_itself_is_refused_as_the_target(tmp_path):
    path = upstream(tmp_path)
    target = ServerProcess(tmp_path / "scd", {"server": {"database_path": str(path)}})
    assert_refused(target, path, "is the database scd is configured for: name another with --db")


def test_a_newer_upstream_schema_is_refused(tmp_path, target):
    def version_10(db: up.UpstreamDatabase) -> None:
        db.db.execute("INSERT INTO schema_migrations VALUES (10, 'from_the_future', ?)", (up.now_ms(),))
    path = upstream(tmp_path, version_10)
    assert_refused(target, path, "has upstream schema version 10, newer than the 9 this scd can import")


def test_an_older_upstream_schema_is_refused_until_upstream_migrated_it(tmp_path, target):
    path = upstream(tmp_path, lambda db: None, schema_version=8)
    assert_refused(target, path, "has upstream schema version 8", "start the upstream server once")


# -- a target that holds a community --


@pytest.mark.parametrize("register", [True, False], ids=["an account", "a message"])
def test_a_target_holding_accounts_or_messages_is_refused(tmp_path, target, register):
    used_once(target, register)
    line = assert_refused(target, upstream(tmp_path), "refusing to import into", "it already holds")
    assert ("1 accounts and 0 messages" if register else "0 accounts and 1 messages") in line


# -- all or nothing --


@pytest.fixture
def small_disk(mount_tmpfs):
    return mount_tmpfs("2m")


@pytest.mark.skipif(shared_postgres is not None, reason="the disk under an SQLite target fills")
def test_a_full_disk_in_the_middle_leaves_the_target_as_it_was(tmp_path, small_disk):
    """No row upstream can hold is refused by this server's schema (see the tests below), so the
    failure is the disk's: the accounts, keys and channels went in, the messages fill the disk."""
    target = ServerProcess(tmp_path / "scd", {"server": {"database_path": str(small_disk / "superchat.db")}})
    target.start()
    assert target.stop() == 0  # an scd started on it: its seeded channels stay
    path = upstream(tmp_path, lambda db: up.big_community(db, 400, 8000))
    seeded = _channels(target)
    assert_refused(target, path, "database error, nothing imported", "full")
    assert _channels(target) == seeded and len(seeded) == 5


@pytest.mark.skipif(shared_postgres is None, reason="the connection to a PostgreSQL target is cut")
def test_a_lost_connection_in_the_middle_leaves_the_target_as_it_was(tmp_path, target):
    """The PostgreSQL server ends the import's connection while it writes (as at a restart of the
    database server): nothing of the transaction stays."""
    target.start()
    assert target.stop() == 0  # an scd started on it: its seeded channels stay
    path = upstream(tmp_path, lambda db: up.big_community(db, 30_000, 20))
    before = target_state(target)
    importing = subprocess.Popen([sys.executable, str(SCD), "import-upstream", str(path), "--config",
                                  str(target.config_path)], env=target.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    with closing(psycopg2.connect(target.database)) as db:
        db.autocommit = True
        deadline = time.monotonic() + 60
        while True:  # until the import's transaction has written messages
            with db.cursor() as cursor:
                cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> "
                               "pg_backend_pid() AND xact_start IS NOT NULL AND query LIKE 'INSERT INTO \"Message\"%'")
                found = cursor.fetchall()
                if found:
                    cursor.execute("SELECT pg_terminate_backend(%s)", found[0])
                    break
            assert importing.poll() is None and time.monotonic() < deadline, "the import ended first"
            time.sleep(0.005)
    out, err = importing.communicate(timeout=60)
    assert importing.returncode == 1 and out == "", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scd import-upstream: database error, nothing imported"), err
    assert target_state(target) == before


def _channels(server: ServerProcess) -> list:
    store = Store(server.database)
    try:
        return [(ch.id, ch.name) for ch in store.list_channels()]
    finally:
        store.close()


def test_an_import_writes_nothing_beside_the_upstream_files(tmp_path, target):
    path = upstream(tmp_path, up.fill_community)
    before, listing = file_digests(path), sorted(p.name for p in path.parent.iterdir())
    assert before["superchat.db-wal"] is not None
    assert import_upstream(target, path).returncode == 0
    assert file_digests(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == listing


def test_importing_twice_refuses_the_second_time(tmp_path, target):
    path = upstream(tmp_path)
    assert import_upstream(target, path).returncode == 0
    state = target_state(target)
    assert_refused(target, path, "it already holds 1 accounts and 1 messages")
    assert target_state(target) == state


# -- rows upstream can hold --


def test_replies_older_than_their_parents_and_replies_without_parents(tmp_path, target):
    """The upstream clock went back between two runs: replies got ids below their parents', with more
    than one batch of inserts between them. And a reply's parent row is gone (a database written with
    foreign keys off); its own answer goes with it."""
    now = up.now_ms()
    kept: list[int] = []

    def awkward(db: up.UpstreamDatabase) -> None:
        parent = db.add_message("general", "olga", "before the clock went back", at=now - HOUR)
        kept.append(parent)
        kept.extend(db.add_message("general", "olga", f"filler {n}", at=now - 3 * HOUR + n) for n in range(1200))
        reply = db.add_message("general", "ivan", "after the clock went back", parent=parent, at=now - 4 * HOUR)
        kept.append(reply)
        kept.append(db.add_message("general", "olga", "and again", parent=reply, at=now - 5 * HOUR))
        db.db.execute("PRAGMA foreign_keys = OFF")
        orphan = db.add_message("general", "ivan", "its parent is gone", parent=up.snowflake(now - 2 * HOUR),
                                at=now - HOUR + 1, thread_root_id=parent)
        db.add_message("general", "olga", "answer to the orphan", parent=orphan, at=now - HOUR + 2)

    path = upstream(tmp_path, awkward)
    result = import_upstream(target, path)
    assert result.returncode == 0, result
    assert "  replies whose parent is missing from the upstream database: 1" in result.stdout.splitlines()
    assert "  replies to a message that could not be carried over: 1" in result.stdout.splitlines()
    store = Store(target.database)
    try:
        assert sorted(store.existing_message_ids(kept + [up.snowflake(now - HOUR + 1)])) == sorted(kept)
        assert [row.id for row in store.list_thread(kept[0], 10, None, None)] == kept[-2:]
    finally:
        store.close()


def test_text_that_is_not_utf8_or_holds_nul_goes_over_repaired(tmp_path, target):
    """Upstream stores strings as clients send them; this server refuses such text from its clients and
    PostgreSQL can hold no NUL: both go over with U+FFFD in place of what cannot be stored."""
    at = up.now_ms() - HOUR
    ids = [up.snowflake(at), up.snowflake(at + 1)]

    def odd_texts(db: up.UpstreamDatabase) -> None:
        db.db.execute("INSERT INTO Message (id, channel_id, author_nickname, content, created_at, thread_root_id)"
                      " VALUES (?, ?, 'guest', CAST(x'6361666580e9' AS TEXT), ?, ?)",
                      (ids[0], db.channels["general"], at, ids[0]))
        db.add_message("general", "guest", "nul\x00inside", at=at + 1)

    result = import_upstream(target, upstream(tmp_path, odd_texts))
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[-2:] == [
        "Carried over with a change:",
        "  2 texts held bytes that are not UTF-8 or NUL characters, which scd stores neither of: imported with "
        "U+FFFD in their place"]
    store = Store(target.database)
    try:
        assert [store.get_message(i).content for i in ids] == ["cafe\ufffd\ufffd", "nul\ufffdinside"]
    finally:
        store.close()
