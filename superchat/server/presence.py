"""Who is online and who is in which channel, told to the sessions that follow it.

SERVER_PRESENCE goes only to sessions that asked for a roster (LIST_USERS), as the
protocol allows: telling every session about every join would cost O(n^2) frames.
CHANNEL_PRESENCE goes to the sessions that joined or subscribed to the channel.
"""

from __future__ import annotations

from ..protocol import messages
from .outbound import broadcast
from .session import Session, SessionRegistry


def _identity(session: Session) -> dict:
    return {
        "session_id": session.id,
        "nickname": session.nickname,
        "is_registered": session.user_id is not None,
        "user_id": session.user_id,
        "user_flags": session.user_flags,
    }


def server_presence(sessions: SessionRegistry, session: Session, online: bool, to_self: bool = True) -> None:
    if not session.nickname or not sessions.roster_watchers:
        return
    audience = sessions.roster_watchers if to_self else sessions.roster_watchers - {session}
    if audience:
        broadcast(list(audience), messages.ServerPresence(**_identity(session), online=online))


def channel_presence(
    sessions: SessionRegistry, session: Session, channel_id: int, joined: bool, to_self: bool = True
) -> None:
    if not session.nickname:
        return
    audience = sessions.channel_audience(channel_id)
    if not to_self:
        audience = audience - {session}
    elif not joined:
        audience = audience | {session}  # the leaver is no longer a member but learns it left
    if audience:
        broadcast(audience, messages.ChannelPresence(channel_id=channel_id, **_identity(session), joined=joined))


def identity_changed(sessions: SessionRegistry, session: Session) -> None:
    """A nickname set or changed, a login or logout: followers see the session anew."""
    server_presence(sessions, session, True)
    if session.joined_channel is not None:
        channel_presence(sessions, session, session.joined_channel, True)


def session_ended(sessions: SessionRegistry, session: Session) -> None:
    """The connection is gone or going: the others learn it, the session itself is told nothing
    (a client that sent DISCONNECT gets no answer, and a dead one could not read it)."""
    if session.joined_channel is not None:
        channel_presence(sessions, session, session.joined_channel, False, to_self=False)
    server_presence(sessions, session, False, to_self=False)
