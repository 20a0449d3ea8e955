"""Directory mode: the list of SuperChat servers this server offers, and announcing it to other directories.

A directory lists a server only after reaching it on a connection of its own and getting a random
challenge echoed back (VERIFY_REGISTRATION / VERIFY_RESPONSE). Listed servers heartbeat on fresh
short connections; the directory also re-verifies them periodically and drops the ones it has not
heard from for three heartbeat intervals.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent.pool import Pool

from ..config import Config, directory_address
from ..protocol import ErrorCode, messages
from ..storage import DiscoveredServerRow, StorageError, Store
from .bans import now_ms
from .peer import FRAME_SECONDS, NotRegistered, PeerConnection, PeerError, PeerRefused, address_text, verify_server

if TYPE_CHECKING:
    from .cluster.link import ClusterLink
    from .session import SessionRegistry
    from .writer import Writer

log = logging.getLogger("superchat.directory")

# How long an announcer waits for a directory's REGISTER_ACK (peer.VERIFY_SECONDS stays inside it).
REGISTER_ACK_SECONDS = 30.0

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 500
STALE_AFTER_HEARTBEATS = 3
HEALTH_CHECK_CONCURRENCY = 16

REGISTRATIONS_PER_WINDOW = 30
REGISTRATION_WINDOW_SECONDS = 3600

RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 60.0

SELF_HOSTNAME_FALLBACK = "localhost"


class Directory:
    """This server's side of discovery: its list, its health checks and its announcements.

    ``listen_port`` gives the TCP port really listened on (known once listening);
    ``started_at`` is the ``time.monotonic()`` of the start, for uptime.
    """

    def __init__(self, config: Config, store: Store, writer: Writer, sessions: SessionRegistry,
                 cluster: ClusterLink, listen_port: Callable[[], int], started_at: float):
        self._config = config
        self._store = store
        self._writer = writer
        self._sessions = sessions
        self._listen_port = listen_port
        self._started_at = started_at
        self.registrations = cluster.limit("directory-registrations", REGISTRATIONS_PER_WINDOW,
                                           REGISTRATION_WINDOW_SECONDS)
        self._greenlets: list[gevent.Greenlet] = []
        self._health_checks = Pool(HEALTH_CHECK_CONCURRENCY)

    def start(self) -> None:
        config = self._config
        if config.directory_enabled:
            self._greenlets.append(gevent.spawn(self._health_check_loop))
        for entry in config.announce_to:
            host, port = directory_address(entry)
            self._greenlets.append(gevent.spawn(self._announce_loop, host, port))

    def stop(self) -> None:
        gevent.killall(self._greenlets)
        self._greenlets = []
        self._health_checks.kill()

    # -- the list --------------------------------------------------------------------------------

    def listing(self, limit: int) -> list[messages.ServerInfo]:
        """This server, then up to ``limit`` (0 = 100, at most 500) listed servers, the most recently
        heard from first; nothing at all when directory mode is off."""
        if not self._config.directory_enabled:
            return []
        limit = min(limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        listed = self._store.list_discovered_servers(limit, self._fresh_since())
        return [self.self_entry(), *(_server_info(row) for row in listed)]

    def self_entry(self) -> messages.ServerInfo:
        config = self._config
        return messages.ServerInfo(
            hostname=config.public_hostname or SELF_HOSTNAME_FALLBACK,
            port=self._listen_port(),
            name=config.server_name,
            description=config.server_description,
            user_count=len(self._sessions),
            max_users=config.max_users,
            uptime_seconds=self._uptime_seconds(),
            is_public=True,
            channel_count=self._channel_count(),
        )

    def servers_json(self) -> bytes:
        """The body of /servers.json: the LIST_SERVERS answer to a limit of 100, in the reference
        server's key names."""
        servers = [
            {_pascal_case(field.name): getattr(info, field.name) for field in dataclasses.fields(info)}
            for info in self.listing(DEFAULT_LIST_LIMIT)
        ]
        return json.dumps({"count": len(servers), "servers": servers}).encode() + b"\n"

    def _fresh_since(self) -> int:
        """The oldest last_seen (ms) of a server still listed."""
        heartbeat_ms = self._config.heartbeat_interval_seconds * 1000
        return now_ms() - STALE_AFTER_HEARTBEATS * heartbeat_ms

    def _uptime_seconds(self) -> int:
        return int(time.monotonic() - self._started_at)

    def _channel_count(self) -> int:
        return len(self._store.list_channels())

    # -- health checks ---------------------------------------------------------------------------

    def _health_check_loop(self) -> None:
        while True:
            gevent.sleep(self._config.health_check_interval_seconds)
            try:
                self._check_listed_servers()
            except StorageError as exc:
                if not self._writer.disk_space.tells(exc):
                    log.error("Directory health check failed: database error: %s", exc)

    def _check_listed_servers(self) -> None:
        """Re-verify every listed server: keep the ones that answer, drop the others and the stale."""
        store, writer = self._store, self._writer
        listed = store.list_discovered_servers(None, self._fresh_since())
        for row, failure in zip(listed, self._health_checks.map(_verification_failure, listed), strict=True):
            if failure:
                log.warning("Removed server %s (%s) from the directory: health check failed: %s",
                            address_text(row.hostname, row.port), row.name, failure)
                writer.run(store.remove_server, row.hostname, row.port)
            else:
                writer.run(store.mark_server_seen, row.hostname, row.port, now_ms())
        for row in writer.run(store.remove_stale_servers, self._fresh_since()):
            silent = (now_ms() - row.last_seen) // 1000
            log.info("Removed server %s (%s) from the directory: not heard from for %d s",
                     address_text(row.hostname, row.port), row.name, silent)

    # -- announcing this server ------------------------------------------------------------------

    def _announce_loop(self, host: str, port: int) -> None:
        """Register with one directory, then heartbeat at the interval it asks for; retry with backoff."""
        where = address_text(host, port)
        retry = RETRY_FIRST_SECONDS
        # The hostname the directory lists us under, once we asked to be listed. A directory may verify
        # in the background and refuse meanwhile (the reference server does): the next heartbeat tells
        # whether the registration took after all, and ERROR 4000 sends us back to registering.
        listed_as = ""
        while True:
            try:
                if listed_as:
                    interval = self._heartbeat(host, port, listed_as)
                else:
                    listed_as, ack = self._register(host, port)
                    if not ack.success:
                        raise PeerError(f"registration refused: {ack.message}")
                    interval = ack.heartbeat_interval
                    log.info("Registered with directory %s as %s (heartbeat every %d s)",
                             where, address_text(listed_as, self._listen_port()), interval)
            except NotRegistered:
                log.info("Directory %s no longer lists this server; registering again", where)
                listed_as = ""
                continue
            except (PeerError, StorageError) as exc:  # the database: counting our own channels
                log.warning("Announcing to directory %s failed: %s (retrying in %.0f s)", where, exc, retry)
                gevent.sleep(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)
                continue
            retry = RETRY_FIRST_SECONDS
            gevent.sleep(max(interval, 1))

    def _register(self, host: str, port: int) -> tuple[str, messages.RegisterAck]:
        """Ask to be listed; returns the hostname announced and the directory's answer."""
        config = self._config
        with PeerConnection.open(host, port) as directory:
            hostname = config.public_hostname or directory.local_host
            directory.send(messages.RegisterServer(
                hostname=hostname,
                port=self._listen_port(),
                name=config.server_name,
                description=config.server_description,
                max_users=config.max_users,
                is_public=True,
                channel_count=self._channel_count(),
            ))
            return hostname, directory.expect(messages.RegisterAck, REGISTER_ACK_SECONDS)

    def _heartbeat(self, host: str, port: int, hostname: str) -> int:
        """One heartbeat on a connection of its own (a long idle one would hit the directory's idle
        timeout); returns the interval the directory asks for next."""
        with PeerConnection.open(host, port) as directory:
            directory.send(messages.Heartbeat(
                hostname=hostname,
                port=self._listen_port(),
                user_count=len(self._sessions),
                uptime_seconds=self._uptime_seconds(),
                channel_count=self._channel_count(),
            ))
            try:
                return directory.expect(messages.HeartbeatAck, FRAME_SECONDS).heartbeat_interval
            except PeerRefused as refusal:
                if refusal.code == ErrorCode.NOT_FOUND:
                    raise NotRegistered(str(refusal)) from refusal
                raise


def _verification_failure(row: DiscoveredServerRow) -> str:
    """Why the listed server failed verification; empty when it passed."""
    try:
        verify_server(row.hostname, row.port)
    except PeerError as exc:
        return str(exc)
    return ""


def _server_info(row: DiscoveredServerRow) -> messages.ServerInfo:
    return messages.ServerInfo(
        hostname=row.hostname,
        port=row.port,
        name=row.name,
        description=row.description,
        user_count=row.user_count,
        max_users=row.max_users,
        uptime_seconds=row.uptime_seconds,
        is_public=row.is_public,
        channel_count=row.channel_count,
    )


def _pascal_case(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
