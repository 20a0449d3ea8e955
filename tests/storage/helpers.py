"""Helpers shared by the tests of this folder."""

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from superchat.storage import MessageRow, NewPost, Store, schema

REPO_ROOT = Path(__file__).resolve().parents[2]


HOUR_MS = 3_600_000


FORUM_SEEDS = [("general", "General discussion"), ("tech", "Technical topics")]


LATEST = len(schema.MIGRATIONS)


def insert_old_message(db_path, channel: int, content: str, parent: int | None = None) -> int:
    """A message written the way every schema version since the first can hold it; returns its id."""
    with closing(sqlite3.connect(db_path)) as db, db:
        root = None
        if parent is not None:
            (root,) = db.execute("SELECT thread_root_id FROM Message WHERE id = ?", (parent,)).fetchone()
        cursor = db.execute(
            "INSERT INTO Message (channel_id, parent_id, thread_root_id, author_nickname, content, created_at)"
            " VALUES (?, ?, ?, 'olga', ?, 7)", (channel, parent, root, content))
        if parent is None:
            db.execute("UPDATE Message SET thread_root_id = id WHERE id = ?", (cursor.lastrowid,))
        return cursor.lastrowid


def old_database(db_path, monkeypatch, version: int) -> int:
    """A database as a server of schema ``version`` left it, seeded; returns the general channel's id."""
    with monkeypatch.context() as old_code:
        old_code.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
        old = Store(db_path)
        old.seed_channels(FORUM_SEEDS, 168)
        general = channel_id(old, "general")
        old.close()
    return general


def channel_id(store: Store, name: str) -> int:
    return next(c.id for c in store.list_channels() if c.name == name)


def new_post(channel, parent=None, content="hello", nickname="alice", subchannel=None, user=None):
    return NewPost(channel, subchannel, parent, user, nickname, content)


def post(store: Store, channel, parent=None, content="hello", subchannel=None) -> MessageRow:
    (row,) = store.post_messages([new_post(channel, parent, content, subchannel=subchannel)])
    assert isinstance(row, MessageRow)
    return row


def sql(db_path, statement: str) -> list[tuple]:
    """Run one statement on a separate connection, as another process would see the file."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = 1")
        return conn.execute(statement).fetchall()
    finally:
        conn.close()


def ids(rows):
    return [r.id for r in rows]


def wait_next_ms(after: int) -> None:
    while time.time_ns() // 1_000_000 <= after:
        time.sleep(0.001)


def build_thread(store, channel):
    """root; a(a1(a1x), a2); b(b1); c -- posted so that id order differs from DFS order."""
    root = post(store, channel)
    by_name = {}
    layout = [("a", None), ("b", None), ("a1", "a"), ("c", None), ("b1", "b"), ("a2", "a"), ("a1x", "a1")]
    for name, parent in layout:
        parent_id = by_name[parent].id if parent else root.id
        by_name[name] = post(store, channel, parent=parent_id, content=name)
    return root, by_name


def traced(db, action):
    statements = []
    db.connection().set_trace_callback(statements.append)
    try:
        action()
    finally:
        db.connection().set_trace_callback(None)
    return statements


def plan(db_path, statement):
    return [row[3] for row in sql(db_path, "EXPLAIN QUERY PLAN " + statement)]


def assert_searches(db_path, statement, index=None):
    details = plan(db_path, statement)
    assert not [d for d in details if d.startswith("SCAN")], (statement, details)
    assert any(d.startswith("SEARCH") for d in details), (statement, details)
    if index is not None:
        assert any(f"COVERING INDEX {index} " in d for d in details), (statement, details)
