"""Preconditions are declared once per handler and checked by the dispatcher before the handler runs.

The table below is the protocol's rule book of who may send what; a handler that loses its
declaration, or gains one, fails the first test. The others send each guarded request from a session
that fails its precondition, over a real socket, and check the exact refusal and that nothing was done.
"""

from __future__ import annotations

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from superchat.server import dispatch, permissions
from tests.client import Client

pytestmark = pytest.mark.timeout(60)

PASSWORD = "p" * 44
ADMIN_ONLY = {m.BanUser, m.BanIP, m.UnbanUser, m.UnbanIP, m.ListBans, m.DeleteUser, m.DeleteChannel}
REGISTERED_ONLY = {m.CreateChannel, m.EditMessage, m.AddSSHKey, m.ListSSHKeys, m.UpdateSSHKeyLabel,
                   m.DeleteSSHKey, m.ChangePassword}
NICKNAME_REQUIRED = {m.RegisterUser, m.PostMessage, m.DeleteMessage}


def test_each_guarded_request_declares_its_precondition_and_no_other_does():
    declared: dict[str, set] = {"admin": set(), "registered": set(), "nickname": set()}
    kinds = {permissions.is_admin: "admin", permissions.is_registered: "registered",
             permissions.has_nickname: "nickname"}
    for cls, _, precondition in dispatch.ROUTES.values():
        if precondition is not None:
            declared[kinds[precondition.holds]].add(cls)
    assert declared == {"admin": ADMIN_ONLY, "registered": REGISTERED_ONLY, "nickname": NICKNAME_REQUIRED}


def _channels(client: Client) -> set[str]:
    client.send(m.ListChannels(from_channel_id=0, limit=0))
    return {channel.name for channel in client.expect(m.ChannelList).channels}


def test_an_anonymous_session_is_refused_what_needs_an_account_and_nothing_happens(server):
    with Client(server.port) as client:
        client.handshake("drifter")
        channel_id = client.channel_id("general")
        message_id = client.post(channel_id, "hello")
        client.send(m.CreateChannel(name="hideout", display_name="Hideout", description=None, channel_type=1,
                                    retention_hours=24))
        assert client.expect(m.ChannelCreated) == m.ChannelCreated(
            success=False, message="Only registered users can create channels. Please register or log in.")
        assert "hideout" not in _channels(client)

        client.send(m.EditMessage(message_id=message_id, new_content="changed"))
        client.expect_error(ErrorCode.AUTH_REQUIRED)
        client.send(m.ListSSHKeys())
        assert client.expect_error(ErrorCode.AUTH_REQUIRED).message == "Must be authenticated to list SSH keys"
        client.send(m.ChangePassword(old_password="", new_password=PASSWORD))
        assert client.expect_error(ErrorCode.AUTH_REQUIRED).message == "Must be authenticated to change password"

        client.send(m.ListMessages(channel_id=channel_id, subchannel_id=None, limit=10, before_id=None,
                                   parent_id=None, after_id=None))
        [stored] = [entry for entry in client.expect(m.MessageList).messages if entry.id == message_id]
        assert stored.content == "hello" and stored.edited_at is None


def test_a_session_without_a_nickname_is_refused_posting_deleting_and_registering(server):
    with Client(server.port) as author, Client(server.port) as nameless:
        author.handshake("author")
        nameless.handshake()
        channel_id = author.channel_id("general")
        message_id = author.post(channel_id, "mine")

        nameless.send(m.PostMessage(channel_id=channel_id, subchannel_id=None, parent_id=None, content="hi"))
        assert nameless.expect_error(ErrorCode.AUTH_REQUIRED).message == "Nickname required. Use SET_NICKNAME first."
        nameless.send(m.DeleteMessage(message_id=message_id))
        nameless.expect_error(ErrorCode.NICKNAME_REQUIRED)
        nameless.send(m.RegisterUser(password=PASSWORD))
        assert nameless.expect(m.RegisterResponse) == m.RegisterResponse(
            success=False, message="Must set nickname before registering")

        author.send(m.ListMessages(channel_id=channel_id, subchannel_id=None, limit=10, before_id=None,
                                   parent_id=None, after_id=None))
        contents = [entry.content for entry in author.expect(m.MessageList).messages]
        assert contents == ["mine"]


def test_a_registered_user_who_is_no_admin_gets_each_admin_requests_own_failure_reply(server):
    with Client(server.port) as client:
        client.handshake()
        user_id = client.register("plain", PASSWORD)
        requests = [
            (m.BanUser(nickname="someone", reason="x", shadowban=False), m.UserBanned(
                success=False, ban_id=0, message="Permission denied: admin access required")),
            (m.DeleteUser(user_id=user_id), m.UserDeleted(
                success=False, message="Permission denied: admin access required")),
            (m.DeleteChannel(channel_id=1, reason="x"), m.ChannelDeleted(
                success=False, channel_id=0, message="Permission denied: admin access required")),
        ]
        for request, refusal in requests:
            client.send(request)
            assert client.expect(type(refusal)) == refusal
        client.send(m.ListBans(include_expired=True))
        assert client.expect_error(ErrorCode.PERMISSION_DENIED).message == "Permission denied: admin access required"
        assert client.login("plain", PASSWORD).success  # the account is still there
