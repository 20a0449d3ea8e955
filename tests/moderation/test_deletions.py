"""DELETE_USER and DELETE_CHANNEL."""

from __future__ import annotations

import time

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import UNSOLICITED, Client

from .helpers import (
    ADMIN_SETTINGS,
    PASSWORD,
    assert_expelled,
    channel_names,
    closes_quietly,
    drain,
    list_roots,
    log_line,
    ping,
    registered,
    signed_in_admin,
    subscribed,
    try_post,
)

pytestmark = pytest.mark.timeout(60)


def test_delete_user(srv, open_client):
    admin, admin_id = signed_in_admin(open_client, srv)
    victim, victim_id = registered(open_client, srv, "victim", source="127.0.0.2")
    victim_too = open_client(srv, source="127.0.0.3")
    assert victim_too.login("victim", PASSWORD).success
    anon = open_client(srv, "anon", source="127.0.0.4")
    friend, friend_id = registered(open_client, srv, "friend", source="127.0.0.5")
    silent = open_client(srv, source="127.0.0.6")
    general = admin.channel_id("general")
    root = victim.post(general, "my root post")
    reply = victim.post(general, "my reply", parent_id=root)
    kept = friend.post(general, "friend's post")
    subscribed(victim, general)

    admin.send(m.DeleteUser(user_id=987654))
    assert admin.expect(m.UserDeleted) == m.UserDeleted(success=False, message="User not found")
    admin.send(m.DeleteUser(user_id=admin_id))
    assert admin.expect(m.UserDeleted) == m.UserDeleted(success=False, message="Cannot delete your own account")
    for client in (victim, victim_too, anon, friend, silent):
        client.assert_silent(0.1)

    admin.send(m.DeleteUser(user_id=victim_id))
    done = admin.expect(m.UserDeleted)
    assert done == m.UserDeleted(
        success=True, message="User 'victim' deleted successfully (messages anonymized, 2 sessions disconnected)")
    admin.assert_silent(0.3)  # told once
    for session in (victim, victim_too):
        assert_expelled(session, "deleted")  # and no USER_DELETED after the DISCONNECT
    for session in (anon, friend, silent):
        assert session.expect(m.UserDeleted) == done
        ping(session)
    log_line(srv, rf"Admin boss deleted user victim \(user_id={victim_id}\)")

    # The messages stay, anonymous now.
    entries = {e.id: e for e in list_roots(anon, general)}
    assert (entries[root].author_nickname, entries[root].author_user_id) == ("~victim", None)
    assert entries[root].content == "my root post"
    assert (entries[kept].author_nickname, entries[kept].author_user_id) == ("friend", friend_id)
    (thread_reply,) = list_roots(anon, general, parent_id=root)
    assert (thread_reply.id, thread_reply.author_nickname, thread_reply.author_user_id) == (reply, "~victim", None)

    # The account is gone: no login, no second deletion; the nickname is free for anyone.
    with Client(srv.port, source="127.0.0.7") as again:
        again.handshake()
        refused = again.login("victim", PASSWORD)
        assert (refused.success, refused.message) == (False, "Invalid credentials")
        new_id = again.register("victim", "q" * 44)
        assert new_id != victim_id
        again.post(general, "a new victim")
    admin.send(m.DeleteUser(user_id=victim_id))
    assert admin.expect(m.UserDeleted) == m.UserDeleted(success=False, message="User not found")
    entries = {e.id: e for e in list_roots(anon, general)}
    assert entries[root].author_user_id is None  # not re-attributed to the new owner of the nickname


def test_login_racing_delete_user_does_not_sign_in_the_deleted_account(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    owner, victim_id = registered(open_client, srv, "victim", source="127.0.0.2")
    owner.close()
    racer = open_client(srv, source="127.0.0.3")
    racer.send(m.AuthRequest(nickname="victim", password=PASSWORD))
    time.sleep(0.005)  # the login is in its password check (bcrypt, tens of ms) when the deletion arrives
    admin.send(m.DeleteUser(user_id=victim_id))
    assert admin.expect(m.UserDeleted).success
    reply = racer.expect(m.AuthResponse, skip=(*UNSOLICITED, m.UserDeleted))
    if reply.success:
        closes_quietly(racer)  # signed in a moment too late: must then be cut off like the account's other sessions
    else:
        ping(racer)


def test_delete_channel(start_server, open_client, tmp_path):
    root = tmp_path / "channels"
    settings = {**ADMIN_SETTINGS, "limits": {"max_thread_subscriptions": 1, "max_channel_subscriptions": 2}}
    srv = start_server(settings, root=root)
    admin, _ = signed_in_admin(open_client, srv)
    tech = admin.channel_id("tech")
    general = admin.channel_id("general")
    random_channel = admin.channel_id("random")

    subscriber = open_client(srv, "subscriber", source="127.0.0.2")
    subscribed(subscriber, tech)
    subscribed(subscriber, general)
    member, _ = registered(open_client, srv, "member", source="127.0.0.3")
    member.send(m.JoinChannel(channel_id=tech))
    assert member.expect(m.JoinResponse).success
    follower = open_client(srv, "follower", source="127.0.0.4")
    nobody = open_client(srv, source="127.0.0.5")

    thread = member.post(tech, "a thread in tech")
    reply = member.post(tech, "a reply", parent_id=thread)
    member.post(tech, "a reply to the reply", parent_id=reply)
    follower.subscribe_thread(thread)
    for client in (subscriber, follower, admin, member, nobody):
        drain(client)

    admin.send(m.DeleteChannel(channel_id=987654, reason="typo"))
    assert admin.expect(m.ChannelDeleted) == m.ChannelDeleted(
        success=False, channel_id=987654, message="Channel not found")

    admin.send(m.DeleteChannel(channel_id=tech, reason="off topic"))
    expected = m.ChannelDeleted(success=True, channel_id=tech, message="Channel 'tech' deleted successfully")
    for client in (admin, subscriber, member, follower, nobody):
        assert client.expect(m.ChannelDeleted) == expected
    admin.assert_silent(0.3)  # once
    line = log_line(srv, rf"Admin boss deleted channel tech \(channel_id={tech}")
    assert "off topic" in line

    # The channel is gone for everyone; nothing crashed.
    for client in (admin, subscriber, member, follower, nobody):
        ping(client)
        assert "tech" not in channel_names(client)
    assert try_post(member, tech, "into the void").error_code == ErrorCode.DATABASE_ERROR
    assert try_post(member, tech, "reply into the void", parent_id=thread).error_code == ErrorCode.DATABASE_ERROR
    assert list_roots(member, tech) == []
    assert list_roots(member, tech, parent_id=thread) == []
    member.send(m.JoinChannel(channel_id=tech))
    assert member.expect(m.JoinResponse) == m.JoinResponse(success=False, channel_id=tech, message="Channel not found")
    member.send(m.LeaveChannel(channel_id=tech))
    assert member.expect(m.LeaveResponse).success is False  # the membership went with the channel
    subscriber.send(m.SubscribeChannel(channel_id=tech))
    subscriber.expect_error(ErrorCode.CHANNEL_NOT_FOUND)

    # The survivors keep working, and their subscriptions to the deleted channel no longer count.
    posted = member.post(general, "general still works")
    assert subscriber.expect(m.NewMessage).id == posted
    subscribed(subscriber, random_channel)  # at the limit of 2 only if tech still counted
    other_thread = member.post(random_channel, "a thread in random")
    assert subscriber.expect(m.NewMessage).id == other_thread
    follower.subscribe_thread(other_thread)  # at the limit of 1 only if the deleted thread still counted
    answer = member.post(random_channel, "answer", parent_id=other_thread)
    assert follower.expect(m.NewMessage).id == answer
    follower.assert_silent(0.2)

    # A restart does not bring the seeded channel back.
    for client in (admin, subscriber, member, follower, nobody):
        client.close()
    srv.stop()
    srv = start_server(settings, root=root)
    again = open_client(srv)
    names = channel_names(again)
    assert "tech" not in names and {"general", "random", "chat"} <= names
    assert list_roots(again, tech) == []


def test_delete_channel_with_many_threads_and_subscribers(start_server, open_client):
    """A busier channel: many threads and replies, subscribers on several of them."""
    srv = start_server({**ADMIN_SETTINGS, "limits": {"message_rate_limit": 1000}})
    admin, _ = signed_in_admin(open_client, srv)
    random_channel = admin.channel_id("random")
    author = open_client(srv, "author", source="127.0.0.2")
    roots = [author.post(random_channel, f"root {n}") for n in range(20)]
    for root in roots:
        parent = root
        for depth in range(3):
            parent = author.post(random_channel, f"reply {depth}", parent_id=parent)
    readers = [open_client(srv, f"reader{n}", source=f"127.0.0.{3 + n}") for n in range(4)]
    for n, reader in enumerate(readers):
        subscribed(reader, random_channel)
        reader.subscribe_thread(roots[n])
    admin.send(m.DeleteChannel(channel_id=random_channel, reason=""))
    for client in (admin, author, *readers):
        reply = client.expect(m.ChannelDeleted)
        assert reply.success and reply.channel_id == random_channel
        ping(client)
    assert list_roots(admin, random_channel) == []
    assert list_roots(admin, random_channel, parent_id=roots[0]) == []
