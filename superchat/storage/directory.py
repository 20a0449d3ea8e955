"""The servers a directory lists."""

import peewee
from peewee import EXCLUDED

from .engine import Connections, all_rows, storage_errors
from .models import DISCOVERED_SERVER_COLUMNS, DiscoveredServer
from .rows import DiscoveredServerRow


def _server_at(hostname: str, port: int) -> peewee.Expression:
    return (DiscoveredServer.hostname == hostname) & (DiscoveredServer.port == port)


class DirectoryQueries(Connections):
    """Servers listed by this directory: registered, kept by heartbeats, dropped when stale."""

    @storage_errors()
    def list_discovered_servers(self, limit: int | None, seen_since_ms: int) -> list[DiscoveredServerRow]:
        """Servers heard from at ``seen_since_ms`` or later, the most recently heard from first;
        a limit of None lists them all."""
        if limit is not None and limit <= 0:
            return []
        query = (
            DiscoveredServer.select(*DISCOVERED_SERVER_COLUMNS)
            .where(DiscoveredServer.last_seen >= seen_since_ms)
            .order_by(DiscoveredServer.last_seen.desc(), DiscoveredServer.id.desc())
            .limit(limit)
        )
        return [DiscoveredServerRow(*row) for row in all_rows(query, self._reader)]

    @storage_errors()
    def register_server(
        self,
        hostname: str,
        port: int,
        name: str,
        description: str,
        max_users: int,
        is_public: bool,
        channel_count: int,
        source_ip: str,
        now_ms: int,
    ) -> None:
        """List a verified server, or refresh its listing; the live figures of an already listed
        server (users, uptime) stay as its last heartbeat reported them."""
        DiscoveredServer.insert(
            hostname=hostname,
            port=port,
            name=name,
            description=description,
            user_count=0,
            max_users=max_users,
            uptime_seconds=0,
            is_public=is_public,
            channel_count=channel_count,
            last_seen=now_ms,
            source_ip=source_ip,
            created_at=now_ms,
        ).on_conflict(
            conflict_target=[DiscoveredServer.hostname, DiscoveredServer.port],
            update={
                column: getattr(EXCLUDED, column.name)
                for column in (
                    DiscoveredServer.name,
                    DiscoveredServer.description,
                    DiscoveredServer.max_users,
                    DiscoveredServer.is_public,
                    DiscoveredServer.channel_count,
                    DiscoveredServer.last_seen,
                    DiscoveredServer.source_ip,
                )
            },
        ).execute(self._writer)

    @storage_errors()
    def record_heartbeat(
        self, hostname: str, port: int, user_count: int, uptime_seconds: int, channel_count: int, now_ms: int
    ) -> bool:
        """False when the server is not listed."""
        query = DiscoveredServer.update(
            user_count=user_count, uptime_seconds=uptime_seconds, channel_count=channel_count, last_seen=now_ms
        ).where(_server_at(hostname, port))
        return query.execute(self._writer) > 0

    @storage_errors()
    def mark_server_seen(self, hostname: str, port: int, now_ms: int) -> bool:
        """A passed health check: the server stays listed. False when it is not listed."""
        query = DiscoveredServer.update(last_seen=now_ms).where(_server_at(hostname, port))
        return query.execute(self._writer) > 0

    @storage_errors()
    def remove_server(self, hostname: str, port: int) -> bool:
        return DiscoveredServer.delete().where(_server_at(hostname, port)).execute(self._writer) > 0

    @storage_errors()
    def remove_stale_servers(self, seen_before_ms: int) -> list[DiscoveredServerRow]:
        """Remove the servers last heard from before ``seen_before_ms``; returns them."""
        stale = DiscoveredServer.last_seen < seen_before_ms
        with self._writer.atomic():
            rows = all_rows(DiscoveredServer.select(*DISCOVERED_SERVER_COLUMNS).where(stale), self._writer)
            if rows:
                DiscoveredServer.delete().where(stale).execute(self._writer)
        return [DiscoveredServerRow(*row) for row in rows]
