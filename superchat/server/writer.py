"""All database writes, with the waits for the disk off the gevent hub.

SQLite allows one writer at a time, and a commit waits for fsync. Writes run on a
dedicated thread, except the inserts of posts: those are quick work in SQLite's page
cache, and on another thread every statement would wait again for the interpreter
lock the busy hub holds. So a batch of posts is inserted on the hub and committed on
the thread. Posts that arrive while a commit is in progress are committed together
in the next transaction (group commit), and each acknowledgement still follows the
commit of that very post.

PostgreSQL takes concurrent writers, and through green_postgresql its queries wait without
blocking the hub: writes run on the calling greenlet, as many at once as the Store's
connection pool allows. Posts are group-committed all the same, each batch inserted
and committed by the greenlet that commits the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from gevent.threadpool import ThreadPool

from ..storage import MessageRow, NewPost, PostRejected, Store


class Writer:
    def __init__(self, store: Store):
        self._store = store
        self._pool = ThreadPool(1) if store.dialect == "sqlite" else None
        # The write connection has one user at a time: a job on the thread or a batch of posts.
        self._turn = Semaphore()
        self._queued: list[tuple[NewPost, AsyncResult]] = []
        self._committer: gevent.Greenlet | None = None

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one write on the writer thread (SQLite) or right here (PostgreSQL); blocks only the
        calling greenlet."""
        if self._pool is None:
            return fn(*args)
        with self._turn:
            return self._on_thread(fn, *args)

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
                    try:
                        rows = self._store_batch([post for post, _ in batch])
                    except Exception as exc:  # every waiter learns of the failure; none is acknowledged
                        for _, result in batch:
                            result.set_exception(exc)
                    else:
                        for (_, result), row in zip(batch, rows, strict=True):
                            result.set(row)
                # gevent's semaphore is not fair: without a yield here the next batch would take
                # the turn again at once, and under steady posting no other write would get one.
                gevent.sleep(0)
        finally:
            self._committer = None

    def _store_batch(self, posts: list[NewPost]) -> list[MessageRow | PostRejected]:
        if self._pool is None:
            return self._store.post_messages(posts)
        rows = self._store.insert_posts(posts)
        self._on_thread(self._store.commit_posts)
        return rows

    def _on_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        # The failure comes back as a value and is raised here: gevent prints the traceback of
        # every exception raised on a pool's thread, which on a full disk is one for every post.
        value, failure = self._pool.apply(_outcome, (fn, args))
        if failure is not None:
            raise failure
        return value

    def close(self) -> None:
        """Wait for queued writes, then stop the thread."""
        committer = self._committer
        if committer is not None:
            committer.join()
        if self._pool is not None:
            self._pool.kill()


def _outcome(fn: Callable[..., Any], args: tuple) -> tuple[Any, Exception | None]:
    try:
        return fn(*args), None
    except Exception as exc:
        return None, exc
