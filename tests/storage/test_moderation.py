"""Bans and the admin action log."""

import time

import pytest

from superchat.storage import BanRow, StorageError

from .helpers import sql


def test_add_bans(store):
    alice = store.create_user("alice", "", 0)
    before = time.time_ns() // 1_000_000
    user_ban = store.add_user_ban(alice.id, "alice", "spam", True, None, "admin")
    assert isinstance(user_ban, BanRow)
    assert user_ban == BanRow(
        user_ban.id, "user", alice.id, "alice", None, "spam", True, user_ban.banned_at, None, "admin"
    )
    assert user_ban.banned_at >= before
    nick_ban = store.add_user_ban(None, "mallory", "flood", False, user_ban.banned_at + 1000, "admin")
    ip_ban = store.add_ip_ban("10.0.0.0/8", "abuse", None, "root")
    assert ip_ban == BanRow(ip_ban.id, "ip", None, None, "10.0.0.0/8", "abuse", False, ip_ban.banned_at, None, "root")
    assert store.list_bans(False, user_ban.banned_at) == [user_ban, nick_ban, ip_ban]
    assert all(isinstance(b.shadowban, bool) for b in store.list_bans(True, 0))
    with pytest.raises(StorageError):
        store.add_user_ban(9999, None, "no such user", False, None, "admin")


def test_expired_bans_are_listed_only_on_request(store):
    now = 1_000_000
    expired = store.add_user_ban(None, "old", "r", False, now - 1, "admin")
    ends_now = store.add_ip_ban("192.0.2.1/32", "r", now, "admin")
    later = store.add_user_ban(None, "later", "r", False, now + 1, "admin")
    permanent = store.add_ip_ban("198.51.100.0/24", "r", None, "admin")
    assert store.list_bans(False, now) == [later, permanent]
    assert store.list_bans(True, now) == [expired, ends_now, later, permanent]
    assert store.active_ip_bans(now) == [permanent]
    assert store.active_ip_bans(now - 1) == [ends_now, permanent]
    assert store.active_user_ban(None, "old", now) is None
    assert store.active_user_ban(None, "later", now) == later


def test_active_user_ban_matches_id_or_nickname_newest_first(store):
    alice = store.create_user("alice", "", 0)
    bob = store.create_user("bob", "", 0)
    by_id = store.add_user_ban(alice.id, None, "first", False, None, "admin")
    assert store.active_user_ban(alice.id, "alice", 0) == by_id
    assert store.active_user_ban(alice.id, None, 0) == by_id
    assert store.active_user_ban(None, "alice", 0) is None
    by_nickname = store.add_user_ban(None, "alice", "second", True, None, "admin")
    assert store.active_user_ban(alice.id, "alice", 0) == by_nickname
    assert store.active_user_ban(None, "alice", 0) == by_nickname
    assert store.active_user_ban(bob.id, "alice", 0) == by_nickname
    assert store.active_user_ban(bob.id, "bob", 0) is None
    assert store.active_user_ban(None, "Alice", 0) is None
    assert store.active_user_ban(None, None, 0) is None
    store.add_ip_ban("203.0.113.7/32", "ip bans never match users", None, "admin")
    assert store.active_user_ban(None, None, 0) is None


def test_remove_user_bans_removes_only_active_matching_ones(store):
    alice = store.create_user("alice", "", 0)
    now = 1_000_000
    by_id = store.add_user_ban(alice.id, None, "r", False, None, "admin")
    by_nickname = store.add_user_ban(None, "alice", "r", False, now + 1, "admin")
    expired = store.add_user_ban(alice.id, "alice", "r", False, now, "admin")
    other = store.add_user_ban(None, "bob", "r", False, None, "admin")
    ip_ban = store.add_ip_ban("10.0.0.1/32", "r", None, "admin")
    assert store.list_bans(False, now) == [by_id, by_nickname, other, ip_ban]

    assert store.remove_user_bans(alice.id, "alice", now) == 2
    assert store.list_bans(True, now) == [expired, other, ip_ban]
    assert store.remove_user_bans(alice.id, "alice", now) == 0
    assert store.remove_user_bans(None, None, now) == 0

    again = store.add_user_ban(alice.id, None, "r", False, None, "admin")
    assert store.remove_user_bans(None, "alice", now) == 0
    assert store.remove_user_bans(alice.id, None, now) == 1
    assert store.list_bans(True, now) == [expired, other, ip_ban]
    assert again.id > ip_ban.id


def test_remove_ip_bans_exact_and_active_only(store):
    now = 1_000_000
    active = store.add_ip_ban("10.0.0.0/8", "r", None, "admin")
    expired = store.add_ip_ban("10.0.0.0/8", "r", now, "admin")
    narrower = store.add_ip_ban("10.0.0.0/16", "r", None, "admin")
    user_ban = store.add_user_ban(None, "10.0.0.0/8", "a nickname, not an address", False, None, "admin")
    assert store.active_ip_bans(now) == [active, narrower]
    assert store.remove_ip_bans("10.0.0.0/8", now) == 1
    assert store.list_bans(True, now) == [expired, narrower, user_ban]
    assert store.remove_ip_bans("10.0.0.0/8", now) == 0


def test_log_admin_action(store, db_path):
    before = time.time_ns() // 1_000_000
    store.log_admin_action(1, "root", "delete_channel", "#old")
    store.log_admin_action(2, "admin", "ban_user", "alice: spam")
    rows = sql(db_path, "SELECT id, admin_user_id, admin_nickname, action, details, performed_at FROM AdminAction")
    assert [row[1:5] for row in rows] == [
        (1, "root", "delete_channel", "#old"),
        (2, "admin", "ban_user", "alice: spam"),
    ]
    assert rows[0][0] < rows[1][0]
    assert all(row[5] >= before for row in rows)
