"""The session loop every transport feeds: one greenlet per client, a plain blocking read loop."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

from ..observability import metrics, trace
from ..protocol import PROTOCOL_VERSION, ErrorCode, Frame, FrameError, encode_message, messages
from . import presence
from .bans import ip_ban_notice
from .context import ServerContext
from .dispatch import dispatch
from .handlers.connection import ClientDisconnect
from .intake import PAUSE_READING_BYTES, FrameIntake, OverAllowance, Turn
from .links import TcpLink
from .outbound import send_encoded, send_error
from .session import Session

log = logging.getLogger("superchat.transport")

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


class SessionRunner:
    """Runs one client's session over any link (TCP, WebSocket, SSH): the same checks at the
    door, the same SERVER_CONFIG first, the same blocking read loop and the same clean-up."""

    def __init__(self, ctx: ServerContext):
        self._ctx = ctx
        self._config_frame = server_config_frame(ctx)

    def admit(self, link, address: tuple) -> bool:
        """Refuse a banned address or one over its connection cap, telling the client why."""
        ctx = self._ctx
        host = address[0]
        metrics.connection_opened(link.transport)
        ban = ctx.bans.ip_ban(host)
        if ban is not None:
            log.warning("Connection from %s refused: address banned (ban_id=%d)", host, ban.id,
                        extra={"transport": link.transport})
            self._refuse(link, ErrorCode.PERMISSION_DENIED, ip_ban_notice(ban))
            return False
        # The other nodes first: asking them yields, and this node's own count must be read after
        # that, right before the session is opened, or a burst of connections would all pass.
        elsewhere = ctx.cluster.connections_elsewhere(host)
        connected = elsewhere + ctx.sessions.connections_from(host)
        if connected >= ctx.config.max_connections_per_ip:
            log.warning("Connection from %s refused: too many connections from this address", host,
                        extra={"transport": link.transport})
            limit = ctx.config.max_connections_per_ip
            self._refuse(link, ErrorCode.TOO_MANY_CONNECTIONS, f"Too many connections from your address (max {limit})")
            return False
        return True

    def run(self, link, address: tuple, signed_in: Callable[[Session], None] | None = None) -> None:
        """Serve the session until it ends. ``signed_in`` sets up an identity the transport
        already proved (SSH), after SERVER_CONFIG and before the first frame is read."""
        ctx = self._ctx
        session = ctx.sessions.open(address, link)
        ctx.cluster.connection_opened(session.host)
        link.bind(session.send_wrapped)
        metrics.session_opened(link.transport)
        log.info("Connection from %s", session.peer, extra={"transport": link.transport})
        opened = time.monotonic()
        if trace.enabled:
            trace.session_opened(session.id, session.peer, link.transport)
        send_encoded(session, messages.ServerConfig.NAME, self._config_frame)
        reason = "server error"
        try:
            if signed_in is not None:
                signed_in(session)
            reason = self._serve(session, link)
        finally:
            presence.session_ended(ctx, session)
            ctx.sessions.remove(session)
            ctx.cluster.connection_closed(session.host)
            metrics.session_closed(link.transport)
            session.drain(FAREWELL_SECONDS)
            session.close(reason)  # keeps an earlier reason, e.g. an outbound overflow
            link.close()
            log.info("Session %d (%s) closed: %s", session.id, session.nickname or "-", session.close_reason)
            if trace.enabled:
                trace.session_closed(session.id, session.nickname or "-", session.close_reason,
                                     time.monotonic() - opened, session.backlog)

    def _serve(self, session: Session, link) -> str:
        """Read and handle frames until the connection ends; returns why it ended."""
        ctx = self._ctx
        idle_seconds = ctx.config.session_timeout_seconds
        # A frame must arrive whole within the session timeout, however slowly it trickles in.
        intake = FrameIntake(ctx.partial_frames, idle_seconds)
        turn = Turn()
        try:
            while not session.closed:
                if session.backlog > PAUSE_READING_BYTES and not session.wait_for_reader(idle_seconds):
                    return "not reading its replies"
                wait = intake.seconds_left(idle_seconds)
                if wait <= 0:
                    return self._frame_overdue(session, idle_seconds)
                link.set_idle_timeout(wait)
                try:
                    data = link.recv()
                except TimeoutError:
                    return self._frame_overdue(session, idle_seconds) if intake.mid_frame else "idle timeout"
                except OSError as exc:
                    return f"read failed: {exc}"
                if not data:
                    return "client closed the connection"
                try:
                    intake.receive(data)
                    # One frame at a time, so that even the decoding of a long burst takes turns.
                    while not session.closed and (frame := intake.next_frame()) is not None:
                        if trace.enabled:
                            _traced_dispatch(ctx, session, frame)
                        else:
                            dispatch(ctx, session, frame)
                        turn.take_breath()
                except ClientDisconnect:
                    return "client disconnected"
                except FrameError as exc:
                    log.warning("Session %d sent an invalid frame: %s", session.id, exc)
                    send_error(session, ErrorCode.INVALID_FRAME, f"Invalid frame: {exc}")
                    return "invalid frame"
                except OverAllowance as full:
                    log.warning("Session %d disconnected: unfinished frames of all clients hold %d bytes",
                                session.id, full.args[0])
                    send_error(session, ErrorCode.SERVICE_UNAVAILABLE, "Server busy: frame too large for now")
                    return "unfinished frames over the server's limit"
            return session.close_reason
        finally:
            intake.close()

    def _frame_overdue(self, session: Session, seconds: int) -> str:
        log.warning("Session %d disconnected: a frame was not complete after %d s", session.id, seconds)
        send_error(session, ErrorCode.INVALID_FRAME, f"Frame not complete within {seconds} s")
        return "frame not complete in time"

    def _refuse(self, link, code: int, text: str) -> None:
        """SERVER_CONFIG then the reason, so the client shows why, then close."""
        try:
            link.set_idle_timeout(FAREWELL_SECONDS)
            refusal = encode_message(messages.Error(error_code=code, message=text))
            for frame in (self._config_frame, refusal):
                link.write_all(frame if link.wrap is None else link.wrap(frame))
            metrics.frames_sent(messages.ServerConfig.NAME)
            metrics.frames_sent(messages.Error.NAME)
        except OSError:
            pass
        finally:
            link.close()


class TcpHandler:
    """Called by the StreamServer for each accepted TCP socket."""

    def __init__(self, runner: SessionRunner):
        self._runner = runner

    def __call__(self, sock: socket.socket, address: tuple) -> None:
        link = TcpLink(sock)
        if self._runner.admit(link, address):
            self._runner.run(link, address)


def _traced_dispatch(ctx: ServerContext, session: Session, frame: Frame) -> None:
    trace.frame_in(session.id, frame.type, frame.flags, len(frame.payload))
    started = time.perf_counter()
    try:
        dispatch(ctx, session, frame)
    finally:
        taken = time.perf_counter() - started
        if taken > trace.SLOW_REQUEST_SECONDS:
            trace.slow_request(session.id, frame.type, taken)
