"""Messages: listing, posting, editing, deleting, and their live delivery."""

from __future__ import annotations

import logging

from ...protocol import MAX_FRAME_LENGTH, ErrorCode, flags, messages
from ...storage import MessageRow, NewPost, PostRejected, Viewer
from .. import events, limits
from ..bans import describe
from ..context import ServerContext
from ..event import Route
from ..limits import SlidingWindow
from ..outbound import Refused, send
from ..permissions import is_admin, is_author
from ..preconditions import nickname_required, registered_only
from ..session import Session

log = logging.getLogger("superchat.posts")

CHAT_CHANNEL = 0
DEFAULT_PAGE = 50
MAX_PAGE = 1000
RATE_WINDOW_SECONDS = 60
# Room for MESSAGE_LIST's own fields and the frame header inside the 1 MiB frame limit.
LIST_OVERHEAD_BYTES = 64
# Fixed bytes of one message entry besides its two strings.
ENTRY_FIXED_BYTES = 52


def list_messages(ctx: ServerContext, session: Session, msg: messages.ListMessages) -> None:
    limit = min(msg.limit or DEFAULT_PAGE, MAX_PAGE)
    viewer = Viewer(session.user_id, session.nickname, is_admin(session))
    if msg.parent_id is not None:
        rows = ctx.store.list_thread(msg.parent_id, limit, msg.before_id, msg.after_id, viewer)
    elif msg.subchannel_id is not None:
        rows = []  # no subchannels exist on this server
    else:
        rows = ctx.store.list_root_messages(msg.channel_id, None, limit, msg.before_id, msg.after_id, viewer)
    send(session, messages.MessageList(
        channel_id=msg.channel_id,
        subchannel_id=msg.subchannel_id,
        parent_id=msg.parent_id,
        messages=_fit_in_frame(_entries(ctx, rows)),
    ))


def _fit_in_frame(entries: list) -> list:
    """Drop the newest entries that would push MESSAGE_LIST past the frame size limit."""
    budget = MAX_FRAME_LENGTH - LIST_OVERHEAD_BYTES
    for index, entry in enumerate(entries):
        budget -= ENTRY_FIXED_BYTES + len(entry.author_nickname.encode()) + len(entry.content.encode())
        if budget < 0:
            return entries[:index]
    return entries


# The reference server answers a post without a nickname with AUTH_REQUIRED, a deletion with NICKNAME_REQUIRED.
@nickname_required(code=ErrorCode.AUTH_REQUIRED)
def post_message(ctx: ServerContext, session: Session, msg: messages.PostMessage) -> None:
    ban = ctx.bans.user_ban(session.user_id, session.nickname)
    if ban is not None and not ban.shadowban:
        raise Refused.error(ErrorCode.PERMISSION_DENIED, f"You are banned {describe(ban)}")
    # Looked up at every post, so a shadowban that expires or is lifted ends here too.
    session.shadowbanned = ban is not None
    _check_content(ctx, msg.content)
    if msg.subchannel_id is not None:
        raise Refused.error(ErrorCode.SUBCHANNEL_NOT_FOUND, "Subchannel does not exist")
    channel = ctx.store.get_channel(msg.channel_id)
    if channel is None:
        # The reference server answers an unknown channel with a database error code.
        raise Refused.error(ErrorCode.DATABASE_ERROR, "Channel not found")
    if channel.channel_type == CHAT_CHANNEL and msg.parent_id is not None:
        raise Refused.error(ErrorCode.INVALID_INPUT, "Chat channels do not support threaded replies")
    # The reference server advertises message_rate_limit without enforcing it; we enforce it.
    if session.post_window is None:
        session.post_window = SlidingWindow(ctx.config.message_rate_limit, RATE_WINDOW_SECONDS)
    if not session.post_window.allow():
        limit = ctx.config.message_rate_limit
        limits.exceeded(limits.session_named(session.id, session.nickname), "message", f"max {limit} per minute")
        raise Refused.error(ErrorCode.MESSAGE_RATE_LIMITED, f"Message rate limit exceeded (max {limit} per minute)")

    stored = ctx.writer.post(NewPost(
        channel_id=msg.channel_id,
        subchannel_id=None,
        parent_id=msg.parent_id,
        author_user_id=session.user_id,
        author_nickname=session.nickname,
        content=msg.content,
        shadowed=session.shadowbanned,
    ))
    if isinstance(stored, PostRejected):
        text = "Channel not found" if stored is PostRejected.NO_CHANNEL else "Parent message not found"
        raise Refused.error(ErrorCode.DATABASE_ERROR, text)

    # The author is this session, whose name and flags are current: no lookup, which could yield
    # (on PostgreSQL) and let a later post of this node be delivered first.
    notice = _entry(stored, flags.decorated_nickname(session.nickname, session.user_id is not None,
                                                     session.user_flags), messages.NewMessage)
    # Sent only now: the post is committed, so a crash from here on cannot lose it.
    send(session, messages.MessagePosted(success=True, message_id=stored.id, message="Message posted"))
    log.info("%s POST_MESSAGE channel=%d message=%d session=%d", session.nickname, stored.channel_id,
             stored.id, session.id)
    post: tuple[str, int, int | None]
    if stored.parent_id is None:
        route, key, post = Route.CHANNEL_SUBSCRIBERS, stored.channel_id, ("channel", stored.channel_id, None)
    else:
        route, key, post = Route.THREAD_SUBSCRIBERS, stored.thread_root_id, ("thread", stored.channel_id,
                                                                              stored.thread_root_id)
    events.deliver(ctx, route, key, notice, private_to=_private_to(stored), post=post)


@registered_only("Authentication required. Register to edit messages.")
def edit_message(ctx: ServerContext, session: Session, msg: messages.EditMessage) -> None:
    _check_content(ctx, msg.new_content)
    row = ctx.store.get_message(msg.message_id)
    if row is None:
        raise Refused.error(ErrorCode.MESSAGE_NOT_FOUND, "Message not found")
    if row.author_user_id is None:
        raise Refused.error(ErrorCode.PERMISSION_DENIED, "Cannot edit anonymous messages")
    if row.author_user_id != session.user_id and not is_admin(session):
        raise Refused.error(ErrorCode.PERMISSION_DENIED, "You can only edit your own messages")
    if row.deleted_at is not None:
        raise Refused.error(ErrorCode.INVALID_INPUT, "Cannot edit deleted message")
    # Editing under a shadowban must not publish the new text: the message is hidden from then on.
    ban = ctx.bans.user_ban(session.user_id, session.nickname)
    edited = ctx.writer.run(ctx.store.edit_message, msg.message_id, msg.new_content, ban is not None)
    if edited is None:  # deleted between the check and the write
        raise Refused.error(ErrorCode.INVALID_INPUT, "Cannot edit deleted message")
    log.info("Session %d (%s) edited message %d", session.id, session.nickname, edited.id)
    notice = messages.MessageEdited(
        success=True, message_id=edited.id, edited_at=edited.edited_at, new_content=edited.content, message=""
    )
    events.deliver(ctx, Route.CHANNEL_AUDIENCE, edited.channel_id, notice, private_to=_private_to(edited),
                   also=session)


@nickname_required()
def delete_message(ctx: ServerContext, session: Session, msg: messages.DeleteMessage) -> None:
    row = ctx.store.get_message(msg.message_id)
    # Unknown and already-deleted messages get the reference server's database error code.
    if row is None:
        raise Refused.error(ErrorCode.DATABASE_ERROR, "Message not found")
    if row.deleted_at is not None:
        raise Refused.error(ErrorCode.DATABASE_ERROR, "Message already deleted")
    # The reference server's in-memory store lets anyone delete anything; the documented
    # rule, enforced here, is that only the author or an admin may.
    if not (is_author(session, row.author_user_id, row.author_nickname) or is_admin(session)):
        raise Refused.error(ErrorCode.PERMISSION_DENIED, "You can only delete your own messages")
    deleted = ctx.writer.run(ctx.store.soft_delete_message, msg.message_id)
    if deleted is None:
        raise Refused.error(ErrorCode.DATABASE_ERROR, "Message already deleted")
    log.info("Session %d (%s) deleted message %d", session.id, session.nickname, deleted.id)
    notice = messages.MessageDeleted(
        success=True, message_id=deleted.id, deleted_at=deleted.deleted_at, message=deleted.content
    )
    events.deliver(ctx, Route.CHANNEL_AUDIENCE, deleted.channel_id, notice, private_to=_private_to(deleted),
                   also=session)


def _check_content(ctx: ServerContext, content: str) -> None:
    if not content:
        raise Refused.error(ErrorCode.INVALID_FORMAT, "Message content cannot be empty")
    max_length = ctx.config.max_message_length
    if len(content.encode()) > max_length:
        raise Refused.error(ErrorCode.MESSAGE_TOO_LONG, f"Message too long (max {max_length} bytes)")


def _private_to(message: MessageRow) -> tuple[int | None, str] | None:
    """A shadowed post is seen only by its author and the admins: the author notices nothing."""
    return (message.author_user_id, message.author_nickname) if message.shadowed else None


def _entries(ctx: ServerContext, rows: list[MessageRow], record=messages.MessageEntry) -> list:
    """Wire entries, authors decorated with their current nickname and flags."""
    authors: dict[int, str] = {}
    entries = []
    for row in rows:
        author: str | None
        if row.author_user_id is None:
            author = flags.decorated_nickname(row.author_nickname, False, 0)
        else:
            author = authors.get(row.author_user_id)
            if author is None:
                author = authors[row.author_user_id] = _registered_author(ctx, row)
        entries.append(_entry(row, author, record))
    return entries


def _entry(row: MessageRow, author: str, record=messages.MessageEntry):
    return record(
        id=row.id,
        channel_id=row.channel_id,
        subchannel_id=row.subchannel_id,
        parent_id=row.parent_id,
        author_user_id=row.author_user_id,
        author_nickname=author,
        content=row.content,
        created_at=row.created_at,
        edited_at=row.edited_at,
        reply_count=row.reply_count,
    )


def _registered_author(ctx: ServerContext, row: MessageRow) -> str:
    user = ctx.store.get_user(row.author_user_id)
    if user is None:
        return row.author_nickname
    return flags.decorated_nickname(user.nickname, True, user.user_flags)


HANDLERS = {
    messages.ListMessages: list_messages,
    messages.PostMessage: post_message,
    messages.EditMessage: edit_message,
    messages.DeleteMessage: delete_message,
}
