"""Registration, login, logout, passwords and login throttling against the real server."""

import base64
import hashlib
import sqlite3
import statistics
import threading
import time
from contextlib import closing
from pathlib import Path

import bcrypt
import psycopg2
import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from superchat.storage import schema
from tests.client import UNSOLICITED, Client
from tests.server_process import ServerProcess

pytestmark = pytest.mark.timeout(60)


def pw(word: str) -> str:
    """A client-side password hash as real clients send it: 43 characters of unpadded base64."""
    return base64.b64encode(hashlib.sha256(word.encode()).digest()).decode().rstrip("=")


def post_and_edit(client: Client, channel: int, text: str):
    """Post ``text`` and try to edit it; returns the MESSAGE_EDITED or ERROR that answers the edit."""
    message_id = client.post(channel, text)
    client.send(m.EditMessage(message_id=message_id, new_content=text + " (edited)"))
    while True:
        msg = client.recv()
        if not isinstance(msg, UNSOLICITED):
            assert isinstance(msg, (m.MessageEdited, m.Error)), msg
            return msg


def authors(client: Client, channel: int) -> list[str]:
    client.send(m.ListMessages(channel_id=channel, limit=100))
    return [entry.author_nickname for entry in client.expect(m.MessageList).messages]


# -- registration --


def test_register_needs_a_nickname_and_a_well_formed_hash(connect):
    nameless = connect()
    nameless.send(m.RegisterUser(password=pw("secret")))
    assert nameless.expect(m.RegisterResponse) == m.RegisterResponse(
        success=False, message="Must set nickname before registering")

    client = connect("shapes")
    for bad in ("x" * 39, "x" * 51, "", "é" * 40):  # "é" * 40 is 80 bytes: the limit counts bytes
        client.send(m.RegisterUser(password=bad))
        assert client.expect(m.RegisterResponse) == m.RegisterResponse(
            success=False, message="Invalid password hash format"), bad
    for number, good in enumerate(("y" * 40, "z" * 50, "é" * 25)):
        other = connect(f"good{number}")
        other.send(m.RegisterUser(password=good))
        assert other.expect(m.RegisterResponse).success
    # Nothing was registered for the refused attempts.
    client.send(m.GetUserInfo(nickname="shapes"))
    assert client.expect(m.UserInfo).is_registered is False


def test_registration_signs_the_session_in(connect):
    anonymous = connect("anon1")
    chat = anonymous.channel_id("chat")
    answer = post_and_edit(anonymous, chat, "anonymous words")
    assert isinstance(answer, m.Error) and answer.error_code == ErrorCode.AUTH_REQUIRED

    client = connect("regme")
    client.send(m.RegisterUser(password=pw("regme")))
    reply = client.expect(m.RegisterResponse)
    assert reply.success and reply.user_id >= 1 and reply.message == "Successfully registered regme!"
    answer = post_and_edit(client, chat, "registered words")
    assert isinstance(answer, m.MessageEdited) and answer.success, answer
    assert answer.new_content == "registered words (edited)"
    client.send(m.GetUserInfo(nickname="regme"))
    assert client.expect(m.UserInfo) == m.UserInfo(nickname="regme", is_registered=True, user_id=reply.user_id,
                                                   online=True)
    # A second registration from the same session is refused.
    client.send(m.RegisterUser(password=pw("again")))
    assert not client.expect(m.RegisterResponse).success


def test_a_registered_nickname_is_taken_and_protected(connect):
    first, second = connect("dup"), connect("dup")  # anonymous sessions may share a nickname
    first.send(m.RegisterUser(password=pw("one")))
    assert first.expect(m.RegisterResponse).success
    second.send(m.RegisterUser(password=pw("two")))
    assert second.expect(m.RegisterResponse) == m.RegisterResponse(
        success=False, message="Nickname already registered")

    third = connect("third")
    third.send(m.SetNickname(nickname="dup"))
    assert third.expect(m.NicknameResponse) == m.NicknameResponse(
        success=False, message="Nickname registered, password required")
    nameless = connect()
    nameless.send(m.SetNickname(nickname="dup"))
    assert not nameless.expect(m.NicknameResponse).success
    # The owner logs in elsewhere with the right password.
    owner = connect()
    reply = owner.login("dup", pw("one"))
    assert reply.success and reply.nickname == "dup"
    assert not owner.login("dup", pw("two")).success


def test_registered_user_renames_the_account(connect):
    client = connect()
    uid = client.register("oldname", pw("rename"))
    client.send(m.SetNickname(nickname="newname"))
    assert client.expect(m.NicknameResponse) == m.NicknameResponse(success=True, message="Nickname changed to newname")
    client.send(m.GetUserInfo(nickname="newname"))
    assert client.expect(m.UserInfo).user_id == uid
    client.send(m.GetUserInfo(nickname="oldname"))
    assert client.expect(m.UserInfo).is_registered is False
    other = connect()
    reply = other.login("newname", pw("rename"))
    assert (reply.success, reply.user_id) == (True, uid)
    # Another account's name cannot be taken by renaming.
    connect().register("taken", pw("taken"))
    client.send(m.SetNickname(nickname="taken"))
    assert client.expect(m.NicknameResponse).message == "Nickname registered, password required"


# -- nicknames regardless of case --


def test_a_registered_nickname_is_taken_in_every_case(connect):
    early = connect("Alice")  # before anyone registered alice
    owner = connect()
    owner_id = owner.register("alice", pw("alice"))
    early.send(m.RegisterUser(password=pw("early")))
    assert early.expect(m.RegisterResponse) == m.RegisterResponse(success=False, message="Nickname already registered")
    for variant in ("Alice", "ALICE", "aLiCe"):
        anonymous = connect()
        anonymous.send(m.SetNickname(nickname=variant))
        assert anonymous.expect(m.NicknameResponse) == m.NicknameResponse(
            success=False, message="Nickname registered, password required"), variant
    other = connect()
    other.register("bob", pw("bob"))
    other.send(m.SetNickname(nickname="ALICE"))
    assert other.expect(m.NicknameResponse) == m.NicknameResponse(
        success=False, message="Nickname registered, password required")

    # The owner may change the case of its own name; the account follows.
    owner.send(m.SetNickname(nickname="Alice"))
    assert owner.expect(m.NicknameResponse) == m.NicknameResponse(success=True, message="Nickname changed to Alice")
    owner.send(m.GetUserInfo(nickname="Alice"))
    assert owner.expect(m.UserInfo).user_id == owner_id
    reply = connect().login("Alice", pw("alice"))
    assert (reply.success, reply.user_id, reply.nickname) == (True, owner_id, "Alice")


def test_login_by_a_case_variant_signs_into_the_account_as_registered(connect):
    uid = connect().register("carol", pw("carol"))
    client = connect()
    # Upstream clients hash with the name as typed, so only a client hashing as "carol" gets this far.
    reply = client.login("CAROL", pw("carol"))
    assert (reply.success, reply.user_id, reply.nickname) == (True, uid, "carol")
    assert connect().login("Carol", pw("wrong")).message == "Invalid credentials"


def old_schema_with_users(database, nicknames: list[str]) -> None:
    """The database as a server of schema 5, before registered names were unique regardless of case,
    left it, with an account (password: pw(nickname)) for each of ``nicknames``, in that order."""
    postgres = str(database).startswith("postgresql://")
    if postgres:
        connection = psycopg2.connect(database)
        version = ['CREATE TABLE "SchemaVersion" (version BIGINT NOT NULL)', 'INSERT INTO "SchemaVersion" VALUES (5)']
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(database)
        version = ["PRAGMA user_version = 5"]
    with closing(connection):
        cursor = connection.cursor()
        for number in range(1, 6):
            for statement in schema.migration("postgresql" if postgres else "sqlite", number):
                cursor.execute(statement)
        for nickname in nicknames:
            stored = bcrypt.hashpw(pw(nickname).encode(), bcrypt.gensalt(4)).decode()
            cursor.execute(f"""INSERT INTO "User" (nickname, password_hash, created_at)
                               VALUES ('{nickname}', '{stored}', 1)""")
        for statement in version:
            cursor.execute(statement)
        connection.commit()


def test_an_old_database_with_names_alike_but_for_case_starts_and_names_them(tmp_path):
    server = ServerProcess(tmp_path / "old")
    old_schema_with_users(server.database, ["alice", "Alice", "bob"])
    try:
        server.start()
        log = server.wait_for_log("Registered nicknames alike but for case")
        (warning,) = [line for line in log.splitlines() if "alike but for case" in line]
        assert "[WARN]" in warning and "alice (user 1), Alice (user 2);" in warning, warning
        with Client(server.port) as first, Client(server.port) as second, Client(server.port) as third:
            for client in (first, second, third):
                client.handshake()
            # Each account still signs in; a third spelling names the exactly spelled one, else the oldest.
            assert first.login("alice", pw("alice")).user_id == 1
            assert second.login("Alice", pw("Alice")).user_id == 2
            assert third.login("ALICE", pw("alice")).user_id == 1
            # No new pair arises meanwhile, and the code's check holds without a unique index.
            first.send(m.SetNickname(nickname="ALICE"))
            assert first.expect(m.NicknameResponse) == m.NicknameResponse(
                success=False, message="Nickname already in use")
            # The pair resolved, the next start says nothing and makes the index unique.
            second.send(m.SetNickname(nickname="alicia"))
            assert second.expect(m.NicknameResponse).success
        server.stop()
        server.start()
        assert "alike but for case" not in server.log_text()
        with Client(server.port) as client:
            client.handshake()
            client.send(m.SetNickname(nickname="Alice"))
            assert not client.expect(m.NicknameResponse).success
    finally:
        server.kill()


def test_admin_flag_comes_from_the_configuration_and_follows_it_at_restart(start_server, tmp_path):
    root = tmp_path / "admins"
    server = start_server({"server": {"admin_users": ["boss"]}}, root=root)
    with Client(server.port) as boss, Client(server.port) as regular, Client(server.port) as anon:
        for client in (boss, regular, anon):
            client.handshake()
        boss_id = server.create_admin("boss", pw("boss"))
        assert boss.login("boss", pw("boss")).success
        regular.register("regular", pw("regular"))
        anon.send(m.SetNickname(nickname="anon"))
        anon.expect(m.NicknameResponse)
        chat = boss.channel_id("chat")
        boss.post(chat, "from the boss")
        regular.post(chat, "from a regular")
        anon.post(chat, "from nobody")
        assert authors(anon, chat) == ["$boss", "regular", "~anon"]
        # The flag is in AUTH_RESPONSE on a later login, and admin-only requests work.
        with Client(server.port) as again:
            again.handshake()
            reply = again.login("boss", pw("boss"))
            assert (reply.success, reply.user_id, reply.user_flags) == (True, boss_id, 0x01)
            again.send(m.ListUsers(limit=10, include_offline=True))
            assert {u.nickname for u in again.expect(m.UserList).users} == {"boss", "regular"}
            reply = regular.login("regular", pw("regular"))
            assert reply.user_flags == 0
    server.stop()

    server = start_server({"server": {"admin_users": []}}, root=root)
    with Client(server.port) as boss:
        boss.handshake()
        reply = boss.login("boss", pw("boss"))
        assert (reply.success, reply.user_flags) == (True, 0)
        chat = boss.channel_id("chat")
        assert authors(boss, chat) == ["boss", "regular", "~anon"]
        boss.send(m.ListUsers(limit=10, include_offline=True))
        boss.expect_error(ErrorCode.PERMISSION_DENIED)


# -- login and logout --


def test_login_refusals_and_success(connect):
    owner = connect()
    uid = owner.register("loginme", pw("right"))
    client = connect()
    wrong = client.login("loginme", pw("wrong"))
    assert wrong == m.AuthResponse(success=False, message="Invalid credentials")
    unknown = client.login("nobody", pw("right"))
    assert unknown == m.AuthResponse(success=False, message="Invalid credentials")
    # An over-long hash is simply wrong, not a server error.
    assert client.login("loginme", "q" * 100).message == "Invalid credentials"
    ok = client.login("loginme", pw("right"))
    assert ok == m.AuthResponse(success=True, user_id=uid, nickname="loginme", message="Welcome back, loginme!",
                                user_flags=0)


def test_auth_response_carries_the_user_flags_byte_on_the_wire(connect):
    connect().register("rawflags", pw("raw"))
    client = connect()
    client.send(m.AuthRequest(nickname="rawflags", password=pw("raw")))
    frame = client.recv_frame()
    while frame.type != m.AuthResponse.TYPE:
        frame = client.recv_frame()
    # success, user_id u64, nickname, message, then the flags byte, nothing after it.
    text = b"Welcome back, rawflags!"
    assert frame.payload[0] == 1
    assert frame.payload.endswith(len(text).to_bytes(2, "big") + text + b"\x00")


def test_logout_is_silent_and_makes_the_session_anonymous(connect):
    client = connect()
    client.register("leaver", pw("leaver"))
    chat = client.channel_id("chat")
    assert isinstance(post_and_edit(client, chat, "before logout"), m.MessageEdited)
    client.send(m.Logout())
    client.assert_silent(0.3, skip=())
    answer = post_and_edit(client, chat, "after logout")
    assert isinstance(answer, m.Error) and answer.error_code == ErrorCode.AUTH_REQUIRED
    assert authors(client, chat) == ["leaver", "~leaver"]
    client.send(m.ChangePassword(old_password=pw("leaver"), new_password=pw("new")))
    client.expect_error(ErrorCode.AUTH_REQUIRED)
    # A second LOGOUT while anonymous is just as silent.
    client.send(m.Logout())
    client.assert_silent(0.2, skip=())
    assert client.login("leaver", pw("leaver")).success
    assert isinstance(post_and_edit(client, chat, "back again"), m.MessageEdited)


def test_failed_logins_throttle_the_address_not_others(start_server):
    server = start_server()
    owner = Client(server.port)
    try:
        owner.handshake()
        owner.register("victim", pw("correct"))
        guesses = [pw(f"guess{i}") for i in range(5)]
        with Client(server.port) as attacker:
            attacker.handshake()
            for guess in guesses:
                assert attacker.login("victim", guess).message == "Invalid credentials"
            refused = attacker.login("victim", pw("correct"))
            assert not refused.success
            assert refused.message.startswith("Too many failed login attempts"), refused
        # A new connection from the same address is refused as well.
        with Client(server.port) as retry:
            retry.handshake()
            assert retry.login("victim", pw("correct")).message.startswith("Too many failed login attempts")
        with Client(server.port, source="127.0.0.2") as elsewhere:
            elsewhere.handshake()
            reply = elsewhere.login("victim", pw("correct"))
            assert reply.success and reply.nickname == "victim"
    finally:
        owner.close()
    assert server.stop() == 0  # every line written out
    log = server.log_text()
    throttled = [line for line in log.splitlines() if "Login throttled" in line]
    assert len(throttled) == 1 and "127.0.0.1" in throttled[0] and "[WARN]" in throttled[0], throttled
    for secret in (pw("correct"), *guesses):
        assert secret not in log


def test_password_hashes_never_reach_the_logs(start_server):
    server = start_server(args=("--debug",))
    secrets = [pw("first"), pw("second"), pw("wrong"), pw("third")]
    with Client(server.port) as client:
        client.handshake()
        client.register("quiet", secrets[0])
        client.send(m.ChangePassword(old_password=secrets[0], new_password=secrets[1]))
        assert client.expect(m.PasswordChanged).success
        client.send(m.ChangePassword(old_password=secrets[2], new_password=secrets[3]))
        assert not client.expect(m.PasswordChanged).success
        client.send(m.Logout())
        assert not client.login("quiet", secrets[2]).success
        assert client.login("quiet", secrets[1]).success
        client.send(m.Ping(timestamp=1))
        client.expect(m.Pong)
    assert server.stop() == 0  # every line written out
    logs = list(server.data_dir.glob("*.log"))
    assert {p.name for p in logs} >= {"server.log", "debug.log"}
    text = "".join(path.read_text() for path in logs)
    assert "quiet" in text  # the logs did record the activity
    for secret in secrets:
        assert secret not in text


def test_bcrypt_runs_off_the_hub(start_server):
    """50 concurrent logins (each a cost-10 bcrypt check) must not stall PING on another connection."""
    logins = 50
    server = start_server({"limits": {"max_connections_per_ip": logins + 5}})
    clients = [Client(server.port) for _ in range(logins)]
    pinger = Client(server.port)
    try:
        owner = clients[0]
        owner.handshake()
        owner.register("loadtest", pw("load"))
        for client in clients[1:]:
            client.handshake()
        pinger.handshake()
        for client in clients:
            client.send(m.AuthRequest(nickname="loadtest", password=pw("load")))
        results: list = []

        def collect():
            for client in clients:
                results.append(client.expect(m.AuthResponse, timeout=30))

        reader = threading.Thread(target=collect, daemon=True)
        started = time.monotonic()
        reader.start()
        rtts = []
        deadline = started + 30
        while reader.is_alive() and time.monotonic() < deadline and len(rtts) < 10000:
            sent = time.monotonic()
            pinger.send(m.Ping(timestamp=len(rtts)))
            assert pinger.expect(m.Pong).client_timestamp == len(rtts)
            rtts.append(time.monotonic() - sent)
            time.sleep(0.005)
        reader.join(30)
        burst = time.monotonic() - started
    finally:
        for client in (*clients, pinger):
            client.close()
    assert len(results) == logins and all(r.success for r in results)
    print(f"\n{logins} logins took {burst:.2f} s; {len(rtts)} PINGs during the burst: "
          f"median {statistics.median(rtts) * 1000:.1f} ms, max {max(rtts) * 1000:.1f} ms")
    assert len(rtts) >= 5, "the burst ended before PINGs could be measured"
    assert max(rtts) < 0.5
    assert statistics.median(rtts) < 0.1


# -- passwords --


def test_change_password(connect):
    anonymous = connect("nopass")
    anonymous.send(m.ChangePassword(old_password=pw("a"), new_password=pw("b")))
    anonymous.expect_error(ErrorCode.AUTH_REQUIRED)

    client = connect()
    client.register("changer", pw("old"))
    client.send(m.ChangePassword(old_password=pw("not it"), new_password=pw("new")))
    assert client.expect(m.PasswordChanged) == m.PasswordChanged(success=False,
                                                                 error_message="Incorrect current password")
    client.send(m.ChangePassword(old_password="", new_password=pw("new")))
    assert client.expect(m.PasswordChanged).error_message == "Incorrect current password"
    for bad in ("n" * 39, "n" * 51, "é" * 45):
        client.send(m.ChangePassword(old_password=pw("old"), new_password=bad))
        assert client.expect(m.PasswordChanged) == m.PasswordChanged(
            success=False, error_message="Invalid password hash format"), bad
    client.send(m.ChangePassword(old_password=pw("old"), new_password=""))
    reply = client.expect(m.PasswordChanged)
    assert not reply.success and "SSH key" in reply.error_message
    client.send(m.ChangePassword(old_password=pw("old"), new_password=pw("new")))
    assert client.expect(m.PasswordChanged) == m.PasswordChanged(success=True, error_message="")

    other = connect()
    assert other.login("changer", pw("old")).message == "Invalid credentials"
    assert other.login("changer", pw("new")).success


def test_admin_rights_follow_a_rename(start_server):
    server = start_server({"server": {"admin_users": ["boss", "heir"]}})
    with Client(server.port) as boss, Client(server.port) as other, Client(server.port) as twin:
        for client in (boss, other, twin):
            client.handshake()
        server.create_admin("boss", pw("boss"))
        assert boss.login("boss", pw("boss")).user_flags == 0x01
        assert twin.login("boss", pw("boss")).user_flags == 0x01  # a second session of the account
        boss.send(m.ListUsers(limit=10, include_offline=True))
        assert boss.expect(m.UserList).users
        # Renamed away from a configured name, the account is no longer an admin, at once.
        boss.send(m.SetNickname(nickname="retired"))
        assert boss.expect(m.NicknameResponse).success
        for client in (boss, twin):
            client.send(m.ListUsers(limit=10, include_offline=True))
            client.expect_error(ErrorCode.PERMISSION_DENIED)
        assert other.login("retired", pw("boss")).user_flags == 0
        chat = other.channel_id("chat")
        other.post(chat, "retired words")
        assert authors(other, chat) == ["retired"]
        # No rename leads back to a configured name, the former one included: the operator makes those.
        for name in ("heir", "boss", "BOSS"):
            other.send(m.SetNickname(nickname=name))
            assert other.expect(m.NicknameResponse) == m.NicknameResponse(
                success=False, message="Nickname reserved: admin accounts are made by the server operator")


def test_parallel_guesses_get_no_more_answers_than_the_throttle_allows(start_server):
    """Ten connections guess at once: only five learn that their guess was wrong, the rest nothing."""
    server = start_server()
    with Client(server.port, source="127.0.0.3") as owner:
        owner.handshake()
        owner.register("target", pw("target"))
    guessers = [Client(server.port) for _ in range(10)]
    try:
        for client in guessers:
            client.handshake()
        for number, client in enumerate(guessers[:-1]):
            client.send(m.AuthRequest(nickname="target", password=pw(f"guess {number}")))
        time.sleep(0.05)  # the right password last, behind the wrong ones
        guessers[-1].send(m.AuthRequest(nickname="target", password=pw("target")))
        replies = [client.expect(m.AuthResponse, timeout=30) for client in guessers]
    finally:
        for client in guessers:
            client.close()
    answers = [reply.message.split(".")[0] for reply in replies]
    assert answers.count("Invalid credentials") == 5, answers
    assert answers.count("Too many failed login attempts") == 5, answers
    assert not replies[-1].success


def test_throttle_counts_ipv6_per_64_and_forgets_old_entries(monkeypatch):
    from superchat.server import passwords
    from superchat.server.cluster import Solo

    throttle = passwords.LoginThrottle(Solo(), max_failures=3, window_seconds=60, block_seconds=60)
    for suffix in ("1", "2", "3"):
        throttle.failed(f"2001:db8:1:2::{suffix}", "x")
    assert throttle.seconds_blocked("2001:db8:1:2:ffff::9") > 0
    assert throttle.seconds_blocked("2001:db8:1:3::1") == 0
    assert throttle.seconds_blocked("::ffff:127.0.0.1") == 0
    for _ in range(3):
        throttle.failed("::ffff:10.0.0.1", "x")
    assert throttle.seconds_blocked("10.0.0.1") > 0
    assert throttle.seconds_blocked("10.0.0.2") == 0

    clock = [1000.0]
    monkeypatch.setattr(passwords.time, "monotonic", lambda: clock[0])
    throttle = passwords.LoginThrottle(Solo(), max_failures=5, window_seconds=60, block_seconds=60)
    for number in range(3000):
        clock[0] += 0.1
        throttle.failed(f"10.{number // 65536}.{number // 256 % 256}.{number % 256}", "x")
    # One failure each within the last minute (600 addresses) stays; the rest was swept.
    assert len(throttle) <= 2 * passwords.LoginThrottle.SWEEP_THRESHOLD
    assert throttle.seconds_blocked("10.0.11.183") == 0


def test_registrations_are_limited_per_address(start_server):
    server = start_server({"limits": {"max_registrations_per_hour": 2}})
    for name in ("first", "second"):
        client = Client(server.port)
        client.handshake()
        client.register(name, pw(name))
    third = Client(server.port)
    third.handshake("third")
    third.send(m.RegisterUser(password=pw("third")))
    refused = third.expect(m.RegisterResponse)
    assert not refused.success and "Too many registrations" in refused.message
    server.wait_for_log("registration of third refused: too many from 127.0.0.1")
    # Another address has its own budget, and the refused session still has its nickname.
    other = Client(server.port, source="127.0.0.2")
    other.handshake()
    assert other.register("fourth", pw("fourth"))
    third.send(m.Ping(timestamp=3))
    assert third.expect(m.Pong).client_timestamp == 3
