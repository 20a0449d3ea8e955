"""Shadowbans: the author's posts reach only the author and admins."""

from __future__ import annotations

import time

import pytest

from superchat.protocol import messages as m
from tests.client import Client

from .helpers import (
    PASSWORD,
    ban_user,
    drain,
    log_line,
    ping,
    registered,
    signed_in_admin,
    subscribed,
)

pytestmark = pytest.mark.timeout(60)


def test_shadowban_hides_posts_from_everyone_but_author_and_admins(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    troll, troll_id = registered(open_client, srv, "troll", source="127.0.0.2")
    general = admin.channel_id("general")
    watcher = subscribed(open_client(srv, "watcher", source="127.0.0.3"), general)
    member, _ = registered(open_client, srv, "member", source="127.0.0.4")
    subscribed(member, general)
    subscribed(admin, general)
    subscribed(troll, general)

    answer = ban_user(admin, nickname="troll", reason="trolling", shadowban=True)
    assert answer.success and answer.message == "User troll banned successfully"
    troll.assert_silent(0.3)  # not told, not expelled
    ping(troll)

    message_id = troll.post(general, "nobody sees this")  # acknowledged normally
    seen = troll.expect(m.NewMessage)
    assert (seen.id, seen.content, seen.author_user_id) == (message_id, "nobody sees this", troll_id)
    assert admin.expect(m.NewMessage).id == message_id
    watcher.assert_silent(0.5)
    member.assert_silent(0.1)

    # A new login of the shadowbanned account is allowed and stays shadowbanned.
    other = open_client(srv, source="127.0.0.5")
    assert other.login("troll", PASSWORD).success
    subscribed(other, general)
    second_id = other.post(general, "still hidden")
    assert other.expect(m.NewMessage).id == second_id
    assert admin.expect(m.NewMessage).id == second_id
    watcher.assert_silent(0.5)
    member.assert_silent(0.1)
    log_line(srv, rf"Admin boss banned user troll \(ban_id={answer.ban_id}.*shadowban=True")

    # Lifted: everyone sees the troll's posts again.
    admin.send(m.UnbanUser(nickname="troll"))
    assert admin.expect(m.UserUnbanned).success
    drain(troll)  # whether the author's other session saw "still hidden" is not this test's concern
    visible = troll.post(general, "visible again")
    for session in (troll, admin, watcher, member, other):
        assert session.expect(m.NewMessage).id == visible


def _listed(client: Client, channel_id: int, parent_id: int | None = None) -> dict[int, m.MessageEntry]:
    client.send(m.ListMessages(channel_id=channel_id, limit=100, parent_id=parent_id))
    return {entry.id: entry for entry in client.expect(m.MessageList).messages}


def test_shadowed_posts_stay_out_of_history_and_edit_notices_for_everyone_else(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    troll, _ = registered(open_client, srv, "troll", source="127.0.0.2")
    member, _ = registered(open_client, srv, "member", source="127.0.0.3")
    general = admin.channel_id("general")
    topic = member.post(general, "a fair question")
    assert ban_user(admin, nickname="troll", reason="trolling", shadowban=True).success

    hidden_root = troll.post(general, "hidden root")
    hidden_reply = troll.post(general, "hidden reply", parent_id=topic)
    # Others' history: neither post, and the reply is not counted.
    roots = _listed(member, general)
    assert hidden_root not in roots and roots[topic].reply_count == 0
    assert _listed(member, general, parent_id=topic) == {}
    # The author and the admins see both, as they saw them live.
    for insider in (troll, admin):
        assert hidden_root in _listed(insider, general)
        assert hidden_reply in _listed(insider, general, parent_id=topic)

    # Edits of a shadowed post are not announced to the channel.
    for client in (member, admin):
        client.send(m.JoinChannel(channel_id=general))
        assert client.expect(m.JoinResponse).success
    troll.send(m.EditMessage(message_id=hidden_root, new_content="hidden, edited"))
    assert troll.expect(m.MessageEdited).message_id == hidden_root
    assert admin.expect(m.MessageEdited).new_content == "hidden, edited"
    member.assert_silent(0.3)

    # Lifting the ban does not publish what was posted under it.
    admin.send(m.UnbanUser(nickname="troll"))
    assert admin.expect(m.UserUnbanned).success
    assert hidden_root not in _listed(member, general)
    shown = troll.post(general, "posted after the ban")
    assert shown in _listed(member, general)


def test_an_edit_under_a_shadowban_publishes_nothing(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    troll, _ = registered(open_client, srv, "troll", source="127.0.0.2")
    member, _ = registered(open_client, srv, "member", source="127.0.0.3")
    general = admin.channel_id("general")
    subscribed(member, general)
    earlier = troll.post(general, "an innocent post")
    assert member.expect(m.NewMessage).id == earlier
    member.send(m.JoinChannel(channel_id=general))
    assert member.expect(m.JoinResponse).success
    assert ban_user(admin, nickname="troll", reason="spam", shadowban=True).success

    troll.send(m.EditMessage(message_id=earlier, new_content="SPAM"))
    assert troll.expect(m.MessageEdited).new_content == "SPAM"  # the author notices nothing
    member.assert_silent(0.3)
    assert earlier not in _listed(member, general)
    assert _listed(admin, general)[earlier].content == "SPAM"


def test_expired_shadowban_no_longer_hides_posts_of_a_live_session(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    troll, _ = registered(open_client, srv, "troll", source="127.0.0.2")
    general = admin.channel_id("general")
    watcher = subscribed(open_client(srv, "watcher", source="127.0.0.3"), general)
    assert ban_user(admin, nickname="troll", reason="brief", shadowban=True, duration_seconds=1).success
    troll.post(general, "hidden")
    watcher.assert_silent(0.3)
    time.sleep(1.5)
    visible = troll.post(general, "visible after expiry")
    assert watcher.expect(m.NewMessage, timeout=2).id == visible
