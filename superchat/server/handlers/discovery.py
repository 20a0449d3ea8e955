"""Server discovery: the directory's list, registrations, heartbeats, and verification challenges."""

from __future__ import annotations

import logging

from ...protocol import ErrorCode, messages
from .. import limits
from ..bans import now_ms
from ..context import ServerContext
from ..outbound import Refused, send
from ..passwords import LoginThrottle
from ..peer import PeerError, address_text, verify_server
from ..session import Session

log = logging.getLogger("superchat.directory")

# DNS names are at most 253 bytes; anything longer cannot be reached.
MAX_HOSTNAME_BYTES = 253
MAX_NAME_BYTES = 100
MAX_DESCRIPTION_BYTES = 500


def list_servers(ctx: ServerContext, session: Session, msg: messages.ListServers) -> None:
    send(session, messages.ServerList(servers=ctx.directory.listing(msg.limit)))


def _registration_refused(text: str) -> messages.RegisterAck:
    return messages.RegisterAck(success=False, message=text)


def register_server(ctx: ServerContext, session: Session, msg: messages.RegisterServer) -> None:
    _require_directory_mode(ctx)

    # Counted before anything else, so that malformed requests cannot probe for free either.
    if not ctx.directory.registrations.allow(LoginThrottle.source(session.host)):
        limits.exceeded(limits.session_named(session.id, session.nickname), "server registration",
                        f"max 30 per hour from {session.host}")
        raise Refused(_registration_refused("Rate limit exceeded (30 requests/hour)"))
    problem = _registration_problem(msg)
    if problem:
        raise Refused(_registration_refused(problem))
    where = address_text(msg.hostname, msg.port)
    try:
        verify_server(msg.hostname, msg.port)
    except PeerError as exc:
        log.warning("Session %d: registration of %s from %s refused: could not verify: %s",
                    session.id, where, session.host, exc)
        raise Refused(_registration_refused(f"Could not verify server: {exc.public_text}")) from None
    ctx.writer.run(
        ctx.store.register_server,
        msg.hostname,
        msg.port,
        msg.name,
        msg.description,
        msg.max_users,
        msg.is_public,
        msg.channel_count,
        session.host,
        now_ms(),
    )
    log.info("Session %d: registered server %s (%s) from %s", session.id, where, msg.name, session.host)
    send(session, messages.RegisterAck(
        success=True, heartbeat_interval=ctx.config.heartbeat_interval_seconds, message="Server registered"
    ))


def _registration_problem(msg: messages.RegisterServer) -> str:
    if not msg.hostname or msg.port == 0:
        return "Invalid hostname or port"
    if len(msg.hostname.encode()) > MAX_HOSTNAME_BYTES:
        return f"Hostname must be at most {MAX_HOSTNAME_BYTES} characters"
    if len(msg.name.encode()) > MAX_NAME_BYTES:
        return f"Server name must be at most {MAX_NAME_BYTES} characters"
    if len(msg.description.encode()) > MAX_DESCRIPTION_BYTES:
        return f"Description must be at most {MAX_DESCRIPTION_BYTES} characters"
    return ""


def heartbeat(ctx: ServerContext, session: Session, msg: messages.Heartbeat) -> None:
    _require_directory_mode(ctx)
    listed = ctx.writer.run(
        ctx.store.record_heartbeat, msg.hostname, msg.port, msg.user_count, msg.uptime_seconds,
        msg.channel_count, now_ms(),
    )
    if not listed:
        raise Refused.error(ErrorCode.NOT_FOUND, "Server not registered")
    send(session, messages.HeartbeatAck(heartbeat_interval=ctx.config.heartbeat_interval_seconds))


def verify_registration(ctx: ServerContext, session: Session, msg: messages.VerifyRegistration) -> None:
    """A directory checking that this server is really here: echo its challenge."""
    log.info("Session %d: answered a verification challenge from %s", session.id, session.peer)
    send(session, messages.VerifyResponse(challenge=msg.challenge))


def verify_response(ctx: ServerContext, session: Session, msg: messages.VerifyResponse) -> None:
    # This server asks its challenges on connections of its own, never on a client's session.
    raise Refused.error(ErrorCode.INVALID_INPUT, "No pending verification")


def _require_directory_mode(ctx: ServerContext) -> None:
    if not ctx.config.directory_enabled:
        raise Refused.error(ErrorCode.UNSUPPORTED, "Directory mode not enabled on this server")


HANDLERS = {
    messages.ListServers: list_servers,
    messages.RegisterServer: register_server,
    messages.Heartbeat: heartbeat,
    messages.VerifyRegistration: verify_registration,
    messages.VerifyResponse: verify_response,
}
