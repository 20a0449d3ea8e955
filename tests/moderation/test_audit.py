"""Every moderation action is logged with its admin and target."""

from __future__ import annotations

import pytest

from superchat.protocol import messages as m

from .helpers import (
    ban_ip,
    ban_user,
    log_line,
    registered,
    settled_log,
    signed_in_admin,
)

pytestmark = pytest.mark.timeout(60)


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
