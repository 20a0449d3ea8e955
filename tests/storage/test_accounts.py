"""Accounts: lookups, nicknames in every case, claims, flags, deletion, SSH keys."""

import sqlite3
import time
from dataclasses import replace

import pytest

from superchat.storage import NicknameTaken, SSHKeyExists, SSHKeyRow, StorageError, UserRow

from .helpers import channel_id, new_post, plan, sql, traced


def test_user_lookups(store, db_path):
    sql(
        db_path,
        "INSERT INTO User (nickname, user_flags, password_hash, created_at, last_seen) "
        "VALUES ('carol', 1, 'hash', 10, NULL)",
    )
    user = store.get_user_by_nickname("carol")
    assert (user.nickname, user.user_flags, user.password_hash, user.created_at, user.last_seen) == (
        "carol",
        1,
        "hash",
        10,
        None,
    )
    assert store.get_user(user.id) == user
    assert store.get_user_by_nickname("Carol") is None
    assert store.get_user(user.id + 1) is None


def test_create_user(store):
    before = time.time_ns() // 1_000_000
    user = store.create_user("alice", "hash", 3)
    assert isinstance(user, UserRow)
    assert (user.nickname, user.password_hash, user.user_flags) == ("alice", "hash", 3)
    assert user.created_at == user.last_seen >= before
    assert store.get_user(user.id) == user
    assert store.get_user_by_nickname("alice") == user


def test_a_nickname_is_taken_in_every_case(store, db_path):
    alice = store.create_user("alice", "hash", 0)
    for taken in ("alice", "Alice", "ALICE"):
        with pytest.raises(NicknameTaken):
            store.create_user(taken, "other", 1)
    bob = store.create_user("bob", "hash", 0)
    with pytest.raises(NicknameTaken):
        store.rename_user(bob.id, "aLICE")
    store.rename_user(alice.id, "Alice")  # its own name in another case
    assert store.list_users(10) == [replace(alice, nickname="Alice"), bob]
    assert store.get_user_by_folded_nickname("ALICE") == replace(alice, nickname="Alice")
    assert store.get_user_by_nickname("ALICE") is None and store.get_user_by_folded_nickname("carol") is None
    with pytest.raises(sqlite3.IntegrityError):  # the database itself holds the rule
        sql(db_path, "INSERT INTO User (nickname, password_hash, created_at) VALUES ('BOB', '', 1)")
    (statement,) = traced(store._reader, lambda: store.get_user_by_folded_nickname("Bob"))
    assert "USING INDEX idx_user_nickname_folded_unique" in " ".join(plan(db_path, statement))


def test_claiming_an_account_makes_it_or_takes_it_over(store):
    made, created, removed = store.claim_account("boss", "first", 1)
    assert (made.nickname, made.password_hash, made.user_flags, created, removed) == ("boss", "first", 1, True, 0)
    store.assign_flag(4, ["boss"])
    for number in range(2):
        store.add_ssh_key(made.id, f"SHA256:{number}", "ssh-ed25519 A", "ssh-ed25519", None)
    taken, created, removed = store.claim_account("boss", "second", 1)
    assert (taken.id, taken.password_hash, taken.user_flags, created, removed) == (made.id, "second", 5, False, 2)
    assert store.get_user(made.id) == taken and store.list_ssh_keys(made.id) == []
    with pytest.raises(NicknameTaken):
        store.claim_account("Boss", "third", 1)
    assert store.list_users(10) == [taken]


def test_assign_flag_gives_it_to_exactly_the_named_users(store):
    admin = store.create_user("admin", "h", 0)
    former = store.create_user("former", "h", 1 | 2)
    plain = store.create_user("plain", "h", 2)
    store.assign_flag(1, ["admin", "nobody"])
    assert [store.get_user(u.id).user_flags for u in (admin, former, plain)] == [1, 2, 2]
    store.assign_flag(1, [])
    assert store.get_user(admin.id).user_flags == 0


def test_user_updates(store):
    user = store.create_user("alice", "hash", 0)
    other = store.create_user("bob", "bobhash", 1)

    store.set_password(user.id, "")
    store.assign_flag(4, ["alice"])
    store.touch_user(user.id, 123)
    store.rename_user(user.id, "alicia")
    assert store.get_user(user.id) == replace(user, nickname="alicia", password_hash="", user_flags=4, last_seen=123)
    assert store.get_user_by_nickname("alice") is None

    store.rename_user(user.id, "alicia")
    with pytest.raises(NicknameTaken):
        store.rename_user(user.id, "bob")
    assert store.get_user(user.id).nickname == "alicia"
    assert store.get_user(other.id) == other


def test_list_users_by_nickname_with_limit(store):
    for nickname in ("carol", "alice", "dave", "bob"):
        store.create_user(nickname, "", 0)
    assert [u.nickname for u in store.list_users(100)] == ["alice", "bob", "carol", "dave"]
    assert [u.nickname for u in store.list_users(2)] == ["alice", "bob"]
    assert store.list_users(0) == []


def test_delete_user_anonymises_messages_and_cascades(store, db_path):
    general = channel_id(store, "general")
    gone = store.create_user("alice", "hash", 0)
    kept = store.create_user("bob", "hash", 0)
    (authored, other) = store.post_messages(
        [new_post(general, user=gone.id, nickname="alice"), new_post(general, user=kept.id, nickname="bob")]
    )
    (reply,) = store.post_messages([new_post(general, parent=other.id, user=gone.id, nickname="alice")])
    store.add_ssh_key(gone.id, "SHA256:gone", "ssh-ed25519 A", "ssh-ed25519", "laptop")
    kept_key = store.add_ssh_key(kept.id, "SHA256:kept", "ssh-ed25519 B", "ssh-ed25519", None)
    store.set_read_state(gone.id, general, None, 10)
    store.set_read_state(kept.id, general, None, 20)
    by_id = store.add_user_ban(gone.id, None, "spam", False, None, "admin")
    by_both = store.add_user_ban(gone.id, "alice", "spam", True, None, "admin")

    assert store.delete_user(gone.id) == gone
    assert store.get_user(gone.id) is None
    for message in (authored, reply):
        assert store.get_message(message.id) == replace(message, author_user_id=None, reply_count=0)
    assert store.get_message(other.id).author_user_id == kept.id
    assert store.get_ssh_key("SHA256:gone") is None
    assert store.list_ssh_keys(kept.id) == [kept_key]
    assert sql(db_path, "SELECT user_id, last_read_at FROM ReadState") == [(kept.id, 20)]
    assert store.list_bans(True, 0) == [replace(by_id, user_id=None), replace(by_both, user_id=None)]
    assert store.active_user_ban(gone.id, None, 0) is None
    assert store.active_user_ban(None, "alice", 0) == replace(by_both, user_id=None)

    assert store.delete_user(gone.id) is None
    store.add_ssh_key(kept.id, "SHA256:gone", "ssh-ed25519 A", "ssh-ed25519", None)


def test_ssh_keys(store):
    alice = store.create_user("alice", "", 0)
    bob = store.create_user("bob", "", 0)
    before = time.time_ns() // 1_000_000
    first = store.add_ssh_key(alice.id, "SHA256:one", "ssh-ed25519 AAAA one", "ssh-ed25519", "laptop")
    second = store.add_ssh_key(alice.id, "SHA256:two", "ssh-rsa AAAA two", "ssh-rsa", None)
    assert isinstance(first, SSHKeyRow)
    assert (first.user_id, first.fingerprint, first.public_key, first.key_type, first.label) == (
        alice.id,
        "SHA256:one",
        "ssh-ed25519 AAAA one",
        "ssh-ed25519",
        "laptop",
    )
    assert first.added_at >= before and first.last_used_at is None
    assert store.list_ssh_keys(alice.id) == [first, second]
    assert store.list_ssh_keys(bob.id) == []
    assert store.get_ssh_key("SHA256:two") == second
    assert store.get_ssh_key("SHA256:none") is None

    store.touch_ssh_key("SHA256:one", 777)
    assert store.get_ssh_key("SHA256:one").last_used_at == 777


def test_ssh_key_refusals(store):
    alice = store.create_user("alice", "", 0)
    bob = store.create_user("bob", "", 0)
    key = store.add_ssh_key(alice.id, "SHA256:one", "ssh-ed25519 A", "ssh-ed25519", "laptop")
    for owner in (alice, bob):
        with pytest.raises(SSHKeyExists):
            store.add_ssh_key(owner.id, "SHA256:one", "ssh-ed25519 A", "ssh-ed25519", None)
    with pytest.raises(StorageError):
        store.add_ssh_key(9999, "SHA256:nobody", "ssh-ed25519 C", "ssh-ed25519", None)

    assert not store.relabel_ssh_key(bob.id, key.id, "stolen")
    assert not store.delete_ssh_key(bob.id, key.id)
    assert store.list_ssh_keys(alice.id) == [key]

    assert store.relabel_ssh_key(alice.id, key.id, None)
    assert store.get_ssh_key("SHA256:one") == replace(key, label=None)
    assert store.delete_ssh_key(alice.id, key.id)
    assert not store.delete_ssh_key(alice.id, key.id)
    assert not store.relabel_ssh_key(alice.id, key.id, "gone")
    assert store.list_ssh_keys(alice.id) == []
