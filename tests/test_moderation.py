"""Moderation against the real server over real sockets: bans, shadowbans, IP bans, deletions, and their refusals.

The admin always connects from 127.0.0.1; victims and bystanders connect from other loopback addresses
(127.0.0.2 .. 127.0.0.9), so that IP bans never reach the admin.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from superchat.protocol import messages as m
from tests.client import UNSOLICITED, Client, ConnectionClosed

pytestmark = pytest.mark.timeout(60)

ADMIN = "boss"
PASSWORD = "p" * 44  # any 40-50 byte string stands for the client's password hash
DENIED = "Permission denied: admin access required"
PERMISSION_DENIED = 3000
DATABASE_ERROR = 9001
ADMIN_SETTINGS = {"server": {"admin_users": [ADMIN]}}


# ---- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def open_client():
    """``open_client(server, nickname=None, source=None, host="127.0.0.1")``: a handshaken client, closed at the end."""
    clients: list[Client] = []

    def open_(server, nickname: str | None = None, source: str | None = None, host: str = "127.0.0.1") -> Client:
        client = Client(server.port, host=host, source=source)
        clients.append(client)
        client.handshake(nickname)
        return client

    yield open_
    for client in clients:
        client.close()


@pytest.fixture
def srv(start_server):
    return start_server(ADMIN_SETTINGS)


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
    error = client.expect_error(PERMISSION_DENIED)
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
        assert isinstance(error, m.Error) and error.error_code == PERMISSION_DENIED, error
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


# ---- permission -------------------------------------------------------------------------------


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
    assert client.expect_error(PERMISSION_DENIED).message == DENIED
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


# ---- user bans --------------------------------------------------------------------------------


def test_ban_user_by_nickname_expels_live_sessions_and_blocks_login(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    victim, victim_id = registered(open_client, srv, "victim", source="127.0.0.2")
    second = open_client(srv, source="127.0.0.3")
    assert second.login("victim", PASSWORD).success
    bystander, _ = registered(open_client, srv, "bystander", source="127.0.0.4")
    general = bystander.channel_id("general")

    answer = ban_user(admin, nickname="victim", reason="spamming links", shadowban=False)
    assert answer.success and answer.ban_id > 0
    assert answer.message == "User victim banned successfully"
    for session in (victim, second):
        error = assert_expelled(session, "banned", "spamming links")
        assert "permanently" in error.message
    bystander.assert_silent(0.3)
    ping(bystander)
    bystander.post(general, "unaffected")
    ping(admin)

    with Client(srv.port, source="127.0.0.5") as retry:
        retry.handshake()
        refused = retry.login("victim", PASSWORD)
        assert not refused.success
        assert "banned" in refused.message and "spamming links" in refused.message
        ping(retry)  # a refused login leaves the session open

    line = log_line(srv, rf"Admin boss banned user victim \(ban_id={answer.ban_id}")
    assert "spamming links" in line


def test_banned_nickname_cannot_post_even_anonymously(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    answer = ban_user(admin, nickname="drifter", reason="ban evasion", shadowban=False)
    assert answer.success
    drifter = open_client(srv, "drifter", source="127.0.0.2")
    general = drifter.channel_id("general")
    drifter.send(m.PostMessage(channel_id=general, content="hello"))
    error = drifter.expect_error(PERMISSION_DENIED)
    assert "banned" in error.message and "ban evasion" in error.message
    assert list_roots(admin, general) == []
    ping(drifter)
    # Another nickname on the same connection is not banned.
    drifter.send(m.SetNickname(nickname="wanderer"))
    assert drifter.expect(m.NicknameResponse).success
    drifter.post(general, "hello again")


def test_ban_user_by_user_id_timed_expires(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    victim, victim_id = registered(open_client, srv, "victim", source="127.0.0.2")
    general = victim.channel_id("general")

    before = now_ms()
    answer = ban_user(admin, user_id=victim_id, reason="cool off", shadowban=False, duration_seconds=1)
    assert answer.success and answer.ban_id > 0
    assert answer.message == "User victim banned successfully"
    error = assert_expelled(victim, "banned", "cool off")
    assert "until " in error.message

    with Client(srv.port, source="127.0.0.3") as retry:
        retry.handshake()
        refused = retry.login("victim", PASSWORD)
        assert not refused.success and "banned" in refused.message and "cool off" in refused.message
    (ban,) = list_bans(admin)
    assert ban.user_id == victim_id and ban.nickname == "victim"
    assert abs(ban.banned_until - (before + 1000)) < 1000

    time.sleep(1.5)
    with Client(srv.port, source="127.0.0.3") as back:
        back.handshake()
        welcome = back.login("victim", PASSWORD)
        assert welcome.success and welcome.user_id == victim_id
        back.post(general, "I am back")
    assert list_bans(admin) == []
    assert [b.id for b in list_bans(admin, include_expired=True)] == [answer.ban_id]
    log_line(srv, rf"Admin boss banned user victim \(ban_id={answer.ban_id}.*cool off")


def test_expired_nickname_ban_no_longer_blocks_posting(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    assert ban_user(admin, nickname="drifter", reason="short", shadowban=False, duration_seconds=1).success
    drifter = open_client(srv, "drifter", source="127.0.0.2")
    general = drifter.channel_id("general")
    assert try_post(drifter, general, "too early").error_code == PERMISSION_DENIED
    time.sleep(1.5)
    drifter.post(general, "now it works")


def test_unban_user_restores_login(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    victim, victim_id = registered(open_client, srv, "victim", source="127.0.0.2")
    assert ban_user(admin, nickname="victim", reason="r1", shadowban=False).success
    assert_expelled(victim, "r1")

    # Lifted by user id although it was made by nickname: either identity names the same account.
    admin.send(m.UnbanUser(user_id=victim_id))
    lifted = admin.expect(m.UserUnbanned)
    assert lifted.success, lifted
    assert "unbanned successfully" in lifted.message and "1 bans removed" in lifted.message
    with Client(srv.port, source="127.0.0.2") as back:
        back.handshake()
        assert back.login("victim", PASSWORD).success
    log_line(srv, rf"Admin boss unbanned user (victim|user_id:{victim_id})")

    # And the other way round: banned by id, lifted by nickname.
    assert ban_user(admin, user_id=victim_id, reason="r2", shadowban=False).success
    admin.send(m.UnbanUser(nickname="victim"))
    assert admin.expect(m.UserUnbanned) == m.UserUnbanned(
        success=True, message="User victim unbanned successfully (1 bans removed)")

    for target in (m.UnbanUser(nickname="victim"), m.UnbanUser(user_id=victim_id), m.UnbanUser(nickname="nobody")):
        admin.send(target)
        assert admin.expect(m.UserUnbanned) == m.UserUnbanned(
            success=False, message="No active ban found for this user")
    admin.send(m.UnbanUser())
    assert admin.expect(m.UserUnbanned) == m.UserUnbanned(
        success=False, message="Must provide either UserID or Nickname")
    assert list_bans(admin) == []


def test_ban_user_refusals(srv, open_client):
    admin, admin_id = signed_in_admin(open_client, srv)
    for request in (dict(nickname=ADMIN), dict(user_id=admin_id), dict(user_id=admin_id, nickname="someone")):
        refused = ban_user(admin, reason="oops", shadowban=False, **request)
        assert refused == m.UserBanned(success=False, message="Cannot ban yourself"), request
    refused = ban_user(admin, user_id=987654, reason="ghost", shadowban=False)
    assert refused == m.UserBanned(success=False, message="User not found")
    refused = ban_user(admin, reason="nobody", shadowban=False)
    assert refused == m.UserBanned(success=False, message="Must provide either UserID or Nickname")
    assert list_bans(admin, include_expired=True) == []
    ping(admin)
    with Client(srv.port, source="127.0.0.2") as again:
        again.handshake()
        assert again.login(ADMIN, PASSWORD).success  # the admin is not banned


def test_ban_durations_that_cannot_be_stored_are_refused(srv, open_client):
    """0 s would record an already-expired ban that still cut sessions off; a duration beyond the 64-bit
    millisecond range used to fail with ERROR 9000 "Internal server error"."""
    admin, _ = signed_in_admin(open_client, srv)
    victim = open_client(srv, "victim", source="127.0.0.2")
    for duration in (0, 2**64 - 1, 2**63 // 1000, 100 * 366 * 24 * 3600 + 1):
        refused = ban_user(admin, nickname="victim", reason="r", shadowban=False, duration_seconds=duration)
        assert not refused.success and "Ban duration must be" in refused.message, (duration, refused)
        refused = ban_ip(admin, "127.0.0.2", reason="r", duration_seconds=duration)
        assert not refused.success and "Ban duration must be" in refused.message, (duration, refused)
    assert list_bans(admin, include_expired=True) == []
    ping(victim)  # nobody was cut off
    assert "Traceback" not in settled_log(srv, open_client)

    century = 100 * 366 * 24 * 3600
    assert ban_user(admin, nickname="victim", reason="long", shadowban=False, duration_seconds=century).success
    assert_expelled(victim, "long", "until ")
    (ban,) = list_bans(admin)
    assert abs(ban.banned_until - (ban.banned_at + century * 1000)) < 1000


# ---- shadowban ---------------------------------------------------------------------------------


def _subscribed(client: Client, channel_id: int) -> Client:
    client.subscribe_channel(channel_id)
    return client


def test_shadowban_hides_posts_from_everyone_but_author_and_admins(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    troll, troll_id = registered(open_client, srv, "troll", source="127.0.0.2")
    general = admin.channel_id("general")
    watcher = _subscribed(open_client(srv, "watcher", source="127.0.0.3"), general)
    member, _ = registered(open_client, srv, "member", source="127.0.0.4")
    _subscribed(member, general)
    _subscribed(admin, general)
    _subscribed(troll, general)

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
    _subscribed(other, general)
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
    _subscribed(member, general)
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
    watcher = _subscribed(open_client(srv, "watcher", source="127.0.0.3"), general)
    assert ban_user(admin, nickname="troll", reason="brief", shadowban=True, duration_seconds=1).success
    troll.post(general, "hidden")
    watcher.assert_silent(0.3)
    time.sleep(1.5)
    visible = troll.post(general, "visible after expiry")
    assert watcher.expect(m.NewMessage, timeout=2).id == visible


# ---- IP bans ----------------------------------------------------------------------------------


def test_ban_single_ip_expels_refuses_and_unban_restores(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    victim_named = open_client(srv, "flooder", source="127.0.0.2")
    victim_silent = open_client(srv, source="127.0.0.2")
    victim_registered, _ = registered(open_client, srv, "regular", source="127.0.0.2")
    bystander = open_client(srv, "neighbour", source="127.0.0.3")

    answer = ban_ip(admin, "127.0.0.2", reason="flooding")
    assert answer.success and answer.ban_id > 0
    assert answer.message == "IP 127.0.0.2/32 banned successfully"
    for session in (victim_named, victim_silent, victim_registered):
        error = assert_expelled(session, "banned", "flooding")
        assert "permanently" in error.message
    bystander.assert_silent(0.3)
    ping(bystander)
    ping(admin)

    assert_refused_at_connect(srv, "banned", "flooding", source="127.0.0.2")
    assert_accepted(srv, source="127.0.0.3")
    assert_accepted(srv, source="127.0.0.1")
    line = log_line(srv, rf"Admin boss banned IP 127\.0\.0\.2/32 \(ban_id={answer.ban_id}")
    assert "flooding" in line
    log_line(srv, r"Connection from 127\.0\.0\.2 refused: address banned", level="WARN")

    admin.send(m.UnbanIP(ip_cidr="127.0.0.2"))
    assert admin.expect(m.IPUnbanned) == m.IPUnbanned(
        success=True, message="IP 127.0.0.2/32 unbanned successfully (1 bans removed)")
    assert_accepted(srv, source="127.0.0.2")
    log_line(srv, r"Admin boss unbanned IP 127\.0\.0\.2/32")
    admin.send(m.UnbanIP(ip_cidr="127.0.0.2"))
    assert admin.expect(m.IPUnbanned) == m.IPUnbanned(success=False, message="No active ban found for this IP")


def test_ban_ipv4_range(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    inside = [open_client(srv, f"inside{n}", source=f"127.0.0.{n}") for n in (4, 5, 7)]
    outside = [open_client(srv, f"outside{n}", source=f"127.0.0.{n}") for n in (2, 3, 8)]

    # Ranges that contain the admin's own address are refused, whatever their spelling.
    for own in ("127.0.0.0/29", "127.0.0.1", "127.0.0.1/32", "127.0.0.0/8", "0.0.0.0/0", " 127.0.0.1/30 "):
        refused = ban_ip(admin, own, reason="self")
        assert not refused.success and "your own address" in refused.message, (own, refused)
    for bad in ("127.0.0.300", "127.0.0.0/33", "not-an-address", "127.0.0.0/29/1", "::1/129"):
        refused = ban_ip(admin, bad, reason="bad")
        assert refused == m.IPBanned(success=False, message=f"Invalid IP address or CIDR range: {bad}"), bad
    for empty in ("", "   "):
        assert ban_ip(admin, empty) == m.IPBanned(success=False, message="IP/CIDR address required")
    assert list_bans(admin, include_expired=True) == []
    for client in (*inside, *outside):
        ping(client)  # refusals touched nobody

    answer = ban_ip(admin, "127.0.0.5/30", reason="bad neighbourhood")  # host bits allowed: 127.0.0.4 - .7
    assert answer.success and answer.message == "IP 127.0.0.4/30 banned successfully"
    for client in inside:
        assert_expelled(client, "banned", "bad neighbourhood")
    for client in outside:
        client.assert_silent(0.1)
        ping(client)
    for n in (4, 6, 7):
        assert_refused_at_connect(srv, "bad neighbourhood", source=f"127.0.0.{n}")
    for n in (2, 3, 8):
        assert_accepted(srv, source=f"127.0.0.{n}")
    (ban,) = list_bans(admin)
    assert (ban.type, ban.ip_cidr) == ("ip", "127.0.0.4/30")
    log_line(srv, rf"Admin boss banned IP 127\.0\.0\.4/30 \(ban_id={answer.ban_id}")

    # UNBAN_IP names the range in any spelling that parses to it.
    admin.send(m.UnbanIP(ip_cidr="127.0.0.6/30"))
    assert admin.expect(m.IPUnbanned).success
    assert_accepted(srv, source="127.0.0.6")
    admin.send(m.UnbanIP(ip_cidr="bogus"))
    assert admin.expect(m.IPUnbanned) == m.IPUnbanned(success=False, message="Invalid IP address or CIDR range: bogus")
    admin.send(m.UnbanIP(ip_cidr=""))
    assert admin.expect(m.IPUnbanned) == m.IPUnbanned(success=False, message="IP/CIDR address required")


def test_ipv4_mapped_and_zoned_ranges_are_normalised(srv, open_client):
    """Peers are matched as plain IPv4 and without zone, so a ban spelt ::ffff:a.b.c.d must match a.b.c.d."""
    admin, _ = signed_in_admin(open_client, srv)
    victim = open_client(srv, "victim", source="127.0.0.2")
    for own in ("::ffff:127.0.0.1", "::ffff:127.0.0.0/104"):
        refused = ban_ip(admin, own, reason="self")
        assert not refused.success and "your own address" in refused.message, (own, refused)
    answer = ban_ip(admin, "::ffff:127.0.0.2", reason="mapped")
    assert answer.success and answer.message == "IP 127.0.0.2/32 banned successfully"
    assert_expelled(victim, "mapped")
    assert_refused_at_connect(srv, "mapped", source="127.0.0.2")
    admin.send(m.UnbanIP(ip_cidr="127.0.0.2/32"))
    assert admin.expect(m.IPUnbanned).success
    assert_accepted(srv, source="127.0.0.2")

    zoned = ban_ip(admin, "fe80::1%lo", reason="zoned")
    assert zoned.success and zoned.message == "IP fe80::1/128 banned successfully"
    assert [b.ip_cidr for b in list_bans(admin)] == ["fe80::1/128"]


def test_expired_ip_ban_no_longer_blocks(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    victim = open_client(srv, source="127.0.0.6")
    answer = ban_ip(admin, "127.0.0.6", reason="timeout", duration_seconds=1)
    assert answer.success
    error = assert_expelled(victim, "timeout")
    assert "until " in error.message
    assert_refused_at_connect(srv, "timeout", source="127.0.0.6")
    time.sleep(1.5)
    assert_accepted(srv, source="127.0.0.6")
    assert list_bans(admin) == []
    assert [b.ip_cidr for b in list_bans(admin, include_expired=True)] == ["127.0.0.6/32"]
    # An expired ban is history, not an active ban to lift.
    admin.send(m.UnbanIP(ip_cidr="127.0.0.6"))
    assert admin.expect(m.IPUnbanned) == m.IPUnbanned(success=False, message="No active ban found for this IP")


@pytest.mark.skipif(not ipv6_loopback_available(), reason="IPv6 loopback ::1 cannot be bound on this machine")
def test_ban_ipv6(start_server, open_client, tmp_path):
    root = tmp_path / "v6"
    v6_settings = {"server": {"admin_users": [ADMIN], "bind_address": "::1"}}
    server = start_server(v6_settings, root=root)
    admin, _ = signed_in_admin(open_client, server, host="::1")

    for own in ("::1", "::1/128", "::/0", "::1/64", "0:0:0:0:0:0:0:1"):
        refused = ban_ip(admin, own, reason="self")
        assert not refused.success and "your own address" in refused.message, (own, refused)
    refused = ban_ip(admin, "2001:db8::/129")
    assert refused == m.IPBanned(success=False, message="Invalid IP address or CIDR range: 2001:db8::/129")
    refused = ban_ip(admin, "2001:db8::zz")
    assert not refused.success

    answer = ban_ip(admin, "2001:DB8::5/64", reason="v6 range")
    assert answer.success and answer.message == "IP 2001:db8::/64 banned successfully"
    v4 = ban_ip(admin, "127.0.0.0/8", reason="other family")  # does not contain ::1
    assert v4.success
    assert [(b.type, b.ip_cidr) for b in list_bans(admin)] == [("ip", "2001:db8::/64"), ("ip", "127.0.0.0/8")]
    assert_accepted(server, host="::1")
    ping(admin)
    log_line(server, rf"Admin boss banned IP 2001:db8::/64 \(ban_id={answer.ban_id}")
    admin.send(m.UnbanIP(ip_cidr="127.0.0.0/8"))
    assert admin.expect(m.IPUnbanned).success

    # ::1 itself can only be banned by an admin elsewhere: restart the same data on IPv4 and ban it from there.
    admin.close()
    server.stop()
    server = start_server(ADMIN_SETTINGS, root=root)
    admin4 = open_client(server)
    assert admin4.login(ADMIN, PASSWORD).success
    banned = ban_ip(admin4, "::1", reason="v6 loopback")
    assert banned.success and banned.message == "IP ::1/128 banned successfully"
    admin4.close()
    server.stop()

    server = start_server(v6_settings, root=root)
    assert_refused_at_connect(server, "banned", "v6 loopback", host="::1")
    server.stop()

    server = start_server(ADMIN_SETTINGS, root=root)
    admin4 = open_client(server)
    assert admin4.login(ADMIN, PASSWORD).success
    admin4.send(m.UnbanIP(ip_cidr="0::1"))
    assert admin4.expect(m.IPUnbanned).success
    admin4.close()
    server.stop()

    server = start_server(v6_settings, root=root)
    assert_accepted(server, host="::1")


# ---- LIST_BANS ----------------------------------------------------------------------------------


def test_list_bans_reports_every_field(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    _, victim_id = registered(open_client, srv, "victim", source="127.0.0.2")
    _, troll_id = registered(open_client, srv, "troll", source="127.0.0.3")
    assert list_bans(admin) == [] and list_bans(admin, include_expired=True) == []

    before = now_ms()
    timed = ban_user(admin, user_id=victim_id, reason="spam", shadowban=False, duration_seconds=3600)
    shadow = ban_user(admin, nickname="troll", reason="trolling", shadowban=True)
    ghost = ban_user(admin, nickname="ghost", reason="pre-emptive", shadowban=False)
    net = ban_ip(admin, "10.1.2.3/24", reason="botnet")
    brief = ban_ip(admin, "10.9.9.9", reason="brief", duration_seconds=1)
    after = now_ms()
    assert all(a.success for a in (timed, shadow, ghost, net, brief))

    bans = list_bans(admin)
    assert [b.id for b in bans] == [timed.ban_id, shadow.ban_id, ghost.ban_id, net.ban_id, brief.ban_id]
    for ban in bans:
        assert before <= ban.banned_at <= after, ban
        assert ban.banned_by == ADMIN
    by_id = {b.id: b for b in bans}

    entry = by_id[timed.ban_id]
    assert (entry.type, entry.user_id, entry.nickname, entry.ip_cidr) == ("user", victim_id, "victim", None)
    assert (entry.reason, entry.shadowban) == ("spam", False)
    assert abs(entry.banned_until - (entry.banned_at + 3_600_000)) < 1000

    entry = by_id[shadow.ban_id]
    assert (entry.type, entry.user_id, entry.nickname, entry.ip_cidr) == ("user", troll_id, "troll", None)
    assert (entry.reason, entry.shadowban, entry.banned_until) == ("trolling", True, None)

    entry = by_id[ghost.ban_id]  # a nickname nobody registered
    assert (entry.type, entry.user_id, entry.nickname, entry.ip_cidr) == ("user", None, "ghost", None)
    assert (entry.reason, entry.shadowban, entry.banned_until) == ("pre-emptive", False, None)

    entry = by_id[net.ban_id]
    assert (entry.type, entry.user_id, entry.nickname, entry.ip_cidr) == ("ip", None, None, "10.1.2.0/24")
    assert (entry.reason, entry.shadowban, entry.banned_until) == ("botnet", False, None)

    entry = by_id[brief.ban_id]
    assert (entry.type, entry.ip_cidr, entry.reason) == ("ip", "10.9.9.9/32", "brief")
    assert abs(entry.banned_until - (entry.banned_at + 1000)) < 1000

    time.sleep(1.5)
    assert [b.id for b in list_bans(admin)] == [timed.ban_id, shadow.ban_id, ghost.ban_id, net.ban_id]
    everything = list_bans(admin, include_expired=True)
    assert [b.id for b in everything] == [timed.ban_id, shadow.ban_id, ghost.ban_id, net.ban_id, brief.ban_id]
    assert everything[-1].banned_until < now_ms()

    # Lifting a ban removes it from both listings; expired bans stay as history.
    admin.send(m.UnbanIP(ip_cidr="10.1.2.0/24"))
    assert admin.expect(m.IPUnbanned).success
    assert net.ban_id not in {b.id for b in list_bans(admin, include_expired=True)}


# ---- DELETE_USER --------------------------------------------------------------------------------


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
    _subscribed(victim, general)

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


# ---- DELETE_CHANNEL -----------------------------------------------------------------------------


def test_delete_channel(start_server, open_client, tmp_path):
    root = tmp_path / "channels"
    settings = {**ADMIN_SETTINGS, "limits": {"max_thread_subscriptions": 1, "max_channel_subscriptions": 2}}
    srv = start_server(settings, root=root)
    admin, _ = signed_in_admin(open_client, srv)
    tech = admin.channel_id("tech")
    general = admin.channel_id("general")
    random_channel = admin.channel_id("random")

    subscriber = open_client(srv, "subscriber", source="127.0.0.2")
    _subscribed(subscriber, tech)
    _subscribed(subscriber, general)
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
    assert try_post(member, tech, "into the void").error_code == DATABASE_ERROR
    assert try_post(member, tech, "reply into the void", parent_id=thread).error_code == DATABASE_ERROR
    assert list_roots(member, tech) == []
    assert list_roots(member, tech, parent_id=thread) == []
    member.send(m.JoinChannel(channel_id=tech))
    assert member.expect(m.JoinResponse) == m.JoinResponse(success=False, channel_id=tech, message="Channel not found")
    member.send(m.LeaveChannel(channel_id=tech))
    assert member.expect(m.LeaveResponse).success is False  # the membership went with the channel
    subscriber.send(m.SubscribeChannel(channel_id=tech))
    subscriber.expect_error(4001)

    # The survivors keep working, and their subscriptions to the deleted channel no longer count.
    posted = member.post(general, "general still works")
    assert subscriber.expect(m.NewMessage).id == posted
    _subscribed(subscriber, random_channel)  # at the limit of 2 only if tech still counted
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
        _subscribed(reader, random_channel)
        reader.subscribe_thread(roots[n])
    admin.send(m.DeleteChannel(channel_id=random_channel, reason=""))
    for client in (admin, author, *readers):
        reply = client.expect(m.ChannelDeleted)
        assert reply.success and reply.channel_id == random_channel
        ping(client)
    assert list_roots(admin, random_channel) == []
    assert list_roots(admin, random_channel, parent_id=roots[0]) == []


# ---- the audit trail ----------------------------------------------------------------------------


def test_every_moderation_action_is_logged_with_admin_and_target(srv, open_client):
    admin, _ = signed_in_admin(open_client, srv)
    _, victim_id = registered(open_client, srv, "victim", source="127.0.0.2")
    random_channel = admin.channel_id("random")

    assert ban_user(admin, nickname="victim", reason="r-ban", shadowban=False).success
    admin.send(m.UnbanUser(nickname="victim"))
    assert admin.expect(m.UserUnbanned).success
    assert ban_user(admin, user_id=victim_id, reason="r-shadow", shadowban=True, duration_seconds=60).success
    assert ban_ip(admin, "127.0.0.9", reason="r-ip").success
    admin.send(m.UnbanIP(ip_cidr="127.0.0.9"))
    assert admin.expect(m.IPUnbanned).success
    admin.send(m.DeleteUser(user_id=victim_id))
    assert admin.expect(m.UserDeleted).success
    admin.send(m.DeleteChannel(channel_id=random_channel, reason="r-channel"))
    assert admin.expect(m.ChannelDeleted).success

    expectations = [
        r"Admin boss banned user victim \(ban_id=\d+, reason='r-ban', shadowban=False, permanently",
        r"Admin boss unbanned user victim \(1 bans removed\)",
        r"Admin boss banned user victim \(ban_id=\d+, reason='r-shadow', shadowban=True, until ",
        r"Admin boss banned IP 127\.0\.0\.9/32 \(ban_id=\d+, reason='r-ip', permanently",
        r"Admin boss unbanned IP 127\.0\.0\.9/32 \(1 bans removed\)",
        rf"Admin boss deleted user victim \(user_id={victim_id}\)",
        rf"Admin boss deleted channel random \(channel_id={random_channel}, reason='r-channel'\)",
    ]
    for pattern in expectations:
        log_line(srv, pattern)
    # LIST_BANS only reads; refused requests change nothing and are not audited as actions.
    admin.send(m.ListBans(include_expired=True))
    admin.expect(m.BanList)
    lines = [line for line in settled_log(srv, open_client).splitlines() if "] Admin boss " in line]
    assert len(lines) == len(expectations), lines
