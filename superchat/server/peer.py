"""Short client conversations with other SuperChat servers: verification and announcements."""

from __future__ import annotations

import secrets
import socket
import time
from collections import deque
from typing import TypeVar

import gevent

from ..protocol import (
    PROTOCOL_VERSION,
    DecodeError,
    FrameDecoder,
    FrameError,
    PayloadError,
    decode_payload,
    encode_message,
    messages,
    type_name,
)

CONNECT_SECONDS = 10.0
FRAME_SECONDS = 10.0
# A whole verification stays well inside the 30 s an announcer waits for its REGISTER_ACK.
VERIFY_SECONDS = 20.0
# Writes to a peer that stopped reading give up after this.
SEND_SECONDS = 10.0
RECV_BYTES = 64 * 1024

M = TypeVar("M", bound=messages.Message)


class PeerError(Exception):
    """A conversation with another server failed; str() says why."""

    @property
    def public_text(self) -> str:
        """Why, as far as the client that asked may know."""
        return str(self)


class Unreachable(PeerError):
    """No connection to the other server could be made."""

    def __init__(self, where: str, why: str):
        super().__init__(f"could not connect to {where}: {why}")
        self.where = where

    @property
    def public_text(self) -> str:
        # Refused or timed out would tell a client which ports answer on the directory's network.
        return f"could not connect to {self.where}"


class PeerRefused(PeerError):
    """The other server answered with an ERROR frame."""

    def __init__(self, code: int, text: str):
        super().__init__(f"error {code}: {text}")
        self.code = code


class NotRegistered(PeerError):
    """The directory does not list this server (any more)."""


class PeerConnection:
    """A short client conversation with another SuperChat server; every wait is bounded."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._decoder = FrameDecoder()
        self._frames: deque = deque()

    @classmethod
    def open(cls, host: str, port: int) -> PeerConnection:
        """Connect and take the SERVER_CONFIG every server sends first."""
        where = address_text(host, port)
        # The timeout covers the name lookup too, which the socket timeout does not.
        try:
            with gevent.Timeout(CONNECT_SECONDS, Unreachable(where, "timed out")):
                sock = socket.create_connection((host, port), timeout=CONNECT_SECONDS)
        except (OSError, ValueError) as exc:  # ValueError: a name the resolver cannot even encode
            raise Unreachable(where, str(exc)) from exc
        peer = cls(sock)
        try:
            config = peer.expect(messages.ServerConfig, FRAME_SECONDS)
        except BaseException:
            sock.close()
            raise
        if config.protocol_version != PROTOCOL_VERSION:
            peer.close()
            raise PeerError(f"{where} speaks protocol version {config.protocol_version}, not {PROTOCOL_VERSION}")
        return peer

    def __enter__(self) -> PeerConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def local_host(self) -> str:
        """Our address on this connection: how the other server sees us."""
        return self._sock.getsockname()[0]

    def send(self, msg: messages.Message) -> None:
        self._sock.settimeout(SEND_SECONDS)
        try:
            self._sock.sendall(encode_message(msg))
        except OSError as exc:
            raise PeerError(f"sending {msg.NAME} failed: {exc}") from exc

    def expect(self, wanted: type[M], seconds: float) -> M:
        """The next ``wanted`` message within ``seconds``. Anything else the server sends meanwhile
        (presence, new channels) is skipped; an ERROR fails."""
        deadline = time.monotonic() + seconds
        while True:
            msg = self._next_message(deadline, wanted)
            if isinstance(msg, wanted):
                return msg
            if isinstance(msg, messages.Error):
                raise PeerRefused(msg.error_code, msg.message)

    def close(self) -> None:
        """Say goodbye (as far as the peer is still listening) and close."""
        try:
            self.send(messages.Disconnect())
        except PeerError:
            pass
        finally:
            self._sock.close()

    def _next_message(self, deadline: float, wanted: type[messages.Message]) -> messages.Message:
        while True:
            while self._frames:
                frame = self._frames.popleft()
                try:
                    return decode_payload(frame.type, frame.unwrapped_payload())
                except KeyError:
                    continue  # a type this server does not know is nothing we wait for
                except (DecodeError, PayloadError) as exc:
                    raise PeerError(f"malformed {type_name(frame.type)}: {exc}") from exc
            try:
                self._frames.extend(self._decoder.feed(self._receive(deadline, wanted)))
            except FrameError as exc:
                raise PeerError(f"invalid frame: {exc}") from exc

    def _receive(self, deadline: float, wanted: type[messages.Message]) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PeerError(f"no {wanted.NAME} in time")
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(RECV_BYTES)
        except TimeoutError:
            raise PeerError(f"no {wanted.NAME} in time") from None
        except OSError as exc:
            raise PeerError(f"reading failed: {exc}") from exc
        if not data:
            raise PeerError(f"connection closed before {wanted.NAME}")
        return data


def verify_server(host: str, port: int) -> None:
    """Prove that a SuperChat server answers at host:port by having it echo a random challenge.

    Raises PeerError saying why not.
    """
    challenge = secrets.randbits(64)
    with gevent.Timeout(VERIFY_SECONDS, PeerError(f"no answer within {VERIFY_SECONDS:.0f} s")):
        with PeerConnection.open(host, port) as peer:
            peer.send(messages.VerifyRegistration(challenge=challenge))
            answer = peer.expect(messages.VerifyResponse, FRAME_SECONDS)
    if answer.challenge != challenge:
        raise PeerError("wrong answer to the verification challenge")


def address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
