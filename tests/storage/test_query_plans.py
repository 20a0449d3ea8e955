"""Every query reads through an index, on SQLite's own query plans."""

import sqlite3

from .helpers import assert_searches, build_thread, channel_id, new_post, plan, post, traced


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
