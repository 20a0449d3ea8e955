"""What one client does to the others: bad posts, ids past the database's range, pipelining
without reading, frames trickled in byte by byte. Real server, real sockets."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from superchat.protocol import ErrorCode, FrameDecoder, encode_message, messages
from tests.client import Client

pytestmark = pytest.mark.timeout(120)

PAST_SIGNED = 2**63
LARGEST_U64 = 2**64 - 1
GENEROUS = {"limits": {"message_rate_limit": 65535, "max_connections_per_ip": 255}}


def assert_no_traceback(server) -> None:
    log = server.log_text("errors.log")
    assert "Traceback" not in log, log[-3000:]
    assert "failed" not in log, log[-3000:]


def test_a_bad_post_fails_alone_while_another_client_posts(start_server):
    server = start_server(GENEROUS)
    bad, good = Client(server.port), Client(server.port)
    bad.handshake("mallory")
    good.handshake("alice")
    general = good.channel_id("general")
    # The frame of the report: POST_MESSAGE to a channel with a parent id of 2^63.
    bad_post = encode_message(messages.PostMessage(channel_id=general, parent_id=PAST_SIGNED, content="x"))
    good_post = encode_message(messages.PostMessage(channel_id=general, content="hello"))
    sender = threading.Thread(target=bad.send_raw, args=(bad_post * 200,))
    sender.start()
    good.send_raw(good_post * 200)
    sender.join()

    acknowledged = [good.expect(messages.MessagePosted) for _ in range(200)]
    assert all(posted.success for posted in acknowledged)
    refused = [bad.expect_error(ErrorCode.DATABASE_ERROR) for _ in range(200)]
    assert {error.message for error in refused} == {"Parent message not found"}
    good.send(messages.ListMessages(channel_id=general, limit=1000))
    listed = good.expect(messages.MessageList).messages
    assert sorted(m.id for m in listed) == sorted(p.message_id for p in acknowledged)
    assert_no_traceback(server)


def test_ids_past_the_databases_range_are_unknown_ids(start_server):
    server = start_server(GENEROUS)
    client = Client(server.port)
    client.handshake("prober")
    general = client.channel_id("general")
    root = client.post(general, "a root")

    # The frames of the report, byte for byte.
    client.send_raw(bytes.fromhex("0000000b010c00ffffffffffffffff"))  # DELETE_MESSAGE 2^64-1
    assert client.expect_error(ErrorCode.DATABASE_ERROR).message == "Message not found"
    client.send_raw(bytes.fromhex("0000000b015100ffffffffffffffff"))  # SUBSCRIBE_THREAD 2^64-1
    client.expect_error(ErrorCode.THREAD_NOT_FOUND)

    # before_id past every id lists from the newest, as no before_id does.
    client.send(messages.ListMessages(channel_id=general, limit=50, before_id=LARGEST_U64))
    assert [m.id for m in client.expect(messages.MessageList).messages] == [root]
    client.send(messages.ListMessages(channel_id=general, limit=50, after_id=LARGEST_U64))
    assert client.expect(messages.MessageList).messages == []
    client.send(messages.ListMessages(channel_id=PAST_SIGNED, limit=50))
    assert client.expect(messages.MessageList).messages == []
    client.send(messages.ListMessages(channel_id=general, limit=50, parent_id=LARGEST_U64))
    assert client.expect(messages.MessageList).messages == []

    client.send(messages.GetUnreadCounts(since_timestamp=0, targets=[
        messages.UnreadTarget(channel_id=general, thread_id=PAST_SIGNED),
        messages.UnreadTarget(channel_id=PAST_SIGNED),
    ]))
    assert [c.unread_count for c in client.expect(messages.UnreadCounts).counts] == [0, 0]

    client.send(messages.JoinChannel(channel_id=LARGEST_U64))
    assert not client.expect(messages.JoinResponse).success
    client.send(messages.SubscribeChannel(channel_id=PAST_SIGNED))
    client.expect_error(ErrorCode.CHANNEL_NOT_FOUND)
    client.send(messages.PostMessage(channel_id=PAST_SIGNED, content="x"))
    client.expect_error(ErrorCode.DATABASE_ERROR)
    client.register("prober", "0" * 40)
    client.send(messages.EditMessage(message_id=LARGEST_U64, new_content="x"))
    client.expect_error(ErrorCode.MESSAGE_NOT_FOUND)
    client.send(messages.UpdateReadState(channel_id=LARGEST_U64, timestamp=1))
    client.send(messages.DeleteSSHKey(key_id=2**63 - 1))
    assert not client.expect(messages.SSHKeyDeleted).success

    client.send(messages.Ping(timestamp=7))
    assert client.expect(messages.Pong).client_timestamp == 7
    assert_no_traceback(server)


def test_strings_holding_nul_are_refused_on_every_database(start_server):
    server = start_server()
    client = Client(server.port)
    client.handshake("nulled")
    general = client.channel_id("general")
    for msg in (messages.PostMessage(channel_id=general, content="a\0b"),
                messages.GetUserInfo(nickname="nul\0led"),
                messages.BanIP(ip_cidr="10.0.0.1", reason="\0")):
        client.send(msg)
        assert "NUL" in client.expect_error(ErrorCode.INVALID_FORMAT).message
    assert client.post(general, "still fine") > 0
    assert_no_traceback(server)


def test_a_pipelining_client_does_not_hold_up_the_others(start_server):
    server = start_server(GENEROUS)
    setup = Client(server.port)
    setup.handshake("setup")
    thread = setup.post(setup.channel_id("general"), "a thread to subscribe to")
    attacker, bystander = Client(server.port, timeout=30), Client(server.port)
    attacker.handshake("attacker")
    bystander.handshake("bystander")

    last_reply_at: list[float] = []

    def read_the_attackers_replies() -> None:
        answered = 0
        while answered < 3000:  # SUBSCRIBE_OK, or ERROR past the subscription limit
            answered += attacker.recv_frame().type in (messages.SubscribeOk.TYPE, messages.Error.TYPE)
        last_reply_at.append(time.monotonic())

    reader = threading.Thread(target=read_the_attackers_replies)
    # 3,000 SUBSCRIBE_THREAD in one send of 45 KB, as in the report: each one a database read.
    attacker.send_raw(encode_message(messages.SubscribeThread(thread_id=thread)) * 3000)
    reader.start()
    bystander.send(messages.Ping(timestamp=1))
    bystander.expect(messages.Pong)
    pong_at = time.monotonic()
    reader.join(60)
    assert last_reply_at, "the attacker's replies did not all arrive"
    # Served in turn, the bystander's PING is answered long before the attacker's last frame;
    # without turns it waited for all 3,000.
    assert pong_at < last_reply_at[0]


def test_a_client_that_does_not_read_its_replies_is_no_longer_read_from(start_server):
    server = start_server(GENEROUS)
    sock = socket.socket()
    # A small window, so that the PONGs pile up in the server rather than in this client's kernel.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    pings = 600_000  # 9 MB of PONGs: more than the kernel's buffers and the 4 MiB of unsent replies
    flood = encode_message(messages.Ping(timestamp=0)) * 1000
    writer = threading.Thread(target=sock.sendall, args=(flood * (pings // 1000),), daemon=True)
    writer.start()
    # The server reads until the replies it could not send pile up, then waits for the client.
    read, deadline = -1.0, time.monotonic() + 30
    while (now_read := _metric(server, 'superchat_messages_received_total{type="PING"}')) != read:
        assert time.monotonic() < deadline, "the server kept reading"
        read = now_read
        time.sleep(1.0)
    assert 0 < read < pings / 2, read
    # The connection is still there: once the client reads, every PING is answered.
    decoder, pongs = FrameDecoder(), 0
    sock.settimeout(30)
    while pongs < pings:
        data = sock.recv(1 << 20)
        assert data, f"the server closed the connection after {pongs} PONGs"
        pongs += sum(frame.type == messages.Pong.TYPE for frame in decoder.feed(data))
    writer.join(10)
    sock.close()


def _metric(server, series: str) -> float:
    _, _, body = server.http_get("/metrics")
    match = re.search("^" + re.escape(series) + r" (\S+)$", body.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_frame_must_arrive_whole_within_the_session_timeout(start_server):
    server = start_server({"limits": {"session_timeout_seconds": 2}})
    trickler = Client(server.port)
    trickler.handshake("trickler")
    # A header announcing 1 MiB, then a byte every 0.2 s: each byte is traffic, none ends the frame.
    trickler.send_raw((1024 * 1024).to_bytes(4, "big") + bytes((1, messages.PostMessage.TYPE, 0)))
    started = time.monotonic()
    closed = threading.Event()

    def trickle() -> None:
        while not closed.is_set():
            try:
                trickler.send_raw(b"\0")
            except OSError:
                return
            time.sleep(0.2)

    threading.Thread(target=trickle, daemon=True).start()
    try:
        error = trickler.expect_error(ErrorCode.INVALID_FRAME, timeout=10)
        assert "not complete" in error.message
        trickler.wait_closed(5)
    finally:
        closed.set()
    assert 1.5 < time.monotonic() - started < 8
    assert "a frame was not complete after 2 s" in server.wait_for_log("not complete")


def test_frames_that_complete_in_time_are_not_cut(start_server):
    server = start_server({"limits": {"session_timeout_seconds": 2}})
    client = Client(server.port)
    client.handshake("patient")
    frame = encode_message(messages.Ping(timestamp=5))
    # Each frame in two halves a second apart, after a pause, for longer than the timeout in all:
    # a frame's time starts at its first byte.
    for _ in range(3):
        time.sleep(1.5)
        client.send_raw(frame[:5])
        time.sleep(1)
        client.send_raw(frame[5:])
        assert client.expect(messages.Pong).client_timestamp == 5


def test_unfinished_frames_of_all_clients_share_one_allowance(start_server):
    server = start_server({"limits": {"partial_frame_memory_mb": 1}})
    big_header = (1024 * 1024).to_bytes(4, "big") + bytes((1, messages.PostMessage.TYPE, 0))
    first, second, bystander = Client(server.port), Client(server.port), Client(server.port)
    for client in (first, second, bystander):
        client.handshake()
    # The first client holds 900 KiB of an unfinished frame: most of the server's 1 MiB allowance.
    first.send_raw(big_header + b"\0" * (900 * 1024))
    _wait_until_held(server, 800 * 1024)
    # The second one's frame would pass it: it is told and disconnected.
    second.send_raw(big_header + b"\0" * (400 * 1024))
    error = second.expect_error(ErrorCode.SERVICE_UNAVAILABLE)
    assert "Server busy" in error.message
    second.wait_closed(5)
    # Small frames never count: everyone else is served as before.
    bystander.send(messages.Ping(timestamp=3))
    assert bystander.expect(messages.Pong).client_timestamp == 3
    assert "unfinished frames of all clients hold" in server.wait_for_log("unfinished frames")
    # Once the first client is gone, what it held is free again.
    first.close()
    deadline = time.monotonic() + 10
    while _metric(server, "superchat_unfinished_frame_bytes") > 0:
        assert time.monotonic() < deadline, "the closed connection's bytes are still held"
        time.sleep(0.02)
    third = Client(server.port)
    third.handshake()
    third.send_raw(big_header + b"\0" * (900 * 1024))
    _wait_until_held(server, 800 * 1024)
    third.send_raw(b"\0" * (1024 * 1024 - 3 - 900 * 1024))  # the rest: a whole frame, and answered
    third.expect_error(ErrorCode.AUTH_REQUIRED)
    assert _metric(server, "superchat_unfinished_frame_bytes") == 0


def _wait_until_held(server, at_least: int) -> None:
    """Until the server has read that much of the unfinished frames."""
    deadline = time.monotonic() + 10
    while _metric(server, "superchat_unfinished_frame_bytes") < at_least:
        assert time.monotonic() < deadline, "the server did not read the frame"
        time.sleep(0.02)
