"""A blocking WebSocket client for tests (wsproto over a socket), shaped like a socket for tests.client.Client."""

from __future__ import annotations

import socket
from collections import deque

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class HandshakeRefused(AssertionError):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"WebSocket upgrade refused with HTTP {status}")
        self.status = status
        self.body = body


class WebSocketStream:
    """Each ``sendall`` is one binary message; ``recv`` returns the payload bytes of what arrives.

    Every complete binary message received is also kept whole in ``messages``, so tests can
    check how the server framed what it sent.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", path: str = "/ws", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[bytes] = []
        self.pongs: list[bytes] = []
        self.close_code: int | None = None
        self._partial = b""
        self._ready: deque[bytes] = deque()
        self.sock.sendall(self.ws.send(Request(host=f"{host}:{port}", target=path)))
        self._await_handshake()

    def _await_handshake(self) -> None:
        status, body = 0, b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise HandshakeRefused(status, body)
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise HandshakeRefused(status, body)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise HandshakeRefused(status, body)
                else:
                    self._take(event)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(Message(data=data)))

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(Message(data=text)))

    def ping(self, payload: bytes) -> None:
        self.sock.sendall(self.ws.send(Ping(payload=payload)))

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def recv(self, size: int) -> bytes:
        # Events may already wait in wsproto (e.g. a message that came with the handshake's reply):
        # take those before waiting for the socket.
        for event in self.ws.events():
            self._take(event)
        while not self._ready:
            if self.close_code is not None:
                return b""
            data = self.sock.recv(65536)
            if not data:
                return b""
            self.ws.receive_data(data)
            for event in self.ws.events():
                self._take(event)
        return self._ready.popleft()

    def _take(self, event) -> None:
        if isinstance(event, BytesMessage):
            self._ready.append(event.data)
            self._partial += event.data
            if event.message_finished:
                self.messages.append(self._partial)
                self._partial = b""
        elif isinstance(event, TextMessage):
            raise AssertionError(f"the server sent a text message: {event.data!r}")
        elif isinstance(event, Ping):
            self.sock.sendall(self.ws.send(event.response()))
        elif isinstance(event, Pong):
            self.pongs.append(bytes(event.payload))
        elif isinstance(event, CloseConnection):
            self.close_code = event.code
            try:
                self.sock.sendall(self.ws.send(event.response()))
            except Exception:  # the server may already be gone
                pass

    def close(self) -> None:
        self.sock.close()
