"""The public HTTP port: the protocol over WebSocket at /ws, and /servers.json in directory mode.

HTTP/1.1 is parsed by h11 and WebSocket framing done by wsproto, both sans-I/O, so the
socket work stays in this module's blocking gevent code like the TCP loop's. Every binary
WebSocket message the server sends carries exactly one protocol frame, as the web client
expects; what the client sends is read as one byte stream, so a frame split across
messages, or several frames in one, still decode.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import gevent
import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..storage import StorageError
from .links import RECV_BYTES, TcpLink
from .transport import SessionRunner

log = logging.getLogger("superchat.websocket")

WEBSOCKET_PATH = "/ws"
SERVERS_JSON_PATH = "/servers.json"
# A client gets this long to send its whole request line and headers.
REQUEST_SECONDS = 10.0
MAX_REQUEST_BYTES = 16 * 1024


class WebSocketLink(TcpLink):
    """A session's link over an accepted WebSocket connection: TCP's socket writes, with each
    frame wrapped in a binary message and the client's messages unwrapped on the way in."""

    transport = "websocket"

    def __init__(self, sock: socket.socket, ws: WSConnection):
        super().__init__(sock)
        self._ws = ws
        self._ended = False
        self._recv_seconds: float = REQUEST_SECONDS
        self._control: Callable[[bytes], None] = sock.sendall

    def bind(self, send_wrapped: Callable[[bytes], None]) -> None:
        """Pongs and close replies go out through the session's queue, in order with its frames."""
        self._control = send_wrapped

    def wrap(self, frame: bytes) -> bytes:
        # Once the client has closed (or broken the protocol) nothing more may be sent; the
        # session ends as soon as its reader sees that.
        if self._ws.state is not ConnectionState.OPEN:
            return b""
        return self._ws.send(Message(data=frame))

    def set_idle_timeout(self, seconds: float) -> None:
        super().set_idle_timeout(seconds)
        self._recv_seconds = seconds

    def recv(self) -> bytes:
        """Payload bytes of the client's binary messages; b"" once the connection is closing.

        The idle timeout bounds the whole call: WebSocket pings and empty messages are traffic,
        but not protocol bytes, and must not keep an unfinished frame waiting for ever.
        """
        deadline = time.monotonic() + self._recv_seconds
        while not self._ended:
            data = self._take_events()
            if data:
                return data
            if self._ended:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no protocol bytes in time")
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(RECV_BYTES)
            if not chunk:
                self._ended = True
                break
            try:
                self._ws.receive_data(chunk)
            except RemoteProtocolError as exc:
                log.warning("WebSocket protocol error from %s: %s", _peer(self._sock), exc)
                self._ended = True
        return b""

    def _take_events(self) -> bytes:
        data = []
        for event in self._ws.events():
            if isinstance(event, BytesMessage):
                data.append(event.data)
            elif isinstance(event, Ping):
                self._control(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._control(self._ws.send(event.response()))
                self._ended = True
                break
            elif isinstance(event, TextMessage):
                # The protocol is binary; the reference server ends such a connection too.
                self._control(self._ws.send(CloseConnection(CloseReason.UNSUPPORTED_DATA, "binary frames only")))
                self._ended = True
                break
        return b"".join(data)

    def shutdown(self) -> None:
        """Say goodbye with a close frame when the socket takes it at once, then end both directions."""
        if self._ws.state is ConnectionState.OPEN:
            try:
                self.try_write(self._ws.send(CloseConnection(CloseReason.NORMAL_CLOSURE)))
            except (OSError, LocalProtocolError):
                pass
        super().shutdown()


class PublicHttpHandler:
    """Called by the StreamServer on http_port for each accepted socket."""

    def __init__(self, runner: SessionRunner, servers_json: Callable[[], bytes] | None):
        self._runner = runner
        self._servers_json = servers_json

    def __call__(self, sock: socket.socket, address: tuple) -> None:
        try:
            self._handle(sock, address)
        finally:
            sock.close()

    def _handle(self, sock: socket.socket, address: tuple) -> None:
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            # The whole request within the bound, however slowly its bytes trickle in.
            with gevent.Timeout(REQUEST_SECONDS, TimeoutError):
                request = _read_request(sock, http)
        except h11.RemoteProtocolError:
            _respond(sock, http, 400, b"Bad request\n")
            return
        except OSError:
            return
        if request is None:
            return
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        if path == WEBSOCKET_PATH:
            self._websocket(sock, address, http, request)
        elif path == SERVERS_JSON_PATH and self._servers_json is not None:
            if request.method not in (b"GET", b"HEAD"):
                _respond(sock, http, 405, b"Method not allowed\n", [(b"Allow", b"GET, HEAD")])
            else:
                _serve_servers_json(self._servers_json, sock, http, head=request.method == b"HEAD")
        else:
            _respond(sock, http, 404, b"Not found\n")

    def _websocket(self, sock: socket.socket, address: tuple, http: h11.Connection, request: h11.Request) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(list(request.headers), request.target)
            if not any(isinstance(event, Request) for event in ws.events()):
                raise RemoteProtocolError("no WebSocket upgrade request")
        except RemoteProtocolError:
            _respond(sock, http, 426, b"This endpoint speaks WebSocket only\n",
                     [(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13")])
            return
        try:
            sock.sendall(ws.send(AcceptConnection()))
        except OSError:
            return
        early, _ = http.trailing_data
        if early:
            ws.receive_data(bytes(early))
        link = WebSocketLink(sock, ws)
        if self._runner.admit(link, address):
            self._runner.run(link, address)


def _serve_servers_json(servers_json: Callable[[], bytes], sock: socket.socket, http: h11.Connection,
                        head: bool) -> None:
    try:
        body = servers_json()
    except StorageError as exc:
        log.error("/servers.json failed: database error: %s", exc)
        _respond(sock, http, 500, b"Internal server error\n")
        return
    # Any web page may read the list, as the reference server allows.
    _respond(sock, http, 200, body, [(b"Content-Type", b"application/json"),
                                     (b"Access-Control-Allow-Origin", b"*")], head=head)


def _read_request(sock: socket.socket, http: h11.Connection) -> h11.Request | None:
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data(sock.recv(RECV_BYTES))
            continue
        return event if isinstance(event, h11.Request) else None


def _respond(sock: socket.socket, http: h11.Connection, status: int, body: bytes,
             headers: list[tuple[bytes, bytes]] | None = None, head: bool = False) -> None:
    fields = [(b"Content-Length", str(len(body)).encode()), (b"Connection", b"close"), *(headers or [])]
    try:
        if http.our_state is not h11.SEND_RESPONSE:
            # h11 gave up on the request: answer in plain bytes.
            sock.sendall(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                         % (status, _REASONS.get(status, b"Error")))
            return
        data = http.send(h11.Response(status_code=status, headers=fields, reason=_REASONS.get(status, b"")))
        if not head:
            data += http.send(h11.Data(data=body))
        data += http.send(h11.EndOfMessage())
        sock.sendall(data)
    except (OSError, h11.LocalProtocolError):
        pass


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 426: b"Upgrade Required",
            500: b"Internal Server Error"}


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
