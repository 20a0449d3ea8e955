"""Posting: a batch of posts in one transaction, on the per-post path of literal SQL."""

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg2

from .engine import DRIVER_ERRORS, Connections, clock_ms, in_dialect, storage_errors
from .rows import MAX_STORED_INTEGER, MessageRow, NewPost, PostRejected, StorageError


@dataclass(frozen=True)
class _PostStatements:
    """The per-post write path (see PostingQueries._insert_post) in one dialect."""

    begin: str
    parent_thread: str
    insert_message: str
    # PostgreSQL's cursors know no inserted id without RETURNING; in SQLite, RETURNING costs more
    # than the insert itself (measured), and lastrowid nothing.
    returns_id: bool
    root_of_itself: str


_SQLITE_POSTS = _PostStatements(
    begin="BEGIN IMMEDIATE",
    parent_thread='SELECT thread_root_id FROM "Message" WHERE id = ? AND channel_id = ? AND deleted_at IS NULL',
    insert_message=(
        'INSERT INTO "Message" (channel_id, subchannel_id, parent_id, thread_root_id, author_user_id,'
        " author_nickname, content, created_at, shadowed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    returns_id=False,
    root_of_itself='UPDATE "Message" SET thread_root_id = id WHERE id = ?',
)


_POSTGRESQL_POSTS = _PostStatements(
    begin="BEGIN",
    parent_thread=in_dialect(_SQLITE_POSTS.parent_thread, "postgresql"),
    insert_message=in_dialect(_SQLITE_POSTS.insert_message, "postgresql") + " RETURNING id",
    returns_id=True,
    root_of_itself=in_dialect(_SQLITE_POSTS.root_of_itself, "postgresql"),
)


_POST_STATEMENTS = {"sqlite": _SQLITE_POSTS, "postgresql": _POSTGRESQL_POSTS}
# SQLite looks each channel up as a batch first names it; PostgreSQL locks them all up front.
_SQL_CHANNEL_EXISTS = 'SELECT 1 FROM "Channel" WHERE id = ?'
# A channel's lock is held until the batch commits, so its message ids increase in commit order
# even when several servers post into it: a reader that has seen an id never misses a smaller one
# committed later. Rows are locked in id order, so two servers' batches cannot deadlock. NO KEY
# UPDATE leaves alone the foreign key checks of rows that refer to the channel.
_SQL_LOCK_CHANNELS = 'SELECT id FROM "Channel" WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE'
# Waits for any transaction holding the lock above on these channels to end.
_SQL_SHARE_CHANNELS = 'SELECT id FROM "Channel" WHERE id = ANY(%s) ORDER BY id FOR SHARE'
_SQL_COUNT_MESSAGES = 'SELECT count(*) FROM "Message" WHERE id = ANY(%s)'
# Ends a backend left in its transaction (waiting at most 5 s for it to go): its locks go with it.
_SQL_END_STRANDED = ("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                     "WHERE pid = %s AND state LIKE 'idle in transaction%%'")
# How long the check of a lost COMMIT waits for the batch's channels at most.
_LOST_COMMIT_WAIT = "10s"


def _lock_channels(cursor, posts: Sequence[NewPost]) -> dict[int, bool]:
    """PostgreSQL: lock the channels of a batch of posts for its transaction; says which exist."""
    wanted = sorted({post.channel_id for post in posts})
    cursor.execute(_SQL_LOCK_CHANNELS, (wanted,))
    found = {row[0] for row in cursor.fetchall()}
    return {channel_id: channel_id in found for channel_id in wanted}


class PostingQueries(Connections):
    """New posts, committed in batches."""

    @storage_errors()
    def post_messages(self, posts: Sequence[NewPost]) -> list[MessageRow | PostRejected]:
        """Store a batch in one transaction (one fsync); results follow the input order."""
        results = self.insert_posts(posts)
        backend = None if self._pool is None else self._writer.connection().get_backend_pid()
        try:
            self.commit_posts()
        except StorageError as failure:
            if not self._committed_all_the_same(failure, results, backend):
                raise
        return results

    @storage_errors()
    def insert_posts(self, posts: Sequence[NewPost]) -> list[MessageRow | PostRejected]:
        """Insert a batch in a new write transaction, left open for ``commit_posts``.

        Inserting is quick work in SQLite's page cache and the commit is what waits for the
        disk, so the two can run on different threads. On PostgreSQL the transaction belongs to
        the call's connection: insert and commit there within one ``post_messages``. On failure
        the transaction is gone.
        """
        db = self._writer.connection()
        cursor = db.cursor()
        cursor.execute(_POST_STATEMENTS[self.dialect].begin)
        try:
            now = clock_ms()
            channels = {} if self._pool is None else _lock_channels(cursor, posts)
            return [self._insert_post(cursor, post, now, channels) for post in posts]
        except BaseException:
            self._roll_back(db)
            raise

    @storage_errors()
    def commit_posts(self) -> None:
        db = self._writer.connection()
        try:
            db.cursor().execute("COMMIT")
        except BaseException:
            self._roll_back(db)
            raise

    def _committed_all_the_same(self, failure: StorageError, results: Sequence[MessageRow | PostRejected],
                                backend: int | None) -> bool:
        """PostgreSQL: whether a batch whose COMMIT lost its connection was committed nonetheless.
        The server may have committed and its reply been lost on the way: reporting a failure then
        would tell the authors their posts were lost, and leave the stored posts undelivered."""
        rows = [row for row in results if isinstance(row, MessageRow)]
        connection_lost = isinstance(failure.__cause__, (psycopg2.OperationalError, psycopg2.InterfaceError))
        if self._pool is None or not rows or not connection_lost or not self._writer.connection().closed:
            return False
        try:
            # The pool drops the broken connection and the question goes on a fresh one.
            self._pool.close()
            self._pool.connect()
            return self._all_stored(rows, backend)
        except DRIVER_ERRORS:
            return False

    def _all_stored(self, rows: Sequence[MessageRow], backend: int | None) -> bool:
        cursor = self._writer.connection().cursor()
        cursor.execute("BEGIN")
        try:
            # When only this side of the connection broke, the server never got the COMMIT and its
            # backend sits in the transaction, holding the batch's locks until its own TCP gives up
            # (hours): ended now, it rolls the batch back.
            cursor.execute(_SQL_END_STRANDED, (backend,))
            # A server still committing the batch (its reply was only late) holds the channels'
            # locks until it is done: this waits for that, so the answer below is final.
            cursor.execute(f"SET LOCAL lock_timeout = '{_LOST_COMMIT_WAIT}'")
            cursor.execute(_SQL_SHARE_CHANNELS, (sorted({row.channel_id for row in rows}),))
            # The transaction stored all of the batch or none, and ids are never handed out twice.
            cursor.execute(_SQL_COUNT_MESSAGES, ([row.id for row in rows],))
            return cursor.fetchone()[0] == len(rows)
        finally:
            cursor.execute("ROLLBACK")

    def _roll_back(self, db) -> None:
        if self._pool is None:
            if db.in_transaction:
                db.execute("ROLLBACK")
        # The server of a lost connection has rolled back already.
        elif not db.closed:
            db.cursor().execute("ROLLBACK")

    def _insert_post(self, cursor, post: NewPost, now: int, channels: dict[int, bool]) -> MessageRow | PostRejected:
        # Literal SQL on the bare driver connection on this per-post path: building the equivalent
        # peewee queries took longer than SQLite took to run them (profiled under the throughput
        # load test).
        sql = _POST_STATEMENTS[self.dialect]
        if post.channel_id not in channels:
            cursor.execute(_SQL_CHANNEL_EXISTS, (post.channel_id,))
            channels[post.channel_id] = cursor.fetchone() is not None
        if not channels[post.channel_id]:
            return PostRejected.NO_CHANNEL
        thread_root_id = None
        if post.parent_id is not None:
            if post.parent_id > MAX_STORED_INTEGER:
                return PostRejected.NO_PARENT
            cursor.execute(sql.parent_thread, (post.parent_id, post.channel_id))
            parent = cursor.fetchone()
            if parent is None:
                return PostRejected.NO_PARENT
            thread_root_id = parent[0]
        cursor.execute(sql.insert_message, (
            post.channel_id, post.subchannel_id, post.parent_id, thread_root_id,
            post.author_user_id, post.author_nickname, post.content, now, post.shadowed,
        ))
        message_id = cursor.fetchone()[0] if sql.returns_id else cursor.lastrowid
        if thread_root_id is None:
            thread_root_id = message_id
            cursor.execute(sql.root_of_itself, (message_id,))
        return MessageRow(
            message_id,
            post.channel_id,
            post.subchannel_id,
            post.parent_id,
            thread_root_id,
            post.author_user_id,
            post.author_nickname,
            post.content,
            now,
            None,
            None,
            post.shadowed,
            0,
        )
