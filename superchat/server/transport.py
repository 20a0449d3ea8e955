"""TCP transport: one greenlet per client, written as a plain blocking read loop."""

from __future__ import annotations

import logging
import socket

from ..observability import metrics
from ..protocol import PROTOCOL_VERSION, ErrorCode, FrameDecoder, FrameError, encode_message, messages
from . import presence
from .bans import describe
from .context import ServerContext
from .dispatch import dispatch
from .handlers.connection import ClientDisconnect
from .outbound import send_encoded, send_error
from .session import Session

log = logging.getLogger("superchat.transport")

RECV_BYTES = 64 * 1024
# How long a refused or broken client gets to receive its final ERROR frame.
FAREWELL_SECONDS = 2.0
# Advertised in SERVER_CONFIG as the reference server does; this server deletes no inactive accounts.
INACTIVE_CLEANUP_DAYS = 90


def server_config_frame(ctx: ServerContext) -> bytes:
    config = ctx.config
    return encode_message(messages.ServerConfig(
        protocol_version=PROTOCOL_VERSION,
        max_message_rate=min(config.message_rate_limit, 0xFFFF),
        max_channel_creates=min(config.max_channel_creates, 0xFFFF),
        inactive_cleanup_days=INACTIVE_CLEANUP_DAYS,
        max_connections_per_ip=min(config.max_connections_per_ip, 0xFF),
        max_message_length=config.max_message_length,
        max_thread_subscriptions=min(config.max_thread_subscriptions, 0xFFFF),
        max_channel_subscriptions=min(config.max_channel_subscriptions, 0xFFFF),
        directory_enabled=config.directory_enabled,
    ))


class ConnectionHandler:
    """Called by the StreamServer for each accepted socket."""

    def __init__(self, ctx: ServerContext):
        self._ctx = ctx
        self._config_frame = server_config_frame(ctx)

    def __call__(self, sock: socket.socket, address: tuple) -> None:
        ctx = self._ctx
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ban = ctx.bans.ip_ban(address[0])
        if ban is not None:
            log.warning("Connection from %s refused: address banned (ban_id=%d)", address[0], ban.id)
            self._refuse(sock, ErrorCode.PERMISSION_DENIED, f"Your address is banned {describe(ban)}")
            return
        if ctx.sessions.connections_from(address[0]) >= ctx.config.max_connections_per_ip:
            log.warning("Connection from %s refused: too many connections from this address", address[0])
            limit = ctx.config.max_connections_per_ip
            self._refuse(sock, ErrorCode.TOO_MANY_CONNECTIONS,
                         f"Too many connections from your address (max {limit})")
            return
        session = ctx.sessions.open(address, sock)
        metrics.session_opened()
        log.info("Connection from %s", session.peer)
        send_encoded(session, messages.ServerConfig.NAME, self._config_frame)
        reason = "server error"
        try:
            reason = self._serve(session, sock)
        finally:
            presence.session_ended(ctx.sessions, session)
            ctx.sessions.remove(session)
            metrics.session_closed()
            session.drain(FAREWELL_SECONDS)
            session.close(reason)  # keeps an earlier reason, e.g. an outbound overflow
            sock.close()
            log.info("Session %d (%s) closed: %s", session.id, session.nickname or "-", session.close_reason)

    def _serve(self, session: Session, sock: socket.socket) -> str:
        """Read and handle frames until the connection ends; returns why it ended."""
        ctx = self._ctx
        decoder = FrameDecoder()
        sock.settimeout(ctx.config.session_timeout_seconds)
        while not session.closed:
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError:
                return "idle timeout"
            except OSError as exc:
                return f"read failed: {exc}"
            if not data:
                return "client closed the connection"
            try:
                frames = decoder.feed(data)
            except FrameError as exc:
                log.warning("Session %d sent an invalid frame: %s", session.id, exc)
                send_error(session, ErrorCode.INVALID_FRAME, f"Invalid frame: {exc}")
                return "invalid frame"
            for frame in frames:
                if session.closed:
                    break
                try:
                    dispatch(ctx, session, frame)
                except ClientDisconnect:
                    return "client disconnected"
        return session.close_reason

    def _refuse(self, sock: socket.socket, code: int, text: str) -> None:
        """SERVER_CONFIG then the reason, so the client shows why, then close."""
        try:
            sock.settimeout(FAREWELL_SECONDS)
            refusal = messages.Error(error_code=code, message=text)
            sock.sendall(self._config_frame + encode_message(refusal))
            metrics.frames_sent(messages.ServerConfig.NAME)
            metrics.frames_sent(refusal.NAME)
        except OSError:
            pass
        finally:
            sock.close()
