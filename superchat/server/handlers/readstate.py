"""Unread counts and read positions, stored per registered user."""

from __future__ import annotations

from ...protocol import ErrorCode, messages
from ..context import ServerContext
from ..outbound import Refused, send
from ..session import Session


def get_unread_counts(ctx: ServerContext, session: Session, msg) -> None:
    if msg.since_timestamp is None and session.user_id is None:
        raise Refused(ErrorCode.AUTH_REQUIRED, "Anonymous users must provide since_timestamp")
    counts = []
    for target in msg.targets:
        since = msg.since_timestamp
        if since is None:
            since = ctx.store.read_state(session.user_id, target.channel_id, target.subchannel_id)
        if target.thread_id is not None:
            unread = ctx.store.count_unread_in_thread(target.thread_id, since)
        else:
            unread = ctx.store.count_unread_in_channel(target.channel_id, target.subchannel_id, since)
        counts.append(messages.UnreadCount(
            channel_id=target.channel_id,
            subchannel_id=target.subchannel_id,
            thread_id=target.thread_id,
            unread_count=min(unread, 0xFFFFFFFF),
        ))
    send(session, messages.UnreadCounts(counts=counts))


def update_read_state(ctx: ServerContext, session: Session, msg) -> None:
    """No answer, as the protocol defines; anonymous clients keep their read state themselves."""
    if session.user_id is not None:
        ctx.writer.run(ctx.store.set_read_state, session.user_id, msg.channel_id, msg.subchannel_id, msg.timestamp)


HANDLERS = {
    messages.GetUnreadCounts: get_unread_counts,
    messages.UpdateReadState: update_read_state,
}
