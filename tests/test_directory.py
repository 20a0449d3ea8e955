"""Directory mode: listing, registration with verification, heartbeats, health checks and announcing."""

import json
import socket
import threading
import time

import pytest

from superchat.config import load_config
from superchat.protocol import ErrorCode, FrameDecoder, decode_payload, encode_message
from superchat.protocol import messages as m
from superchat.server.cluster import Solo
from superchat.server.directory import Directory
from superchat.server.session import SessionRegistry
from superchat.server.writer import Writer
from superchat.storage import Store
from tests.client import Client
from tests.server_process import free_port

pytestmark = pytest.mark.timeout(120)

SEEDED_CHANNELS = 5  # >chat and the four default forums
VERIFY_WAIT = 40.0  # a REGISTER_ACK follows a verification, which may take up to 20 s


def discovery(**values) -> dict:
    return {"discovery": values}


def client_of(server, **kwargs) -> Client:
    client = Client(server.port, timeout=VERIFY_WAIT, **kwargs)
    client.handshake()
    return client


def list_servers(server, limit: int = 0) -> list:
    with client_of(server) as client:
        client.send(m.ListServers(limit=limit))
        return client.expect(m.ServerList).servers


def register(client: Client, port: int, hostname: str = "127.0.0.1", **fields) -> m.RegisterAck:
    fields = {"name": "Listed", "description": "A listed server", "is_public": True, **fields}
    client.send(m.RegisterServer(hostname=hostname, port=port, **fields))
    return client.expect(m.RegisterAck)


def entry(servers: list, port: int, hostname: str = "127.0.0.1"):
    return next((s for s in servers if (s.hostname, s.port) == (hostname, port)), None)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.2)


# -- LIST_SERVERS ------------------------------------------------------------------------------------


def test_fresh_directory_lists_only_itself(start_server):
    server = start_server()
    with client_of(server) as client, client_of(server):
        client.send(m.ListServers(limit=0))
        (itself,) = client.expect(m.ServerList).servers
    assert itself == m.ServerInfo(
        hostname="localhost",
        port=server.port,
        name="SuperChat Server",
        description="A SuperChat community server",
        user_count=2,
        max_users=0,
        uptime_seconds=itself.uptime_seconds,
        is_public=True,
        channel_count=SEEDED_CHANNELS,
    )
    assert 0 <= itself.uptime_seconds < 60


def test_self_entry_follows_the_configuration(start_server):
    server = start_server(
        discovery(public_hostname="chat.example.org", server_description="Configured", max_users=50),
        args=("--server-name", "Flagged"),
    )
    (itself,) = list_servers(server, limit=3)
    assert (itself.hostname, itself.port, itself.name) == ("chat.example.org", server.port, "Flagged")
    assert (itself.description, itself.max_users, itself.user_count) == ("Configured", 50, 1)


def test_servers_json_is_served_on_the_public_http_port(start_server):
    directory = start_server({"server": {"http_port": free_port()}, **discovery(server_description="Over HTTP")})
    listed = start_server()
    with client_of(directory) as client:
        assert register(client, listed.port, name="Listed").success
    status, headers, body = directory.http_get("/servers.json", port=directory.http_port)
    assert (status, headers["Content-Type"]) == (200, "application/json")
    document = json.loads(body)
    assert document["count"] == 2
    itself, other = document["servers"]
    assert (itself["Port"], itself["Description"]) == (directory.port, "Over HTTP")
    assert (other["Hostname"], other["Port"], other["Name"]) == ("127.0.0.1", listed.port, "Listed")


def test_servers_json_has_the_reference_key_names(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = load_config(["--config", str(tmp_path / "config.toml"), "--server-name", "Dir"], {"HOME": str(home)})
    store = Store(tmp_path / "directory.db")
    try:
        store.register_server("10.0.0.7", 7000, "Seven", "Lucky", 10, True, 3, "10.0.0.7", int(time.time() * 1000))
        directory = Directory(config, store, Writer(store), SessionRegistry(), Solo(), lambda: 6465, time.monotonic())
        document = json.loads(directory.servers_json())
    finally:
        store.close()
    assert document == {
        "count": 2,
        "servers": [
            {"Hostname": "localhost", "Port": 6465, "Name": "Dir", "Description": "A SuperChat community server",
             "UserCount": 0, "MaxUsers": 0, "UptimeSeconds": 0, "IsPublic": True, "ChannelCount": 0},
            {"Hostname": "10.0.0.7", "Port": 7000, "Name": "Seven", "Description": "Lucky",
             "UserCount": 0, "MaxUsers": 10, "UptimeSeconds": 0, "IsPublic": True, "ChannelCount": 3},
        ],
    }


# -- directory mode off ------------------------------------------------------------------------------


def test_disabled_directory_lists_nothing_and_refuses_registrations(start_server):
    server = start_server(args=("--disable-directory",))
    with client_of(server) as client:
        client.send(m.ListServers(limit=10))
        assert client.expect(m.ServerList).servers == []
        client.send(m.RegisterServer(hostname="127.0.0.1", port=server.port, name="x", description="y"))
        assert client.expect_error(ErrorCode.UNSUPPORTED).message == "Directory mode not enabled on this server"
        client.send(m.Heartbeat(hostname="127.0.0.1", port=server.port))
        assert client.expect_error(ErrorCode.UNSUPPORTED).message == "Directory mode not enabled on this server"
        # A server that is no directory can still be listed by one: it answers challenges.
        client.send(m.VerifyRegistration(challenge=42))
        assert client.expect(m.VerifyResponse).challenge == 42


# -- REGISTER_SERVER ---------------------------------------------------------------------------------


def test_registering_a_reachable_server_lists_it(start_server):
    directory = start_server(discovery(heartbeat_interval_seconds=45))
    listed = start_server()
    with client_of(directory) as client:
        ack = register(client, listed.port, name="Listed", description="Verified", max_users=20, channel_count=4)
        assert ack == m.RegisterAck(success=True, heartbeat_interval=45, message="Server registered")
    itself, other = list_servers(directory)
    assert itself.port == directory.port
    assert other == m.ServerInfo(hostname="127.0.0.1", port=listed.port, name="Listed", description="Verified",
                                 user_count=0, max_users=20, uptime_seconds=0, is_public=True, channel_count=4)
    directory.wait_for_log(f"registered server 127.0.0.1:{listed.port} (Listed) from 127.0.0.1")
    # The verification was a conversation of its own with the listed server, ended politely.
    listed.wait_for_log("answered a verification challenge")
    listed.wait_for_log("closed: client disconnected")


def test_listing_is_newest_first_limited_and_registrations_update(start_server):
    directory = start_server()
    listed = start_server()
    with client_of(directory) as client:
        # One server under two names makes two entries.
        assert register(client, listed.port, hostname="127.0.0.1", name="First").success
        assert register(client, listed.port, hostname="localhost", name="Second").success
        client.send(m.ListServers(limit=1))
        assert [s.name for s in client.expect(m.ServerList).servers][1:] == ["Second"]
        assert register(client, listed.port, hostname="127.0.0.1", name="Renamed", max_users=9).success
    servers = list_servers(directory)
    assert [(s.hostname, s.name) for s in servers[1:]] == [("127.0.0.1", "Renamed"), ("localhost", "Second")]
    assert servers[1].max_users == 9


def test_unreachable_server_is_not_listed(start_server):
    directory = start_server()
    port = free_port()
    with client_of(directory) as client:
        ack = register(client, port)
    assert not ack.success
    # Whether the port refused or timed out is for the directory's log, not for the client.
    assert ack.message == f"Could not verify server: could not connect to 127.0.0.1:{port}"
    assert len(list_servers(directory)) == 1
    assert "Connection refused" in directory.wait_for_log("could not verify")


@pytest.mark.parametrize(("fields", "message"), [
    ({"hostname": ""}, "Invalid hostname or port"),
    ({"port": 0}, "Invalid hostname or port"),
    ({"hostname": "h" * 254}, "Hostname must be at most 253 characters"),
    ({"name": "n" * 101}, "Server name must be at most 100 characters"),
    ({"description": "d" * 501}, "Description must be at most 500 characters"),
])
def test_invalid_registrations_are_refused(start_server, fields, message):
    directory = start_server()
    with client_of(directory) as client:
        ack = register(client, **{"port": directory.port, **fields})
    assert (ack.success, ack.message) == (False, message)


def test_registrations_are_rate_limited_per_address(start_server):
    """Every REGISTER_SERVER counts, invalid ones too: probing costs the same as registering."""
    directory = start_server()
    with client_of(directory) as client:
        for _ in range(30):
            assert register(client, 0).message == "Invalid hostname or port"
        assert register(client, directory.port) == m.RegisterAck(
            success=False, message="Rate limit exceeded (30 requests/hour)"
        )
    with client_of(directory, source="127.0.0.2") as elsewhere:
        assert register(elsewhere, directory.port).success


# -- verification against servers that misbehave -------------------------------------------------------


def read_message(conn: socket.socket, decoder: FrameDecoder):
    while True:
        frames = decoder.feed(conn.recv(65536))
        if frames:
            return decode_payload(frames[0].type, frames[0].payload)


def chatty_but_correct(conn, decoder):
    """Notifications before the answer, as a busy server sends them."""
    conn.sendall(encode_message(m.ServerConfig(protocol_version=1)))
    conn.sendall(encode_message(m.ServerPresence(session_id=1, nickname="someone", online=True)))
    challenge = read_message(conn, decoder).challenge
    conn.sendall(encode_message(m.ChannelCreated(success=True, channel_id=9, name="new", message="made")))
    conn.sendall(encode_message(m.VerifyResponse(challenge=challenge)))


def wrong_answer(conn, decoder):
    conn.sendall(encode_message(m.ServerConfig(protocol_version=1)))
    challenge = read_message(conn, decoder).challenge
    conn.sendall(encode_message(m.VerifyResponse(challenge=(challenge + 1) % 2**64)))


def refusal(conn, decoder):
    conn.sendall(encode_message(m.ServerConfig(protocol_version=1)))
    read_message(conn, decoder)
    conn.sendall(encode_message(m.Error(error_code=ErrorCode.UNSUPPORTED, message="Unsupported message type")))


def other_protocol_version(conn, decoder):
    conn.sendall(encode_message(m.ServerConfig(protocol_version=2)))


def hang_up(conn, decoder):
    pass


@pytest.fixture
def fake_server():
    """A server in the test process playing ``script(conn, decoder)`` to each connection."""
    listeners = []

    def start(script) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve():
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(10)
                    try:
                        script(conn, FrameDecoder())
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()
        return listener.getsockname()[1]

    yield start
    for listener in listeners:
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        listener.close()


@pytest.mark.parametrize(("script", "reason"), [
    (chatty_but_correct, None),
    (wrong_answer, "wrong answer to the verification challenge"),
    (refusal, "error 1001: Unsupported message type"),
    (other_protocol_version, "speaks protocol version 2, not 1"),
    (hang_up, "connection closed before SERVER_CONFIG"),
])
def test_verification_needs_the_challenge_echoed(start_server, fake_server, script, reason):
    directory = start_server()
    port = fake_server(script)
    with client_of(directory) as client:
        ack = register(client, port)
    if reason is None:
        assert ack.success, ack
    else:
        assert not ack.success
        assert ack.message.startswith("Could not verify server: ") and ack.message.endswith(reason), ack.message


# -- HEARTBEAT, VERIFY_REGISTRATION, VERIFY_RESPONSE ---------------------------------------------------


def test_heartbeat_updates_a_listed_server(start_server):
    directory = start_server(discovery(heartbeat_interval_seconds=120))
    listed = start_server()
    with client_of(directory) as client:
        client.send(m.Heartbeat(hostname="127.0.0.1", port=listed.port, user_count=1))
        assert client.expect_error(ErrorCode.NOT_FOUND).message == "Server not registered"
        assert register(client, listed.port, channel_count=1).success
        client.send(m.Heartbeat(hostname="127.0.0.1", port=listed.port, user_count=7, uptime_seconds=99,
                                channel_count=4))
        assert client.expect(m.HeartbeatAck).heartbeat_interval == 120
    heard = entry(list_servers(directory), listed.port)
    assert (heard.user_count, heard.uptime_seconds, heard.channel_count) == (7, 99, 4)


def test_verification_challenge_is_echoed_without_a_nickname(start_server):
    server = start_server()
    with client_of(server) as client:
        for challenge in (0, 1, 2**64 - 1):
            client.send(m.VerifyRegistration(challenge=challenge))
            assert client.expect(m.VerifyResponse).challenge == challenge


def test_unasked_verify_response_is_refused(start_server):
    server = start_server()
    with client_of(server) as client:
        client.send(m.VerifyResponse(challenge=1))
        assert client.expect_error(ErrorCode.INVALID_INPUT).message == "No pending verification"
        client.send(m.Ping(timestamp=3))
        assert client.expect(m.Pong).client_timestamp == 3


# -- keeping the list current ------------------------------------------------------------------------


def test_silent_server_drops_off_the_list(start_server):
    """Without heartbeats or health checks, three heartbeat intervals end a listing."""
    directory = start_server(discovery(heartbeat_interval_seconds=1, health_check_interval_seconds=3600))
    listed = start_server()
    with client_of(directory) as client:
        assert register(client, listed.port).success
    assert entry(list_servers(directory), listed.port)
    wait_until(lambda: entry(list_servers(directory), listed.port) is None, 10, "dropping the silent server")


def test_health_checks_keep_live_servers_and_drop_dead_ones(start_server):
    directory = start_server(discovery(heartbeat_interval_seconds=1, health_check_interval_seconds=1))
    listed = start_server()
    with client_of(directory) as client:
        assert register(client, listed.port).success
    time.sleep(4)  # longer than three heartbeat intervals: only health checks keep it listed
    assert entry(list_servers(directory), listed.port)
    listed.kill()
    wait_until(lambda: entry(list_servers(directory), listed.port) is None, 10, "dropping the dead server")
    directory.wait_for_log(f"Removed server 127.0.0.1:{listed.port} (Listed) from the directory")


# -- announcing --------------------------------------------------------------------------------------


def announced(directory, port: int, name: str = "B"):
    found = entry(list_servers(directory), port)
    return found if found is not None and found.name == name else None


def test_announced_server_is_listed_heartbeats_and_is_dropped_when_gone(start_server):
    directory = start_server(discovery(heartbeat_interval_seconds=1, health_check_interval_seconds=1))
    b = start_server(args=("--announce-to", f"127.0.0.1:{directory.port}", "--server-name", "B"))
    listing = wait_until(lambda: announced(directory, b.port), 15, "listing B")
    assert (listing.description, listing.is_public, listing.channel_count) == (
        "A SuperChat community server", True, SEEDED_CHANNELS
    )
    # Registration reports no uptime; only a heartbeat does.
    wait_until(lambda: (heard := announced(directory, b.port)) and heard.uptime_seconds >= 1, 15, "a heartbeat from B")
    b.wait_for_log(f"Registered with directory 127.0.0.1:{directory.port} as 127.0.0.1:{b.port}")
    b.kill()
    wait_until(lambda: entry(list_servers(directory), b.port) is None, 15, "dropping B")


def test_announcer_retries_until_the_directory_is_up(start_server):
    port = free_port()
    b = start_server(args=("--announce-to", f"127.0.0.1:{port}", "--server-name", "B"))
    b.wait_for_log(f"Announcing to directory 127.0.0.1:{port} failed", timeout=10)
    directory = start_server({"server": {"tcp_port": port}})
    wait_until(lambda: announced(directory, b.port), 30, "listing B after the directory came up")


def test_announcer_registers_again_with_a_directory_that_forgot_it(start_server):
    first = start_server(discovery(heartbeat_interval_seconds=1, health_check_interval_seconds=3600))
    port = first.port
    b = start_server(args=("--announce-to", f"127.0.0.1:{port}", "--server-name", "B"))
    wait_until(lambda: announced(first, b.port), 15, "listing B")
    first.kill()
    # A new directory on the same port with an empty database answers B's heartbeat with ERROR 4000.
    fresh = start_server({**discovery(heartbeat_interval_seconds=1), "server": {"tcp_port": port}})
    wait_until(lambda: announced(fresh, b.port), 30, "listing B again")
    b.wait_for_log(f"Directory 127.0.0.1:{port} no longer lists this server; registering again")
