"""Admin accounts are the operator's: no network path leads to one, and ``scd admin create`` makes them.

The SSH sign-up paths are in tests/test_ssh.py.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client
from tests.server_process import SCD

pytestmark = pytest.mark.timeout(120)

ADMINS = {"server": {"admin_users": ["boss", "Chief"]}}
RESERVED = "Nickname reserved: admin accounts are made by the server operator"
CLIENT_HASH = "c" * 44  # any 40-50 byte string stands for a client's password hash
PERMISSION_DENIED = ErrorCode.PERMISSION_DENIED
# What a SuperChat client sends for the password "hunter22" as "boss": argon2id(salt "boss", 3 passes,
# 64 MiB, 4 lanes, 32 bytes), computed by another implementation (noble-hashes), not by ours.
HUNTER22_AS_BOSS = "lbKXX-fcyLoU7NQEtL6wiPjoj2ib6QiklUcgdB62494"


def scd_admin(server, *args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    """``bin/scd admin ARGS`` on the server's configuration, as the operator runs it on the host."""
    return subprocess.run(
        [sys.executable, str(SCD), "admin", *args, "--config", str(server.config_path)],
        input=stdin, capture_output=True, text=True, env={**server.env, **(env or {})}, timeout=100,
    )


def assert_not_admin(client: Client) -> None:
    client.send(m.ListBans(include_expired=True))
    client.expect_error(PERMISSION_DENIED)


def is_registered(client: Client, nickname: str) -> bool:
    client.send(m.GetUserInfo(nickname=nickname))
    return client.expect(m.UserInfo).is_registered


# -- no network path --


def test_register_user_refuses_admin_names_in_any_case(start_server):
    server = start_server(ADMINS)
    for name in ("boss", "BOSS", "Chief", "chief"):
        client = Client(server.port)
        client.handshake(name)  # an anonymous session may go by the name, as by any unregistered one
        client.send(m.RegisterUser(password=CLIENT_HASH))
        assert client.expect(m.RegisterResponse) == m.RegisterResponse(success=False, message=RESERVED), name
        assert_not_admin(client)
        assert not is_registered(client, name)
        client.close()
    log = server.wait_for_log("registration of BOSS refused: reserved for admins")
    assert "No account yet for the admin name boss: make it on this host with: scd admin create boss" in log


def test_a_registered_user_cannot_rename_into_an_admin_name(start_server):
    server = start_server(ADMINS)
    with Client(server.port) as plain:
        plain.handshake()
        plain.register("plain", CLIENT_HASH)
        for name in ("boss", "Boss", "chief"):
            plain.send(m.SetNickname(nickname=name))
            assert plain.expect(m.NicknameResponse) == m.NicknameResponse(success=False, message=RESERVED), name
        assert_not_admin(plain)
        assert is_registered(plain, "plain") and not is_registered(plain, "boss")


def test_a_deleted_admin_account_cannot_be_registered_again_over_the_network(start_server):
    server = start_server(ADMINS)
    boss_id = server.create_admin("boss", CLIENT_HASH)
    server.create_admin("Chief", CLIENT_HASH)
    with Client(server.port) as chief, Client(server.port) as newcomer, Client(server.port) as plain:
        for client in (chief, newcomer, plain):
            client.handshake()
        assert chief.login("Chief", CLIENT_HASH).user_flags == 0x01
        chief.send(m.DeleteUser(user_id=boss_id))
        assert chief.expect(m.UserDeleted).success
        for client in (newcomer, plain):  # told to everyone
            client.expect(m.UserDeleted)

        newcomer.send(m.SetNickname(nickname="boss"))
        assert newcomer.expect(m.NicknameResponse).success
        newcomer.send(m.RegisterUser(password=CLIENT_HASH))
        assert newcomer.expect(m.RegisterResponse) == m.RegisterResponse(success=False, message=RESERVED)
        plain.register("plain", CLIENT_HASH)
        plain.send(m.SetNickname(nickname="boss"))
        assert plain.expect(m.NicknameResponse) == m.NicknameResponse(success=False, message=RESERVED)
        assert not is_registered(chief, "boss")

        # The operator makes it again; the client's login opens it, with admin rights.
        new_id = server.create_admin("boss", "d" * 44)
        again = newcomer.login("boss", "d" * 44)
        assert (again.success, again.user_id, again.user_flags) == (True, new_id, 0x01)
        assert new_id != boss_id


# -- the operator's command --


def test_the_operator_makes_an_admin_account_that_the_clients_login_opens(start_server):
    server = start_server(ADMINS)  # running: the command works beside it
    made = scd_admin(server, "create", "boss", "--password-stdin", stdin="hunter22\n")
    assert (made.returncode, made.stderr) == (0, "")
    assert made.stdout == "Admin account boss created (user 1): sign in as boss from any SuperChat client\n"
    with Client(server.port) as client:
        client.handshake()
        reply = client.login("boss", HUNTER22_AS_BOSS)
        assert (reply.success, reply.user_id, reply.nickname, reply.user_flags) == (True, 1, "boss", 0x01)
        client.send(m.ListBans(include_expired=True))
        assert client.expect(m.BanList).bans == []


def test_the_operator_command_refuses_bad_input_with_one_line(start_server):
    server = start_server({"server": {"admin_users": ["Chief"]}})
    with Client(server.port) as early:
        early.handshake()
        holder = early.register("Boss", CLIENT_HASH)  # before boss was an admin name
    stdin_password = ("--password-stdin",)
    cases = [
        ((), "", None, 2, "the following arguments are required: NAME"),
        (("nobody",), "", None, 2, "nobody is not in server.admin_users: add it there first"),
        (("chief",), "", None, 2, "chief is not in server.admin_users (it lists Chief)"),
        (("no!",), "", None, 2, "invalid nickname 'no!': 3-20 characters, letters, digits, - and _"),
        (("Chief",), "", None, 1,
         "no terminal to ask for the password on: give it on standard input with --password-stdin"),
        (("Chief", *stdin_password), "short\n", None, 1,
         "the password must be 8-128 bytes long, as SuperChat clients require"),
        (("Chief", *stdin_password, "--db", "postgresql://127.0.0.1:1/none"), "hunter22\n", None, 1,
         "cannot open the database: "),
        (("boss", *stdin_password), "hunter22\n", {"SUPERCHAT_SERVER_ADMIN_USERS": "boss"}, 1,
         f"account Boss (user {holder}) holds this name in another case: list Boss in server.admin_users "
         "to take that account, or have an admin delete it"),
    ]
    for args, stdin, env, status, message in cases:
        done = scd_admin(server, "create", *args, stdin=stdin, env=env)
        assert (done.returncode, done.stdout) == (status, ""), (args, done)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"scd admin: {message}"), (args, done.stderr)
    with Client(server.port) as client:
        client.handshake()
        assert not is_registered(client, "Chief")
        assert client.login("Boss", CLIENT_HASH).user_flags == 0


def test_passwords_that_differ_on_the_terminal_change_nothing(start_server):
    server = start_server(ADMINS)
    pid, terminal = pty.fork()
    if pid == 0:  # the child, on a terminal of its own, as an operator's shell
        os.execve(sys.executable, [sys.executable, str(SCD), "admin", "create", "Chief", "--config",
                                   str(server.config_path)], server.env)
    screen = b""
    for prompt, typed in ((b"Password for the new admin account Chief: ", b"first-password\n"),
                          (b"The same password again: ", b"second-password\n")):
        deadline = time.monotonic() + 30
        while prompt not in screen and time.monotonic() < deadline:
            screen += os.read(terminal, 1024)
        assert prompt in screen, screen
        os.write(terminal, typed)
    while True:
        try:
            chunk = os.read(terminal, 1024)
        except OSError:  # the child is gone and its terminal with it
            break
        if not chunk:
            break
        screen += chunk
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 1
    assert b"scd admin: the passwords differ: no account made or changed" in screen
    assert b"first-password" not in screen and b"second-password" not in screen  # typed without echo
    with Client(server.port) as client:
        client.handshake()
        assert not is_registered(client, "Chief")
