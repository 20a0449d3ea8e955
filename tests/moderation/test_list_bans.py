"""LIST_BANS reports every field."""

from __future__ import annotations

import time

import pytest

from superchat.protocol import messages as m

from .helpers import (
    ADMIN,
    ban_ip,
    ban_user,
    list_bans,
    now_ms,
    registered,
    signed_in_admin,
)

pytestmark = pytest.mark.timeout(60)


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
