"""SSH public keys as account data, with keys made by the real ssh-keygen."""

import base64
import hashlib
import os
import subprocess
import time

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client
from tests.tools import require

pytestmark = pytest.mark.timeout(60)

KEY_SPECS = {
    "ed25519": ("ed25519", None, "ssh-ed25519"),
    "rsa": ("rsa", "2048", "ssh-rsa"),
    "ecdsa256": ("ecdsa", "256", "ecdsa-sha2-nistp256"),
    "ecdsa384": ("ecdsa", "384", "ecdsa-sha2-nistp384"),
    "ecdsa521": ("ecdsa", "521", "ecdsa-sha2-nistp521"),
    "ed25519b": ("ed25519", None, "ssh-ed25519"),
    "ed25519c": ("ed25519", None, "ssh-ed25519"),
}


class Key:
    def __init__(self, line: str, fingerprint: str, key_type: str):
        self.line = line
        self.fingerprint = fingerprint
        self.key_type = key_type

    @property
    def blob(self) -> str:
        return self.line.split()[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Key]:
    """Real public keys and the fingerprints ``ssh-keygen -lf`` prints for them."""
    directory = tmp_path_factory.mktemp("sshkeys")
    made = {}
    for name, (kind, bits, key_type) in KEY_SPECS.items():
        path = directory / name
        command = [require("ssh-keygen"), "-q", "-t", kind, "-N", "", "-C", f"{name}@test", "-f", str(path)]
        if bits:
            command[4:4] = ["-b", bits]
        subprocess.run(command, check=True, timeout=60, capture_output=True)
        listed = subprocess.run([require("ssh-keygen"), "-lf", f"{path}.pub"], check=True, timeout=30,
                                capture_output=True, text=True).stdout.split()
        made[name] = Key(path.with_suffix(".pub").read_text().strip(), listed[1], key_type)
    return made


def pw(word: str) -> str:
    return base64.b64encode(hashlib.sha256(word.encode()).digest()).decode().rstrip("=")


def add(client: Client, public_key: str, label: str = "") -> m.SSHKeyAdded:
    client.send(m.AddSSHKey(public_key=public_key, label=label))
    return client.expect(m.SSHKeyAdded)


def listed(client: Client) -> list:
    client.send(m.ListSSHKeys())
    return list(client.expect(m.SSHKeyList).keys)


def delete(client: Client, key_id: int) -> m.SSHKeyDeleted:
    client.send(m.DeleteSSHKey(key_id=key_id))
    return client.expect(m.SSHKeyDeleted)


def test_key_management_needs_an_account(connect, keys):
    client = connect("anonkeys")
    for request in (m.AddSSHKey(public_key=keys["ed25519"].line, label="x"), m.ListSSHKeys(),
                    m.UpdateSSHKeyLabel(key_id=1, new_label="y"), m.DeleteSSHKey(key_id=1)):
        client.send(request)
        client.expect_error(ErrorCode.AUTH_REQUIRED)
    # After LOGOUT the session is anonymous again.
    client.register("keyowner", pw("k"))
    assert add(client, keys["ed25519"].line).success
    client.send(m.Logout())
    client.send(m.ListSSHKeys())
    client.expect_error(ErrorCode.AUTH_REQUIRED)


def test_invalid_keys_are_refused(connect, keys):
    client = connect()
    client.register("badkeys", pw("bad"))
    for empty in ("", "   \n"):
        assert add(client, empty) == m.SSHKeyAdded(success=False, key_id=0, fingerprint="",
                                                   error_message="Public key cannot be empty")
    ed, rsa = keys["ed25519"], keys["rsa"]
    raw = base64.b64decode(ed.blob)
    invalid = {
        "garbage": "this is not a key",
        "type only": "ssh-ed25519",
        "not base64": "ssh-ed25519 AAAA$$$$not*base64 comment",
        "type mismatch": f"ssh-rsa {ed.blob} comment",
        "other mismatch": f"ssh-ed25519 {rsa.blob}",
        "truncated": "ssh-ed25519 " + base64.b64encode(raw[:-5]).decode(),
        "extra field": "ssh-ed25519 " + base64.b64encode(raw + b"\0\0\0\1x").decode(),
        "unknown type": f"ssh-foo {ed.blob}",
    }
    for what, text in invalid.items():
        reply = add(client, text)
        assert not reply.success and (reply.key_id, reply.fingerprint) == (0, ""), what
        assert reply.error_message.startswith("Invalid SSH public key: "), (what, reply)
    assert add(client, ed.line, label="x" * 101).error_message == "Label must be at most 100 bytes"
    assert listed(client) == []


def test_real_keys_get_ssh_keygens_fingerprints(connect, keys):
    client = connect()
    client.register("keyring", pw("ring"))
    before = int(time.time() * 1000)
    names = ["ed25519", "rsa", "ecdsa256", "ecdsa384", "ecdsa521"]
    added = {}
    for name in names:
        reply = add(client, keys[name].line, label=f"my {name}")
        assert reply.success and reply.error_message == "", reply
        assert reply.fingerprint == keys[name].fingerprint
        added[name] = reply.key_id
    after = int(time.time() * 1000)
    assert list(added.values()) == sorted(added.values()) and len(set(added.values())) == len(names)
    entries = listed(client)
    assert [(e.id, e.fingerprint, e.key_type, e.label) for e in entries] == [
        (added[n], keys[n].fingerprint, keys[n].key_type, f"my {n}") for n in names]
    for entry in entries:
        assert before - 1000 <= entry.added_at <= after + 1000
        assert entry.last_used_at == 0
    # authorized_keys options before the key and a missing label are fine.
    reply = add(client, f'from="127.0.0.1",no-pty {keys["ed25519b"].line}')
    assert reply.success and reply.fingerprint == keys["ed25519b"].fingerprint
    assert listed(client)[-1].label == ""


def test_a_key_belongs_to_one_account(connect, keys):
    alice, bob = connect(), connect()
    alice.register("alice", pw("alice"))
    bob.register("bob", pw("bob"))
    key = keys["ed25519"]
    first = add(alice, key.line, "laptop")
    assert first.success
    duplicate = m.SSHKeyAdded(success=False, key_id=0, fingerprint="", error_message="SSH key already exists")
    assert add(alice, key.line) == duplicate
    assert add(bob, key.line) == duplicate
    # Same key material, another comment: still the same key.
    assert add(bob, f"{key.key_type} {key.blob} other-comment") == duplicate
    assert listed(bob) == []

    bob_key = add(bob, keys["rsa"].line, "desktop").key_id
    not_yours = "SSH key not found or does not belong to you"
    bob.send(m.UpdateSSHKeyLabel(key_id=first.key_id, new_label="stolen"))
    assert bob.expect(m.SSHKeyLabelUpdated) == m.SSHKeyLabelUpdated(success=False, error_message=not_yours)
    bob.send(m.UpdateSSHKeyLabel(key_id=987654, new_label="nothing"))
    assert not bob.expect(m.SSHKeyLabelUpdated).success
    bob.send(m.UpdateSSHKeyLabel(key_id=bob_key, new_label="y" * 101))
    assert not bob.expect(m.SSHKeyLabelUpdated).success
    bob.send(m.UpdateSSHKeyLabel(key_id=bob_key, new_label="workstation"))
    assert bob.expect(m.SSHKeyLabelUpdated) == m.SSHKeyLabelUpdated(success=True, error_message="")
    assert [e.label for e in listed(bob)] == ["workstation"]
    assert [e.label for e in listed(alice)] == ["laptop"]

    assert delete(bob, first.key_id) == m.SSHKeyDeleted(success=False, error_message=not_yours)
    assert [e.id for e in listed(alice)] == [first.key_id]
    assert delete(alice, first.key_id) == m.SSHKeyDeleted(success=True, error_message="")
    assert listed(alice) == []
    assert delete(alice, first.key_id).error_message == not_yours
    # Deleted, the key may be added again, by anyone.
    assert add(bob, key.line).success


def test_password_removal_needs_a_key_and_the_last_key_stays(connect, keys):
    client = connect()
    uid = client.register("sshonly", pw("sshonly"))
    client.send(m.ChangePassword(old_password=pw("sshonly"), new_password=""))
    assert client.expect(m.PasswordChanged) == m.PasswordChanged(
        success=False, error_message="Cannot remove password without SSH keys. Add an SSH key first.")
    first = add(client, keys["ed25519"].line).key_id
    client.send(m.ChangePassword(old_password=pw("sshonly"), new_password=""))
    assert client.expect(m.PasswordChanged) == m.PasswordChanged(success=True, error_message="")

    other = connect()
    assert other.login("sshonly", pw("sshonly")) == m.AuthResponse(
        success=False, message="This account requires SSH authentication. Please connect via SSH.")
    assert other.login("sshonly", "").success is False

    assert delete(client, first) == m.SSHKeyDeleted(
        success=False, error_message="Cannot delete last SSH key when no password is set")
    second = add(client, keys["rsa"].line).key_id
    assert delete(client, first).success
    assert delete(client, second).error_message == "Cannot delete last SSH key when no password is set"
    assert [e.id for e in listed(client)] == [second]

    # A new password brings back password login, and with it the freedom to drop the last key.
    client.send(m.ChangePassword(old_password="", new_password=pw("back")))
    assert client.expect(m.PasswordChanged).success
    reply = other.login("sshonly", pw("back"))
    assert (reply.success, reply.user_id) == (True, uid)
    assert delete(client, second).success


def test_concurrent_deletions_never_remove_the_last_way_in(start_server, keys):
    """Two sessions of one SSH-only account delete its two keys at the same moment: one must fail."""
    server = start_server()
    with Client(server.port) as first, Client(server.port) as second:
        first.handshake()
        second.handshake()
        first.register("racer", pw("racer"))
        assert second.login("racer", pw("racer")).success
        ids = [add(first, keys[name].line).key_id for name in ("ed25519", "rsa")]
        first.send(m.ChangePassword(old_password=pw("racer"), new_password=""))
        assert first.expect(m.PasswordChanged).success
        first.send(m.DeleteSSHKey(key_id=ids[0]))
        second.send(m.DeleteSSHKey(key_id=ids[1]))
        replies = [first.expect(m.SSHKeyDeleted), second.expect(m.SSHKeyDeleted)]
        assert sorted(r.success for r in replies) == [False, True], replies
        assert len(listed(first)) == 1


def test_password_removal_racing_the_last_key_deletion(start_server):
    """Removing the password while the only key is deleted elsewhere must never lock the account out.

    The removal answers after a bcrypt check; the deletion's delay is bisected towards the moment the
    removal is written (too early: the deletion wins, too late: the removal wins), so attempts land
    in the window between the removal's check and its write, where both would succeed unguarded.
    """
    server = start_server({"limits": {"max_registrations_per_hour": 100}})  # one account per attempt
    with Client(server.port) as first, Client(server.port) as second:
        first.handshake()
        second.handshake()
        early, late = 0.0, 0.5
        outcomes = []
        for attempt in range(20):
            nickname = f"lock{attempt}"
            if attempt:
                first.send(m.Logout())
            first.register(nickname, pw(nickname))
            assert second.login(nickname, pw(nickname)).success
            key_id = add(first, made_up_ed25519()).key_id
            delay = (early + late) / 2
            first.send(m.ChangePassword(old_password=pw(nickname), new_password=""))
            time.sleep(delay)
            second.send(m.DeleteSSHKey(key_id=key_id))
            removed = first.expect(m.PasswordChanged).success
            deleted = second.expect(m.SSHKeyDeleted).success
            outcomes.append((round(delay * 1000, 1), removed, deleted))
            assert removed or deleted, outcomes
            assert not (removed and deleted), f"{nickname} locked out: {outcomes}"
            if deleted:
                early = delay
            else:
                late = delay
        print(f"\n(delay ms, removed, deleted): {outcomes}")


def made_up_ed25519() -> str:
    """A well-formed ed25519 public key from random bytes (the server checks form, not the curve point)."""
    blob = b"".join(len(part).to_bytes(4, "big") + part for part in (b"ssh-ed25519", os.urandom(32)))
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def test_an_account_holds_at_most_a_hundred_keys(connect, keys):
    client = connect()
    client.register("collector", pw("collector"))
    ids = [add(client, made_up_ed25519()).key_id for _ in range(100)]
    assert all(ids) and len(listed(client)) == 100
    refused = add(client, keys["ed25519"].line)
    assert refused == m.SSHKeyAdded(success=False, key_id=0, fingerprint="",
                                    error_message="Too many SSH keys (max 100); delete one first")
    assert delete(client, ids[0]).success
    assert add(client, keys["ed25519"].line).success
