"""Limits and bad input: each gets a clear ERROR and nobody else is disturbed."""

import socket
import struct
import time

import pytest

from superchat.protocol import ErrorCode, compress_payload, encode_frame, encode_message, encode_payload
from superchat.protocol import messages as m
from tests.client import Client, ConnectionClosed
from tests.server_process import ServerProcess

pytestmark = pytest.mark.timeout(90)


def still_serving(client: Client) -> None:
    client.send(m.Ping(timestamp=7))
    assert client.expect(m.Pong).client_timestamp == 7


@pytest.mark.parametrize("code", [0x08, 0x15, 0x19, 0x1A, 0x1B, 0x00, 0x7F, 0xFF, 0x81, 0x91, 0x98])
def test_unknown_unimplemented_and_server_types_get_1001(connect, code):
    client = connect("probe")
    client.send_frame(code, b"\x00\x01\x02")
    client.expect_error(ErrorCode.UNSUPPORTED)
    still_serving(client)


def test_truncated_and_garbage_payloads_get_1000(connect):
    client = connect("garbler")
    general = client.channel_id("general")
    whole = encode_payload(m.PostMessage(channel_id=general, content="complete"))
    client.send_frame(m.PostMessage.TYPE, whole[:-3])
    client.expect_error(ErrorCode.INVALID_FORMAT)
    client.send_frame(m.SetNickname.TYPE, b"\x00")
    client.expect_error(ErrorCode.INVALID_FORMAT)
    client.send_frame(m.ListMessages.TYPE, b"\xff" * 5)
    client.expect_error(ErrorCode.INVALID_FORMAT)
    client.send_frame(m.Ping.TYPE, b"")
    client.expect_error(ErrorCode.INVALID_FORMAT)
    # Trailing bytes after a complete payload are ignored, as the reference server does.
    client.send_frame(m.Ping.TYPE, encode_payload(m.Ping(timestamp=5)) + b"junk")
    assert client.expect(m.Pong).client_timestamp == 5
    still_serving(client)


def test_invalid_utf8_gets_1000(connect):
    client = connect("utf8")
    general = client.channel_id("general")
    bad = b"\x00\x04ab\xff\xfe"
    client.send_frame(m.SetNickname.TYPE, bad)
    client.expect_error(ErrorCode.INVALID_FORMAT)
    payload = struct.pack(">QBB", general, 0, 0) + bad
    client.send_frame(m.PostMessage.TYPE, payload)
    client.expect_error(ErrorCode.INVALID_FORMAT)
    client.send(m.ListMessages(channel_id=general, limit=10))
    assert client.expect(m.MessageList).messages == []


def test_nickname_rules(start_server):
    server = start_server({"limits": {"max_nickname_length": 8}})
    with Client(server.port) as client:
        client.handshake()
        client.send(m.SetNickname(nickname="ab"))
        client.expect_error(ErrorCode.INVALID_FORMAT)
        client.send(m.SetNickname(nickname="abcdefghi"))  # over the configured 8
        client.expect_error(ErrorCode.INVALID_FORMAT)
        client.send(m.SetNickname(nickname="bad name"))
        reply = client.expect(m.NicknameResponse)
        assert not reply.success and "alphanumeric" in reply.message
        client.send(m.SetNickname(nickname="héllo"))
        assert not client.expect(m.NicknameResponse).success
        client.send(m.SetNickname(nickname="good_one"))
        assert client.expect(m.NicknameResponse) == m.NicknameResponse(success=True, message="Nickname set to good_one")
        client.send(m.SetNickname(nickname="other-1"))
        assert client.expect(m.NicknameResponse).message == "Nickname changed to other-1"
    server.wait_for_log("Session 1 set nickname: good_one")


def test_oversized_and_undersized_frames_close_the_connection_after_an_error(connect):
    bystander = connect("bystander")
    for header in (struct.pack(">I", 1024 * 1024 + 1), struct.pack(">I", 2) + b"\x01\x10"):
        client = connect()
        client.send_raw(header)
        client.expect_error(ErrorCode.INVALID_FRAME)
        client.wait_closed()
    still_serving(bystander)


def test_a_frame_of_exactly_one_mebibyte_is_read(connect):
    client = connect("bigframe")
    general = client.channel_id("general")
    # A string holds at most 65535 bytes, so the frame is filled with trailing bytes, which are ignored.
    payload = struct.pack(">QBBH", general, 0, 0, 5) + b"hello"
    payload += b"\x00" * (1024 * 1024 - 3 - len(payload))
    assert len(payload) + 3 == 1024 * 1024
    client.send_frame(m.PostMessage.TYPE, payload)
    assert client.expect(m.MessagePosted).success


def test_compressed_frames_are_accepted(connect):
    client = connect("squeezer")
    general = client.channel_id("general")
    payload = encode_payload(m.PostMessage(channel_id=general, content="squeeze " * 200))
    client.send_raw(struct.pack(">IBBB", 3 + len(compress_payload(payload)), 1, m.PostMessage.TYPE, 1)
                    + compress_payload(payload))
    message_id = client.expect(m.MessagePosted).message_id
    client.send(m.ListMessages(channel_id=general, limit=5))
    assert client.expect(m.MessageList).messages[-1].id == message_id
    corrupt = b"\x00\x00\x00\x20" + b"\xff" * 8
    client.send_raw(struct.pack(">IBBB", 3 + len(corrupt), 1, m.Ping.TYPE, 1) + corrupt)
    client.expect_error(ErrorCode.COMPRESSION_ERROR)
    still_serving(client)


def test_pipelined_frames_are_answered_in_order(connect):
    client = connect("pipeline")
    client.send_raw(b"".join(encode_frame(m.Ping.TYPE, encode_payload(m.Ping(timestamp=i))) for i in range(50)))
    assert [client.expect(m.Pong).client_timestamp for _ in range(50)] == list(range(50))


def test_message_rate_limit_is_enforced_per_session(start_server):
    server = start_server({"limits": {"message_rate_limit": 3}})
    with Client(server.port) as fast, Client(server.port) as calm:
        fast.handshake("fast")
        calm.handshake("calm")
        chat = fast.channel_id("chat")
        for i in range(3):
            fast.post(chat, f"post {i}")
        fast.send(m.PostMessage(channel_id=chat, content="one too many"))
        error = fast.expect_error(ErrorCode.MESSAGE_RATE_LIMITED)
        assert "3 per minute" in error.message
        calm.post(chat, "my own budget")
        fast.send(m.ListMessages(channel_id=chat, limit=10))
        assert "one too many" not in [e.content for e in fast.expect(m.MessageList).messages]
    server.wait_for_log("rate limit exceeded")


def test_joins_leaves_and_nickname_changes_are_rate_limited_per_session(connect):
    hopper, calm = connect("hopper"), connect("calm")
    channels = [hopper.channel_id("general"), hopper.channel_id("tech")]
    # 30 changes in 10 seconds are allowed: the nickname set on connecting, 28 joins and a leave.
    hopper.send_raw(b"".join(encode_message(m.JoinChannel(channel_id=channels[i % 2])) for i in range(28)))
    assert all(hopper.expect(m.JoinResponse).success for _ in range(28))
    hopper.send(m.LeaveChannel(channel_id=0))
    assert hopper.expect(m.LeaveResponse).success
    for change in (m.JoinChannel(channel_id=channels[1]), m.LeaveChannel(channel_id=0), m.SetNickname(nickname="hop2")):
        hopper.send(change)
        assert "max 30 per 10 seconds" in hopper.expect_error(ErrorCode.RATE_LIMITED).message
    calm.send(m.JoinChannel(channel_id=channels[0]))
    assert calm.expect(m.JoinResponse).success
    still_serving(hopper)


def test_connections_per_address_are_capped(start_server):
    server = start_server({"limits": {"max_connections_per_ip": 2}})
    first, second = Client(server.port), Client(server.port)
    first.handshake("first")
    second.handshake("second")
    third = Client(server.port)
    third.expect(m.ServerConfig)
    third.expect_error(ErrorCode.TOO_MANY_CONNECTIONS)
    third.wait_closed()
    still_serving(first)
    first.close()
    deadline = time.monotonic() + 10
    while True:  # the slot frees once the server has seen the close
        fourth = Client(server.port)
        fourth.expect(m.ServerConfig)
        try:
            fourth.send(m.Ping(timestamp=1))
            fourth.expect(m.Pong)
            break
        except (AssertionError, ConnectionClosed, ConnectionResetError, BrokenPipeError):
            fourth.close()
            assert time.monotonic() < deadline, "slot never freed"
            time.sleep(0.1)
    second.close()
    fourth.close()


def test_idle_sessions_are_closed_and_active_ones_kept(start_server):
    server = start_server({"limits": {"session_timeout_seconds": 1}})
    idle, busy = Client(server.port), Client(server.port)
    idle.handshake("idle")
    busy.handshake("busy")
    started = time.monotonic()
    for _ in range(6):
        time.sleep(0.4)
        still_serving(busy)
    idle.wait_closed(timeout=5)
    assert time.monotonic() - started < 5
    still_serving(busy)


def test_a_reader_that_stops_reading_is_dropped_without_delaying_others(start_server):
    big = 60_000
    server = start_server({"limits": {"max_message_length": big, "message_rate_limit": 10000}})
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    with Client(server.port) as poster, Client(server.port) as reader:
        poster.handshake("poster")
        reader.handshake("reader")
        general = poster.channel_id("general")
        stalled.sendall(encode_message(m.SubscribeChannel(channel_id=general)))
        reader.subscribe_channel(general)
        time.sleep(0.3)  # let the stalled session's subscription land
        batches, per_batch = 8, 50  # 24 MB in all: far past the backlog limit and the socket buffers
        for batch in range(batches):
            for i in range(per_batch):
                poster.send(m.PostMessage(channel_id=general, content=f"{batch:02d}{i:02d}" + "x" * (big - 4)))
            for _ in range(per_batch):
                assert poster.expect(m.MessagePosted, timeout=20).success
            for i in range(per_batch):
                assert reader.expect(m.NewMessage, timeout=20).content.startswith(f"{batch:02d}{i:02d}")
    stalled.close()
    server.wait_for_log("outbound queue overflow")


def test_past_the_open_files_limit_connections_wait_and_open_sessions_go_on(tmp_path):
    server = ServerProcess(tmp_path / "scd", {"limits": {"max_connections_per_ip": 255}})
    server.open_files = 128
    server.start()
    try:
        assert any("Open files: up to 128," in line for line in server.output)
        first = Client(server.port)
        first.handshake("first")
        # More connections than the process has files for: the rest wait in the backlog.
        waiting = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(160)]
        time.sleep(1)
        first.send(m.Ping(timestamp=1))
        assert first.expect(m.Pong).client_timestamp == 1
        for sock in waiting[:100]:
            sock.close()
        late = Client(server.port, timeout=10)
        late.handshake("late")
        late.send(m.Ping(timestamp=2))
        assert late.expect(m.Pong).client_timestamp == 2
        errors = server.log_text("errors.log")
        assert errors.count(f"Cannot accept connections on port {server.port}: Too many open files "
                            "(open files limit 128)") == 1, errors
        assert f"Accepting connections on port {server.port} again" in server.log_text("server.log")
        assert "Traceback" not in errors + "\n".join(server.output)
        for sock in waiting[100:]:
            sock.close()
    finally:
        server.kill()
