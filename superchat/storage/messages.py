"""Messages: pages of roots, threads, edits, deletions and the retention sweep."""

import functools
from collections.abc import Iterable
from dataclasses import replace

import peewee
from peewee import fn

from .engine import Connections, all_rows, clock_ms, in_dialect, storage_errors
from .models import MESSAGE_COLUMNS, Channel, Message
from .rows import Expired, MessageRow, Viewer

_MS_PER_HOUR = 3_600_000
_MAX_ROOT_PAGE = 1000


def _shown_to(viewer: Viewer | None, message: MessageRow) -> bool:
    """Whether ``viewer`` may see ``message``, the rule of the root page's viewer condition."""
    if not message.shadowed or viewer is None or viewer.sees_shadowed:
        return True
    if viewer.user_id is not None:
        return message.author_user_id == viewer.user_id
    return message.author_user_id is None and message.author_nickname == viewer.nickname


# The two reads every client makes all the time, a page of roots and one message, in literal SQL on
# the bare driver connection: building the equivalent peewee query and reading its rows through
# the model took longer than the database took to run it (profiled under upstream's bots load
# test).
_COLUMNS = ", ".join(f'"m"."{field.column_name}"' for field in MESSAGE_COLUMNS)
_SHADOWED = [field.name for field in MESSAGE_COLUMNS].index("shadowed")
_REPLY_COUNT = ('(SELECT COUNT(*) FROM "Message" AS "reply" WHERE "reply"."parent_id" = "m"."id"'
                ' AND "reply"."deleted_at" IS NULL AND "reply"."shadowed" = ?)')
_ONE_MESSAGE = (f'SELECT {_COLUMNS}, CASE WHEN "m"."parent_id" IS NULL THEN {_REPLY_COUNT} ELSE 0 END'
                ' FROM "Message" AS "m" WHERE "m"."id" = ?')
_ONE_MESSAGE_IN = {dialect: in_dialect(_ONE_MESSAGE, dialect) for dialect in ("sqlite", "postgresql")}


@functools.cache
def _root_page(dialect: str, in_subchannel: bool, viewer: str | None, bound: str | None, newest_first: bool) -> str:
    """A page of roots: ``viewer`` "user" or "guest" (whose own shadowed posts are listed) or None
    (all are), ``bound`` "<" or ">" (an id), the newest first or the oldest."""
    sql = [f'SELECT {_COLUMNS}, {_REPLY_COUNT} FROM "Message" AS "m" WHERE "m"."channel_id" = ?'
           ' AND "m"."parent_id" IS NULL AND "m"."deleted_at" IS NULL',
           ' AND "m"."subchannel_id" = ?' if in_subchannel else ' AND "m"."subchannel_id" IS NULL']
    if viewer == "user":
        sql.append(' AND ("m"."shadowed" = ? OR "m"."author_user_id" = ?)')
    elif viewer == "guest":
        sql.append(' AND ("m"."shadowed" = ? OR ("m"."author_user_id" IS NULL AND "m"."author_nickname" = ?))')
    if bound is not None:
        sql.append(f' AND "m"."id" {bound} ?')
    sql.append(f' ORDER BY "m"."id" {"DESC" if newest_first else "ASC"} LIMIT ?')
    return in_dialect("".join(sql), dialect)


def _message_rows(db: peewee.Database, sql: str, params: list) -> list[MessageRow]:
    cursor = db.connection().cursor()
    cursor.execute(sql, params)
    rows = cursor.fetchall()
    # SQLite gives booleans as 0 and 1.
    return [MessageRow(*row[:_SHADOWED], bool(row[_SHADOWED]), *row[_SHADOWED + 1:])  # type: ignore[call-arg]
            for row in rows]


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
        params: list = [False, channel_id]
        if subchannel_id is not None:
            params.append(subchannel_id)
        seen_by = None
        if viewer is not None and not viewer.sees_shadowed:
            seen_by = "user" if viewer.user_id is not None else "guest"
            params += [False, viewer.user_id if viewer.user_id is not None else viewer.nickname]
        newest_first = after_id is None or before_id is not None
        bound = "<" if before_id is not None else ">" if after_id is not None else None
        if bound is not None:
            params.append(before_id if before_id is not None else after_id)
        params.append(limit)
        sql = _root_page(self.dialect, subchannel_id is not None, seen_by, bound, newest_first)
        rows = _message_rows(self._reader, sql, params)
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

    def _message(self, db: peewee.Database, message_id: int) -> MessageRow | None:
        rows = _message_rows(db, _ONE_MESSAGE_IN[self.dialect], [False, message_id])
        return rows[0] if rows else None
