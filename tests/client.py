"""A small blocking SuperChat client for tests, built on the project's protocol package."""

from __future__ import annotations

import socket
import time
from collections import deque

from superchat.protocol import FrameDecoder, decode_payload, encode_frame, encode_message, messages

# Notifications a server may send at any time; tests that wait for a reply skip them.
UNSOLICITED = (messages.ServerPresence, messages.ChannelPresence)


class ConnectionClosed(AssertionError):
    pass


class Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0, source: str | None = None,
                 sock=None):
        """``source`` picks the local address, e.g. another loopback address such as 127.0.0.2;
        ``sock`` is an already connected stream (e.g. a WebSocket or SSH channel) to use instead."""
        self.sock = sock or socket.create_connection((host, port), timeout=timeout,
                                                     source_address=(source, 0) if source else None)
        self.timeout = timeout
        self._decoder = FrameDecoder()
        self._frames: deque = deque()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sending --

    def send(self, msg) -> None:
        self.sock.sendall(encode_message(msg))

    def send_frame(self, msg_type: int, payload: bytes) -> None:
        self.sock.sendall(encode_frame(msg_type, payload))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- receiving --

    def recv_frame(self, timeout: float | None = None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame arrived in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no frame arrived in time") from None
            except ConnectionResetError:
                data = b""
            if not data:
                raise ConnectionClosed("server closed the connection")
            self._frames.extend(self._decoder.feed(data))
        return self._frames.popleft()

    def recv(self, timeout: float | None = None):
        frame = self.recv_frame(timeout)
        return decode_payload(frame.type, frame.payload)

    def expect(self, cls, timeout: float | None = None, skip=UNSOLICITED):
        """The next message that is not an unsolicited notification, which must be a ``cls``."""
        while True:
            msg = self.recv(timeout)
            if isinstance(msg, skip) and not issubclass(cls, skip):
                continue
            assert isinstance(msg, cls), f"expected {cls.NAME}, got {msg!r}"
            return msg

    def expect_error(self, code: int, timeout: float | None = None):
        error = self.expect(messages.Error, timeout)
        assert error.error_code == code, f"expected ERROR {code}, got {error!r}"
        return error

    def assert_silent(self, seconds: float = 0.3, skip=UNSOLICITED) -> None:
        """Nothing but (by default) presence notifications arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                msg = self.recv(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return
            if not isinstance(msg, skip):
                raise AssertionError(f"expected no frame, got {msg!r}")

    def wait_closed(self, timeout: float | None = None) -> None:
        """Reads until the server closes the connection; fails on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                self.recv_frame(max(0.01, deadline - time.monotonic()))
            except ConnectionClosed:
                return

    # -- conversations --

    def handshake(self, nickname: str | None = None):
        config = self.expect(messages.ServerConfig)
        if nickname is not None:
            self.send(messages.SetNickname(nickname=nickname))
            reply = self.expect(messages.NicknameResponse)
            assert reply.success, reply
        return config

    def register(self, nickname: str, password_hash: str) -> int:
        """Set ``nickname`` and register it; returns the new user id."""
        self.send(messages.SetNickname(nickname=nickname))
        assert self.expect(messages.NicknameResponse).success
        self.send(messages.RegisterUser(password=password_hash))
        reply = self.expect(messages.RegisterResponse)
        assert reply.success, reply
        return reply.user_id

    def login(self, nickname: str, password_hash: str):
        self.send(messages.AuthRequest(nickname=nickname, password=password_hash))
        return self.expect(messages.AuthResponse)

    def channel_id(self, name: str) -> int:
        self.send(messages.ListChannels(from_channel_id=0, limit=0))
        for channel in self.expect(messages.ChannelList).channels:
            if channel.name == name:
                return channel.id
        raise AssertionError(f"no channel named {name}")

    def post(self, channel_id: int, content: str, parent_id: int | None = None) -> int:
        self.send(messages.PostMessage(channel_id=channel_id, parent_id=parent_id, content=content))
        posted = self.expect(messages.MessagePosted)
        assert posted.success, posted
        return posted.message_id

    def subscribe_channel(self, channel_id: int) -> None:
        self.send(messages.SubscribeChannel(channel_id=channel_id))
        ok = self.expect(messages.SubscribeOk)
        assert (ok.type, ok.id) == (2, channel_id), ok

    def subscribe_thread(self, thread_id: int) -> None:
        self.send(messages.SubscribeThread(thread_id=thread_id))
        ok = self.expect(messages.SubscribeOk)
        assert (ok.type, ok.id) == (1, thread_id), ok
