"""Channels: seeding, creation, deletion."""

import pytest

from superchat.storage import ChannelExists, ChannelRow, Store

from .helpers import FORUM_SEEDS, build_thread, channel_id, post, sql


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
