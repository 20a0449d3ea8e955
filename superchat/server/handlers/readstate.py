"""Unread counts and read positions, stored per registered user."""

from __future__ import annotations

import gevent

from ...protocol import ErrorCode, messages
from ..context import ServerContext
from ..outbound import Refused, send
from ..session import Session

# Each target costs a database query on the hub, and its entry in the answer. One request may name
# up to 65,535 targets (the field is a u16 count), which unchecked held the hub for tens of seconds;
# clients ask for one target per channel and per followed thread, far fewer than this.
MAX_TARGETS = 1000


def get_unread_counts(ctx: ServerContext, session: Session, msg: messages.GetUnreadCounts) -> None:
    if msg.since_timestamp is None and session.user_id is None:
        raise Refused.error(ErrorCode.AUTH_REQUIRED, "Anonymous users must provide since_timestamp")
    if len(msg.targets) > MAX_TARGETS:
        raise Refused.error(ErrorCode.INVALID_INPUT, f"Too many unread count targets (max {MAX_TARGETS})")
    wanted = {(t.channel_id, t.subchannel_id, t.thread_id) for t in msg.targets}
    # A channel that does not exist has nothing unread; no need to ask the database per target.
    channels = {channel.id for channel in ctx.store.list_channels()} if wanted else set()
    positions: dict[tuple[int, int | None], int] = {}
    counted: dict[tuple[int, int | None, int | None], int] = {}
    for key in wanted:
        channel_id, subchannel_id, thread_id = key
        since = msg.since_timestamp
        if since is None:
            where = (channel_id, subchannel_id)
            if where not in positions:
                positions[where] = ctx.store.read_state(session.user_id, channel_id, subchannel_id)
            since = positions[where]
        if thread_id is not None:
            unread = ctx.store.count_unread_in_thread(thread_id, since)
        elif channel_id in channels:
            unread = ctx.store.count_unread_in_channel(channel_id, subchannel_id, since)
        else:
            unread = 0
        counted[key] = min(unread, 0xFFFFFFFF)
        gevent.sleep(0)  # one query at a time: other sessions' frames go between them
    send(session, messages.UnreadCounts(counts=[
        messages.UnreadCount(
            channel_id=target.channel_id,
            subchannel_id=target.subchannel_id,
            thread_id=target.thread_id,
            unread_count=counted[(target.channel_id, target.subchannel_id, target.thread_id)],
        )
        for target in msg.targets
    ]))


def update_read_state(ctx: ServerContext, session: Session, msg: messages.UpdateReadState) -> None:
    """No answer, as the protocol defines; anonymous clients keep their read state themselves.

    A position in a channel that does not exist is dropped as silently: storing it failed the
    channel's foreign key (an ERROR 9001 and an error log line any client could cause), and this
    server has no subchannels, so positions in them would only be rows without end.
    """
    if session.user_id is None or msg.subchannel_id is not None:
        return
    if ctx.store.get_channel(msg.channel_id) is None:
        return
    ctx.writer.run(ctx.store.set_read_state, session.user_id, msg.channel_id, None, msg.timestamp)


HANDLERS = {
    messages.GetUnreadCounts: get_unread_counts,
    messages.UpdateReadState: update_read_state,
}
