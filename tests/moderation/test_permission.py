"""Admin messages from anyone but an admin are refused."""

from __future__ import annotations

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client

from .helpers import (
    ADMIN,
    DENIED,
    PASSWORD,
    assert_accepted,
    channel_names,
    ping,
    registered,
    settled_log,
)

pytestmark = pytest.mark.timeout(60)


def _denied_everything(client: Client, target_id: int, channel_id: int) -> None:
    requests = [
        (m.BanUser(nickname="target", reason="x", shadowban=False), m.UserBanned),
        (m.BanUser(user_id=target_id, reason="x", shadowban=True), m.UserBanned),
        (m.BanIP(ip_cidr="127.0.0.3", reason="x"), m.IPBanned),
        (m.UnbanUser(nickname="target"), m.UserUnbanned),
        (m.UnbanIP(ip_cidr="127.0.0.3"), m.IPUnbanned),
        (m.DeleteUser(user_id=target_id), m.UserDeleted),
        (m.DeleteChannel(channel_id=channel_id, reason="x"), m.ChannelDeleted),
    ]
    for request, answer_type in requests:
        client.send(request)
        answer = client.expect(answer_type)
        assert answer.success is False, (request, answer)
        assert answer.message == DENIED, (request, answer)
    client.send(m.ListBans(include_expired=True))
    assert client.expect_error(ErrorCode.PERMISSION_DENIED).message == DENIED
    ping(client)  # still connected


@pytest.mark.parametrize("who", ["no_nickname", "anonymous", "registered", "admin_nickname_unregistered"])
def test_admin_messages_are_refused_to_non_admins(srv, open_client, who):
    target, target_id = registered(open_client, srv, "target", source="127.0.0.3")
    general = target.channel_id("general")
    if who == "no_nickname":
        client = open_client(srv, source="127.0.0.2")
    elif who == "anonymous":
        client = open_client(srv, "anon", source="127.0.0.2")
    elif who == "registered":
        client, _ = registered(open_client, srv, "plain", source="127.0.0.2")
    else:  # the configured admin nickname, but not registered: anonymous sessions are never admins
        client = open_client(srv, ADMIN, source="127.0.0.2")
    _denied_everything(client, target_id, general)

    # Nothing happened: the target is connected, can post, can log in again; the address and channel remain.
    ping(target)
    target.post(general, "still here")
    with Client(srv.port, source="127.0.0.3") as again:
        again.handshake()
        assert again.login("target", PASSWORD).success
    assert "general" in channel_names(target)
    assert_accepted(srv, source="127.0.0.3")
    assert "] Admin " not in settled_log(srv, open_client)
