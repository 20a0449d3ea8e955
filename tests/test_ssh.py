"""The protocol over SSH on ssh_port, driven by the real OpenSSH client (and paramiko where
OpenSSH cannot be made to try something)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client, ConnectionClosed
from tests.server_process import ServerProcess, free_port
from tests.ssh_client import OpenSshStream, make_key
from tests.tools import require

pytestmark = pytest.mark.timeout(90)

CLIENT_HASH = "h" * 44  # a well-formed client-side password hash


@pytest.fixture
def ssh_server(start_server):
    def start(settings: dict | None = None, root=None):
        document = {"server": {"ssh_port": free_port()}}
        for section, values in (settings or {}).items():
            document.setdefault(section, {}).update(values)
        return start_server(document, root=root)

    return start


@pytest.fixture
def keys(tmp_path):
    directory = tmp_path / "keys"
    directory.mkdir()
    return directory


def ssh_client(server, user: str, key, known_hosts, strict: str = "accept-new") -> tuple[Client, OpenSshStream]:
    stream = OpenSshStream(server.ssh_port, user, key, known_hosts, strict)
    return Client(0, sock=stream, timeout=15), stream


def tcp_account(server, nickname: str, source: str | None = None) -> tuple[Client, int]:
    """A TCP session signed into a newly registered account; returns it and the user id."""
    client = Client(server.port, source=source)
    client.handshake()
    return client, client.register(nickname, CLIENT_HASH)


def tcp_admin(server, nickname: str, source: str | None = None) -> Client:
    """A TCP session signed into the admin account ``nickname``, made on the host as the operator makes it."""
    server.create_admin(nickname, CLIENT_HASH)
    client = Client(server.port, source=source)
    client.handshake()
    assert client.login(nickname, CLIENT_HASH).success
    return client


def assert_refused_at_sign_in(client: Client, stream: OpenSshStream) -> None:
    """OpenSSH was turned away before any session opened."""
    with pytest.raises(ConnectionClosed):
        client.recv(timeout=15)
    assert "Permission denied" in stream.stderr()
    assert stream.proc.returncode != 0
    stream.close()


def signed_in(client: Client) -> m.AuthResponse:
    assert isinstance(client.recv(), m.ServerConfig)
    reply = client.expect(m.AuthResponse)
    assert reply.success, reply
    return reply



def test_a_new_key_creates_the_account_and_chats_live(ssh_server, keys):
    server = ssh_server()
    key = make_key(keys)
    client, stream = ssh_client(server, "sshuser", key, keys / "known_hosts")
    try:
        auth = signed_in(client)
        assert (auth.nickname, auth.message) == ("sshuser", "Authenticated via SSH as sshuser")
        tcp = Client(server.port)
        tcp.handshake("tcpuser")
        general = tcp.channel_id("general")
        for each in (client, tcp):
            each.subscribe_channel(general)

        client.send(m.PostMessage(channel_id=general, content="over ssh"))
        posted = client.expect(m.MessagePosted)
        seen = tcp.expect(m.NewMessage)
        # A registered author: no "~" before the nickname.
        assert (seen.id, seen.author_user_id, seen.author_nickname) == (posted.message_id, auth.user_id, "sshuser")
        assert client.expect(m.NewMessage).id == posted.message_id  # its own post, as a subscriber
        tcp.send(m.PostMessage(channel_id=general, content="to ssh"))
        tcp.expect(m.MessagePosted)
        assert client.expect(m.NewMessage).content == "to ssh"

        client.send(m.ListSSHKeys())
        (registered,) = client.expect(m.SSHKeyList).keys
        listed = subprocess.run([require("ssh-keygen"), "-l", "-E", "sha256", "-f", str(key)], capture_output=True,
                                text=True, check=True).stdout.split()
        assert (registered.label, registered.key_type, registered.fingerprint) == (
            "Auto-registered", "ssh-ed25519", listed[1])
    finally:
        stream.close()
    server.wait_for_log("Auto-registered user sshuser")
    # The account has no password: it signs in by key only.
    probe = Client(server.port)
    probe.handshake()
    probe.send(m.AuthRequest(nickname="sshuser", password=CLIENT_HASH))
    assert "SSH" in probe.expect(m.AuthResponse).message


def test_a_registered_key_signs_into_its_owner_whatever_the_user_name(ssh_server, keys):
    server = ssh_server()
    owner, user_id = tcp_account(server, "alice")
    key = make_key(keys)
    owner.send(m.AddSSHKey(public_key=(keys / "id_ed25519.pub").read_text(), label="laptop"))
    assert owner.expect(m.SSHKeyAdded).success

    client, stream = ssh_client(server, "someone-else", key, keys / "known_hosts")
    try:
        auth = signed_in(client)
        assert (auth.user_id, auth.nickname) == (user_id, "alice")
    finally:
        stream.close()


def test_an_unknown_key_cannot_take_a_registered_name(ssh_server, keys):
    server = ssh_server()
    owner, _ = tcp_account(server, "bob")
    client, stream = ssh_client(server, "bob", make_key(keys), keys / "known_hosts")
    assert_refused_at_sign_in(client, stream)


def test_an_unknown_key_cannot_take_a_case_variant_of_a_registered_name(ssh_server, keys):
    server = ssh_server()
    tcp_account(server, "bob")
    key = make_key(keys)
    for variant in ("Bob", "BOB"):
        client, stream = ssh_client(server, variant, key, keys / "known_hosts")
        assert_refused_at_sign_in(client, stream)
    client, stream = ssh_client(server, "bobby", key, keys / "known_hosts")  # the key itself is welcome
    try:
        assert signed_in(client).nickname == "bobby"
    finally:
        stream.close()


def test_an_unknown_key_cannot_sign_up_under_an_admin_name(ssh_server, keys):
    server = ssh_server({"server": {"admin_users": ["root", "Chief"]}})
    key = make_key(keys)
    for name in ("root", "ROOT", "chief"):  # nobody has these accounts: only the operator may make them
        client, stream = ssh_client(server, name, key, keys / "known_hosts")
        assert_refused_at_sign_in(client, stream)
    # Nor once the operator made an admin account and another admin deleted it.
    doomed = server.create_admin("root", CLIENT_HASH)
    chief = tcp_admin(server, "Chief")
    chief.send(m.DeleteUser(user_id=doomed))
    assert chief.expect(m.UserDeleted).success
    client, stream = ssh_client(server, "root", key, keys / "known_hosts")
    assert_refused_at_sign_in(client, stream)
    chief.send(m.ListUsers(limit=100, include_offline=True))
    assert [user.nickname for user in chief.expect(m.UserList).users] == ["Chief"]


def test_invalid_user_names_and_passwords_are_refused(ssh_server, keys):
    server = ssh_server()
    client, stream = ssh_client(server, "no spaces!", make_key(keys), keys / "known_hosts")
    with pytest.raises(ConnectionClosed):
        client.recv(timeout=15)
    stream.close()
    transport = paramiko.Transport(("127.0.0.1", server.ssh_port))
    try:
        transport.start_client(timeout=10)
        assert transport.remote_version.startswith("SSH-2.0-SuperChat")
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password("carol", "secret")
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()
    Client(server.port).handshake("still-serving")


def test_the_host_key_is_made_once_with_mode_0600_and_kept(ssh_server, keys, tmp_path):
    root = tmp_path / "keeper"
    server = ssh_server(root=root)
    host_key = root / ".superchat" / "ssh_host_key"
    assert stat.S_IMODE(os.stat(host_key).st_mode) == 0o600
    first = host_key.read_bytes()
    key = make_key(keys)
    client, stream = ssh_client(server, "keeper", key, keys / "known_hosts")
    signed_in(client)
    stream.close()
    server.stop()

    server.start()
    assert host_key.read_bytes() == first
    # A client that remembered the host key accepts the restarted server without question.
    client, stream = ssh_client(server, "keeper", key, keys / "known_hosts", strict="yes")
    try:
        assert signed_in(client).nickname == "keeper"
    finally:
        stream.close()


def test_a_banned_account_is_told_and_disconnected(ssh_server, keys):
    server = ssh_server({"server": {"admin_users": ["root"]}})
    key = make_key(keys)
    client, stream = ssh_client(server, "dave", key, keys / "known_hosts")
    signed_in(client)
    stream.close()
    admin = tcp_admin(server, "root")
    admin.send(m.BanUser(nickname="dave", reason="spam", shadowban=False))
    admin.expect(m.UserBanned)

    client, stream = ssh_client(server, "dave", key, keys / "known_hosts")
    try:
        assert isinstance(client.recv(), m.ServerConfig)
        refused = client.expect(m.AuthResponse)
        assert not refused.success and "banned" in refused.message
        with pytest.raises(ConnectionClosed):
            client.recv(timeout=10)
    finally:
        stream.close()


def test_ssh_sessions_are_counted_by_transport(ssh_server, keys):
    server = ssh_server()
    client, stream = ssh_client(server, "counted", make_key(keys), keys / "known_hosts")
    try:
        signed_in(client)
        _, _, body = server.http_get("/metrics")
        assert 'superchat_transport_sessions{transport="ssh"} 1.0' in body.decode()
        assert "transport=ssh" in server.wait_for_log("transport=ssh")
    finally:
        stream.close()


def test_an_unusable_host_key_stops_the_server_with_one_line(tmp_path):
    root = tmp_path / "broken"
    key_file = root / ".superchat" / "ssh_host_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("not a key\n")
    server = ServerProcess(root, {"server": {"ssh_port": free_port()}})
    with pytest.raises(RuntimeError) as failed:
        server.start()
    assert server.proc.returncode == 1
    problems = [line for line in server.output if line.startswith("scd:")]
    assert len(problems) == 1 and "cannot use SSH host key" in problems[0], server.output
    assert "Traceback" not in str(failed.value)


def test_ssh_sign_ups_share_the_registration_budget_of_the_address(ssh_server, keys):
    server = ssh_server({"limits": {"max_registrations_per_hour": 1}})
    first, _ = tcp_account(server, "tcpfirst")
    client, stream = ssh_client(server, "sshlater", make_key(keys), keys / "known_hosts")
    assert_refused_at_sign_in(client, stream)


def test_a_banned_address_is_refused_before_any_account_is_made(ssh_server, keys):
    server = ssh_server({"server": {"admin_users": ["root"]}})
    admin = tcp_admin(server, "root", source="127.0.0.2")
    admin.send(m.BanIP(ip_cidr="127.0.0.1", reason="abuse"))
    assert admin.expect(m.IPBanned).success
    client, stream = ssh_client(server, "newcomer", make_key(keys), keys / "known_hosts")
    try:
        assert isinstance(client.recv(), m.ServerConfig)
        assert client.expect(m.Error).error_code == ErrorCode.PERMISSION_DENIED
    finally:
        stream.close()
    admin.send(m.ListUsers(limit=100, include_offline=True))
    assert "newcomer" not in {user.nickname for user in admin.expect(m.UserList).users}


class _PausableSocket:
    """A client socket whose reading can be stopped, as by a client that stops reading."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.paused = threading.Event()

    def recv(self, size: int) -> bytes:
        if self.paused.is_set():
            time.sleep(0.05)
            raise TimeoutError
        return self._sock.recv(size)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_an_ssh_client_that_stops_reading_is_dropped_without_holding_up_others(ssh_server, tmp_path):
    server = ssh_server({"limits": {"message_rate_limit": 65535}})
    raw = socket.create_connection(("127.0.0.1", server.ssh_port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    pausable = _PausableSocket(raw)
    transport = paramiko.Transport(pausable)
    try:
        transport.start_client(timeout=10)
        transport.auth_publickey("slowpoke", paramiko.Ed25519Key.from_path(make_key(tmp_path)))
        # The client grants a huge window: SSH flow control alone would never hold the server back.
        channel = transport.open_session(window_size=2**31 - 1)
        channel.invoke_shell()
        slow = Client(0, sock=channel, timeout=10)
        signed_in(slow)
        general = slow.channel_id("general")
        slow.subscribe_channel(general)
        pausable.paused.set()

        poster = Client(server.port, timeout=10)
        poster.handshake("poster")
        poster.subscribe_channel(general)
        for number in range(3000):  # 12 MB for the stalled reader, three times its outbound limit
            poster.post(general, f"{number:04d}" + "x" * 3996)
            poster.expect(m.NewMessage)
            if "outbound queue overflow" in server.log_text():
                break
        server.wait_for_log("Session 1 (slowpoke) disconnected: outbound queue overflow")
        assert number < 2999
    finally:
        transport.close()


def test_an_existing_rsa_host_key_in_pem_is_used_as_it_is(ssh_server, keys, tmp_path):
    """The key file the reference server writes (RSA, PKCS#1 PEM) keeps serving after a switch."""
    root = tmp_path / "switched"
    host_key = root / ".superchat" / "ssh_host_key"
    host_key.parent.mkdir(parents=True)
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    host_key.write_bytes(pem)
    host_key.chmod(0o600)
    server = ssh_server(root=root)
    client, stream = ssh_client(server, "switcher", make_key(keys), keys / "known_hosts")
    try:
        assert signed_in(client).nickname == "switcher"
    finally:
        stream.close()
    assert host_key.read_bytes() == pem
    assert "ssh-rsa" in (keys / "known_hosts").read_text()
