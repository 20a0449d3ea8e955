"""Helpers of the moderation tests, against the real server over real sockets.

The admin always connects from 127.0.0.1; victims and bystanders connect from other loopback addresses
(127.0.0.2 .. 127.0.0.9), so that IP bans never reach the admin.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import UNSOLICITED, Client, ConnectionClosed

ADMIN = "boss"


PASSWORD = "p" * 44  # any 40-50 byte string stands for the client's password hash


DENIED = "Permission denied: admin access required"


ADMIN_SETTINGS = {"server": {"admin_users": [ADMIN]}}


def registered(open_client, server, nickname: str, source: str | None = None, host: str = "127.0.0.1"):
    """A client registered as ``nickname``; returns (client, user_id)."""
    client = open_client(server, source=source, host=host)
    return client, client.register(nickname, PASSWORD)


def signed_in_admin(open_client, server, host: str = "127.0.0.1"):
    """The configured admin, its account made on the host as the operator makes it, signed in from
    127.0.0.1 (or ``host``); returns (client, user_id)."""
    user_id = server.create_admin(ADMIN, PASSWORD)
    client = open_client(server, host=host)
    assert client.login(ADMIN, PASSWORD).success
    return client, user_id


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ping(client: Client, stamp: int = 7) -> None:
    """The session is alive and answers in order."""
    client.send(m.Ping(timestamp=stamp))
    assert client.expect(m.Pong).client_timestamp == stamp


def drain(client: Client) -> None:
    """Discard whatever is queued for the client, up to the answer of a PING (bounded: recv times out)."""
    client.send(m.Ping(timestamp=1))
    while not isinstance(client.recv(), m.Pong):
        pass


def closes_quietly(client: Client, timeout: float = 3.0) -> None:
    """Only presence notifications, then the server closes the connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = client.recv(max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            return
        assert isinstance(msg, UNSOLICITED), f"expected the connection to close, got {msg!r}"


def assert_expelled(client: Client, *words: str) -> m.Error:
    """ERROR 3000 naming ``words``, then DISCONNECT with the same reason, then the connection closes at once."""
    error = client.expect_error(ErrorCode.PERMISSION_DENIED)
    for word in words:
        assert word in error.message, error
    bye = client.expect(m.Disconnect)
    assert bye.reason == error.message
    closes_quietly(client)
    return error


def assert_refused_at_connect(server, *words: str, source: str | None = None, host: str = "127.0.0.1") -> None:
    """A new connection gets SERVER_CONFIG, then ERROR 3000 naming ``words``, then is closed."""
    with Client(server.port, host=host, source=source) as client:
        assert isinstance(client.recv(), m.ServerConfig)
        error = client.recv()
        assert isinstance(error, m.Error) and error.error_code == ErrorCode.PERMISSION_DENIED, error
        for word in words:
            assert word in error.message, error
        with pytest.raises(ConnectionClosed):
            client.recv(3.0)


def assert_accepted(server, source: str | None = None, host: str = "127.0.0.1") -> None:
    with Client(server.port, host=host, source=source) as client:
        client.handshake()
        ping(client)


def ban_user(admin: Client, **fields) -> m.UserBanned:
    fields.setdefault("reason", "")
    admin.send(m.BanUser(**fields))
    return admin.expect(m.UserBanned)


def ban_ip(admin: Client, ip_cidr: str, reason: str = "", duration_seconds: int | None = None) -> m.IPBanned:
    admin.send(m.BanIP(ip_cidr=ip_cidr, reason=reason, duration_seconds=duration_seconds))
    return admin.expect(m.IPBanned)


def list_bans(admin: Client, include_expired: bool = False) -> list:
    admin.send(m.ListBans(include_expired=include_expired))
    return admin.expect(m.BanList).bans


def try_post(client: Client, channel_id: int, content: str, parent_id: int | None = None):
    """MESSAGE_POSTED or ERROR, whichever the server answers."""
    client.send(m.PostMessage(channel_id=channel_id, parent_id=parent_id, content=content))
    while True:
        reply = client.recv()
        if not isinstance(reply, UNSOLICITED):
            assert isinstance(reply, (m.MessagePosted, m.Error)), reply
            return reply


def list_roots(client: Client, channel_id: int, parent_id: int | None = None) -> list:
    client.send(m.ListMessages(channel_id=channel_id, limit=100, parent_id=parent_id))
    return client.expect(m.MessageList).messages


def channel_names(client: Client) -> set[str]:
    client.send(m.ListChannels(from_channel_id=0, limit=0))
    return {c.name for c in client.expect(m.ChannelList).channels}


def log_line(server, pattern: str, level: str = "INFO", timeout: float = 5.0) -> str:
    """The first ``level`` line of server.log matching ``pattern`` (a regex); waits a bounded time for it, as
    the server writes INFO lines out in batches."""
    regex = re.compile(rf"\[{level}\] .*" + pattern)
    deadline = time.monotonic() + timeout
    while True:
        text = server.log_text()
        for line in text.splitlines():
            if regex.search(line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no {level} line matching {pattern!r} in server.log:\n{text[-3000:]}")
        time.sleep(0.05)


def settled_log(server, open_client) -> str:
    """server.log once everything logged so far has been written: waits for a line logged after it."""
    marker = f"mark{time.monotonic_ns() % 10**12}"
    open_client(server, marker)
    log_line(server, rf"set nickname: {marker}$")
    return server.log_text()


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def subscribed(client: Client, channel_id: int) -> Client:
    client.subscribe_channel(channel_id)
    return client
