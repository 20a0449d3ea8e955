"""What a handler does to sessions beyond the one it answers, as events every node applies.

A handler describes an effect (deliver this frame to a channel's subscribers, expel the
sessions of a deleted user, ...) as an Event and calls ``emit``: the event is applied to this
node's sessions at once and handed to the cluster, which applies it on every other node with
the same code. Frames travel already encoded, so a frame is encoded once in the whole cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..observability import metrics
from ..protocol import encode_message, flags, messages
from ..storage import BanRow
from . import bans as banlist
from .outbound import expel
from .session import Session

if TYPE_CHECKING:
    from .context import ServerContext

log = logging.getLogger("superchat.events")

# Who a delivery goes to, resolved on each node against its own sessions.
CHANNEL_SUBSCRIBERS = "channel_subscribers"
THREAD_SUBSCRIBERS = "thread_subscribers"
CHANNEL_AUDIENCE = "channel_audience"  # joined or subscribed: who hears edits, deletions, presence
ROSTER_WATCHERS = "roster_watchers"  # sessions that asked for LIST_USERS
EVERYONE = "everyone"


@dataclass(frozen=True)
class Event:
    kind: str
    meta: dict = field(default_factory=dict)
    frame: bytes = b""


def emit(ctx: ServerContext, event: Event, exclude: Session | None = None, also: Session | None = None) -> int:
    """Apply an event here, then on every other node. ``exclude`` and ``also`` name a session
    of this node (the one acting) and matter only here. Returns the local recipients."""
    recipients = _APPLIERS[event.kind](ctx, event, exclude, also)
    ctx.cluster.publish(event)
    return recipients


def apply_remote(ctx: ServerContext, event: Event) -> None:
    """An event another node emitted."""
    _APPLIERS[event.kind](ctx, event, None, None)


def deliver(
    ctx: ServerContext,
    route: str,
    key: int | None,
    msg,
    *,
    private_to: tuple[int | None, str] | None = None,
    exclude: Session | None = None,
    also: Session | None = None,
    post: tuple[str, int, int | None] | None = None,
) -> int:
    """Send ``msg`` to the sessions ``route`` names on every node; ``private_to`` (author id,
    nickname) limits a shadowed message to its author and the admins; ``post`` (kind, channel,
    thread) marks a new message for the broadcast metrics. Returns local recipients."""
    meta = {"type": msg.NAME, "route": route, "key": key, "private_to": private_to, "post": post}
    if ctx.cluster.shared:
        return emit(ctx, Event("deliver", meta, encode_message(msg)), exclude, also)
    # A single node: no event to share, and no encoding when nobody listens.
    audience = _audience(ctx, meta, exclude, also)
    return _deliver_frame(audience, meta, encode_message(msg) if audience else b"")


def _deliver_frame(audience: list[Session], meta: dict, frame: bytes) -> int:
    started = time.perf_counter()
    recipients = _send_all(audience, frame, meta["type"])
    if meta["post"] is not None:
        kind, channel_id, thread_id = meta["post"]
        metrics.message_broadcast(kind, channel_id, thread_id, recipients, time.perf_counter() - started)
    return recipients


def _audience(ctx: ServerContext, meta: dict, exclude: Session | None, also: Session | None) -> list[Session]:
    sessions = ctx.sessions
    route, key = meta["route"], meta["key"]
    if route == CHANNEL_SUBSCRIBERS:
        audience: Iterable[Session] = sessions.channel_subscribers(key)
    elif route == THREAD_SUBSCRIBERS:
        audience = sessions.thread_subscribers(key)
    elif route == CHANNEL_AUDIENCE:
        audience = sessions.channel_audience(key)
    elif route == ROSTER_WATCHERS:
        audience = sessions.roster_watchers
    else:
        audience = sessions.by_id.values()
    chosen = [s for s in audience if s is not exclude and s is not also]
    if also is not None:
        chosen.append(also)
    private_to = meta.get("private_to")
    if private_to is not None:
        chosen = [s for s in chosen if is_author(s, *private_to) or is_admin(s)]
    return chosen


def _send_all(audience: Iterable[Session], frame: bytes, type_name: str) -> int:
    count = 0
    for session in audience:
        session.send(frame)
        count += 1
    metrics.frames_sent(type_name, count)
    return count


def is_author(session: Session, author_user_id: int | None, author_nickname: str) -> bool:
    if author_user_id is not None:
        return session.user_id == author_user_id
    return session.nickname == author_nickname


def is_admin(session: Session) -> bool:
    return session.user_id is not None and bool(session.user_flags & flags.ADMIN)


def _living(ctx: ServerContext) -> list[Session]:
    return [s for s in ctx.sessions.by_id.values() if not s.finishing]


# --- appliers: (ctx, event, exclude, also) -> local recipients -------------------------------


def _deliver(ctx: ServerContext, event: Event, exclude: Session | None, also: Session | None) -> int:
    return _deliver_frame(_audience(ctx, event.meta, exclude, also), event.meta, event.frame)


def _channel_created(ctx: ServerContext, event: Event, exclude: Session | None, _: Session | None) -> int:
    ctx.store.channels_changed()
    return _send_all((s for s in _living(ctx) if s is not exclude), event.frame, messages.ChannelCreated.NAME)


def _channel_deleted(ctx: ServerContext, event: Event, *_: Session | None) -> int:
    # The reconciler may have found the deletion in the database first, and told the clients.
    if not ctx.reconciler.channel_deleted(event.meta["channel_id"]):
        return 0
    ctx.store.channels_changed()
    ctx.sessions.forget_channel(event.meta["channel_id"])
    return _send_all(_living(ctx), event.frame, messages.ChannelDeleted.NAME)


def _user_deleted(ctx: ServerContext, event: Event, *_: Session | None) -> int:
    for session in ctx.sessions.sessions_of_user(event.meta["user_id"]):
        expel(session, "Your account has been deleted")
    # The expelled sessions' last word is their DISCONNECT; everyone else hears of the deletion.
    return _send_all(_living(ctx), event.frame, messages.UserDeleted.NAME)


# A ban travels whole, so that each node has it in force at once (a post checks the ban list);
# lifted bans are read again from the database, by the reconciler.


def ban_event(kind: str, ban: BanRow) -> Event:
    """A "user_banned" or "ip_banned" event for a ban just stored."""
    return Event(kind, {"ban": dataclasses.asdict(ban)})


def _user_banned(ctx: ServerContext, event: Event, exclude: Session | None, _: Session | None) -> int:
    ban = BanRow(**event.meta["ban"])
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


def _ip_banned(ctx: ServerContext, event: Event, *_: Session | None) -> int:
    ban = BanRow(**event.meta["ban"])
    ctx.bans.add(ban)
    network = banlist.parse_network(ban.ip_cidr)
    for session in list(ctx.sessions.by_id.values()):
        if banlist.address_in(session.host, network):
            expel(session, banlist.ip_ban_notice(ban))
    return 0


def _bans_lifted(ctx: ServerContext, *_) -> int:
    ctx.reconciler.request()
    return 0


def _threads_expired(ctx: ServerContext, event: Event, *_: Session | None) -> int:
    ctx.sessions.forget_threads(event.meta["thread_ids"])
    return 0


def _sessions_gone(ctx: ServerContext, event: Event, *_: Session | None) -> int:
    """A node's sessions are gone (it died or left, or these are its previous run's): they leave
    every roster and channel they were seen in."""
    count = 0
    for entry in event.meta["sessions"]:
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


_APPLIERS: dict[str, Callable[[ServerContext, Event, Session | None, Session | None], int]] = {
    "deliver": _deliver,
    "channel_created": _channel_created,
    "channel_deleted": _channel_deleted,
    "user_deleted": _user_deleted,
    "user_banned": _user_banned,
    "ip_banned": _ip_banned,
    "bans_lifted": _bans_lifted,
    "threads_expired": _threads_expired,
    "sessions_gone": _sessions_gone,
    "node_gone": _sessions_gone,
}
