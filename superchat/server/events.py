"""What a handler does to sessions beyond the one it answers, as events every node applies.

A handler describes an effect (deliver this frame to a channel's subscribers, expel the
sessions of a deleted user, ...) as an event record (event.py) and calls ``emit``: the event is
applied to this node's sessions at once and handed to the cluster, which applies it on every
other node with the same code. Frames travel already encoded, so a frame is encoded once in the
whole cluster.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from ..observability import metrics, trace
from ..protocol import encode_message, messages
from . import bans as banlist
from . import fanout
from .event import (
    BansLifted,
    ChannelCreated,
    ChannelDeleted,
    Delivery,
    Event,
    IpBanned,
    NodeGone,
    Route,
    SessionsGone,
    ThreadsExpired,
    UserBanned,
    UserDeleted,
)
from .outbound import expel
from .permissions import is_admin, is_author
from .session import Session

if TYPE_CHECKING:
    from .context import ServerContext

log = logging.getLogger("superchat.events")


def emit(ctx: ServerContext, event: Event, exclude: Session | None = None, also: Session | None = None) -> int:
    """Apply an event here, then on every other node. ``exclude`` and ``also`` name a session
    of this node (the one acting) and matter only here. Returns the local recipients."""
    recipients = _APPLIERS[type(event)](ctx, event, exclude, also)
    ctx.cluster.publish(event)
    return recipients


def apply_remote(ctx: ServerContext, event: Event) -> None:
    """An event another node emitted."""
    _APPLIERS[type(event)](ctx, event, None, None)


def deliver(
    ctx: ServerContext,
    route: Route,
    key: int | None,
    msg: messages.Message,
    *,
    private_to: tuple[int | None, str] | None = None,
    exclude: Session | None = None,
    also: Session | None = None,
    post: tuple[str, int, int | None] | None = None,
) -> int:
    """Send ``msg`` to the sessions ``route`` names on every node (see Delivery for ``private_to``
    and ``post``). Returns local recipients."""
    if ctx.cluster.shared:
        return emit(ctx, Delivery(msg.NAME, route, key, private_to, post, encode_message(msg)), exclude, also)
    # A single node: no event to share, and no encoding when nobody listens.
    audience = _audience(ctx, route, key, private_to, exclude, also)
    return _send_delivery(audience, msg.NAME, post, encode_message(msg) if audience else b"")


def _send_delivery(audience: list[Session], type_name: str, post: tuple[str, int, int | None] | None,
                   frame: bytes) -> int:
    started = time.perf_counter()
    recipients = _send_all(audience, frame, type_name)
    if post is not None or (trace.enabled and frame):
        fanout.timed(started, functools.partial(_delivered, post, frame, recipients))
    return recipients


def _delivered(post: tuple[str, int, int | None] | None, frame: bytes, recipients: int, seconds: float) -> None:
    if post is not None:
        kind, channel_id, thread_id = post
        metrics.message_broadcast(kind, channel_id, thread_id, recipients, seconds)
    if trace.enabled and frame:
        trace.broadcast(frame, recipients, seconds)


def _audience(ctx: ServerContext, route: Route, key: int | None, private_to: tuple[int | None, str] | None,
              exclude: Session | None, also: Session | None) -> list[Session]:
    sessions = ctx.sessions
    audience: Iterable[Session]
    if route is Route.ROSTER_WATCHERS:
        audience = sessions.roster_watchers
    elif route is Route.EVERYONE:
        audience = sessions.by_id.values()
    elif key is None:
        raise ValueError(f"a delivery to the {route} names no channel or thread")
    elif route is Route.CHANNEL_SUBSCRIBERS:
        audience = sessions.channel_subscribers(key)
    elif route is Route.THREAD_SUBSCRIBERS:
        audience = sessions.thread_subscribers(key)
    else:
        audience = sessions.channel_audience(key)
    chosen = [s for s in audience if s is not exclude and s is not also]
    if also is not None:
        chosen.append(also)
    if private_to is not None:
        chosen = [s for s in chosen if is_author(s, *private_to) or is_admin(s)]
    return chosen


def _send_all(audience: Collection[Session], frame: bytes, type_name: str) -> int:
    count = fanout.send_all(audience, frame)
    metrics.frames_sent(type_name, count)
    return count


def _living(ctx: ServerContext) -> list[Session]:
    return [s for s in ctx.sessions.by_id.values() if not s.finishing]


# --- appliers: (ctx, event, exclude, also) -> local recipients -------------------------------


def _deliver(ctx: ServerContext, event: Delivery, exclude: Session | None, also: Session | None) -> int:
    audience = _audience(ctx, event.route, event.key, event.private_to, exclude, also)
    return _send_delivery(audience, event.type_name, event.post, event.frame)


def _channel_created(ctx: ServerContext, event: ChannelCreated, exclude: Session | None, _: Session | None) -> int:
    ctx.store.channels_changed()
    return _send_all([s for s in _living(ctx) if s is not exclude], event.frame, messages.ChannelCreated.NAME)


def _channel_deleted(ctx: ServerContext, event: ChannelDeleted, *_: Session | None) -> int:
    # The reconciler may have found the deletion in the database first, and told the clients.
    if not ctx.reconciler.channel_deleted(event.channel_id):
        return 0
    ctx.store.channels_changed()
    ctx.sessions.forget_channel(event.channel_id)
    return _send_all(_living(ctx), event.frame, messages.ChannelDeleted.NAME)


def _user_deleted(ctx: ServerContext, event: UserDeleted, *_: Session | None) -> int:
    for session in ctx.sessions.sessions_of_user(event.user_id):
        expel(session, "Your account has been deleted")
    # The expelled sessions' last word is their DISCONNECT; everyone else hears of the deletion.
    return _send_all(_living(ctx), event.frame, messages.UserDeleted.NAME)


def _user_banned(ctx: ServerContext, event: UserBanned, exclude: Session | None, _: Session | None) -> int:
    ban = event.ban
    ctx.bans.add(ban)
    for session in list(ctx.sessions.by_id.values()):
        named = (ban.user_id is not None and session.user_id == ban.user_id) or (
            bool(ban.nickname) and session.nickname == ban.nickname)
        if session is exclude or not named:
            continue
        if ban.shadowban:
            session.shadowbanned = True
        else:
            expel(session, banlist.user_ban_notice(ban))
    return 0


def _ip_banned(ctx: ServerContext, event: IpBanned, *_: Session | None) -> int:
    ban = event.ban
    ctx.bans.add(ban)
    network = banlist.ban_network(ban)
    for session in list(ctx.sessions.by_id.values()):
        if banlist.address_in(session.host, network):
            expel(session, banlist.ip_ban_notice(ban))
    return 0


def _bans_lifted(ctx: ServerContext, *_) -> int:
    ctx.reconciler.request()
    return 0


def _threads_expired(ctx: ServerContext, event: ThreadsExpired, *_: Session | None) -> int:
    ctx.sessions.forget_threads(event.thread_ids)
    return 0


def _sessions_gone(ctx: ServerContext, event: SessionsGone, *_: Session | None) -> int:
    """A node's sessions are gone (it died or left, or these are its previous run's): they leave
    every roster and channel they were seen in."""
    count = 0
    for entry in event.sessions:
        if entry["session_id"] in ctx.sessions.by_id:
            continue  # this node's own, alive: it was only thought gone (its heartbeat was late)
        identity = {key: entry[key] for key in ("session_id", "nickname", "is_registered", "user_id", "user_flags")}
        if ctx.sessions.roster_watchers:
            count += _send_all(ctx.sessions.roster_watchers, encode_message(
                messages.ServerPresence(**identity, online=False)), messages.ServerPresence.NAME)
        channel_id = entry.get("channel_id")
        if channel_id is not None:
            audience = ctx.sessions.channel_audience(channel_id)
            if audience:
                count += _send_all(audience, encode_message(
                    messages.ChannelPresence(channel_id=channel_id, **identity, joined=False)),
                    messages.ChannelPresence.NAME)
    return count


_APPLIERS: dict[type, Callable[[ServerContext, Any, Session | None, Session | None], int]] = {
    Delivery: _deliver,
    ChannelCreated: _channel_created,
    ChannelDeleted: _channel_deleted,
    UserDeleted: _user_deleted,
    UserBanned: _user_banned,
    IpBanned: _ip_banned,
    BansLifted: _bans_lifted,
    ThreadsExpired: _threads_expired,
    SessionsGone: _sessions_gone,
    NodeGone: _sessions_gone,
}
