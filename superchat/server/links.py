"""The byte pipes a session runs over: TCP here; WebSocket and SSH in their own modules.

A link gives the session loop a blocking ``recv()`` of protocol bytes and the outbound
queue three ways to write: ``wrap`` (the transport's envelope around one frame, or
None when frames go out as they are), ``try_write`` (never blocks; says how much the
transport took) and ``write_all`` (blocks the calling greenlet until written); ``os_socket``
is the OS socket ``try_write`` writes to, or None where writes go through a library (SSH). A
link whose protocol answers on its own (WebSocket pongs) is given the session's queue by ``bind``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import gevent.socket

RECV_BYTES = 64 * 1024


class TcpLink:
    transport = "tcp"
    wrap: Callable[[bytes], bytes] | None = None

    def __init__(self, sock: gevent.socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        # gevent's socket wraps a non-blocking OS socket; writing to that directly never yields,
        # and another OS thread may write to it (see fanout.py).
        self.os_socket: socket.socket = sock._sock

    def bind(self, send_wrapped) -> None:
        """Where the link's own control messages would go; TCP has none."""

    def set_idle_timeout(self, seconds: float) -> None:
        self._sock.settimeout(seconds)

    def recv(self) -> bytes:
        """Bytes from the peer; b"" once it closed. Raises TimeoutError after the idle timeout."""
        return self._sock.recv(RECV_BYTES)

    def try_write(self, data: bytes) -> int:
        try:
            return self.os_socket.send(data)
        except BlockingIOError:
            return 0

    def write_all(self, data: bytes) -> None:
        self._sock.sendall(data)

    def shutdown(self) -> None:
        """End both directions, so the reading greenlet sees end of file."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._sock.close()
