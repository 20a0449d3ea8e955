"""All database writes, with the waits for the disk off the gevent hub.

SQLite allows one writer at a time, and a commit waits for fsync. Writes run on a
dedicated thread, except the inserts of posts: those are quick work in SQLite's page
cache, and on another thread every statement would wait again for the interpreter
lock the busy hub holds. So a batch of posts is inserted on the hub and committed on
the thread. Posts that arrive while a commit is in progress are committed together
in the next transaction (group commit), and each acknowledgement still follows the
commit of that very post. What the acknowledged posters' greenlets then broadcast goes out
as one write per session (fanout.writes_together).

PostgreSQL takes concurrent writers, and through storage/green.py its queries wait without
blocking the hub: writes run on the calling greenlet, as many at once as the Store's
connection pool allows. Posts are group-committed all the same, each batch inserted
and committed by the greenlet that commits the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from gevent.threadpool import ThreadPool

from ..observability import trace
from ..storage import DiskFull, MessageRow, NewPost, PostRejected, Store
from . import fanout

log = logging.getLogger("superchat.writer")


class DiskSpace:
    """Says when the database's disk fills up and when it has space again, once each: while it is
    full every write fails (every post gets ERROR 9001), and a line for each would only fill the
    log, on the same disk as often as not."""

    def __init__(self) -> None:
        self._full_since: float | None = None

    def tells(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a full disk, which is then said here (at its first failure), so that
        the caller says nothing of it."""
        if not isinstance(exc, DiskFull):
            return False
        if self._full_since is None:
            self._full_since = time.monotonic()
            log.error("The database's disk is full: writes fail (ERROR 9001) until space is freed: %s", exc)
        return True

    def post_stored(self) -> None:
        # Only a post tells that space is back: it always stores something, where another write
        # may change nothing (a retention sweep that finds nothing expired) and succeed on a disk
        # that is still full.
        if self._full_since is not None:
            log.warning("The database's disk has space again: posts are stored after %.0f s of failed writes",
                        time.monotonic() - self._full_since)
            self._full_since = None


class Writer:
    def __init__(self, store: Store):
        self._store = store
        self._pool = ThreadPool(1) if store.dialect == "sqlite" else None
        # The write connection has one user at a time: a job on the thread or a batch of posts.
        self._turn = Semaphore()
        self._queued: list[tuple[NewPost, AsyncResult]] = []
        self._committer: gevent.Greenlet | None = None
        self.disk_space = DiskSpace()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one write on the writer thread (SQLite) or right here (PostgreSQL); blocks only the
        calling greenlet."""
        if self._pool is None:
            return fn(*args)
        with self._turn:
            return _on_thread(self._pool, fn, *args)

    def run_if_space(self, fn: Callable[..., Any], *args: Any) -> None:
        """A write the request does not depend on (when an account or key was last used): left
        out while the disk is full, so that signing in still works."""
        try:
            self.run(fn, *args)
        except DiskFull as exc:
            self.disk_space.tells(exc)

    def post(self, post: NewPost) -> MessageRow | PostRejected:
        """Commit one post, batched with any that arrive alongside it; returns once durable."""
        result = AsyncResult()
        self._queued.append((post, result))
        if self._committer is None:
            self._committer = gevent.spawn(self._commit_queued)
        return result.get()

    def _commit_queued(self) -> None:
        try:
            while self._queued:
                with self._turn:
                    batch, self._queued = self._queued, []
                    self._commit_batch(batch)
                # gevent's semaphore is not fair: without a yield here the next batch would take
                # the turn again at once, and under steady posting no other write would get one.
                gevent.sleep(0)
        finally:
            self._committer = None

    def _commit_batch(self, batch: list[tuple[NewPost, AsyncResult]]) -> None:
        started = time.perf_counter()
        try:
            rows = self._store_batch([post for post, _ in batch])
        except Exception as exc:
            if len(batch) == 1:  # its waiter learns of the failure; nothing is acknowledged
                batch[0][1].set_exception(exc)
                return
            # One post may have failed the whole transaction: each is tried again on its own, so
            # that a post one client got wrong never costs another client's post.
            for entry in batch:
                self._commit_batch([entry])
        else:
            stored = sum(isinstance(row, MessageRow) for row in rows)
            if trace.enabled:
                trace.group_commit(len(batch), stored, time.perf_counter() - started)
            if stored:
                self.disk_space.post_stored()
            with fanout.writes_together():
                for (_, result), row in zip(batch, rows, strict=True):
                    result.set(row)

    def _store_batch(self, posts: list[NewPost]) -> list[MessageRow | PostRejected]:
        if self._pool is None:
            return self._store.post_messages(posts)
        rows = self._store.insert_posts(posts)
        _on_thread(self._pool, self._store.commit_posts)
        return rows

    def close(self) -> None:
        """Wait for queued writes, then stop the thread."""
        committer = self._committer
        if committer is not None:
            committer.join()
        if self._pool is not None:
            self._pool.kill()


def _on_thread(pool: ThreadPool, fn: Callable[..., Any], *args: Any) -> Any:
    # The failure comes back as a value and is raised here: gevent prints the traceback of
    # every exception raised on a pool's thread, which on a full disk is one for every post.
    value, failure = pool.apply(_outcome, (fn, args))
    if failure is not None:
        raise failure
    return value


def _outcome(fn: Callable[..., Any], args: tuple) -> tuple[Any, Exception | None]:
    try:
        return fn(*args), None
    except Exception as exc:
        return None, exc
