"""Read positions and unread counts."""

import pytest

from superchat.storage import StorageError

from .helpers import build_thread, channel_id, post, wait_next_ms


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
