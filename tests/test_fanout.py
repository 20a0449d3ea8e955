"""Posts to audiences large enough to be written from two OS threads (superchat/server/fanout.py):
every subscriber gets every copy once, whole and in order, whatever its transport; subscribers
that vanished cost no one else, and those that stopped reading get the rest once they read
again. What a round of acknowledgements sends goes out as one write per session. Real server,
real sockets."""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc

import gevent
import gevent.socket
import pytest

from superchat.protocol import encode_message, messages
from superchat.server.fanout import HELPER_FROM, send_all, timed, writes_together
from superchat.server.links import TcpLink
from superchat.server.session import MAX_PENDING_BYTES, Session
from tests.client import Client
from tests.server_process import free_port
from tests.websocket_client import WebSocketStream

pytestmark = pytest.mark.timeout(240)

# Enough that each OS thread writes more than HELPER_FROM copies of each post.
SUBSCRIBERS = 2 * HELPER_FROM + 40
# What each stalled subscriber is sent: more than the kernel takes, less than would drop it.
STALLED_BYTES = 3_600_000
POST_BYTES = 3000
GENEROUS = {"limits": {"message_rate_limit": 65535, "max_connections_per_ip": 255}}


def subscribers(server, count: int, general: int, receive_buffer: int | None = None) -> list[Client]:
    """``count`` subscribers of ``general`` from two loopback addresses (the per-address cap)."""
    clients = []
    for i in range(count):
        sock = socket.socket()
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(10)
        sock.bind((f"127.0.0.{2 + i % 2}", 0))
        sock.connect(("127.0.0.1", server.port))
        client = Client(0, sock=sock, timeout=10)
        client.handshake()
        client.subscribe_channel(general)
        clients.append(client)
    return clients


def posted_by(poster: Client, general: int, count: int, size: int) -> list[tuple[int, str]]:
    posts = []
    for n in range(count):
        content = f"post {n} " + "x" * (size - 10)
        posts.append((poster.post(general, content), content))
    return posts


def assert_received(client: Client, posts: list[tuple[int, str]]) -> None:
    got = [client.expect(messages.NewMessage) for _ in posts]
    assert [(m.id, m.content) for m in got] == posts


def test_a_large_audience_gets_every_post_once_whole_and_in_order_on_every_transport(start_server):
    server = start_server({**GENEROUS, "server": {"http_port": free_port()}}, ("--disable-directory",))
    poster = Client(server.port)
    poster.handshake("poster")
    general = poster.channel_id("general")
    tcp = subscribers(server, SUBSCRIBERS, general)
    web = []
    for _ in range(3):
        client = Client(0, sock=WebSocketStream(server.http_port), timeout=10)
        client.handshake()
        client.subscribe_channel(general)
        web.append(client)

    # Some vanish with a reset just before the posts: the writes to them fail, in either thread.
    vanished = subscribers(server, 12, general)
    for client in vanished:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()

    posts = posted_by(poster, general, 30, 200)
    for client in tcp + web:
        assert_received(client, posts)
        client.assert_silent(0.01)
    assert "Traceback" not in server.log_text("errors.log")


def test_subscribers_that_stopped_reading_get_the_rest_in_order_and_delay_no_one(start_server):
    server = start_server(GENEROUS)
    poster = Client(server.port)
    poster.handshake("poster")
    general = poster.channel_id("general")
    # A few subscribers read nothing while the posts go out. Once the kernel holds what it
    # takes for them (about 3 MB on loopback), each copy is written only in part and the rest
    # waits in the server's queue, which stays under the 4 MiB that would drop them.
    stalled = subscribers(server, 20, general, receive_buffer=4096)
    reading = subscribers(server, SUBSCRIBERS, general)

    posts = []
    while len(posts) < STALLED_BYTES // POST_BYTES:
        batch = posted_by(poster, general, 50, POST_BYTES)
        for client in reading:
            assert_received(client, batch)
        posts += batch
    for client in stalled:
        assert_received(client, posts)
        client.assert_silent(0.01)


class CountedLink(TcpLink):
    """A TCP link that counts the writes the session makes to it."""

    def __init__(self, sock):
        super().__init__(sock)
        self.writes = 0

    def try_write(self, data: bytes) -> int:
        self.writes += 1
        return super().try_write(data)


def connected_sessions(count: int, link=TcpLink):
    """``count`` sessions over real loopback sockets, and the client end of each."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(count)
    peers, sessions = [], []
    for number in range(count):
        peer = socket.create_connection(listener.getsockname())
        connection, address = listener.accept()
        peers.append(peer)
        sessions.append(Session(number, address, link(connection)))
    listener.close()
    return peers, sessions


def received(peer: socket.socket, size: int) -> bytes:
    peer.settimeout(5)
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        assert chunk, f"connection ended after {len(data)} of {size} bytes"
        data += chunk
    return data


def nothing_arrived(peer: socket.socket) -> bool:
    peer.setblocking(False)
    try:
        peer.recv(1)
    except BlockingIOError:
        return True
    finally:
        peer.setblocking(True)
    return False


def ping(n: int) -> bytes:
    return encode_message(messages.Ping(timestamp=n))


def test_the_broadcasts_of_a_round_go_out_as_one_write_per_session_and_replies_at_once():
    peers, sessions = connected_sessions(3, CountedLink)
    poster, replied, other = sessions
    observed: list[float] = []

    with writes_together():
        poster.send(ping(1))  # the acknowledgement: written at once
        send_all(sessions, ping(2))  # the broadcast, the poster among its audience: held
        timed(time.perf_counter() - 0.25, observed.append)
        replied.send(ping(5))  # a reply goes at once, after what was held for it
    send_all(sessions[1:], ping(3))  # another greenlet woken by the round
    assert received(peers[0], len(ping(1))) == ping(1)
    assert received(peers[1], 2 * len(ping(2))) == ping(2) + ping(5)
    assert all(nothing_arrived(peer) for peer in peers)
    assert observed == []

    gevent.sleep(0)  # the hub runs its callbacks: the round ends
    assert received(peers[0], len(ping(2))) == ping(2)
    assert received(peers[1], len(ping(3))) == ping(3)
    assert received(peers[2], 2 * len(ping(2))) == ping(2) + ping(3)
    assert [session.link.writes for session in sessions] == [2, 2, 1]
    # The broadcast's time runs until the round's write is done.
    assert len(observed) == 1 and observed[0] > 0.25

    # Outside a round each frame is written at once.
    send_all(sessions, ping(4))
    assert [session.link.writes for session in sessions] == [3, 3, 2]
    timed(time.perf_counter() - 0.5, observed.append)
    assert len(observed) == 2 and 0.5 <= observed[1] < 0.75
    for peer in peers:
        assert received(peer, len(ping(4))) == ping(4)
        peer.close()


def test_a_session_told_to_go_in_a_round_gets_what_it_was_sent_then_the_end():
    peers, sessions = connected_sessions(2)
    with writes_together():
        send_all(sessions, ping(1))
        sessions[0].send(ping(2))
        sessions[0].finish("account banned")
        assert sessions[0].closed
    gevent.sleep(0)
    assert received(peers[0], 2 * len(ping(1))) == ping(1) + ping(2)
    assert peers[0].recv(1) == b""
    assert received(peers[1], len(ping(1))) == ping(1)
    assert not sessions[1].closed


class Reader(threading.Thread):
    """Reads a peer as fast as it can, on an OS thread of its own, counting the bytes."""

    def __init__(self, peer: socket.socket):
        super().__init__(daemon=True)
        self.peer, self.bytes = peer, 0

    def run(self) -> None:
        buffer = bytearray(64 * 1024)  # one buffer, reused: the reading costs no memory of its own
        while count := self.peer.recv_into(buffer):
            self.bytes += count


def error_frame(size: int) -> bytes:
    return encode_message(messages.Error(error_code=1, message="x" * size))


def test_a_round_that_sends_a_reading_client_more_than_the_outbound_limit_does_not_drop_it():
    peers, (session,) = connected_sessions(1)
    reader = Reader(peers[0])
    reader.start()
    frame = error_frame(4000)
    count = 2 * MAX_PENDING_BYTES // len(frame)
    with writes_together():
        for _ in range(count):
            send_all([session], frame)
            time.sleep(0.0001)  # the round's other greenlets take time; the reader reads meanwhile
    gevent.sleep(0)
    session.drain(10)
    peers[0].shutdown(socket.SHUT_WR)
    session.close("done")
    reader.join(10)
    assert session.close_reason == "done"
    assert reader.bytes == count * len(frame)


def test_a_round_to_many_sessions_holds_little_memory_for_each():
    peers, sessions = connected_sessions(300)
    readers = [Reader(peer) for peer in peers]
    for reader in readers:
        reader.start()
    frames = [error_frame(4000) for _ in range(40)]
    tracemalloc.start()
    try:
        with writes_together():
            for frame in frames:
                send_all(sessions, frame)
        gevent.sleep(0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Held whole, each of the 300 sessions would have its 160 KB as one joined copy at once (48 MB).
    assert peak < 300 * 40 * len(frames[0]) / 3
    for session in sessions:
        session.drain(10)
    for peer in peers:
        peer.shutdown(socket.SHUT_WR)
    for session in sessions:
        session.close("done")
    for reader in readers:
        reader.join(10)
        assert reader.bytes == 40 * len(frames[0])


def test_a_client_that_read_its_backlog_is_not_taken_for_one_that_stopped_when_a_round_holds_more():
    peers, (session,) = connected_sessions(1)
    session.link.os_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    session.send(b"x" * 300_000)
    assert session.backlog, "the kernel took it all"

    def a_round_runs_before_the_waiter(_flusher) -> None:
        with writes_together():
            send_all([session], ping(1))

    session._flusher.rawlink(a_round_runs_before_the_waiter)
    waiter = gevent.spawn(session.wait_for_reader, 5)
    gevent.sleep(0)
    reader = Reader(peers[0])
    reader.start()
    assert waiter.get(timeout=10) is True


@pytest.mark.parametrize("in_a_round", [False, True], ids=["at-once", "in-a-round"])
def test_a_write_that_fails_in_either_thread_closes_that_session_alone(in_a_round):
    peers, sessions = connected_sessions(SUBSCRIBERS)
    # Every seventh peer is gone with a reset, spread over both halves of the audience.
    gone = set(range(0, SUBSCRIBERS, 7))
    for number in gone:
        peers[number].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peers[number].close()
    time.sleep(0.2)
    frame = ping(7)
    expected = frame

    if in_a_round:
        with writes_together():
            assert send_all(sessions, frame) == SUBSCRIBERS
            assert send_all(sessions, ping(8)) == SUBSCRIBERS
        expected += ping(8)
        gevent.sleep(0)
    else:
        assert send_all(sessions, frame) == SUBSCRIBERS
    assert [number for number, session in enumerate(sessions) if session.closed] == sorted(gone)
    assert {sessions[number].close_reason for number in gone} == {"write failed"}
    for number, peer in enumerate(peers):
        if number not in gone:
            assert received(peer, len(expected)) == expected
            assert nothing_arrived(peer)
            peer.close()
