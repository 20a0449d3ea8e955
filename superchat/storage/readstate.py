"""Where each user stopped reading, and what came after."""

from peewee import EXCLUDED, SQL, fn

from .engine import Connections, all_rows, storage_errors
from .messages import in_subchannel
from .models import Message, ReadState


def _subchannel_key(subchannel_id: int | None) -> int:
    return 0 if subchannel_id is None else subchannel_id


class ReadStateQueries(Connections):
    """Read positions per user and channel (or subchannel), and unread counts."""

    @storage_errors()
    def read_state(self, user_id: int, channel_id: int, subchannel_id: int | None) -> int:
        query = ReadState.select(ReadState.last_read_at).where(
            (ReadState.user_id == user_id)
            & (ReadState.channel_id == channel_id)
            & (ReadState.subchannel_key == _subchannel_key(subchannel_id))
        )
        rows = all_rows(query, self._reader)
        return rows[0][0] if rows else 0

    @storage_errors()
    def set_read_state(self, user_id: int, channel_id: int, subchannel_id: int | None, timestamp_ms: int) -> None:
        ReadState.insert(
            user_id=user_id,
            channel_id=channel_id,
            subchannel_key=_subchannel_key(subchannel_id),
            last_read_at=timestamp_ms,
        ).on_conflict(
            conflict_target=[ReadState.user_id, ReadState.channel_id, ReadState.subchannel_key],
            update={ReadState.last_read_at: EXCLUDED.last_read_at},
        ).execute(self._writer)

    @storage_errors()
    def count_unread_in_channel(self, channel_id: int, subchannel_id: int | None, since_ms: int) -> int:
        """Roots and replies; None counts only the messages outside every subchannel."""
        query = Message.select(fn.COUNT(SQL("*"))).where(
            (Message.channel_id == channel_id)
            & in_subchannel(subchannel_id)
            & (Message.created_at > since_ms)
            & Message.deleted_at.is_null()
            & (Message.shadowed == False)  # noqa: E712
        )
        return all_rows(query, self._reader)[0][0]

    @storage_errors()
    def count_unread_in_thread(self, thread_id: int, since_ms: int) -> int:
        """The root itself counts, as do replies at any depth."""
        query = Message.select(fn.COUNT(SQL("*"))).where(
            (Message.thread_root_id == thread_id)
            & (Message.created_at > since_ms)
            & Message.deleted_at.is_null()
            & (Message.shadowed == False)  # noqa: E712
        )
        return all_rows(query, self._reader)[0][0]
