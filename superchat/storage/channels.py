"""Channels: read once per change, seeded on a fresh database, created and deleted."""

from collections.abc import Sequence

from .engine import Connections, all_rows, clock_ms, duplicate_raises, storage_errors
from .models import CHANNEL_COLUMNS, Channel
from .rows import CHANNEL_TYPE_CHAT, CHANNEL_TYPE_FORUM, CHAT_CHANNEL_NAME, ChannelExists, ChannelRow

_CHAT_DISPLAY_NAME = ">chat"
_CHAT_DESCRIPTION = "General chat (linear conversation)"
_CHAT_RETENTION_HOURS = 24


# Whether a Channel id was ever handed out: this tells a fresh database from one whose admin
# deleted every channel. SQLite's AUTOINCREMENT records the highest id used in sqlite_sequence;
# an identity column's sequence has a last value once it was used.
_SQL_CHANNEL_IDS_USED = {
    "sqlite": "SELECT 1 FROM sqlite_sequence WHERE name = 'Channel'",
    "postgresql": """SELECT 1 WHERE pg_sequence_last_value(pg_get_serial_sequence('"Channel"', 'id')) IS NOT NULL""",
}


class ChannelQueries(Connections):
    """Channels, cached between changes."""

    _channels_version = 0
    _channel_cache: tuple[int, dict[int, ChannelRow]] | None = None

    def list_channels(self) -> list[ChannelRow]:
        return list(self._channels().values())

    def get_channel(self, channel_id: int) -> ChannelRow | None:
        return self._channels().get(channel_id)

    def channels_changed(self) -> None:
        """Read the channels again on next use: a write here or, on a shared database, elsewhere changed them."""
        self._channels_version += 1

    def _channels(self) -> dict[int, ChannelRow]:
        """Every channel by id, in name order. Channels change rarely and every post looks one up,
        so they are read once per change: writes bump ``_channels_version`` after their commit."""
        cached = self._channel_cache
        if cached is not None and cached[0] == self._channels_version:
            return cached[1]
        return self._read_channels()

    @storage_errors()
    def _read_channels(self) -> dict[int, ChannelRow]:
        version = self._channels_version
        query = Channel.select(*CHANNEL_COLUMNS).order_by(Channel.name)
        channels = {row[0]: ChannelRow(*row) for row in all_rows(query, self._reader)}
        # A write committed while this read ran leaves the version moved on: the next call reads again.
        self._channel_cache = (version, channels)
        return channels

    @storage_errors()
    def seed_channels(self, seeds: Sequence[tuple[str, str]], default_retention_hours: int) -> None:
        with self._writer.atomic():
            if self._writer.execute_sql(_SQL_CHANNEL_IDS_USED[self.dialect]).fetchall():
                return
            now = clock_ms()
            channels = [
                (
                    CHAT_CHANNEL_NAME,
                    _CHAT_DISPLAY_NAME,
                    _CHAT_DESCRIPTION,
                    CHANNEL_TYPE_CHAT,
                    _CHAT_RETENTION_HOURS,
                )
            ]
            channels += [
                (name, "#" + name, description, CHANNEL_TYPE_FORUM, default_retention_hours)
                for name, description in seeds
            ]
            for name, display_name, description, channel_type, retention_hours in channels:
                Channel.insert(
                    name=name,
                    display_name=display_name,
                    description=description,
                    channel_type=channel_type,
                    retention_hours=retention_hours,
                    created_by=None,
                    created_at=now,
                ).on_conflict_ignore().execute(self._writer)
        self.channels_changed()

    @storage_errors()
    def create_channel(
        self,
        name: str,
        display_name: str,
        description: str | None,
        channel_type: int,
        retention_hours: int,
        created_by: int | None,
    ) -> ChannelRow:
        with duplicate_raises(ChannelExists(name)), self._writer.atomic():
            if all_rows(Channel.select(Channel.id).where(Channel.name == name), self._writer):
                raise ChannelExists(name)
            now = clock_ms()
            channel_id = Channel.insert(
                name=name,
                display_name=display_name,
                description=description,
                channel_type=channel_type,
                retention_hours=retention_hours,
                created_by=created_by,
                created_at=now,
            ).execute(self._writer)
        self.channels_changed()
        return ChannelRow(channel_id, name, display_name, description, channel_type, retention_hours, created_by, now)

    @storage_errors()
    def delete_channel(self, channel_id: int) -> ChannelRow | None:
        """The channel's messages and read state go with it, through their foreign keys."""
        with self._writer.atomic():
            rows = all_rows(Channel.select(*CHANNEL_COLUMNS).where(Channel.id == channel_id), self._writer)
            if not rows:
                return None
            Channel.delete().where(Channel.id == channel_id).execute(self._writer)
        self.channels_changed()
        return ChannelRow(*rows[0])
