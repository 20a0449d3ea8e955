"""Messages: pages of roots, threads, edits, deletions and the retention sweep."""

from collections.abc import Iterable
from dataclasses import replace

import peewee
from peewee import SQL, Case, fn

from .engine import Connections, all_rows, clock_ms, storage_errors
from .models import MESSAGE_COLUMNS, Channel, Message
from .rows import Expired, MessageRow, Viewer

_MS_PER_HOUR = 3_600_000
_MAX_ROOT_PAGE = 1000


def _reply_count() -> peewee.Select:
    reply = Message.alias("reply")
    return reply.select(fn.COUNT(SQL("*"))).where(
        (reply.parent_id == Message.id) & reply.deleted_at.is_null() & (reply.shadowed == False)  # noqa: E712
    )


def _visible_to(viewer: Viewer | None) -> peewee.Expression | None:
    """The condition a message must meet to be listed for ``viewer``; None when all are."""
    if viewer is None or viewer.sees_shadowed:
        return None
    if viewer.user_id is not None:
        own = Message.author_user_id == viewer.user_id
    else:
        own = Message.author_user_id.is_null() & (Message.author_nickname == viewer.nickname)
    return (Message.shadowed == False) | own  # noqa: E712


def _shown_to(viewer: Viewer | None, message: MessageRow) -> bool:
    """_visible_to for a message already read."""
    if not message.shadowed or viewer is None or viewer.sees_shadowed:
        return True
    if viewer.user_id is not None:
        return message.author_user_id == viewer.user_id
    return message.author_user_id is None and message.author_nickname == viewer.nickname


def _select_messages() -> "peewee.ModelSelect[Message]":
    """Messages of any kind; reply_count is computed for roots only."""
    return Message.select(*MESSAGE_COLUMNS, Case(None, [(Message.parent_id.is_null(), _reply_count())], 0))


def in_subchannel(subchannel_id: int | None) -> peewee.Expression:
    return Message.subchannel_id.is_null() if subchannel_id is None else Message.subchannel_id == subchannel_id


class MessageQueries(Connections):
    """Messages as their readers list them, and their changes."""

    @storage_errors()
    def get_message(self, message_id: int) -> MessageRow | None:
        return self._message(self._reader, message_id)

    @storage_errors()
    def list_root_messages(
        self,
        channel_id: int,
        subchannel_id: int | None,
        limit: int,
        before_id: int | None,
        after_id: int | None,
        viewer: Viewer | None = None,
    ) -> list[MessageRow]:
        """A page of roots; ``viewer`` None lists shadowed posts too (callers that act for nobody)."""
        limit = min(limit, _MAX_ROOT_PAGE)
        if limit <= 0:
            return []
        query = Message.select(*MESSAGE_COLUMNS, _reply_count()).where(
            (Message.channel_id == channel_id)
            & Message.parent_id.is_null()
            & in_subchannel(subchannel_id)
            & Message.deleted_at.is_null()
        )
        visible = _visible_to(viewer)
        if visible is not None:
            query = query.where(visible)
        newest_first = after_id is None or before_id is not None
        if before_id is not None:
            query = query.where(Message.id < before_id)
        elif after_id is not None:
            query = query.where(Message.id > after_id)
        query = query.order_by(Message.id.desc() if newest_first else Message.id).limit(limit)
        rows = [MessageRow(*row) for row in all_rows(query, self._reader)]
        if newest_first:
            rows.reverse()
        return rows

    @storage_errors()
    def list_thread(self, parent_id: int, limit: int, before_id: int | None, after_id: int | None,
                    viewer: Viewer | None = None) -> list[MessageRow]:
        found = all_rows(Message.select(Message.thread_root_id).where(Message.id == parent_id), self._reader)
        if not found:
            return []
        # One indexed query fetches the whole thread; the tree walk happens here.
        thread = Message.select(*MESSAGE_COLUMNS).where(Message.thread_root_id == found[0][0])
        children: dict[int | None, list[MessageRow]] = {}
        for row in all_rows(thread.order_by(Message.id), self._reader):
            message = MessageRow(*(*row, 0))  # and reply_count 0, as replies always carry
            children.setdefault(message.parent_id, []).append(message)
        result: list[MessageRow] = []
        stack = list(reversed(children.get(parent_id, ())))
        while stack:
            message = stack.pop()
            stack.extend(reversed(children.get(message.id, ())))
            # A deleted or shadowed reply is hidden, its answers stay visible.
            if message.deleted_at is not None or not _shown_to(viewer, message):
                continue
            if before_id is not None and message.id >= before_id:
                continue
            if after_id is not None and message.id <= after_id:
                continue
            result.append(message)
            if len(result) == limit:
                break
        return result

    @storage_errors()
    def existing_message_ids(self, message_ids: Iterable[int]) -> set[int]:
        """Which of these messages still exist (soft-deleted ones do)."""
        return self._existing_ids(Message.id, message_ids)

    @storage_errors()
    def edit_message(self, message_id: int, content: str, shadowed: bool = False) -> MessageRow | None:
        """``shadowed``: edited under a shadowban, which hides the message from then on."""
        with self._writer.atomic():
            message = self._message(self._writer, message_id)
            if message is None or message.deleted_at is not None:
                return None
            now = clock_ms()
            shadowed = message.shadowed or shadowed
            Message.update(content=content, edited_at=now, shadowed=shadowed).where(
                Message.id == message_id
            ).execute(self._writer)
        return replace(message, content=content, edited_at=now, shadowed=shadowed)

    @storage_errors()
    def soft_delete_message(self, message_id: int) -> MessageRow | None:
        with self._writer.atomic():
            message = self._message(self._writer, message_id)
            if message is None or message.deleted_at is not None:
                return None
            now = clock_ms()
            Message.update(content="", deleted_at=now).where(Message.id == message_id).execute(self._writer)
        # The caller still needs the original content, e.g. for moderation logs.
        return replace(message, deleted_at=now)

    @storage_errors()
    def delete_expired_messages(self, now_ms: int) -> Expired:
        root = Message.alias("root")
        retention_ms = Channel.select(Channel.retention_hours * _MS_PER_HOUR).where(Channel.id == root.channel_id)
        # The shortest retention gives a constant bound, so only old roots are read, through the
        # created_at index; the per-channel comparison then refines it.
        oldest_kept = Channel.select(now_ms - fn.MIN(Channel.retention_hours) * _MS_PER_HOUR)
        expired_roots = root.select(root.channel_id, root.id).where(
            root.parent_id.is_null() & (root.created_at < oldest_kept) & (root.created_at + retention_ms < now_ms)
        )
        with self._writer.atomic():
            threads = all_rows(expired_roots, self._writer)
            if not threads:
                return Expired(0, [])
            root_ids = [root_id for _, root_id in threads]
            deleted = Message.delete().where(Message.thread_root_id.in_(root_ids)).execute(self._writer)
        return Expired(deleted, threads)

    @staticmethod
    def _message(db: peewee.Database, message_id: int) -> MessageRow | None:
        rows = all_rows(_select_messages().where(Message.id == message_id), db)
        return MessageRow(*rows[0]) if rows else None
