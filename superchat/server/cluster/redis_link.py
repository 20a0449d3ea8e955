"""This node's connection to Redis, and whether Redis is usable right now."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import gevent
import redis

from ...observability import metrics
from .keys import PREFIX

log = logging.getLogger("superchat.cluster")

RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)


class RedisLink:
    """The Redis client every part of the node shares, who this node is to the others, and why
    Redis is unusable (``problem``).

    Parts that keep state about Redis register what to do when it is lost and when it is back.
    """

    def __init__(self, url: str, node_id: str):
        self.node_id = node_id
        # Tells this run's entries from an earlier run's of the same node id (for de-duplication).
        self.run = secrets.token_hex(8)
        # Named, so that CLIENT LIST in Redis tells which node holds which connection.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=32, timeout=2, socket_timeout=5, socket_connect_timeout=2,
            client_name=f"{PREFIX}{node_id}",
        )
        self.redis = redis.Redis(connection_pool=pool)
        # Why Redis is unusable right now, or None.
        self.problem: str | None = None
        self._when_lost: list[Callable[[], None]] = []
        self._when_back: list[Callable[[], None]] = []

    def when_lost(self, callback: Callable[[], None]) -> None:
        self._when_lost.append(callback)

    def when_back(self, callback: Callable[[], None]) -> None:
        self._when_back.append(callback)

    def reachable(self) -> None:
        if self.problem is not None:
            log.info("Redis reachable again")
            for callback in self._when_back:
                callback()
            self.problem = None
        metrics.redis_reachable(True)

    def failed(self, exc: redis.RedisError) -> None:
        """A command failed. Only a lost or silent Redis makes this node fall back on its own state:
        an error reply, or every pooled connection busy, is one command's failure."""
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and not _pool_busy(exc):
            self.unreachable(exc)
        else:
            log.warning("Redis command failed: %s", exc)

    def unreachable(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if self.problem is None:
            log.error("Redis unreachable: %s (serving this node's sessions; events wait in the outbox)", text)
        self.problem = text
        for callback in self._when_lost:
            callback()
        metrics.redis_reachable(False)

    def quietly(self, command: Callable[[], Any]) -> Any:
        """One command, or None while Redis is away: callers then rely on this node's own state."""
        if self.problem is not None:
            return None
        try:
            return command()
        except redis.RedisError as exc:
            self.failed(exc)
            return None

    def retrying(self, step: Callable[[], None]) -> None:
        """Run ``step`` for ever; while it fails, wait a little longer before each retry."""
        failures = 0
        while True:
            try:
                step()
            except redis.RedisError as exc:
                self.failed(exc)
            except Exception:
                # A bug, or a reply nobody expected: logged, and the loop goes on rather than
                # leave this node deaf or mute for the rest of its run.
                log.exception("Cluster %s failed", step.__name__)
            else:
                failures = 0
                continue
            gevent.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
            failures += 1

    def close(self) -> None:
        self.redis.close()


def _pool_busy(exc: redis.RedisError) -> bool:
    # What redis-py's BlockingConnectionPool raises when no connection comes free in time.
    return isinstance(exc, redis.ConnectionError) and str(exc) == "No connection available."
