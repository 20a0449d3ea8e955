"""Who is online and who is in which channel, told to the sessions that follow it.

SERVER_PRESENCE goes only to sessions that asked for a roster (LIST_USERS), as the
protocol allows: telling every session about every join would cost O(n^2) frames.
CHANNEL_PRESENCE goes to the sessions that joined or subscribed to the channel.
Both reach such sessions on every node; the roster the other nodes read is kept up to date here.
"""

from __future__ import annotations

from ..protocol import ErrorCode, messages
from . import events, limits
from .context import ServerContext
from .event import Route
from .outbound import Refused
from .session import Session

# Joins, leaves and nickname changes one session may make: each is told to every node, and a
# client repeating them in a loop would flood the others. A person does not come near this.
PRESENCE_CHANGES = 30
PRESENCE_WINDOW_SECONDS = 10


def allow_change(session: Session) -> None:
    """Refuse a presence change that comes faster than PRESENCE_CHANGES per window."""
    if session.presence_window is None:
        session.presence_window = limits.SlidingWindow(PRESENCE_CHANGES, PRESENCE_WINDOW_SECONDS)
    if not session.presence_window.allow():
        limits.exceeded(limits.session_named(session.id, session.nickname), "join, leave and nickname change",
                        f"max {PRESENCE_CHANGES} per {PRESENCE_WINDOW_SECONDS} s")
        raise Refused.error(ErrorCode.RATE_LIMITED, f"Too many channel joins, leaves and nickname changes "
                                              f"(max {PRESENCE_CHANGES} per {PRESENCE_WINDOW_SECONDS} seconds)")


def server_presence(ctx: ServerContext, session: Session, online: bool, to_self: bool = True) -> None:
    if not session.nickname:
        return
    events.deliver(ctx, Route.ROSTER_WATCHERS, None, messages.ServerPresence(**session.identity(), online=online),
                   exclude=None if to_self else session)


def channel_presence(ctx: ServerContext, session: Session, channel_id: int, joined: bool, to_self: bool = True) -> None:
    ctx.cluster.roster_changed(session)
    if not session.nickname:
        return
    notice = messages.ChannelPresence(channel_id=channel_id, **session.identity(), joined=joined)
    if not to_self:
        events.deliver(ctx, Route.CHANNEL_AUDIENCE, channel_id, notice, exclude=session)
    elif not joined:  # the leaver is no longer a member but learns it left
        events.deliver(ctx, Route.CHANNEL_AUDIENCE, channel_id, notice, also=session)
    else:
        events.deliver(ctx, Route.CHANNEL_AUDIENCE, channel_id, notice)


def identity_changed(ctx: ServerContext, session: Session) -> None:
    """A nickname set or changed, a login or logout: followers see the session anew."""
    ctx.cluster.roster_changed(session)
    server_presence(ctx, session, True)
    if session.joined_channel is not None:
        channel_presence(ctx, session, session.joined_channel, True)


def session_ended(ctx: ServerContext, session: Session) -> None:
    """The connection is gone or going: the others learn it, the session itself is told nothing
    (a client that sent DISCONNECT gets no answer, and a dead one could not read it)."""
    if session.joined_channel is not None:
        channel_presence(ctx, session, session.joined_channel, False, to_self=False)
    server_presence(ctx, session, False, to_self=False)
    ctx.cluster.roster_left(session)
