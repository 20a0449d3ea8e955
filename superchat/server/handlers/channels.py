"""Channels: listing, joining, creating, and subscriptions to channels and threads."""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet

from ...protocol import ErrorCode, encode_message, messages
from ...storage import ChannelExists
from .. import events, limits, presence
from ..context import ServerContext
from ..event import ChannelCreated
from ..outbound import Refused, send
from ..permissions import account_of
from ..preconditions import registered_only
from ..session import Session

log = logging.getLogger("superchat.channels")

THREAD_SUBSCRIPTION = 1
CHANNEL_SUBSCRIPTION = 2
CHANNEL_TYPES = (0, 1)  # 0 = chat, 1 = forum
MAX_RETENTION_HOURS = 8760
CHANNEL_CREATE_WINDOW_SECONDS = 3600


def list_channels(ctx: ServerContext, session: Session, msg: messages.ListChannels) -> None:
    entries = []
    for channel in ctx.store.list_channels():
        if msg.from_channel_id and channel.id <= msg.from_channel_id:
            continue
        entries.append(messages.ChannelEntry(
            id=channel.id,
            name=channel.name,
            description=channel.description or "",
            user_count=len(ctx.sessions.channel_subscribers(channel.id)),
            is_operator=False,
            type=channel.channel_type,
            retention_hours=channel.retention_hours,
        ))
        if msg.limit and len(entries) >= msg.limit:
            break
    send(session, messages.ChannelList(channels=entries))


def join_channel(ctx: ServerContext, session: Session, msg: messages.JoinChannel) -> None:
    presence.allow_change(session)
    if ctx.store.get_channel(msg.channel_id) is None:
        send(session, messages.JoinResponse(
            success=False, channel_id=msg.channel_id, message="Channel not found"
        ))
        return
    previous = session.joined_channel
    if previous is not None and previous != msg.channel_id:
        ctx.sessions.leave(session)
        presence.channel_presence(ctx, session, previous, False)
    ctx.sessions.join(session, msg.channel_id)
    send(session, messages.JoinResponse(
        success=True, channel_id=msg.channel_id, subchannel_id=msg.subchannel_id, message="Joined channel"
    ))
    presence.channel_presence(ctx, session, msg.channel_id, True)


def leave_channel(ctx: ServerContext, session: Session, msg: messages.LeaveChannel) -> None:
    presence.allow_change(session)
    current = session.joined_channel
    if current is None:
        failure = "Not currently joined to any channel"
    elif msg.channel_id and msg.channel_id != current:
        failure = "Session is not joined to the requested channel"
    else:
        ctx.sessions.leave(session)
        send(session, messages.LeaveResponse(success=True, channel_id=current, message="Left channel"))
        presence.channel_presence(ctx, session, current, False)
        return
    send(session, messages.LeaveResponse(success=False, channel_id=msg.channel_id, message=failure))


def _creation_refused(text: str) -> messages.ChannelCreated:
    return messages.ChannelCreated(success=False, message=text)


@registered_only("Only registered users can create channels. Please register or log in.", reply=_creation_refused)
def create_channel(ctx: ServerContext, session: Session, msg: messages.CreateChannel) -> None:
    creator = account_of(session)
    problem = _channel_problem(msg)
    if problem:
        raise Refused(_creation_refused(problem))
    if not ctx.channel_creates.allow(str(creator)):
        limit = ctx.config.max_channel_creates
        limits.exceeded(limits.session_named(session.id, session.nickname), "channel creation",
                        f"max {limit} per hour")
        raise Refused.error(
            ErrorCode.CHANNEL_CREATE_RATE_LIMITED, f"Channel creation rate limit exceeded (max {limit} per hour)"
        )
    try:
        channel = ctx.writer.run(
            ctx.store.create_channel,
            msg.name,
            msg.display_name,
            msg.description,
            msg.channel_type,
            msg.retention_hours,
            creator,
        )
    except ChannelExists:
        raise Refused(_creation_refused("Channel name already exists")) from None
    log.info("Session %d (%s) created channel %s (id %d)", session.id, session.nickname, channel.name, channel.id)
    created = messages.ChannelCreated(
        success=True,
        channel_id=channel.id,
        name=channel.name,
        description=channel.description or "",
        type=channel.channel_type,
        retention_hours=channel.retention_hours,
        message=f"Channel '{msg.display_name}' created successfully",
    )
    send(session, created)
    events.emit(ctx, ChannelCreated(encode_message(created)), exclude=session)


def _channel_problem(msg: messages.CreateChannel) -> str:
    if not 3 <= len(msg.name.encode()) <= 50:
        return "Channel name must be 3-50 characters"
    if not 1 <= len(msg.display_name.encode()) <= 100:
        return "Display name must be 1-100 characters"
    if msg.description is not None and len(msg.description.encode()) > 500:
        return "Description must be at most 500 characters"
    if msg.channel_type not in CHANNEL_TYPES:
        return "Invalid channel type (must be 0=chat or 1=forum)"
    if not 1 <= msg.retention_hours <= MAX_RETENTION_HOURS:
        return f"Retention hours must be between 1 and {MAX_RETENTION_HOURS} (1 year)"
    return ""


def subscribe_thread(ctx: ServerContext, session: Session, msg: messages.SubscribeThread) -> None:
    thread = ctx.store.get_message(msg.thread_id)
    if thread is None or thread.deleted_at is not None:
        raise Refused.error(ErrorCode.THREAD_NOT_FOUND, "Thread does not exist")
    _check_room(session.threads, msg.thread_id, ctx.config.max_thread_subscriptions,
                ErrorCode.THREAD_SUBSCRIPTION_LIMIT, "Thread")
    ctx.sessions.subscribe_thread(session, msg.thread_id)
    send(session, messages.SubscribeOk(
        type=THREAD_SUBSCRIPTION, id=msg.thread_id, subchannel_id=thread.subchannel_id
    ))


def unsubscribe_thread(ctx: ServerContext, session: Session, msg: messages.UnsubscribeThread) -> None:
    ctx.sessions.unsubscribe_thread(session, msg.thread_id)
    send(session, messages.SubscribeOk(type=THREAD_SUBSCRIPTION, id=msg.thread_id))


def subscribe_channel(ctx: ServerContext, session: Session, msg: messages.SubscribeChannel) -> None:
    if ctx.store.get_channel(msg.channel_id) is None:
        raise Refused.error(ErrorCode.CHANNEL_NOT_FOUND, "Channel does not exist")
    if msg.subchannel_id is not None:
        raise Refused.error(ErrorCode.SUBCHANNEL_NOT_FOUND, "Subchannel does not exist")
    _check_room(session.channels, msg.channel_id, ctx.config.max_channel_subscriptions,
                ErrorCode.CHANNEL_SUBSCRIPTION_LIMIT, "Channel")
    ctx.sessions.subscribe_channel(session, msg.channel_id)
    send(session, messages.SubscribeOk(type=CHANNEL_SUBSCRIPTION, id=msg.channel_id))


def _check_room(subscribed: AbstractSet[int], wanted: int, limit: int, code: ErrorCode, kind: str) -> None:
    """Refuse a new subscription past the per-session limit; renewing one is always fine."""
    if wanted not in subscribed and len(subscribed) >= limit:
        raise Refused.error(code, f"{kind} subscription limit exceeded (max {limit} per session)")


def unsubscribe_channel(ctx: ServerContext, session: Session, msg: messages.UnsubscribeChannel) -> None:
    if msg.subchannel_id is None:
        ctx.sessions.unsubscribe_channel(session, msg.channel_id)
    send(session, messages.SubscribeOk(
        type=CHANNEL_SUBSCRIPTION, id=msg.channel_id, subchannel_id=msg.subchannel_id
    ))


HANDLERS = {
    messages.ListChannels: list_channels,
    messages.JoinChannel: join_channel,
    messages.LeaveChannel: leave_channel,
    messages.CreateChannel: create_channel,
    messages.SubscribeThread: subscribe_thread,
    messages.UnsubscribeThread: unsubscribe_thread,
    messages.SubscribeChannel: subscribe_channel,
    messages.UnsubscribeChannel: unsubscribe_channel,
}
