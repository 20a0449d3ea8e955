"""Messages: pages of roots, threads, edits, deletions, retention, shadowed posts."""

from superchat.storage import NewPost, Viewer

from .helpers import HOUR_MS, build_thread, channel_id, ids, new_post, post, sql, wait_next_ms


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
