"""One client connection: a reader greenlet that matches replies by type, and session setup.

Servers interleave unsolicited frames (SERVER_PRESENCE, CHANNEL_PRESENCE, NEW_MESSAGE)
with replies, so nothing here assumes that the next frame answers the last request.
A server answers one session's requests in order, which gives the matching rule: a
frame answers the oldest outstanding request that accepts its type, and requests
older than that one will never be answered. ERROR answers the oldest request.
"""

from __future__ import annotations

import errno
import socket
import time
from collections import Counter, deque

import gevent
import gevent.socket
from gevent.event import AsyncResult

from ..protocol import FrameDecoder, FrameError, PayloadError, decode_payload, encode_message, messages, type_name

RECV_BYTES = 64 * 1024
# Linux picks the source port at connect() rather than bind() time, so thousands of
# sessions bound to one loopback address do not exhaust its ephemeral ports early.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

_NEW_MESSAGE = messages.NewMessage.TYPE
_PONG = messages.Pong.TYPE
_ERROR = messages.Error.TYPE

# Frames that answered no request, by type name, over all connections: the report shows
# what a server sent unasked (presence, late replies), which also proves they were skipped.
SKIPPED: Counter[str] = Counter()


class LoadError(Exception):
    """A request that got no usable answer; ``kind`` names why, for failure tallies."""

    kind = "error"


class ServerError(LoadError):
    def __init__(self, code: int, text: str):
        super().__init__(f"ERROR {code}: {text}")
        self.code = code
        self.kind = f"error_{code}"


class Closed(LoadError):
    """The connection ended; ``code`` is an ERROR the server sent just before, e.g. 5003."""

    def __init__(self, code: int | None = None):
        super().__init__("connection closed" + (f" after ERROR {code}" if code is not None else ""))
        self.code = code
        self.kind = "closed" if code is None else f"error_{code}"


class ReplyTimeout(LoadError):
    kind = "timeout"


class _Expected:
    __slots__ = ("types", "on_reply")

    def __init__(self, types: tuple[int, ...], on_reply):
        self.types = types
        self.on_reply = on_reply


def resolve(server: str) -> tuple[int, tuple]:
    """``host:port`` (or ``[v6]:port``) to an address family and socket address."""
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"server must be host:port, got {server!r}")
    host = host.strip("[]") or "localhost"
    found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    # IPv4 first: scd listens on 0.0.0.0 by default, so "localhost" must not become ::1.
    family, _, _, _, address = min(found, key=lambda entry: entry[0] != socket.AF_INET)
    return family, address


class Connection:
    """A connected socket plus the greenlet that reads it.

    Exactly one greenlet may send on a connection at a time; callers arrange that by
    giving each connection one owner. ``on_new_message(msg, arrived_ns)`` and
    ``on_pong(timestamp, arrived_ns)`` see every NEW_MESSAGE and PONG; every other
    frame that answers no request is counted in ``SKIPPED`` and dropped.
    """

    def __init__(self, sock: gevent.socket.socket):
        self.sock = sock
        self.on_new_message = None
        self.on_pong = None
        self.closed = False
        self._detached = False
        self._decoder = FrameDecoder()
        self._expected: deque[_Expected] = deque()
        self._last_error: int | None = None
        self._config = AsyncResult()
        # Registered before the reader runs: SERVER_CONFIG is the first frame of every session.
        self._expected.append(_Expected((messages.ServerConfig.TYPE,), self._settle(self._config)))
        self._reader = gevent.spawn(self._read)

    @classmethod
    def open(cls, family: int, address: tuple, source: str | None, timeout: float) -> Connection:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            sock.settimeout(timeout)
            sock.connect(address)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    # -- sending --

    def send(self, msg: messages.Message, expect: tuple[int, ...] = (), on_reply=None) -> None:
        """Send ``msg``; if ``expect`` names reply types, ``on_reply(reply_or_LoadError, arrived_ns)`` follows."""
        if self.closed:
            raise Closed(self._last_error)
        if expect:
            # Queued before sending: the reader may see the answer before sendall returns.
            self._expected.append(_Expected(expect, on_reply))
        try:
            self.sock.sendall(encode_message(msg))
        except OSError:
            self.close()
            raise Closed(self._last_error) from None

    def request(self, msg: messages.Message, *reply_types: int, timeout: float):
        """Send and wait for the answer; returns ``(reply, round_trip_ns)`` or raises a LoadError."""
        result = AsyncResult()
        sent = time.perf_counter_ns()
        self.send(msg, reply_types, self._settle(result))
        return self._wait(result, timeout, sent)

    def server_config(self, timeout: float):
        return self._wait(self._config, timeout, 0)[0]

    @staticmethod
    def _settle(result: AsyncResult):
        def settle(reply, arrived_ns):
            if isinstance(reply, LoadError):
                result.set_exception(reply)
            else:
                result.set((reply, arrived_ns))

        return settle

    @staticmethod
    def _wait(result: AsyncResult, timeout: float, sent_ns: int):
        result.wait(max(0.0, timeout))
        if not result.ready():
            raise ReplyTimeout("no reply in time")
        reply, arrived = result.get()
        return reply, arrived - sent_ns

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()

    def detach(self) -> tuple[socket.socket, bytes]:
        """Stop this connection's reader and leave the socket open, for a caller that reads it itself.

        Returns the operating system's socket under gevent's (non-blocking: read it only when
        it is ready) and the bytes already read that do not yet make a whole frame. Requests
        still unanswered fail as closed; ``close()`` still closes the socket.
        """
        self._detached = True
        # The reader only ever waits inside recv, so the kill lands there: nothing read is lost.
        self._reader.kill()
        self._abandon(Closed(self._last_error))
        # Every whole frame was dispatched as it arrived; what is buffered is the start of the next.
        return self.sock._sock, bytes(self._decoder._buffer)

    # -- receiving --

    def _read(self) -> None:
        try:
            while True:
                data = self.sock.recv(RECV_BYTES)
                if not data:
                    break
                now = time.perf_counter_ns()
                for frame in self._decoder.feed(data):
                    self._dispatch(frame, now)
        except (OSError, FrameError):
            pass
        finally:
            if not self._detached:
                self.close()
                self._abandon(Closed(self._last_error))

    def _abandon(self, failure: LoadError) -> None:
        while self._expected:
            entry = self._expected.popleft()
            if entry.on_reply is not None:
                entry.on_reply(failure, 0)

    def _dispatch(self, frame, now: int) -> None:
        kind = frame.type
        if kind == _NEW_MESSAGE:
            if self.on_new_message is not None:
                self.on_new_message(self._decode(frame), now)
            return
        if kind == _PONG:
            if self.on_pong is not None:
                self.on_pong(self._decode(frame).client_timestamp, now)
            return
        expected = self._expected
        if kind == _ERROR:
            error = self._decode(frame)
            if not expected:
                self._last_error = error.error_code
                return
            entry = expected.popleft()
            if entry.on_reply is not None:
                entry.on_reply(ServerError(error.error_code, error.message), now)
            return
        position = next((i for i, entry in enumerate(expected) if kind in entry.types), None)
        if position is None:
            SKIPPED[type_name(kind)] += 1
            return
        for _ in range(position):
            older = expected.popleft()
            if older.on_reply is not None:
                older.on_reply(ReplyTimeout("request was never answered"), now)
        entry = expected.popleft()
        if entry.on_reply is not None:
            entry.on_reply(self._decode(frame), now)

    @staticmethod
    def _decode(frame):
        try:
            return decode_payload(frame.type, frame.unwrapped_payload())
        except (PayloadError, ValueError) as exc:
            raise FrameError(f"undecodable {frame.type:#04x} frame: {exc}") from exc


class SetupFailed(Exception):
    """A session could not be set up; ``stage`` says where and ``kind`` why."""

    def __init__(self, stage: str, kind: str):
        super().__init__(f"{stage}: {kind}")
        self.stage = stage
        self.kind = kind

    @classmethod
    def answered(cls, stage: str, exc: LoadError) -> SetupFailed:
        """The failure of a request at ``stage``; an ERROR code says enough, a timeout or close needs the stage."""
        return cls(stage, exc.kind if exc.kind.startswith("error_") else f"{stage}_{exc.kind}")


def connect_failure_kind(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if exc.errno == errno.ECONNREFUSED:
        return "connect_refused"
    return "connect_" + (errno.errorcode.get(exc.errno, "error") if exc.errno else "error")


def open_session(target: tuple[int, tuple], source: str | None, nickname: str, deadline: float,
                 timeout: float) -> Connection:
    """Connect, read SERVER_CONFIG and set ``nickname``; raises SetupFailed, never leaves a socket open."""

    def left() -> float:
        return min(timeout, deadline - time.monotonic())

    if left() <= 0:
        raise SetupFailed("connect", "setup_deadline")
    try:
        conn = Connection.open(*target, source, left())
    except OSError as exc:
        raise SetupFailed("connect", connect_failure_kind(exc)) from None
    try:
        stage = "server_config"
        conn.server_config(left())
        stage = "nickname"
        reply, _ = conn.request(messages.SetNickname(nickname=nickname), messages.NicknameResponse.TYPE,
                                timeout=left())
        if not reply.success:
            raise SetupFailed(stage, "nickname_rejected")
    except LoadError as exc:
        conn.close()
        raise SetupFailed.answered(stage, exc) from None
    except SetupFailed:
        conn.close()
        raise
    return conn


def find_channel(conn: Connection, name: str, timeout: float):
    """The CHANNEL_LIST entry named ``name`` (None if there is none)."""
    reply, _ = conn.request(messages.ListChannels(from_channel_id=0, limit=0), messages.ChannelList.TYPE,
                            timeout=timeout)
    return next((channel for channel in reply.channels if channel.name == name), None)
