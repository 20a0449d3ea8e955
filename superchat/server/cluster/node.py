"""A node of several acting as one server, through Redis: the parts composed behind ClusterLink."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable

import gevent
import redis
from gevent.event import Event as Signal

from ...observability import metrics
from ..event import Event, SessionsGone
from ..session import Session
from .keys import roster_key
from .link import RemoteSession
from .liveness import Liveness
from .redis_link import RedisLink
from .roster import Roster
from .shared_limits import SharedLimit, SharedWindows
from .stream import EventStream

log = logging.getLogger("superchat.cluster")

# Session ids are node serial << SESSION_ID_BITS | a count of this node's sessions.
SESSION_ID_BITS = 32


class Cluster:
    """This node's link to the others through Redis."""

    shared = True

    def __init__(self, url: str, node_id: str, serial: int):
        """``serial``: a number no other run of any node was given (the database hands them out)."""
        self.node_id = node_id
        # Session ids from a range of this node's own.
        self.first_session_id = serial << SESSION_ID_BITS | 1
        self._link = RedisLink(url, node_id)
        wake_writer = Signal()
        self._roster = Roster(self._link, wake_writer.set)
        self._stream = EventStream(self._link, self._roster, wake_writer)
        self._liveness = Liveness(self._link, self._roster, self._stream)
        self._windows = SharedWindows(self._link)
        self._wake_writer = wake_writer
        self._greenlets: list[gevent.Greenlet] = []
        metrics.cluster_enabled(node_id)
        self._join()

    def _join(self) -> None:
        try:
            self._stream.read_from_end()
            self._link.reachable()
            # Sessions of this node's previous run (it died, or restarted before its key expired).
            earlier = [json.loads(entry) for entry in self._link.redis.hvals(roster_key(self.node_id))]
            if earlier:
                self.publish(SessionsGone(self.node_id, tuple(earlier)))
        except redis.RedisError as exc:
            self._link.unreachable(exc)
            log.warning("Redis unreachable at start (%s): this node joins the others when it comes", exc)

    @property
    def peers(self) -> tuple[str, ...]:
        return self._roster.peers

    @property
    def problem(self) -> str | None:
        return self._link.problem

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, apply_remote: Callable[[Event], None], local_sessions: Callable[[], Iterable[Session]],
              missed: Callable[[], None]) -> None:
        self._stream.start(apply_remote, missed)
        self._roster.start(local_sessions)
        self._greenlets = [
            gevent.spawn(self._link.retrying, self._stream.write_step),
            gevent.spawn(self._link.retrying, self._stream.read_step),
            gevent.spawn(self._liveness.heartbeat_loop),
        ]

    def stop(self) -> None:
        """Write what is waiting (briefly), then leave the cluster at once rather than by expiry."""
        self._wake_writer.set()
        deadline = gevent.Timeout(2, False)
        with deadline:
            while self._stream.unwritten and self.problem is None:
                gevent.sleep(0.05)
        gevent.killall(self._greenlets)
        # Without Redis the others notice this node's heartbeat expire instead.
        if self.problem is None:
            try:
                self._liveness.leave()
            except redis.RedisError as exc:
                log.warning("Could not leave the cluster cleanly: %s", exc)
        self._link.close()

    # -- what handlers and the transport call -------------------------------------------------

    def publish(self, event: Event) -> None:
        self._stream.publish(event)

    def roster_changed(self, session: Session) -> None:
        self._roster.changed(session)

    def roster_left(self, session: Session) -> None:
        self._roster.left(session)

    def connection_opened(self, host: str) -> None:
        self._roster.connection_opened(host)

    def connection_closed(self, host: str) -> None:
        self._roster.connection_closed(host)

    def remote_sessions(self) -> list[RemoteSession]:
        return self._roster.remote_sessions()

    def connections_elsewhere(self, host: str) -> int:
        return self._roster.connections_elsewhere(host)

    def limit(self, name: str, limit: int, seconds: float) -> SharedLimit:
        return SharedLimit(self._windows, name, limit, seconds)

    def window_allows(self, key: str, limit: int, window_ms: int, record: bool) -> bool | None:
        return self._windows.window_allows(key, limit, window_ms, record)

    def forget_window(self, key: str) -> None:
        self._windows.forget_window(key)

    def block(self, key: str, seconds: float) -> None:
        self._windows.block(key, seconds)

    def seconds_blocked(self, key: str) -> float:
        return self._windows.seconds_blocked(key)

    def status(self) -> dict:
        return {"node": self.node_id, "peers": list(self.peers),
                "redis": "ok" if self.problem is None else f"error: {self.problem}"}
