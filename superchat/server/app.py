"""Assemble the server, run it, and shut it down cleanly."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from ..config import Config, masked_url
from ..observability import metrics
from ..observability.http import Health, metrics_app
from ..observability.profiling import enable_block_profiling, profiling_app
from ..open_files import raise_open_files_limit
from ..protocol import flags, messages
from ..storage import StorageError, Store
from . import events, runtime
from .bans import BanList
from .cluster import Cluster, Solo
from .context import ServerContext
from .directory import Directory
from .event import ThreadsExpired
from .handlers.channels import CHANNEL_CREATE_WINDOW_SECONDS
from .intake import PartialFrameMemory
from .listener import Listener
from .outbound import broadcast
from .passwords import LoginThrottle
from .reconcile import Reconciler
from .session import SessionRegistry
from .ssh import SshHandler, load_host_key
from .transport import SessionRunner, TcpHandler
from .websocket import PublicHttpHandler
from .writer import Writer

log = logging.getLogger("superchat.server")

# Bounded so a stuck client cannot hold up shutdown.
SHUTDOWN_DRAIN_SECONDS = 3.0
ACCEPT_BACKLOG = 4096
CLUSTER_REFRESH_SECONDS = 10
# How often superchat_database_size_bytes is measured.
DATABASE_SIZE_SECONDS = 5


class Server:
    def __init__(self, config: Config):
        self.config = config
        store = Store(config.database_url or config.database_path)
        store.seed_channels(
            [(seed.name, seed.description) for seed in config.seed_channels],
            config.default_retention_hours,
        )
        # Admin rights come from the configuration alone: granted and withdrawn at every start.
        store.assign_flag(flags.ADMIN, config.admin_users)
        for name in config.admin_users:
            if store.get_user_by_nickname(name) is None:
                log.info("No account yet for the admin name %s: make it on this host with: scd admin create %s",
                         name, name)
        for accounts in store.nickname_collisions:
            log.warning("Registered nicknames alike but for case: %s; registered names are unique regardless of "
                        "case, so rename or delete all but one of these accounts (until then their index on "
                        "the folded name is not unique)",
                        ", ".join(f"{nickname} (user {user_id})" for user_id, nickname in accounts))
        cluster = (Cluster(config.redis_url, config.node_id, store.claim_node_serial(config.node_id))
                   if config.redis_url else Solo())
        sessions = SessionRegistry(cluster.first_session_id)
        metrics.cap_thread_series(config.max_thread_series)
        metrics.count_thread_subscribers(sessions.thread_subscriber_counts)
        bans = BanList(store)
        writer = Writer(store)
        self.directory = Directory(config, store, writer, sessions, cluster, lambda: self.port, time.monotonic())
        self.ctx = ServerContext(
            config=config,
            store=store,
            writer=writer,
            sessions=sessions,
            bans=bans,
            logins=LoginThrottle(cluster),
            cluster=cluster,
            registrations=cluster.limit("registrations", config.max_registrations_per_hour, 3600),
            channel_creates=cluster.limit("channel-creates", config.max_channel_creates, CHANNEL_CREATE_WINDOW_SECONDS),
            reconciler=Reconciler(store, bans, sessions),
            partial_frames=PartialFrameMemory(config.partial_frame_memory_mb * 1024 * 1024),
            directory=self.directory,
        )
        self.runner = SessionRunner(self.ctx)
        self._listener = self._client_listener(config.tcp_port, TcpHandler(self.runner))
        # The same sessions by WebSocket and SSH, on ports of their own (0 turns one off).
        self._side_listeners: list[tuple[str, StreamServer]] = []
        health = Health(lambda: len(self.ctx.sessions), store.database_problem, config.directory_enabled,
                        cluster.status)
        self._metrics_http = WSGIServer(
            (config.metrics_bind, config.metrics_port), metrics_app(health), log=None, error_log=log
        )
        self._profiling_http = WSGIServer(
            (config.pprof_bind, config.pprof_port), profiling_app, log=None, error_log=log
        )
        self._background: list[gevent.Greenlet] = []

    def _client_listener(self, port: int, handler) -> StreamServer:
        return Listener(
            (self.config.bind_address, port),
            handler,
            backlog=ACCEPT_BACKLOG,
            spawn=Pool(),  # tracked, so stop() can wait for every connection to wind down
        )

    def _open_side_listeners(self) -> list[tuple[str, StreamServer]]:
        config = self.config
        listeners = []
        if config.http_port:
            servers_json = self.directory.servers_json if config.directory_enabled else None
            http_handler = PublicHttpHandler(self.runner, servers_json)
            listeners.append(("WebSocket server", self._client_listener(config.http_port, http_handler)))
        if config.ssh_port:
            host_key = load_host_key(Path(config.ssh_host_key))
            ssh_handler = SshHandler(self.ctx, self.runner, host_key)
            listeners.append(("SSH server", self._client_listener(config.ssh_port, ssh_handler)))
        return listeners

    @property
    def port(self) -> int:
        return self._listener.server_port

    def start(self) -> None:
        open_files = raise_open_files_limit()
        # Expired messages are gone before the first client can list them.
        self.delete_expired_messages()
        self._metrics_http.start()
        log.info("Metrics server listening on %s:%d (/metrics, /health) - INTERNAL ONLY",
                 self.config.metrics_bind, self._metrics_http.server_port)
        enable_block_profiling()
        self._profiling_http.start()
        log.info("Profiling server listening on %s:%d (/debug/pprof/) - INTERNAL ONLY",
                 self.config.pprof_bind, self._profiling_http.server_port)
        self._side_listeners = self._open_side_listeners()
        for name, listener in self._side_listeners:
            listener.start()
            log.info("%s listening on %s:%d", name, self.config.bind_address, listener.server_port)
        self._listener.start()
        log.info("Server started on port %d", self.port)
        log.info("Database: %s", self.ctx.store.location)
        log.info("Open files: up to %d, which bounds the sessions (each holds one; LimitNOFILE= or ulimit -n "
                 "raise it)", open_files)
        log.info("Interpreter: %s", runtime.describe())
        self._background.append(gevent.spawn(self._retention_loop))
        self._background.append(gevent.spawn(self._database_size_loop))
        if self.ctx.cluster.shared:
            self._background.append(gevent.spawn(self._refresh_loop))
        ctx = self.ctx
        ctx.cluster.start(lambda event: events.apply_remote(ctx, event), ctx.sessions.by_id.values,
                          ctx.reconciler.request)
        if ctx.cluster.shared:
            log.info("Cluster node %s joined through Redis %s", ctx.cluster.node_id,
                     masked_url(self.config.redis_url))
        self.directory.start()  # after the listener: announcements name the port it really got

    def _retention_loop(self) -> None:
        interval = self.config.cleanup_interval_minutes * 60
        while True:
            gevent.sleep(interval)
            self.delete_expired_messages()

    def _database_size_loop(self) -> None:
        # Measured here rather than at each scrape: a database that stopped answering would
        # otherwise hold the scrape past Prometheus's timeout and mark the whole server down.
        while True:
            metrics.database_size(_database_size(self.ctx.store))
            gevent.sleep(DATABASE_SIZE_SECONDS)

    def _refresh_loop(self) -> None:
        """Sessions checked against the database now and then: an event this node missed (Redis
        trimmed the stream while it was away) is made good."""
        while True:
            gevent.sleep(CLUSTER_REFRESH_SECONDS)
            self.ctx.reconciler.request()

    def delete_expired_messages(self) -> None:
        ctx = self.ctx
        try:
            removed = ctx.writer.run(ctx.store.delete_expired_messages, int(time.time() * 1000))
        except Exception as exc:
            if not ctx.writer.disk_space.tells(exc):
                log.error("Retention cleanup failed: database error: %s", exc)
            return
        if removed.messages:
            log.info("Cleaned up %d expired messages", removed.messages)
        if removed.threads:
            events.emit(ctx, ThreadsExpired(tuple(thread_id for _, thread_id in removed.threads)))
        metrics.threads_expired(removed.threads)

    def stop(self) -> None:
        """Stop accepting, tell every client, let in-flight writes finish, close the database."""
        log.info("Graceful shutdown initiated")
        self._listener.close()
        for _, listener in self._side_listeners:
            listener.close()
        gevent.killall(self._background)
        self.ctx.reconciler.stop()
        self.directory.stop()
        sessions = list(self.ctx.sessions.by_id.values())
        broadcast(sessions, messages.Disconnect(reason="Server shutting down"))
        deadline = time.monotonic() + SHUTDOWN_DRAIN_SECONDS
        for session in sessions:
            session.drain(max(0.0, deadline - time.monotonic()))
        # Handlers waiting on a commit get their answer before the sockets close.
        self.ctx.writer.close()
        for session in sessions:
            session.close("server shutting down")
        self._listener.stop(timeout=SHUTDOWN_DRAIN_SECONDS)
        for _, listener in self._side_listeners:
            listener.stop(timeout=1)
        self.ctx.cluster.stop()
        self._metrics_http.stop(timeout=1)
        self._profiling_http.stop(timeout=1)
        self.ctx.store.close()
        log.info("Graceful shutdown complete (%d sessions notified)", len(sessions))


def _database_size(store: Store) -> int | None:
    try:
        return store.database_size_bytes()
    except (StorageError, OSError):
        return None
