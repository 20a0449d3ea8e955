"""Posting: batches, their transaction, and what survives kill -9."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from superchat.storage import NewPost, PostRejected, StorageError, Store

from .helpers import REPO_ROOT, channel_id, ids, new_post, post, sql


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
