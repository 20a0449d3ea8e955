import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from superchat.storage import (
    BanRow,
    ChannelExists,
    ChannelRow,
    DiscoveredServerRow,
    MessageRow,
    NewPost,
    NicknameTaken,
    PostRejected,
    SSHKeyExists,
    SSHKeyRow,
    StorageError,
    Store,
    UserRow,
    Viewer,
    models,
    schema,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "data" / "superchat.db"


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    s.seed_channels(FORUM_SEEDS, 168)
    yield s
    s.close()


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


# -- schema and migrations ---------------------------------------------------------------------


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


# -- channels ----------------------------------------------------------------------------------


def test_seeds_chat_and_forums_on_first_run(store):
    chat, general, tech = store.list_channels()
    assert (chat.name, chat.display_name, chat.description) == (
        "chat",
        ">chat",
        "General chat (linear conversation)",
    )
    assert (chat.channel_type, chat.retention_hours, chat.created_by) == (0, 24, None)
    assert (general.display_name, general.description, general.channel_type, general.retention_hours) == (
        "#general",
        "General discussion",
        1,
        168,
    )
    assert tech.display_name == "#tech"
    assert chat.id < general.id < tech.id
    assert store.get_channel(general.id) == general
    assert store.get_channel(9999) is None


def test_seeding_happens_only_once(db_path):
    first = Store(db_path)
    first.seed_channels(FORUM_SEEDS, 168)
    first.close()

    again = Store(db_path)
    again.seed_channels([("other", "Other")], 48)
    assert [c.name for c in again.list_channels()] == ["chat", "general", "tech"]
    again.close()


def test_seeding_never_recreates_deleted_channels(db_path):
    first = Store(db_path)
    first.seed_channels(FORUM_SEEDS, 168)
    first.close()

    sql(db_path, "DELETE FROM Channel WHERE name = 'tech'")
    second = Store(db_path)
    second.seed_channels(FORUM_SEEDS, 168)
    assert [c.name for c in second.list_channels()] == ["chat", "general"]
    second.close()

    sql(db_path, "DELETE FROM Channel")
    third = Store(db_path)
    third.seed_channels(FORUM_SEEDS, 168)
    assert third.list_channels() == []
    third.close()


def test_seed_named_like_chat_is_ignored(db_path):
    s = Store(db_path)
    s.seed_channels([("chat", "dup"), ("news", "News")], 72)
    assert [(c.name, c.channel_type) for c in s.list_channels()] == [("chat", 0), ("news", 1)]
    s.close()


def test_create_channel_and_duplicate(store):
    row = store.create_channel("aaa", "#aaa", None, 1, 12, 7)
    assert isinstance(row, ChannelRow)
    assert (row.name, row.display_name, row.description, row.channel_type, row.retention_hours) == (
        "aaa",
        "#aaa",
        None,
        1,
        12,
    )
    assert row.created_by == 7
    assert store.get_channel(row.id) == row
    assert [c.name for c in store.list_channels()] == ["aaa", "chat", "general", "tech"]
    with pytest.raises(ChannelExists):
        store.create_channel("aaa", "#aaa", "again", 1, 12, None)
    assert len(store.list_channels()) == 4


# -- posting -----------------------------------------------------------------------------------


def test_post_batch_results_in_input_order_with_rejections(store):
    chat, general = channel_id(store, "chat"), channel_id(store, "general")
    root = post(store, general)
    deleted = post(store, general)
    store.soft_delete_message(deleted.id)
    elsewhere = post(store, chat)

    results = store.post_messages(
        [
            new_post(general, content="new root"),
            new_post(9999),
            new_post(general, parent=root.id, content="reply"),
            new_post(general, parent=123456),
            new_post(general, parent=deleted.id),
            new_post(general, parent=elsewhere.id),
            new_post(chat, subchannel=3, nickname="bob", user=42, content="chat line"),
        ]
    )

    new_root, no_channel, reply, missing, to_deleted, cross_channel, chat_line = results
    assert no_channel is PostRejected.NO_CHANNEL
    assert missing is to_deleted is cross_channel is PostRejected.NO_PARENT
    assert new_root.content == "new root" and new_root.parent_id is None
    assert new_root.thread_root_id == new_root.id
    assert (reply.parent_id, reply.thread_root_id) == (root.id, root.id)
    assert (chat_line.channel_id, chat_line.subchannel_id) == (chat, 3)
    assert (chat_line.author_user_id, chat_line.author_nickname) == (42, "bob")
    assert new_root.id < reply.id < chat_line.id
    for row in (new_root, reply, chat_line):
        assert store.get_message(row.id) == row
        assert row.edited_at is None and row.deleted_at is None and row.reply_count == 0


def test_reply_to_reply_inherits_thread_root_within_one_batch(store):
    general = channel_id(store, "general")
    root = post(store, general)
    (child,) = store.post_messages([new_post(general, parent=root.id)])
    (grandchild,) = store.post_messages([new_post(general, parent=child.id)])
    assert grandchild.thread_root_id == root.id

    first, second = store.post_messages([new_post(general, content="r")] * 2)
    assert first.thread_root_id == first.id and second.thread_root_id == second.id


def test_post_batch_is_one_transaction(store, db_path):
    general = channel_id(store, "general")
    before = store.list_root_messages(general, None, 100, None, None)
    broken = NewPost(general, None, None, None, "alice", None)
    with pytest.raises(StorageError):
        store.post_messages([new_post(general, content="a"), new_post(general, content="b"), broken])
    assert store.list_root_messages(general, None, 100, None, None) == before
    assert sql(db_path, "SELECT COUNT(*) FROM Message") == [(0,)]


def test_writes_are_visible_to_the_reader_at_once(store):
    general = channel_id(store, "general")
    assert store.list_root_messages(general, None, 10, None, None) == []
    row = post(store, general)
    assert ids(store.list_root_messages(general, None, 10, None, None)) == [row.id]
    edited = store.edit_message(row.id, "changed")
    assert store.get_message(row.id) == edited
    created = store.create_channel("zzz", "#zzz", None, 1, 1, None)
    assert store.get_channel(created.id) == created


def test_writer_thread_and_reader_run_concurrently(store):
    chat = channel_id(store, "chat")
    batches = [[new_post(chat, content=f"{b}.{i}") for i in range(20)] for b in range(30)]
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = [writer.submit(store.post_messages, batch) for batch in batches]
        seen = 0
        while not all(f.done() for f in pending):
            listed = store.list_root_messages(chat, None, 1000, None, None)
            assert len(listed) >= seen
            seen = len(listed)
            time.sleep(0.001)
        results = [row for f in pending for row in f.result()]
    assert ids(store.list_root_messages(chat, None, 1000, None, None)) == ids(results)


# -- listing -----------------------------------------------------------------------------------


def test_list_root_messages_modes(store):
    general, tech = channel_id(store, "general"), channel_id(store, "tech")
    roots = [post(store, general, content=f"root {i}") for i in range(6)]
    post(store, general, parent=roots[0].id)
    gone = post(store, general)
    store.soft_delete_message(gone.id)
    in_sub = post(store, general, subchannel=7)
    post(store, tech)
    r = ids(roots)

    def listing(limit, before=None, after=None, sub=None):
        return ids(store.list_root_messages(general, sub, limit, before, after))

    assert listing(3) == r[3:]
    assert listing(100) == r
    assert listing(2, before=r[4]) == r[2:4]
    assert listing(10, before=r[2]) == r[:2]
    assert listing(2, after=r[1]) == r[2:4]
    assert listing(10, after=r[3]) == r[4:]
    assert listing(2, before=r[3], after=r[4]) == r[1:3]
    assert listing(10, sub=7) == [in_sub.id]
    assert listing(10, sub=8) == []
    assert listing(0) == []
    assert store.list_root_messages(9999, None, 10, None, None) == []


def test_list_root_messages_caps_the_limit(store):
    chat = channel_id(store, "chat")
    rows = store.post_messages([new_post(chat, content=str(i)) for i in range(1005)])
    listed = store.list_root_messages(chat, None, 5000, None, None)
    assert ids(listed) == ids(rows[5:])


def build_thread(store, channel):
    """root; a(a1(a1x), a2); b(b1); c -- posted so that id order differs from DFS order."""
    root = post(store, channel)
    by_name = {}
    layout = [("a", None), ("b", None), ("a1", "a"), ("c", None), ("b1", "b"), ("a2", "a"), ("a1x", "a1")]
    for name, parent in layout:
        parent_id = by_name[parent].id if parent else root.id
        by_name[name] = post(store, channel, parent=parent_id, content=name)
    return root, by_name


def test_list_thread_depth_first_with_filters(store):
    root, m = build_thread(store, channel_id(store, "general"))

    def names(rows):
        return [r.content for r in rows]

    assert names(store.list_thread(root.id, 0, None, None)) == ["a", "a1", "a1x", "a2", "b", "b1", "c"]
    assert names(store.list_thread(root.id, 3, None, None)) == ["a", "a1", "a1x"]
    assert names(store.list_thread(root.id, 0, m["a2"].id, None)) == ["a", "a1", "b", "b1", "c"]
    assert names(store.list_thread(root.id, 0, None, m["a1"].id)) == ["a1x", "a2", "b1", "c"]
    assert names(store.list_thread(root.id, 2, m["a1x"].id, m["a1"].id)) == ["a2", "b1"]
    assert names(store.list_thread(m["a"].id, 0, None, None)) == ["a1", "a1x", "a2"]
    assert store.list_thread(m["c"].id, 0, None, None) == []
    assert store.list_thread(123456, 0, None, None) == []
    assert all(r.reply_count == 0 and r.thread_root_id == root.id for r in store.list_thread(root.id, 0, None, None))


def test_list_thread_hides_deleted_reply_but_not_its_answers(store):
    root, m = build_thread(store, channel_id(store, "general"))
    store.soft_delete_message(m["a1"].id)
    listed = store.list_thread(root.id, 0, None, None)
    assert [r.content for r in listed] == ["a", "a1x", "a2", "b", "b1", "c"]


def test_reply_count_is_direct_not_deleted_and_roots_only(store):
    general = channel_id(store, "general")
    root, m = build_thread(store, general)
    assert store.get_message(root.id).reply_count == 3
    assert store.get_message(m["a"].id).reply_count == 0
    store.soft_delete_message(m["c"].id)
    store.soft_delete_message(m["a1"].id)
    assert store.get_message(root.id).reply_count == 2
    assert store.list_root_messages(general, None, 10, None, None)[0].reply_count == 2


# -- edit and delete ---------------------------------------------------------------------------


def test_edit_message(store):
    general = channel_id(store, "general")
    row = post(store, general, content="before")
    post(store, general, parent=row.id)
    edited = store.edit_message(row.id, "after")
    assert edited.content == "after"
    assert edited.edited_at is not None and edited.edited_at >= row.created_at
    assert edited.reply_count == 1
    assert edited == store.get_message(row.id)
    assert store.edit_message(123456, "x") is None
    store.soft_delete_message(row.id)
    assert store.edit_message(row.id, "x") is None


def test_soft_delete_returns_the_row_as_it_was(store):
    row = post(store, channel_id(store, "general"), content="secret")
    deleted = store.soft_delete_message(row.id)
    assert deleted.content == "secret"
    assert deleted.deleted_at is not None and deleted.deleted_at >= row.created_at
    stored = store.get_message(row.id)
    assert stored.content == ""
    assert stored.deleted_at == deleted.deleted_at
    assert store.soft_delete_message(row.id) is None
    assert store.soft_delete_message(123456) is None


# -- retention ---------------------------------------------------------------------------------


def test_retention_deletes_old_threads_whole_and_keeps_young_ones(store, db_path):
    chat, general = channel_id(store, "chat"), channel_id(store, "general")
    old_root, m = build_thread(store, chat)
    forum_root = post(store, general)
    forum_reply = post(store, general, parent=forum_root.id)
    wait_next_ms(max(r.created_at for r in [old_root, *m.values(), forum_reply]))
    young_root = post(store, chat)
    young_reply = post(store, chat, parent=young_root.id)

    now = old_root.created_at + 24 * HOUR_MS + 1
    assert young_root.created_at >= now - 24 * HOUR_MS
    expired = store.delete_expired_messages(now)
    assert expired.messages == 8 and expired.threads == [(chat, old_root.id)]
    assert store.get_message(old_root.id) is None
    assert all(store.get_message(r.id) is None for r in m.values())
    for kept in (young_root, young_reply, forum_root, forum_reply):
        assert store.get_message(kept.id) is not None
    assert store.delete_expired_messages(now).messages == 0

    expired = store.delete_expired_messages(young_root.created_at + 168 * HOUR_MS + 1)
    assert expired.messages == 4
    assert sorted(expired.threads) == sorted([(chat, young_root.id), (general, forum_root.id)])
    assert sql(db_path, "SELECT COUNT(*) FROM Message") == [(0,)]


def test_retention_respects_each_channels_hours(store):
    short = store.create_channel("short", "#short", None, 1, 1, None)
    long = store.create_channel("long", "#long", None, 1, 2, None)
    a = post(store, short.id)
    b = post(store, long.id)
    now = max(a.created_at, b.created_at) + HOUR_MS + 1
    assert store.delete_expired_messages(now).threads == [(short.id, a.id)]
    assert store.get_message(a.id) is None and store.get_message(b.id) is not None
    assert store.delete_expired_messages(now + HOUR_MS).threads == [(long.id, b.id)]


# -- users -------------------------------------------------------------------------------------


def test_user_lookups(store, db_path):
    sql(
        db_path,
        "INSERT INTO User (nickname, user_flags, password_hash, created_at, last_seen) "
        "VALUES ('carol', 1, 'hash', 10, NULL)",
    )
    user = store.get_user_by_nickname("carol")
    assert (user.nickname, user.user_flags, user.password_hash, user.created_at, user.last_seen) == (
        "carol",
        1,
        "hash",
        10,
        None,
    )
    assert store.get_user(user.id) == user
    assert store.get_user_by_nickname("Carol") is None
    assert store.get_user(user.id + 1) is None


def test_create_user(store):
    before = time.time_ns() // 1_000_000
    user = store.create_user("alice", "hash", 3)
    assert isinstance(user, UserRow)
    assert (user.nickname, user.password_hash, user.user_flags) == ("alice", "hash", 3)
    assert user.created_at == user.last_seen >= before
    assert store.get_user(user.id) == user
    assert store.get_user_by_nickname("alice") == user


def test_a_nickname_is_taken_in_every_case(store, db_path):
    alice = store.create_user("alice", "hash", 0)
    for taken in ("alice", "Alice", "ALICE"):
        with pytest.raises(NicknameTaken):
            store.create_user(taken, "other", 1)
    bob = store.create_user("bob", "hash", 0)
    with pytest.raises(NicknameTaken):
        store.rename_user(bob.id, "aLICE")
    store.rename_user(alice.id, "Alice")  # its own name in another case
    assert store.list_users(10) == [replace(alice, nickname="Alice"), bob]
    assert store.get_user_by_folded_nickname("ALICE") == replace(alice, nickname="Alice")
    assert store.get_user_by_nickname("ALICE") is None and store.get_user_by_folded_nickname("carol") is None
    with pytest.raises(sqlite3.IntegrityError):  # the database itself holds the rule
        sql(db_path, "INSERT INTO User (nickname, password_hash, created_at) VALUES ('BOB', '', 1)")
    (statement,) = traced(store._reader, lambda: store.get_user_by_folded_nickname("Bob"))
    assert "USING INDEX idx_user_nickname_folded_unique" in " ".join(plan(db_path, statement))


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


def test_claiming_an_account_makes_it_or_takes_it_over(store):
    made, created, removed = store.claim_account("boss", "first", 1)
    assert (made.nickname, made.password_hash, made.user_flags, created, removed) == ("boss", "first", 1, True, 0)
    store.assign_flag(4, ["boss"])
    for number in range(2):
        store.add_ssh_key(made.id, f"SHA256:{number}", "ssh-ed25519 A", "ssh-ed25519", None)
    taken, created, removed = store.claim_account("boss", "second", 1)
    assert (taken.id, taken.password_hash, taken.user_flags, created, removed) == (made.id, "second", 5, False, 2)
    assert store.get_user(made.id) == taken and store.list_ssh_keys(made.id) == []
    with pytest.raises(NicknameTaken):
        store.claim_account("Boss", "third", 1)
    assert store.list_users(10) == [taken]


def test_assign_flag_gives_it_to_exactly_the_named_users(store):
    admin = store.create_user("admin", "h", 0)
    former = store.create_user("former", "h", 1 | 2)
    plain = store.create_user("plain", "h", 2)
    store.assign_flag(1, ["admin", "nobody"])
    assert [store.get_user(u.id).user_flags for u in (admin, former, plain)] == [1, 2, 2]
    store.assign_flag(1, [])
    assert store.get_user(admin.id).user_flags == 0


def test_user_updates(store):
    user = store.create_user("alice", "hash", 0)
    other = store.create_user("bob", "bobhash", 1)

    store.set_password(user.id, "")
    store.assign_flag(4, ["alice"])
    store.touch_user(user.id, 123)
    store.rename_user(user.id, "alicia")
    assert store.get_user(user.id) == replace(user, nickname="alicia", password_hash="", user_flags=4, last_seen=123)
    assert store.get_user_by_nickname("alice") is None

    store.rename_user(user.id, "alicia")
    with pytest.raises(NicknameTaken):
        store.rename_user(user.id, "bob")
    assert store.get_user(user.id).nickname == "alicia"
    assert store.get_user(other.id) == other


def test_list_users_by_nickname_with_limit(store):
    for nickname in ("carol", "alice", "dave", "bob"):
        store.create_user(nickname, "", 0)
    assert [u.nickname for u in store.list_users(100)] == ["alice", "bob", "carol", "dave"]
    assert [u.nickname for u in store.list_users(2)] == ["alice", "bob"]
    assert store.list_users(0) == []


def test_delete_user_anonymises_messages_and_cascades(store, db_path):
    general = channel_id(store, "general")
    gone = store.create_user("alice", "hash", 0)
    kept = store.create_user("bob", "hash", 0)
    (authored, other) = store.post_messages(
        [new_post(general, user=gone.id, nickname="alice"), new_post(general, user=kept.id, nickname="bob")]
    )
    (reply,) = store.post_messages([new_post(general, parent=other.id, user=gone.id, nickname="alice")])
    store.add_ssh_key(gone.id, "SHA256:gone", "ssh-ed25519 A", "ssh-ed25519", "laptop")
    kept_key = store.add_ssh_key(kept.id, "SHA256:kept", "ssh-ed25519 B", "ssh-ed25519", None)
    store.set_read_state(gone.id, general, None, 10)
    store.set_read_state(kept.id, general, None, 20)
    by_id = store.add_user_ban(gone.id, None, "spam", False, None, "admin")
    by_both = store.add_user_ban(gone.id, "alice", "spam", True, None, "admin")

    assert store.delete_user(gone.id) == gone
    assert store.get_user(gone.id) is None
    for message in (authored, reply):
        assert store.get_message(message.id) == replace(message, author_user_id=None, reply_count=0)
    assert store.get_message(other.id).author_user_id == kept.id
    assert store.get_ssh_key("SHA256:gone") is None
    assert store.list_ssh_keys(kept.id) == [kept_key]
    assert sql(db_path, "SELECT user_id, last_read_at FROM ReadState") == [(kept.id, 20)]
    assert store.list_bans(True, 0) == [replace(by_id, user_id=None), replace(by_both, user_id=None)]
    assert store.active_user_ban(gone.id, None, 0) is None
    assert store.active_user_ban(None, "alice", 0) == replace(by_both, user_id=None)

    assert store.delete_user(gone.id) is None
    store.add_ssh_key(kept.id, "SHA256:gone", "ssh-ed25519 A", "ssh-ed25519", None)


# -- SSH keys ----------------------------------------------------------------------------------


def test_ssh_keys(store):
    alice = store.create_user("alice", "", 0)
    bob = store.create_user("bob", "", 0)
    before = time.time_ns() // 1_000_000
    first = store.add_ssh_key(alice.id, "SHA256:one", "ssh-ed25519 AAAA one", "ssh-ed25519", "laptop")
    second = store.add_ssh_key(alice.id, "SHA256:two", "ssh-rsa AAAA two", "ssh-rsa", None)
    assert isinstance(first, SSHKeyRow)
    assert (first.user_id, first.fingerprint, first.public_key, first.key_type, first.label) == (
        alice.id,
        "SHA256:one",
        "ssh-ed25519 AAAA one",
        "ssh-ed25519",
        "laptop",
    )
    assert first.added_at >= before and first.last_used_at is None
    assert store.list_ssh_keys(alice.id) == [first, second]
    assert store.list_ssh_keys(bob.id) == []
    assert store.get_ssh_key("SHA256:two") == second
    assert store.get_ssh_key("SHA256:none") is None

    store.touch_ssh_key("SHA256:one", 777)
    assert store.get_ssh_key("SHA256:one").last_used_at == 777


def test_ssh_key_refusals(store):
    alice = store.create_user("alice", "", 0)
    bob = store.create_user("bob", "", 0)
    key = store.add_ssh_key(alice.id, "SHA256:one", "ssh-ed25519 A", "ssh-ed25519", "laptop")
    for owner in (alice, bob):
        with pytest.raises(SSHKeyExists):
            store.add_ssh_key(owner.id, "SHA256:one", "ssh-ed25519 A", "ssh-ed25519", None)
    with pytest.raises(StorageError):
        store.add_ssh_key(9999, "SHA256:nobody", "ssh-ed25519 C", "ssh-ed25519", None)

    assert not store.relabel_ssh_key(bob.id, key.id, "stolen")
    assert not store.delete_ssh_key(bob.id, key.id)
    assert store.list_ssh_keys(alice.id) == [key]

    assert store.relabel_ssh_key(alice.id, key.id, None)
    assert store.get_ssh_key("SHA256:one") == replace(key, label=None)
    assert store.delete_ssh_key(alice.id, key.id)
    assert not store.delete_ssh_key(alice.id, key.id)
    assert not store.relabel_ssh_key(alice.id, key.id, "gone")
    assert store.list_ssh_keys(alice.id) == []


# -- bans and audit ----------------------------------------------------------------------------


def test_add_bans(store):
    alice = store.create_user("alice", "", 0)
    before = time.time_ns() // 1_000_000
    user_ban = store.add_user_ban(alice.id, "alice", "spam", True, None, "admin")
    assert isinstance(user_ban, BanRow)
    assert user_ban == BanRow(
        user_ban.id, "user", alice.id, "alice", None, "spam", True, user_ban.banned_at, None, "admin"
    )
    assert user_ban.banned_at >= before
    nick_ban = store.add_user_ban(None, "mallory", "flood", False, user_ban.banned_at + 1000, "admin")
    ip_ban = store.add_ip_ban("10.0.0.0/8", "abuse", None, "root")
    assert ip_ban == BanRow(ip_ban.id, "ip", None, None, "10.0.0.0/8", "abuse", False, ip_ban.banned_at, None, "root")
    assert store.list_bans(False, user_ban.banned_at) == [user_ban, nick_ban, ip_ban]
    assert all(isinstance(b.shadowban, bool) for b in store.list_bans(True, 0))
    with pytest.raises(StorageError):
        store.add_user_ban(9999, None, "no such user", False, None, "admin")


def test_expired_bans_are_listed_only_on_request(store):
    now = 1_000_000
    expired = store.add_user_ban(None, "old", "r", False, now - 1, "admin")
    ends_now = store.add_ip_ban("192.0.2.1/32", "r", now, "admin")
    later = store.add_user_ban(None, "later", "r", False, now + 1, "admin")
    permanent = store.add_ip_ban("198.51.100.0/24", "r", None, "admin")
    assert store.list_bans(False, now) == [later, permanent]
    assert store.list_bans(True, now) == [expired, ends_now, later, permanent]
    assert store.active_ip_bans(now) == [permanent]
    assert store.active_ip_bans(now - 1) == [ends_now, permanent]
    assert store.active_user_ban(None, "old", now) is None
    assert store.active_user_ban(None, "later", now) == later


def test_active_user_ban_matches_id_or_nickname_newest_first(store):
    alice = store.create_user("alice", "", 0)
    bob = store.create_user("bob", "", 0)
    by_id = store.add_user_ban(alice.id, None, "first", False, None, "admin")
    assert store.active_user_ban(alice.id, "alice", 0) == by_id
    assert store.active_user_ban(alice.id, None, 0) == by_id
    assert store.active_user_ban(None, "alice", 0) is None
    by_nickname = store.add_user_ban(None, "alice", "second", True, None, "admin")
    assert store.active_user_ban(alice.id, "alice", 0) == by_nickname
    assert store.active_user_ban(None, "alice", 0) == by_nickname
    assert store.active_user_ban(bob.id, "alice", 0) == by_nickname
    assert store.active_user_ban(bob.id, "bob", 0) is None
    assert store.active_user_ban(None, "Alice", 0) is None
    assert store.active_user_ban(None, None, 0) is None
    store.add_ip_ban("203.0.113.7/32", "ip bans never match users", None, "admin")
    assert store.active_user_ban(None, None, 0) is None


def test_remove_user_bans_removes_only_active_matching_ones(store):
    alice = store.create_user("alice", "", 0)
    now = 1_000_000
    by_id = store.add_user_ban(alice.id, None, "r", False, None, "admin")
    by_nickname = store.add_user_ban(None, "alice", "r", False, now + 1, "admin")
    expired = store.add_user_ban(alice.id, "alice", "r", False, now, "admin")
    other = store.add_user_ban(None, "bob", "r", False, None, "admin")
    ip_ban = store.add_ip_ban("10.0.0.1/32", "r", None, "admin")
    assert store.list_bans(False, now) == [by_id, by_nickname, other, ip_ban]

    assert store.remove_user_bans(alice.id, "alice", now) == 2
    assert store.list_bans(True, now) == [expired, other, ip_ban]
    assert store.remove_user_bans(alice.id, "alice", now) == 0
    assert store.remove_user_bans(None, None, now) == 0

    again = store.add_user_ban(alice.id, None, "r", False, None, "admin")
    assert store.remove_user_bans(None, "alice", now) == 0
    assert store.remove_user_bans(alice.id, None, now) == 1
    assert store.list_bans(True, now) == [expired, other, ip_ban]
    assert again.id > ip_ban.id


def test_remove_ip_bans_exact_and_active_only(store):
    now = 1_000_000
    active = store.add_ip_ban("10.0.0.0/8", "r", None, "admin")
    expired = store.add_ip_ban("10.0.0.0/8", "r", now, "admin")
    narrower = store.add_ip_ban("10.0.0.0/16", "r", None, "admin")
    user_ban = store.add_user_ban(None, "10.0.0.0/8", "a nickname, not an address", False, None, "admin")
    assert store.active_ip_bans(now) == [active, narrower]
    assert store.remove_ip_bans("10.0.0.0/8", now) == 1
    assert store.list_bans(True, now) == [expired, narrower, user_ban]
    assert store.remove_ip_bans("10.0.0.0/8", now) == 0


def test_log_admin_action(store, db_path):
    before = time.time_ns() // 1_000_000
    store.log_admin_action(1, "root", "delete_channel", "#old")
    store.log_admin_action(2, "admin", "ban_user", "alice: spam")
    rows = sql(db_path, "SELECT id, admin_user_id, admin_nickname, action, details, performed_at FROM AdminAction")
    assert [row[1:5] for row in rows] == [
        (1, "root", "delete_channel", "#old"),
        (2, "admin", "ban_user", "alice: spam"),
    ]
    assert rows[0][0] < rows[1][0]
    assert all(row[5] >= before for row in rows)


# -- channel deletion and read state -----------------------------------------------------------


def test_delete_channel_removes_messages_and_read_state(store, db_path):
    general, tech = channel_id(store, "general"), channel_id(store, "tech")
    alice = store.create_user("alice", "", 0)
    root, m = build_thread(store, general)
    in_sub = post(store, general, subchannel=4)
    survivor = post(store, tech)
    store.set_read_state(alice.id, general, None, 5)
    store.set_read_state(alice.id, general, 4, 6)
    store.set_read_state(alice.id, tech, None, 7)
    row = store.get_channel(general)

    assert store.delete_channel(general) == row
    assert store.get_channel(general) is None
    assert [c.name for c in store.list_channels()] == ["chat", "tech"]
    for message in (root, in_sub, *m.values()):
        assert store.get_message(message.id) is None
    assert store.get_message(survivor.id) == survivor
    assert sql(db_path, f"SELECT COUNT(*) FROM Message WHERE channel_id = {general}") == [(0,)]
    assert store.read_state(alice.id, general, None) == 0
    assert sql(db_path, "SELECT channel_id, last_read_at FROM ReadState") == [(tech, 7)]
    assert store.delete_channel(general) is None


def test_read_state_upserts_per_user_channel_and_subchannel(store):
    general, tech = channel_id(store, "general"), channel_id(store, "tech")
    alice = store.create_user("alice", "", 0)
    bob = store.create_user("bob", "", 0)
    assert store.read_state(alice.id, general, None) == 0
    store.set_read_state(alice.id, general, None, 100)
    store.set_read_state(alice.id, general, 3, 300)
    store.set_read_state(bob.id, general, None, 900)
    store.set_read_state(alice.id, general, None, 150)
    assert store.read_state(alice.id, general, None) == 150
    assert store.read_state(alice.id, general, 3) == 300
    assert store.read_state(alice.id, general, 4) == 0
    assert store.read_state(alice.id, tech, None) == 0
    assert store.read_state(bob.id, general, None) == 900
    # Moving backwards is the client's choice (e.g. "mark unread").
    store.set_read_state(alice.id, general, 3, 50)
    assert store.read_state(alice.id, general, 3) == 50
    with pytest.raises(StorageError):
        store.set_read_state(alice.id, 9999, None, 1)


def test_count_unread_in_channel(store):
    general, tech = channel_id(store, "general"), channel_id(store, "tech")
    old_root = post(store, general)
    wait_next_ms(old_root.created_at)
    root = post(store, general)
    reply = post(store, general, parent=old_root.id)
    post(store, general, parent=reply.id)
    gone = post(store, general)
    store.soft_delete_message(gone.id)
    sub_root = post(store, general, subchannel=5)
    post(store, general, subchannel=5, parent=sub_root.id)
    post(store, tech)

    assert store.count_unread_in_channel(general, None, 0) == 4
    assert store.count_unread_in_channel(general, None, old_root.created_at) == 3
    assert store.count_unread_in_channel(general, None, root.created_at - 1) == 3
    assert store.count_unread_in_channel(general, 5, 0) == 2
    assert store.count_unread_in_channel(general, 6, 0) == 0
    assert store.count_unread_in_channel(tech, None, 0) == 1
    last = max(m.created_at for m in store.list_thread(old_root.id, 0, None, None))
    assert store.count_unread_in_channel(general, None, last) == 0


def test_count_unread_in_thread_counts_root_and_all_replies(store):
    general = channel_id(store, "general")
    root, m = build_thread(store, general)
    other = post(store, general)
    post(store, general, parent=other.id)
    assert store.count_unread_in_thread(root.id, 0) == 8
    store.soft_delete_message(m["a1"].id)
    assert store.count_unread_in_thread(root.id, 0) == 7
    store.soft_delete_message(root.id)
    assert store.count_unread_in_thread(root.id, 0) == 6
    assert store.count_unread_in_thread(other.id, 0) == 2
    assert store.count_unread_in_thread(m["a"].id, 0) == 0
    wait_next_ms(max(r.created_at for r in m.values()))
    late = post(store, general, parent=m["a1x"].id)
    assert store.count_unread_in_thread(root.id, late.created_at - 1) == 1
    assert store.count_unread_in_thread(root.id, late.created_at) == 0


# -- discovered servers ------------------------------------------------------------------------


def register_server(store: Store, hostname: str, port: int, now_ms: int, name: str = "Listed", **fields):
    values = {"description": "A server", "max_users": 0, "is_public": True, "channel_count": 3,
              "source_ip": "192.0.2.1", **fields}
    store.register_server(hostname, port, name, values["description"], values["max_users"], values["is_public"],
                          values["channel_count"], values["source_ip"], now_ms)


def test_registered_server_is_listed_with_every_field(store):
    register_server(store, "chat.example.org", 7000, 5_000, name="Example", description="Chat here",
                    max_users=50, is_public=False, channel_count=8, source_ip="2001:db8::1")
    (row,) = store.list_discovered_servers(10, 0)
    assert row == DiscoveredServerRow(
        id=row.id, hostname="chat.example.org", port=7000, name="Example", description="Chat here", user_count=0,
        max_users=50, uptime_seconds=0, is_public=False, channel_count=8, last_seen=5_000,
        source_ip="2001:db8::1", created_at=5_000,
    )


def test_registering_again_updates_the_listing_but_keeps_live_figures(store):
    register_server(store, "a.example", 6465, 1_000, name="Old")
    assert store.record_heartbeat("a.example", 6465, 12, 3_600, 5, 2_000)
    register_server(store, "a.example", 6465, 3_000, name="New", max_users=9, source_ip="192.0.2.9")
    (row,) = store.list_discovered_servers(10, 0)
    assert (row.name, row.max_users, row.source_ip, row.last_seen) == ("New", 9, "192.0.2.9", 3_000)
    assert (row.user_count, row.uptime_seconds, row.created_at) == (12, 3_600, 1_000)


def test_the_same_host_on_another_port_is_another_server(store):
    register_server(store, "a.example", 6465, 1_000)
    register_server(store, "a.example", 7000, 1_000)
    assert sorted(row.port for row in store.list_discovered_servers(10, 0)) == [6465, 7000]


def test_heartbeat_of_an_unlisted_server_changes_nothing(store):
    register_server(store, "a.example", 6465, 1_000)
    assert not store.record_heartbeat("a.example", 6466, 1, 1, 1, 2_000)
    assert not store.record_heartbeat("b.example", 6465, 1, 1, 1, 2_000)
    assert not store.mark_server_seen("b.example", 6465, 2_000)
    assert [row.last_seen for row in store.list_discovered_servers(10, 0)] == [1_000]


def test_listing_is_newest_first_fresh_only_and_limited(store):
    register_server(store, "old.example", 1, 1_000)
    register_server(store, "mid.example", 2, 2_000)
    register_server(store, "new.example", 3, 3_000)
    assert store.record_heartbeat("old.example", 1, 0, 0, 0, 4_000)
    assert store.mark_server_seen("mid.example", 2, 5_000)
    hosts = [row.hostname for row in store.list_discovered_servers(10, 0)]
    assert hosts == ["mid.example", "old.example", "new.example"]
    assert [row.hostname for row in store.list_discovered_servers(2, 0)] == ["mid.example", "old.example"]
    assert [row.hostname for row in store.list_discovered_servers(10, 4_000)] == ["mid.example", "old.example"]
    assert len(store.list_discovered_servers(None, 0)) == 3
    assert store.list_discovered_servers(0, 0) == []


def test_removing_servers_one_by_one_and_by_age(store):
    register_server(store, "a.example", 1, 1_000)
    register_server(store, "b.example", 2, 2_000)
    register_server(store, "c.example", 3, 3_000)
    assert store.remove_server("c.example", 3)
    assert not store.remove_server("c.example", 3)
    stale = store.remove_stale_servers(2_000)
    assert [(row.hostname, row.last_seen) for row in stale] == [("a.example", 1_000)]
    assert store.remove_stale_servers(2_000) == []
    assert [row.hostname for row in store.list_discovered_servers(10, 0)] == ["b.example"]


# -- health, errors, durability ----------------------------------------------------------------


def test_database_problems_are_reported_and_errors_raised_after_close(db_path):
    s = Store(db_path)
    assert s.database_problem(1.0) is None
    # The newest pages may live in the WAL; drop it so the damaged main file is what a reader sees.
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    with open(db_path, "r+b") as damaged:
        damaged.write(b"this is no longer a database header")
    assert "not a database" in s.database_problem(1.0)
    db_path.unlink()
    assert "unable to open" in s.database_problem(1.0)
    s.close()
    with pytest.raises(StorageError):
        s.list_channels()


DURABILITY_SCRIPT = """
import os, signal, sys
from superchat.storage import NewPost, Store
store = Store(sys.argv[1])
store.seed_channels([], 168)
(row,) = store.post_messages([NewPost(1, None, None, None, "dora", "survives")])
print(row.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_acknowledged_post_survives_kill_9(db_path):
    proc = subprocess.run(
        [sys.executable, "-c", DURABILITY_SCRIPT, str(db_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == -9, proc.stderr
    message_id = int(proc.stdout)
    s = Store(db_path)
    try:
        row = s.get_message(message_id)
        assert (row.author_nickname, row.content) == ("dora", "survives")
    finally:
        s.close()


# -- query plans -------------------------------------------------------------------------------


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


def test_reads_use_indexes(store, db_path):
    general = channel_id(store, "general")
    root, m = build_thread(store, general)
    reads = [
        lambda: store.list_root_messages(general, None, 10, None, None),
        lambda: store.list_root_messages(general, 4, 10, root.id, None),
        lambda: store.list_root_messages(general, None, 10, None, root.id),
        lambda: store.get_message(root.id),
        lambda: store.list_thread(m["a"].id, 0, None, None),
    ]
    for read in reads:
        statements = traced(store._reader, read)
        assert statements
        for statement in statements:
            details = plan(db_path, statement)
            assert not [d for d in details if d.startswith("SCAN")], (statement, details)
            assert all(d.startswith(("SEARCH", "CORRELATED SCALAR SUBQUERY")) for d in details), details

    (listing,) = traced(store._reader, reads[0])
    assert any("idx_message_roots" in d for d in plan(db_path, listing))
    assert any("COVERING INDEX idx_message_parent" in d for d in plan(db_path, listing))


def test_retention_uses_indexes(store, db_path):
    post(store, channel_id(store, "chat"))
    far_future = 10**15
    statements = traced(store._writer, lambda: store.delete_expired_messages(far_future))
    (select,) = [s for s in statements if s.lstrip().startswith("SELECT")]
    (delete,) = [s for s in statements if s.lstrip().startswith("DELETE")]
    for statement, index in ((select, "idx_message_root_age"), (delete, "idx_message_thread")):
        details = plan(db_path, statement)
        assert not [d for d in details if d.startswith("SCAN")], details
        assert any(index in d for d in details), details


def assert_searches(db_path, statement, index=None):
    details = plan(db_path, statement)
    assert not [d for d in details if d.startswith("SCAN")], (statement, details)
    assert any(d.startswith("SEARCH") for d in details), (statement, details)
    if index is not None:
        assert any(f"COVERING INDEX {index} " in d for d in details), (statement, details)


def test_account_ban_read_state_and_unread_reads_use_indexes(store, db_path):
    general = channel_id(store, "general")
    alice = store.create_user("alice", "", 0)
    key = store.add_ssh_key(alice.id, "SHA256:one", "ssh-ed25519 A", "ssh-ed25519", None)
    store.add_user_ban(alice.id, "alice", "r", False, None, "admin")
    store.set_read_state(alice.id, general, None, 1)
    root, m = build_thread(store, general)
    reads = [
        lambda: store.get_ssh_key(key.fingerprint),
        lambda: store.list_ssh_keys(alice.id),
        lambda: store.active_user_ban(alice.id, "alice", 0),
        lambda: store.active_user_ban(None, "alice", 0),
        lambda: store.read_state(alice.id, general, None),
    ]
    for read in reads:
        (statement,) = traced(store._reader, read)
        assert_searches(db_path, statement)

    for read, index in (
        (lambda: store.count_unread_in_channel(general, None, 0), "idx_message_unread"),
        (lambda: store.count_unread_in_channel(general, 3, 0), "idx_message_unread"),
        (lambda: store.count_unread_in_thread(root.id, 0), "idx_message_thread_unread"),
    ):
        (statement,) = traced(store._reader, read)
        assert_searches(db_path, statement, index)


def test_deleting_a_user_or_channel_uses_indexes(store, db_path):
    general = channel_id(store, "general")
    alice = store.create_user("alice", "", 0)
    store.post_messages([new_post(general, user=alice.id)])
    statements = traced(store._writer, lambda: store.delete_user(alice.id))
    (anonymise,) = [s for s in statements if s.lstrip().startswith("UPDATE")]
    # The trace repeats a statement once per foreign-key action it runs.
    (delete,) = {s for s in statements if s.lstrip().startswith("DELETE")}
    assert any("idx_message_author" in d for d in plan(db_path, anonymise))
    # The plan of a DELETE lists the lookups its foreign-key actions make in SSHKey, Ban and ReadState.
    assert_searches(db_path, anonymise)
    assert_searches(db_path, delete)

    statements = traced(store._writer, lambda: store.delete_channel(general))
    (delete,) = {s for s in statements if s.lstrip().startswith("DELETE")}
    assert_searches(db_path, delete)


def test_unread_counts_over_100000_messages_read_only_the_index(store, db_path):
    general, tech = channel_id(store, "general"), channel_id(store, "tech")
    base = 1_700_000_000_000
    rows = []
    # Threads of 100 messages; every 7th message is deleted and every 10th thread is in subchannel 2.
    for message_id in range(1, 100_001):
        root = message_id - (message_id - 1) % 100
        rows.append(
            (
                message_id,
                general,
                2 if root % 1000 == 1 else None,
                None if message_id == root else root,
                root,
                "n",
                "x",
                base + message_id,
                base + message_id if message_id % 7 == 0 else None,
            )
        )
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO Message (id, channel_id, subchannel_id, parent_id, thread_root_id, author_nickname, "
            "content, created_at, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    post(store, tech)

    def expected(since, subchannel=None, thread=None):
        return sum(
            1
            for (_, _, sub, _, root, _, _, created_at, deleted_at) in rows
            if created_at > since and deleted_at is None and (sub == subchannel if thread is None else root == thread)
        )

    since = base + 40_000
    counts = [
        (lambda: store.count_unread_in_channel(general, None, since), expected(since), "idx_message_unread"),
        (lambda: store.count_unread_in_channel(general, 2, since), expected(since, 2), "idx_message_unread"),
        (
            lambda: store.count_unread_in_thread(40_001, since + 50),
            expected(since + 50, thread=40_001),
            "idx_message_thread_unread",
        ),
    ]
    assert [want for _, want, _ in counts] == [46_286, 5_143, 43]
    for count, want, index in counts:
        assert count() == want
        (statement,) = traced(store._reader, count)
        assert_searches(db_path, statement, index)


def test_shadowed_posts_are_listed_for_their_author_and_admins_only(store):
    general = channel_id(store, "general")
    root = post(store, general, content="visible root")
    hidden_root, hidden_reply, anonymous = store.post_messages([
        NewPost(general, None, None, 7, "troll", "hidden root", shadowed=True),
        NewPost(general, None, root.id, 7, "troll", "hidden reply", shadowed=True),
        NewPost(general, None, None, None, "ghost", "anonymous and hidden", shadowed=True),
    ])
    assert hidden_root.shadowed and store.get_message(hidden_reply.id).shadowed

    def roots(viewer):
        return ids(store.list_root_messages(general, None, 100, None, None, viewer))

    def replies(viewer):
        return ids(store.list_thread(root.id, 0, None, None, viewer))

    others = Viewer(user_id=8, nickname="member", sees_shadowed=False)
    assert roots(others) == [root.id] and replies(others) == []
    author = Viewer(user_id=7, nickname="troll", sees_shadowed=False)
    assert roots(author) == [root.id, hidden_root.id] and replies(author) == [hidden_reply.id]
    same_name_anonymous = Viewer(user_id=None, nickname="ghost", sees_shadowed=False)
    assert roots(same_name_anonymous) == [root.id, anonymous.id]
    admin = Viewer(user_id=1, nickname="boss", sees_shadowed=True)
    assert roots(admin) == roots(None) == [root.id, hidden_root.id, anonymous.id]
    # Nobody's counts include them: not the root's reply count, not the unread counts.
    assert store.list_root_messages(general, None, 100, None, None, admin)[0].reply_count == 0
    assert store.count_unread_in_channel(general, None, 0) == 1
    assert store.count_unread_in_thread(root.id, 0) == 1


def test_node_serials_grow_and_are_never_handed_out_again(db_path):
    store = Store(db_path)
    first, second = store.claim_node_serial("node-a"), store.claim_node_serial("node-a")
    store.close()
    assert 0 < first < second
    assert sql(db_path, "SELECT id, node_id FROM node_runs ORDER BY id") == [(first, "node-a"), (second, "node-a")]
    # Even when the newest runs are forgotten, their numbers stay used.
    sql(db_path, "DELETE FROM node_runs")
    reopened = Store(db_path)
    try:
        assert reopened.claim_node_serial("node-b") > second
    finally:
        reopened.close()


def test_migrates_a_version_4_database_to_node_serials(db_path, monkeypatch):
    old_database(db_path, monkeypatch, version=4)
    s = Store(db_path)
    try:
        assert sql(db_path, "PRAGMA user_version") == [(LATEST,)]
        assert s.claim_node_serial("node-a") == 1
    finally:
        s.close()
