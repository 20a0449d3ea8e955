"""User bans: by nickname or id, timed, lifted, refused."""

from __future__ import annotations

import time

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client

from .helpers import (
    ADMIN,
    PASSWORD,
    assert_expelled,
    ban_ip,
    ban_user,
    list_bans,
    list_roots,
    log_line,
    now_ms,
    ping,
    registered,
    settled_log,
    signed_in_admin,
    try_post,
)

pytestmark = pytest.mark.timeout(60)


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
    error = drifter.expect_error(ErrorCode.PERMISSION_DENIED)
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
    assert try_post(drifter, general, "too early").error_code == ErrorCode.PERMISSION_DENIED
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
