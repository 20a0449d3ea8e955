"""The schema: migrations from every earlier version, the models against the tables, the journal."""

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from superchat.storage import NicknameTaken, StorageError, Store, models, schema

from .helpers import FORUM_SEEDS, LATEST, channel_id, insert_old_message, old_database, post, sql


def test_migrates_empty_database_and_creates_parent_directory(db_path):
    assert not db_path.parent.exists()
    Store(db_path).close()
    assert sql(db_path, "PRAGMA user_version") == [(LATEST,)]
    tables = {r[0] for r in sql(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"Channel", "Message", "User", "SSHKey", "Ban", "AdminAction", "ReadState"} <= tables
    indexes = {r[0] for r in sql(db_path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {
        "idx_message_roots",
        "idx_message_parent",
        "idx_message_thread",
        "idx_message_root_age",
        "idx_message_unread",
        "idx_message_thread_unread",
        "idx_message_author",
        "idx_ssh_key_user",
        "idx_ban_user",
        "idx_ban_nickname",
        "idx_ban_ip",
        "idx_read_state_channel",
    } <= indexes


def test_reopen_is_idempotent_and_keeps_data(db_path):
    first = Store(db_path)
    first.seed_channels(FORUM_SEEDS, 168)
    message = post(first, channel_id(first, "general"), content="persisted")
    first.close()

    second = Store(db_path)
    try:
        assert second.get_message(message.id) == message
        assert [c.name for c in second.list_channels()] == ["chat", "general", "tech"]
    finally:
        second.close()
    assert sql(db_path, "PRAGMA user_version") == [(LATEST,)]


def test_refuses_a_database_from_a_newer_server(db_path):
    Store(db_path).close()
    sql(db_path, "PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="newer"):
        Store(db_path)


def test_migrates_a_version_1_database_and_keeps_its_data(db_path, monkeypatch):
    general = old_database(db_path, monkeypatch, version=1)
    root = insert_old_message(db_path, general, "from v1")
    reply = insert_old_message(db_path, general, "reply from v1", parent=root)
    sql(
        db_path,
        "INSERT INTO User (nickname, user_flags, password_hash, created_at, last_seen) VALUES ('olga', 0, 'h', 5, 6)",
    )
    assert sql(db_path, "PRAGMA user_version") == [(1,)]

    s = Store(db_path)
    try:
        assert sql(db_path, "PRAGMA user_version") == [(LATEST,)]
        assert [c.name for c in s.list_channels()] == ["chat", "general", "tech"]
        kept_root, kept_reply = s.get_message(root), s.get_message(reply)
        assert (kept_root.content, kept_root.reply_count, kept_root.shadowed) == ("from v1", 1, False)
        assert (kept_reply.content, kept_reply.parent_id, kept_reply.thread_root_id) == ("reply from v1", root, root)
        olga = s.get_user_by_nickname("olga")
        assert (olga.password_hash, olga.created_at, olga.last_seen) == ("h", 5, 6)
        key = s.add_ssh_key(olga.id, "SHA256:olga", "ssh-ed25519 AAAA", "ssh-ed25519", None)
        assert s.list_ssh_keys(olga.id) == [key]
        s.set_read_state(olga.id, general, None, kept_root.created_at)
        assert s.read_state(olga.id, general, None) == kept_root.created_at
        assert s.count_unread_in_channel(general, None, 0) == 2
        assert s.count_unread_in_thread(root, 0) == 2
    finally:
        s.close()


def test_models_match_the_migrated_tables(store, db_path):
    tables = (
        models.Channel,
        models.Message,
        models.User,
        models.SSHKey,
        models.Ban,
        models.AdminAction,
        models.ReadState,
    )
    for model in tables:
        table = model._meta.table_name
        columns = [r[1] for r in sql(db_path, f'PRAGMA table_info("{table}")')]
        assert columns == [f.column_name for f in model._meta.sorted_fields], table


def test_journal_is_wal_and_writes_are_fully_synchronous(store, db_path):
    post(store, channel_id(store, "chat"))
    assert Path(str(db_path) + "-wal").exists()
    assert sql(db_path, "PRAGMA journal_mode") == [("wal",)]
    for db in (store._reader, store._writer):
        assert db.execute_sql("PRAGMA synchronous").fetchone() == (2,)
        assert db.execute_sql("PRAGMA foreign_keys").fetchone() == (1,)
        assert db.execute_sql("PRAGMA busy_timeout").fetchone() == (5000,)


def test_migrates_a_version_2_database_to_list_servers(db_path, monkeypatch):
    general = old_database(db_path, monkeypatch, version=2)
    kept = insert_old_message(db_path, general, "from v2")
    assert sql(db_path, "PRAGMA user_version") == [(2,)]

    s = Store(db_path)
    try:
        assert sql(db_path, "PRAGMA user_version") == [(LATEST,)]
        assert s.get_message(kept).content == "from v2"
        assert s.list_discovered_servers(10, 0) == []
        s.register_server("chat.example.org", 6465, "Example", "", 0, True, 4, "192.0.2.1", 1_000)
        assert [row.hostname for row in s.list_discovered_servers(10, 0)] == ["chat.example.org"]
    finally:
        s.close()


def test_migrates_a_version_3_database_to_shadowed_posts(db_path, monkeypatch):
    general = old_database(db_path, monkeypatch, version=3)
    kept = insert_old_message(db_path, general, "from v3")

    s = Store(db_path)
    try:
        assert sql(db_path, "PRAGMA user_version") == [(LATEST,)]
        assert s.get_message(kept).shadowed is False
        assert s.count_unread_in_channel(general, None, 0) == 1
        plan = " ".join(str(row) for row in sql(
            db_path, "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM Message WHERE channel_id = 2 AND subchannel_id IS NULL"
            " AND created_at > 0 AND deleted_at IS NULL AND shadowed = 0"))
        assert "COVERING INDEX idx_message_unread" in plan
    finally:
        s.close()


def test_discovered_server_model_matches_its_table(store, db_path):
    model = models.DiscoveredServer
    columns = [r[1] for r in sql(db_path, 'PRAGMA table_info("DiscoveredServer")')]
    assert columns == [f.column_name for f in model._meta.sorted_fields]
    indexes = {r[0] for r in sql(db_path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "idx_discovered_server_last_seen" in indexes


def test_names_alike_but_for_case_from_before_are_named_until_resolved(db_path):
    """A database of schema 5 could hold alice and Alice: it still opens, and nothing adds another pair."""
    db_path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db_path)) as old, old:
        for number in range(1, 6):
            for statement in schema.migration("sqlite", number):
                old.execute(statement)
        for nickname in ("alice", "Alice", "bob", "BOB", "Bob", "carol"):
            old.execute("INSERT INTO User (nickname, password_hash, created_at) VALUES (?, '', 1)", (nickname,))
        old.execute("PRAGMA user_version = 5")

    def indexes() -> set[str]:
        return {row[0] for row in sql(db_path, "SELECT name FROM sqlite_master WHERE tbl_name = 'User'"
                                               " AND name LIKE 'idx_%'")}

    s = Store(db_path)
    try:
        assert s.nickname_collisions == [[(1, "alice"), (2, "Alice")], [(3, "bob"), (4, "BOB"), (5, "Bob")]]
        assert indexes() == {"idx_user_nickname_folded"}
        with pytest.raises(NicknameTaken):
            s.create_user("ALICE", "", 0)
        with pytest.raises(NicknameTaken):
            s.rename_user(1, "BOb")
        # The exact spelling first, else the oldest.
        assert [s.get_user_by_folded_nickname(name).id for name in ("Alice", "ALICE", "Bob", "bOB")] == [2, 1, 5, 3]
        for user_id in (2, 4, 5):
            s.delete_user(user_id)
    finally:
        s.close()
    s = Store(db_path)
    try:
        assert s.nickname_collisions == []
        assert indexes() == {"idx_user_nickname_folded_unique"}
    finally:
        s.close()


def test_migrates_a_version_4_database_to_node_serials(db_path, monkeypatch):
    old_database(db_path, monkeypatch, version=4)
    s = Store(db_path)
    try:
        assert sql(db_path, "PRAGMA user_version") == [(LATEST,)]
        assert s.claim_node_serial("node-a") == 1
    finally:
        s.close()
