"""Persistence for the SuperChat server: SQLite, embedded, or PostgreSQL, which servers can share.

Every SQL statement of the server lives here. The API is synchronous and knows nothing about
gevent. On SQLite, reads run on the hub thread against the reader connection, writes run on one
dedicated writer thread against the writer connection. Two peewee databases share the same file
so that the hub never waits for the writer's fsync; WAL lets the reader see every committed write.

On PostgreSQL, every call takes a connection from a bounded pool and gives it back when it
returns. peewee keeps a connection per thread, and under gevent's monkey-patching a thread-local
is a greenlet-local: a connection held only for the length of a call cannot outlive its greenlet.
"""

import _socket
import functools
import heapq
import ipaddress
import operator
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from enum import Enum
from functools import reduce
from pathlib import Path

import peewee
import psycopg2
import psycopg2.errors
import psycopg2.extensions
from peewee import EXCLUDED, SQL, Case, fn
from playhouse.pool import MaxConnectionsExceeded, PoolConnection, PooledPostgresqlDatabase

from .config import POSTGRESQL_SCHEMES, masked_url

_MS_PER_HOUR = 3_600_000
_MAX_ROOT_PAGE = 1000

CHAT_CHANNEL_NAME = "chat"
_CHAT_DISPLAY_NAME = ">chat"
_CHAT_DESCRIPTION = "General chat (linear conversation)"
_CHAT_RETENTION_HOURS = 24
CHANNEL_TYPE_CHAT = 0
CHANNEL_TYPE_FORUM = 1

_PRAGMAS = (
    # busy_timeout first: switching to WAL needs a lock another process may hold.
    ("busy_timeout", 5000),
    ("journal_mode", "wal"),
    ("foreign_keys", 1),
    # FULL fsyncs the WAL on every commit; the server acknowledges a post only after the commit,
    # so an acknowledged post survives power loss.
    ("synchronous", "FULL"),
)

# Connections one server opens at most. A call waits this long for one to come free before it
# fails: bursts queue rather than fail.
_POOL_CONNECTIONS = 20
_POOL_WAIT_SECONDS = 10
# Ids asked about in one statement (SQLite allows 32,766 parameters).
_IDS_PER_QUERY = 1000
# Both databases store signed 64-bit integers, and the drivers refuse to send a larger one. The
# protocol's ids are unsigned 64-bit: one past this names nothing that can exist, and as a bound
# (before_id, a duration's end) it means no bound short of the end.
MAX_STORED_INTEGER = 2**63 - 1


@dataclass(frozen=True)
class ChannelRow:
    id: int
    name: str
    display_name: str
    description: str | None
    channel_type: int
    retention_hours: int
    created_by: int | None
    created_at: int


@dataclass(frozen=True)
class MessageRow:
    id: int
    channel_id: int
    subchannel_id: int | None
    parent_id: int | None
    thread_root_id: int
    author_user_id: int | None
    author_nickname: str
    content: str
    created_at: int
    edited_at: int | None
    deleted_at: int | None
    # Posted while its author was shadowbanned: only the author and admins ever see it.
    shadowed: bool
    # Direct, not-deleted, not-shadowed replies; only computed for roots, replies always carry 0.
    reply_count: int


@dataclass(frozen=True)
class UserRow:
    id: int
    nickname: str
    user_flags: int
    password_hash: str
    created_at: int
    last_seen: int | None


@dataclass(frozen=True)
class SSHKeyRow:
    id: int
    user_id: int
    fingerprint: str
    public_key: str
    key_type: str
    label: str | None
    added_at: int
    last_used_at: int | None


@dataclass(frozen=True)
class BanRow:
    id: int
    ban_type: str  # "user" or "ip"
    user_id: int | None
    nickname: str | None
    ip_cidr: str | None
    reason: str
    shadowban: bool
    banned_at: int
    banned_until: int | None  # None: permanent
    banned_by: str


@dataclass(frozen=True)
class DiscoveredServerRow:
    """A server listed by this directory."""

    id: int
    hostname: str
    port: int
    name: str
    description: str
    user_count: int
    max_users: int
    uptime_seconds: int
    is_public: bool
    channel_count: int
    last_seen: int  # the last heartbeat or passed health check, in ms
    source_ip: str  # the address the registration came from
    created_at: int


@dataclass(frozen=True)
class NewPost:
    channel_id: int
    subchannel_id: int | None
    parent_id: int | None
    author_user_id: int | None
    author_nickname: str
    content: str
    shadowed: bool = False


@dataclass(frozen=True)
class Viewer:
    """Who lists messages: shadowed posts are shown only to their author and to admins."""

    user_id: int | None
    nickname: str
    sees_shadowed: bool


class PostRejected(Enum):
    NO_CHANNEL = "no_channel"
    # The parent is missing, soft-deleted or belongs to another channel.
    NO_PARENT = "no_parent"


@dataclass(frozen=True)
class Expired:
    """What a retention sweep removed: a count of messages, and the threads they formed."""

    messages: int
    threads: list[tuple[int, int]]  # (channel_id, thread root id)


class ChannelExists(Exception):
    pass


class NicknameTaken(Exception):
    pass


class SSHKeyExists(Exception):
    pass


class StorageError(Exception):
    pass


class DiskFull(StorageError):
    """The disk under the database (SQLite's file, or the PostgreSQL server's) is full: the write
    was not made, and one may succeed again once space is freed."""


# Migrations are frozen SQL rather than create_table() calls on the models: a step must keep
# producing the schema of its own version after the models have moved on. Append, never edit.
# One text serves SQLite and PostgreSQL: identifiers are quoted ("User" is reserved in PostgreSQL),
# integers are BIGINT (milliseconds overflow PostgreSQL's INTEGER; SQLite treats both alike), and
# the few differences are named in braces and filled in from _DIALECT_TERMS.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE "Channel" (
            id {id},
            name TEXT NOT NULL UNIQUE,
            display_name TEXT NOT NULL,
            description TEXT,
            channel_type BIGINT NOT NULL,
            retention_hours BIGINT NOT NULL,
            created_by BIGINT,
            created_at BIGINT NOT NULL
        )""",
        """CREATE TABLE "User" (
            id {id},
            nickname TEXT NOT NULL UNIQUE,
            user_flags BIGINT NOT NULL DEFAULT 0,
            password_hash TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            last_seen BIGINT
        )""",
        # parent_id has no ON DELETE action on purpose: retention removes a whole thread in one
        # statement (checked at its end), and a cascade would hide rows from the deleted count.
        # thread_root_id is NULL only inside the transaction that inserts a root.
        """CREATE TABLE "Message" (
            id {id},
            channel_id BIGINT NOT NULL REFERENCES "Channel"(id) ON DELETE CASCADE,
            subchannel_id BIGINT,
            parent_id BIGINT REFERENCES "Message"(id),
            thread_root_id BIGINT,
            author_user_id BIGINT,
            author_nickname TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            edited_at BIGINT,
            deleted_at BIGINT
        )""",
        'CREATE INDEX idx_message_roots ON "Message"(channel_id, parent_id, id)',
        # deleted_at makes reply counting index-only.
        'CREATE INDEX idx_message_parent ON "Message"(parent_id, deleted_at) WHERE parent_id IS NOT NULL',
        'CREATE INDEX idx_message_thread ON "Message"(thread_root_id)',
        'CREATE INDEX idx_message_root_age ON "Message"(created_at) WHERE parent_id IS NULL',
    ),
    (
        """CREATE TABLE "SSHKey" (
            id {id},
            user_id BIGINT NOT NULL REFERENCES "User"(id) ON DELETE CASCADE,
            fingerprint TEXT NOT NULL UNIQUE,
            public_key TEXT NOT NULL,
            key_type TEXT NOT NULL,
            label TEXT,
            added_at BIGINT NOT NULL,
            last_used_at BIGINT
        )""",
        'CREATE INDEX idx_ssh_key_user ON "SSHKey"(user_id)',
        # SET NULL keeps the bans of a deleted account as history; a recorded nickname still
        # matches whoever takes that nickname next, as it would have before the deletion.
        """CREATE TABLE "Ban" (
            id {id},
            ban_type TEXT NOT NULL CHECK (ban_type IN ('user', 'ip')),
            user_id BIGINT REFERENCES "User"(id) ON DELETE SET NULL,
            nickname TEXT,
            ip_cidr TEXT,
            reason TEXT NOT NULL,
            shadowban {flag} NOT NULL,
            banned_at BIGINT NOT NULL,
            banned_until BIGINT,
            banned_by TEXT NOT NULL,
            CHECK ((ban_type = 'ip') = (ip_cidr IS NOT NULL))
        )""",
        'CREATE INDEX idx_ban_user ON "Ban"(user_id)',
        'CREATE INDEX idx_ban_nickname ON "Ban"(nickname)',
        'CREATE INDEX idx_ban_ip ON "Ban"(ip_cidr)',
        # No foreign key on admin_user_id: the audit trail outlives the admin's account.
        """CREATE TABLE "AdminAction" (
            id {id},
            admin_user_id BIGINT NOT NULL,
            admin_nickname TEXT NOT NULL,
            action TEXT NOT NULL,
            details TEXT NOT NULL,
            performed_at BIGINT NOT NULL
        )""",
        # subchannel_key is 0 for "no subchannel": NULLs never collide in a key, so a NULL
        # subchannel would defeat the upsert.
        """CREATE TABLE "ReadState" (
            user_id BIGINT NOT NULL REFERENCES "User"(id) ON DELETE CASCADE,
            channel_id BIGINT NOT NULL REFERENCES "Channel"(id) ON DELETE CASCADE,
            subchannel_key BIGINT NOT NULL,
            last_read_at BIGINT NOT NULL,
            PRIMARY KEY (user_id, channel_id, subchannel_key)
        ){without_rowid}""",
        'CREATE INDEX idx_read_state_channel ON "ReadState"(channel_id)',
        # The unread counts read only these indexes (deleted_at makes them covering).
        # idx_message_thread stays: list_thread reads threads in id order through it.
        'CREATE INDEX idx_message_unread ON "Message"(channel_id, subchannel_id, created_at, deleted_at)',
        'CREATE INDEX idx_message_thread_unread ON "Message"(thread_root_id, created_at, deleted_at)',
        # Anonymising a deleted account's messages must not read the whole Message table.
        'CREATE INDEX idx_message_author ON "Message"(author_user_id) WHERE author_user_id IS NOT NULL',
    ),
    (
        """CREATE TABLE "DiscoveredServer" (
            id {id},
            hostname TEXT NOT NULL,
            port BIGINT NOT NULL,
            name TEXT NOT NULL,
            description TEXT NOT NULL,
            user_count BIGINT NOT NULL,
            max_users BIGINT NOT NULL,
            uptime_seconds BIGINT NOT NULL,
            is_public {flag} NOT NULL,
            channel_count BIGINT NOT NULL,
            last_seen BIGINT NOT NULL,
            source_ip TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            UNIQUE (hostname, port)
        )""",
        # The list is read newest first, and stale servers are found by age.
        'CREATE INDEX idx_discovered_server_last_seen ON "DiscoveredServer"(last_seen)',
    ),
    (
        'ALTER TABLE "Message" ADD COLUMN shadowed {flag} NOT NULL DEFAULT FALSE',
        # Reply and unread counts leave shadowed posts out and must stay index-only.
        "DROP INDEX idx_message_parent",
        'CREATE INDEX idx_message_parent ON "Message"(parent_id, deleted_at, shadowed) WHERE parent_id IS NOT NULL',
        "DROP INDEX idx_message_unread",
        "DROP INDEX idx_message_thread_unread",
        'CREATE INDEX idx_message_unread ON "Message"(channel_id, subchannel_id, created_at, deleted_at, shadowed)',
        'CREATE INDEX idx_message_thread_unread ON "Message"(thread_root_id, created_at, deleted_at, shadowed)',
    ),
    (
        # Serials for the nodes sharing the database: each claim adds a row, whose id is the
        # serial. {id} never hands a number out twice, even after the newest rows are deleted.
        """CREATE TABLE "node_runs" (
            id {id},
            node_id TEXT NOT NULL,
            started_at BIGINT NOT NULL
        )""",
    ),
    (
        # Registered nicknames are unique regardless of case; _fold_nicknames makes this unique.
        'CREATE INDEX idx_user_nickname_folded ON "User"(lower(nickname))',
    ),
)


_DIALECT_TERMS = {
    "sqlite": {
        # AUTOINCREMENT: ids are never reused, even after the newest row is deleted.
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "flag": "INTEGER",
        "without_rowid": " WITHOUT ROWID",
    },
    "postgresql": {
        "id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "flag": "BOOLEAN",
        "without_rowid": "",
    },
}
# Two servers starting on one PostgreSQL database take turns at migrating it.
_MIGRATION_LOCK_KEY = 0x5C_0001
# Held by every write that gives an account a nickname, across all servers of one database.
_NICKNAMES_LOCK_KEY = 0x5C_0002

# A database from before migration 6 may hold registered nicknames alike but for case (alice and
# Alice). Making the migration's index unique would then fail the migration and stop the server, and
# picking an account to rename or delete is the operator's call. So the migration's index is plain,
# and every start, under the migration lock, replaces it by a unique one as soon as no such pair is
# left, and otherwise names the pairs in the log. Until then nothing makes a new pair: every write of
# a nickname checks the folded name under _NICKNAMES_LOCK_KEY (one writer thread on SQLite).
_SQL_NICKNAME_COLLISIONS = """SELECT id, nickname FROM "User" WHERE lower(nickname) IN
    (SELECT lower(nickname) FROM "User" GROUP BY lower(nickname) HAVING count(*) > 1)
    ORDER BY lower(nickname), id"""
_SQL_UNIQUE_FOLDED_NICKNAMES = (
    'CREATE UNIQUE INDEX IF NOT EXISTS idx_user_nickname_folded_unique ON "User"(lower(nickname))',
    "DROP INDEX IF EXISTS idx_user_nickname_folded",
)


def _migration(dialect: str, number: int) -> list[str]:
    """The statements of migration ``number`` (1-based) for ``dialect``, "sqlite" or "postgresql"."""
    terms = _DIALECT_TERMS[dialect]
    return [statement.format(**terms) for statement in _MIGRATIONS[number - 1]]


@dataclass(frozen=True)
class _PostStatements:
    """The per-post write path (see Store._insert_post) in one dialect."""

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
    parent_thread=_SQLITE_POSTS.parent_thread.replace("?", "%s"),
    insert_message=_SQLITE_POSTS.insert_message.replace("?", "%s") + " RETURNING id",
    returns_id=True,
    root_of_itself=_SQLITE_POSTS.root_of_itself.replace("?", "%s"),
)
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

# Whether a Channel id was ever handed out: this tells a fresh database from one whose admin
# deleted every channel. SQLite's AUTOINCREMENT records the highest id used in sqlite_sequence;
# an identity column's sequence has a last value once it was used.
_SQL_CHANNEL_IDS_USED = {
    "sqlite": "SELECT 1 FROM sqlite_sequence WHERE name = 'Channel'",
    "postgresql": """SELECT 1 WHERE pg_sequence_last_value(pg_get_serial_sequence('"Channel"', 'id')) IS NOT NULL""",
}


class _Model(peewee.Model):
    class Meta:
        # Unbound: every query names the reader or the writer explicitly.
        database = None


class _Channel(_Model):
    id = peewee.AutoField()
    name = peewee.TextField()
    display_name = peewee.TextField()
    description = peewee.TextField(null=True)
    channel_type = peewee.IntegerField()
    retention_hours = peewee.IntegerField()
    created_by = peewee.IntegerField(null=True)
    created_at = peewee.IntegerField()

    class Meta:
        table_name = "Channel"


class _Message(_Model):
    id = peewee.AutoField()
    channel_id = peewee.IntegerField()
    subchannel_id = peewee.IntegerField(null=True)
    parent_id = peewee.IntegerField(null=True)
    thread_root_id = peewee.IntegerField(null=True)
    author_user_id = peewee.IntegerField(null=True)
    author_nickname = peewee.TextField()
    content = peewee.TextField()
    created_at = peewee.IntegerField()
    edited_at = peewee.IntegerField(null=True)
    deleted_at = peewee.IntegerField(null=True)
    shadowed = peewee.BooleanField(default=False)

    class Meta:
        table_name = "Message"


class _User(_Model):
    id = peewee.AutoField()
    nickname = peewee.TextField()
    user_flags = peewee.IntegerField()
    password_hash = peewee.TextField()
    created_at = peewee.IntegerField()
    last_seen = peewee.IntegerField(null=True)

    class Meta:
        table_name = "User"


class _SSHKey(_Model):
    id = peewee.AutoField()
    user_id = peewee.IntegerField()
    fingerprint = peewee.TextField()
    public_key = peewee.TextField()
    key_type = peewee.TextField()
    label = peewee.TextField(null=True)
    added_at = peewee.IntegerField()
    last_used_at = peewee.IntegerField(null=True)

    class Meta:
        table_name = "SSHKey"


class _Ban(_Model):
    id = peewee.AutoField()
    ban_type = peewee.TextField()
    user_id = peewee.IntegerField(null=True)
    nickname = peewee.TextField(null=True)
    ip_cidr = peewee.TextField(null=True)
    reason = peewee.TextField()
    shadowban = peewee.BooleanField()
    banned_at = peewee.IntegerField()
    banned_until = peewee.IntegerField(null=True)
    banned_by = peewee.TextField()

    class Meta:
        table_name = "Ban"


class _AdminAction(_Model):
    id = peewee.AutoField()
    admin_user_id = peewee.IntegerField()
    admin_nickname = peewee.TextField()
    action = peewee.TextField()
    details = peewee.TextField()
    performed_at = peewee.IntegerField()

    class Meta:
        table_name = "AdminAction"


class _ReadState(_Model):
    user_id = peewee.IntegerField()
    channel_id = peewee.IntegerField()
    subchannel_key = peewee.IntegerField()
    last_read_at = peewee.IntegerField()

    class Meta:
        table_name = "ReadState"
        primary_key = peewee.CompositeKey("user_id", "channel_id", "subchannel_key")


class _DiscoveredServer(_Model):
    id = peewee.AutoField()
    hostname = peewee.TextField()
    port = peewee.IntegerField()
    name = peewee.TextField()
    description = peewee.TextField()
    user_count = peewee.IntegerField()
    max_users = peewee.IntegerField()
    uptime_seconds = peewee.IntegerField()
    is_public = peewee.BooleanField()
    channel_count = peewee.IntegerField()
    last_seen = peewee.IntegerField()
    source_ip = peewee.TextField()
    created_at = peewee.IntegerField()

    class Meta:
        table_name = "DiscoveredServer"


class _NodeRun(_Model):
    id = peewee.AutoField()
    node_id = peewee.TextField()
    started_at = peewee.IntegerField()

    class Meta:
        table_name = "node_runs"


_CHANNEL_COLUMNS = (
    _Channel.id,
    _Channel.name,
    _Channel.display_name,
    _Channel.description,
    _Channel.channel_type,
    _Channel.retention_hours,
    _Channel.created_by,
    _Channel.created_at,
)
_MESSAGE_COLUMNS = (
    _Message.id,
    _Message.channel_id,
    _Message.subchannel_id,
    _Message.parent_id,
    _Message.thread_root_id,
    _Message.author_user_id,
    _Message.author_nickname,
    _Message.content,
    _Message.created_at,
    _Message.edited_at,
    _Message.deleted_at,
    _Message.shadowed,
)
_USER_COLUMNS = (
    _User.id,
    _User.nickname,
    _User.user_flags,
    _User.password_hash,
    _User.created_at,
    _User.last_seen,
)


_SSH_KEY_COLUMNS = (
    _SSHKey.id,
    _SSHKey.user_id,
    _SSHKey.fingerprint,
    _SSHKey.public_key,
    _SSHKey.key_type,
    _SSHKey.label,
    _SSHKey.added_at,
    _SSHKey.last_used_at,
)
_BAN_COLUMNS = (
    _Ban.id,
    _Ban.ban_type,
    _Ban.user_id,
    _Ban.nickname,
    _Ban.ip_cidr,
    _Ban.reason,
    _Ban.shadowban,
    _Ban.banned_at,
    _Ban.banned_until,
    _Ban.banned_by,
)
_DISCOVERED_SERVER_COLUMNS = (
    _DiscoveredServer.id,
    _DiscoveredServer.hostname,
    _DiscoveredServer.port,
    _DiscoveredServer.name,
    _DiscoveredServer.description,
    _DiscoveredServer.user_count,
    _DiscoveredServer.max_users,
    _DiscoveredServer.uptime_seconds,
    _DiscoveredServer.is_public,
    _DiscoveredServer.channel_count,
    _DiscoveredServer.last_seen,
    _DiscoveredServer.source_ip,
    _DiscoveredServer.created_at,
)


def _reply_count() -> peewee.Select:
    reply = _Message.alias("reply")
    return reply.select(fn.COUNT(SQL("*"))).where(
        (reply.parent_id == _Message.id) & reply.deleted_at.is_null() & (reply.shadowed == False)  # noqa: E712
    )


def _visible_to(viewer: Viewer | None) -> peewee.Expression | None:
    """The condition a message must meet to be listed for ``viewer``; None when all are."""
    if viewer is None or viewer.sees_shadowed:
        return None
    if viewer.user_id is not None:
        own = _Message.author_user_id == viewer.user_id
    else:
        own = _Message.author_user_id.is_null() & (_Message.author_nickname == viewer.nickname)
    return (_Message.shadowed == False) | own  # noqa: E712


def _shown_to(viewer: Viewer | None, message: MessageRow) -> bool:
    """_visible_to for a message already read."""
    if not message.shadowed or viewer is None or viewer.sees_shadowed:
        return True
    if viewer.user_id is not None:
        return message.author_user_id == viewer.user_id
    return message.author_user_id is None and message.author_nickname == viewer.nickname


def _select_messages() -> peewee.ModelSelect:
    """Messages of any kind; reply_count is computed for roots only."""
    return _Message.select(*_MESSAGE_COLUMNS, Case(None, [(_Message.parent_id.is_null(), _reply_count())], 0))


def _in_subchannel(subchannel_id: int | None) -> peewee.Expression:
    return _Message.subchannel_id.is_null() if subchannel_id is None else _Message.subchannel_id == subchannel_id


def _subchannel_key(subchannel_id: int | None) -> int:
    return 0 if subchannel_id is None else subchannel_id


def _ban_active(now_ms: int) -> peewee.Expression:
    return _Ban.banned_until.is_null() | (_Ban.banned_until > now_ms)


def _user_ban_matches(user_id: int | None, nickname: str | None) -> peewee.Expression | None:
    """Either identity may be unknown; a ban on any known one matches."""
    matches = []
    if user_id is not None:
        matches.append(_Ban.user_id == user_id)
    if nickname is not None:
        matches.append(_Ban.nickname == nickname)
    if not matches:
        return None
    return (_Ban.ban_type == "user") & reduce(operator.or_, matches)


def _server_at(hostname: str, port: int) -> peewee.Expression:
    return (_DiscoveredServer.hostname == hostname) & (_DiscoveredServer.port == port)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _rows(query: peewee.BaseQuery, db: peewee.Database) -> list[tuple]:
    # Draining the cursor ends SQLite's implicit read transaction at once, so the reader never
    # pins an old WAL snapshot between calls.
    return list(query.tuples().execute(db))


_DRIVER_ERRORS = (peewee.PeeweeException, MaxConnectionsExceeded, sqlite3.Error, psycopg2.Error)


def _first_line(exc: Exception) -> str:
    # libpq explains itself over several lines; the first says what went wrong, and a log line or
    # /health holds one.
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _storage_error(exc: Exception, text: str = "") -> StorageError:
    """What the server is told of a driver's error: a full disk under its own name."""
    driver_error = getattr(exc, "orig", None) or exc  # peewee wraps the driver's error in its own
    # The low byte of an extended result code is its primary code.
    full = (isinstance(driver_error, sqlite3.Error)
            and getattr(driver_error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
            or isinstance(driver_error, psycopg2.errors.DiskFull))
    return (DiskFull if full else StorageError)(text or _first_line(exc))


@contextmanager
def _translated_errors():
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise _storage_error(exc) from exc


def _storage_errors() -> Callable[[Callable], Callable]:
    """For every public Store method: driver errors become StorageError and, on PostgreSQL, the
    call holds a pooled connection from start to end. Calls nest: only the outermost one takes a
    connection and gives it back."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            # Clamped at the door, so that no query of any method sees a number the driver refuses.
            if any(type(value) is int and value > MAX_STORED_INTEGER for value in (*args, *kwargs.values())):
                args = tuple(_storable(value) for value in args)
                kwargs = {name: _storable(value) for name, value in kwargs.items()}
            pool = self._pool
            try:
                if pool is None or not pool.is_closed():
                    return method(self, *args, **kwargs)
                pool.connect()
                try:
                    return method(self, *args, **kwargs)
                finally:
                    pool.close()
            except _DRIVER_ERRORS as exc:
                raise _storage_error(exc) from exc

        return call

    return decorate


def _storable(value):
    return MAX_STORED_INTEGER if type(value) is int and value > MAX_STORED_INTEGER else value


@contextmanager
def _unique(conflict: Exception):
    """Raise ``conflict`` for a write that broke a UNIQUE constraint: the check made before it
    cannot see what another server sharing the database commits in the meantime."""
    try:
        yield
    except peewee.IntegrityError as exc:
        cause = getattr(exc, "orig", None)
        if isinstance(cause, psycopg2.errors.UniqueViolation) or (
            isinstance(cause, sqlite3.IntegrityError) and cause.sqlite_errorcode == sqlite3.SQLITE_CONSTRAINT_UNIQUE
        ):
            raise conflict from exc
        raise


class _ConnectionPool(PooledPostgresqlDatabase):
    """peewee's bounded pool, made to notice dead connections without asking the server, and to
    open a connection without holding up every other check-out meanwhile."""

    def __init__(self, url: str, **settings):
        super().__init__(url, **settings)
        # Connections being opened: they count against max_connections as those checked out do.
        self._opening = 0
        # peewee's connect() holds this lock while it opens a connection, so callers of a server
        # that never answers failed one after the other, 5 s apart. All it guards here is the
        # caller's own connection, a greenlet-local; the pool's own lock guards what is shared.
        self._lock = nullcontext()

    def _connect(self):
        # peewee's opens a new connection under the pool's lock, with the same effect as above.
        with self._pool_lock:
            idle = self._take_idle()
            if idle is not None:
                return idle
            if len(self._in_use) + self._opening >= self._max_connections:
                raise MaxConnectionsExceeded("Exceeded maximum connections.")
            self._opening += 1
        try:
            conn = self._open_connection()
        except BaseException:
            with self._pool_lock:
                self._opening -= 1
                # A caller waiting for a free place takes this one now, rather than a second later.
                self._pool_available.notify()
            raise
        with self._pool_lock:
            self._opening -= 1
            now = time.time()
            self._in_use[self.conn_key(conn)] = PoolConnection(now, conn, now)
        return conn

    def _take_idle(self):
        """The oldest idle connection still open, checked out; None when there is none."""
        while self._connections:
            opened_at, _, conn = heapq.heappop(self._connections)
            if not self._is_closed(conn):
                self._in_use[self.conn_key(conn)] = PoolConnection(opened_at, conn, time.time())
                return conn
        return None

    def _open_connection(self):
        # PostgresqlDatabase._connect, with the server's host name looked up beforehand.
        conn = self._adapter.connect(self, **{**self.connect_params, **_looked_up_host(self.database)})
        conn.autocommit = True
        return conn

    def _is_closed(self, conn) -> bool:
        # Asked at every check-out, under the pool's lock. peewee asks the server (SELECT 1): a
        # round trip for every call, and check-outs waiting on each other meanwhile. An idle
        # connection is sent nothing, so one with anything to read was closed by its server: a
        # shutdown's FATAL message, or the end of the stream.
        if conn.closed:
            return True
        # The C socket module, which gevent leaves alone: this peek never waits.
        probe = _socket.socket(fileno=conn.fileno())
        try:
            probe.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            probe.detach()
        return True

    def rollback(self) -> None:
        # A connection closed under a transaction took it along. Trying anyway would raise, and hide
        # why the connection went: its server's error, or the GreenletExit of a killed greenlet.
        conn = self._state.conn
        if conn is None or not conn.closed:
            super().rollback()


def _looked_up_host(dsn: str) -> dict[str, str]:
    """libpq's host and hostaddr settings for the server of ``dsn``, its host name looked up here;
    none when there is no name to look up, or the URL gives addresses or several hosts itself."""
    given = psycopg2.extensions.parse_dsn(dsn)
    host = given.get("host", "")
    # A host starting with "/" or "@" is a Unix socket's directory or abstract name.
    if "hostaddr" in given or not host or "," in host or host.startswith(("/", "@")) or _is_ip_address(host):
        return {}
    try:
        # libpq's own lookup blocks the hub while DNS stalls. Under scd's monkey-patching this is
        # gevent's, which waits in a thread and leaves the hub to the other greenlets.
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        # libpq's words for it.
        raise psycopg2.OperationalError(
            f'could not translate host name "{host}" to address: {exc.strerror or exc}'
        ) from exc
    addresses = list(dict.fromkeys(address[4][0] for address in found))
    # The name once per address: libpq tries each in turn, as it would the addresses it found, and
    # still checks the server's certificate against the name and names it in its errors.
    return {"host": ",".join([host] * len(addresses)), "hostaddr": ",".join(addresses)}


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _postgresql_url(target: os.PathLike | str) -> str | None:
    """The URL in the form peewee passes to libpq whole, or None for an SQLite file."""
    if isinstance(target, str) and target.startswith(POSTGRESQL_SCHEMES):
        return "postgresql://" + target.partition("://")[2]
    return None


class _SqliteDatabase(peewee.SqliteDatabase):
    def rollback(self) -> None:
        # SQLite has rolled the transaction back itself when its COMMIT failed (a full disk does
        # that): peewee's ROLLBACK would fail then, its error hiding why the commit failed.
        conn = self._state.conn
        if conn is not None and conn.in_transaction:
            super().rollback()


def _open(path: Path, lock_type: str | None = None) -> peewee.SqliteDatabase:
    # thread_safe=False: under gevent's monkey-patching, thread-locals are greenlet-locals and
    # peewee would open one connection per greenlet; we want exactly one per database object.
    db = _SqliteDatabase(
        str(path),
        pragmas=_PRAGMAS,
        thread_safe=False,
        check_same_thread=False,
        autoconnect=False,
        lock_type=lock_type,
    )
    db.connect()
    return db


def _lock_channels(cursor, posts: Sequence[NewPost]) -> dict[int, bool]:
    """PostgreSQL: lock the channels of a batch of posts for its transaction; says which exist."""
    wanted = sorted({post.channel_id for post in posts})
    cursor.execute(_SQL_LOCK_CHANNELS, (wanted,))
    found = {row[0] for row in cursor.fetchall()}
    return {channel_id: channel_id in found for channel_id in wanted}


def _migrate(db: peewee.Database) -> list[list[tuple[int, str]]]:
    """Bring the schema of a SQLite or PostgreSQL database up to this server's version; returns the
    registered nicknames alike but for case, as (user id, nickname) groups (see _fold_nicknames)."""
    postgres = isinstance(db, peewee.PostgresqlDatabase)
    dialect = "postgresql" if postgres else "sqlite"
    with db.atomic():
        if postgres:
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        version = _schema_version(db, postgres)
        if version > len(_MIGRATIONS):
            raise StorageError(f"database schema version {version} is newer than this server ({len(_MIGRATIONS)})")
        for number in range(version + 1, len(_MIGRATIONS) + 1):
            for statement in _migration(dialect, number):
                db.execute_sql(statement)
        if version < len(_MIGRATIONS):
            _set_schema_version(db, postgres, len(_MIGRATIONS))
        return _fold_nicknames(db)


def _fold_nicknames(db: peewee.Database) -> list[list[tuple[int, str]]]:
    groups: dict[str, list[tuple[int, str]]] = {}
    for user_id, nickname in db.execute_sql(_SQL_NICKNAME_COLLISIONS).fetchall():
        groups.setdefault(nickname.lower(), []).append((user_id, nickname))
    if not groups:
        for statement in _SQL_UNIQUE_FOLDED_NICKNAMES:
            db.execute_sql(statement)
    return list(groups.values())


def _schema_version(db: peewee.Database, postgres: bool) -> int:
    if not postgres:
        return db.execute_sql("PRAGMA user_version").fetchone()[0]
    # PostgreSQL has no user_version: a one-row table holds it, made with the first migration.
    db.execute_sql('CREATE TABLE IF NOT EXISTS "SchemaVersion" (version BIGINT NOT NULL)')
    row = db.execute_sql('SELECT version FROM "SchemaVersion"').fetchone()
    return row[0] if row else 0


def _set_schema_version(db: peewee.Database, postgres: bool, version: int) -> None:
    if not postgres:
        db.execute_sql(f"PRAGMA user_version = {version}")
        return
    db.execute_sql('DELETE FROM "SchemaVersion"')
    db.execute_sql('INSERT INTO "SchemaVersion" (version) VALUES (%s)', (version,))


class Store:
    def __init__(self, target: os.PathLike | str):
        """``target``: an SQLite database file, or a postgresql:// (or postgres://) URL."""
        self._channels_version = 0
        self._channel_cache: tuple[int, dict[int, ChannelRow]] | None = None
        url = _postgresql_url(target)
        # Where the data lives, fit for a log line.
        self.location = str(target) if url is None else masked_url(str(target))
        if url is None:
            self._open_sqlite(Path(target))
        else:
            self._open_postgresql(url)

    def _open_sqlite(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.dialect = "sqlite"
        self._path = path
        self._pool: _ConnectionPool | None = None
        self._posts = _SQLITE_POSTS
        with _translated_errors():
            # IMMEDIATE: take the write lock when the transaction starts, so a write transaction
            # never fails half-way on a lock upgrade.
            self._writer = _open(path, lock_type="IMMEDIATE")
            try:
                self.nickname_collisions = _migrate(self._writer)
                self._reader = _open(path)
            except BaseException:
                self._writer.close()
                raise

    def _open_postgresql(self, url: str) -> None:
        self.dialect = "postgresql"
        self._url = url
        # autoconnect off: a query outside a call's connection is a bug, and fails loudly.
        self._pool = _ConnectionPool(
            url, max_connections=_POOL_CONNECTIONS, timeout=_POOL_WAIT_SECONDS, autoconnect=False
        )
        self._reader = self._writer = self._pool
        self._posts = _POSTGRESQL_POSTS
        try:
            with self._pool.connection_context():
                self.nickname_collisions = _migrate(self._pool)
        except BaseException as exc:
            self._pool.close_all()
            if isinstance(exc, _DRIVER_ERRORS):
                # Under gevent, libpq's reason leaves out which server it could not reach.
                raise _storage_error(exc, f"{self.location}: {_first_line(exc)}") from exc
            raise

    def close(self) -> None:
        with _translated_errors():
            if self._pool is not None:
                self._pool.close_all()
                return
            self._reader.close()
            self._writer.close()

    # -- reads: hub thread, reader connection ------------------------------------------------

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

    @_storage_errors()
    def _read_channels(self) -> dict[int, ChannelRow]:
        version = self._channels_version
        query = _Channel.select(*_CHANNEL_COLUMNS).order_by(_Channel.name)
        channels = {row[0]: ChannelRow(*row) for row in _rows(query, self._reader)}
        # A write committed while this read ran leaves the version moved on: the next call reads again.
        self._channel_cache = (version, channels)
        return channels

    @_storage_errors()
    def get_message(self, message_id: int) -> MessageRow | None:
        return self._message(self._reader, message_id)

    @_storage_errors()
    def list_root_messages(
        self,
        channel_id: int,
        subchannel_id: int | None,
        limit: int,
        before_id: int | None,
        after_id: int | None,
        viewer: Viewer | None = None,
    ) -> list[MessageRow]:
        """A page of roots; ``viewer`` None lists shadowed posts too (callers that act for nobody)."""
        limit = min(limit, _MAX_ROOT_PAGE)
        if limit <= 0:
            return []
        query = _Message.select(*_MESSAGE_COLUMNS, _reply_count()).where(
            (_Message.channel_id == channel_id)
            & _Message.parent_id.is_null()
            & _in_subchannel(subchannel_id)
            & _Message.deleted_at.is_null()
        )
        visible = _visible_to(viewer)
        if visible is not None:
            query = query.where(visible)
        newest_first = after_id is None or before_id is not None
        if before_id is not None:
            query = query.where(_Message.id < before_id)
        elif after_id is not None:
            query = query.where(_Message.id > after_id)
        query = query.order_by(_Message.id.desc() if newest_first else _Message.id).limit(limit)
        rows = [MessageRow(*row) for row in _rows(query, self._reader)]
        if newest_first:
            rows.reverse()
        return rows

    @_storage_errors()
    def list_thread(self, parent_id: int, limit: int, before_id: int | None, after_id: int | None,
                    viewer: Viewer | None = None) -> list[MessageRow]:
        found = _rows(_Message.select(_Message.thread_root_id).where(_Message.id == parent_id), self._reader)
        if not found:
            return []
        # One indexed query fetches the whole thread; the tree walk happens here.
        thread = _Message.select(*_MESSAGE_COLUMNS).where(_Message.thread_root_id == found[0][0])
        children: dict[int, list[MessageRow]] = {}
        for row in _rows(thread.order_by(_Message.id), self._reader):
            message = MessageRow(*row, 0)
            children.setdefault(message.parent_id, []).append(message)
        result: list[MessageRow] = []
        stack = list(reversed(children.get(parent_id, ())))
        while stack:
            message = stack.pop()
            stack.extend(reversed(children.get(message.id, ())))
            # A deleted or shadowed reply is hidden, its answers stay visible.
            if message.deleted_at is not None or not _shown_to(viewer, message):
                continue
            if before_id is not None and message.id >= before_id:
                continue
            if after_id is not None and message.id <= after_id:
                continue
            result.append(message)
            if len(result) == limit:
                break
        return result

    @_storage_errors()
    def get_user_by_nickname(self, nickname: str) -> UserRow | None:
        rows = _rows(_User.select(*_USER_COLUMNS).where(_User.nickname == nickname), self._reader)
        return UserRow(*rows[0]) if rows else None

    @_storage_errors()
    def get_user_by_folded_nickname(self, nickname: str) -> UserRow | None:
        """The account whose nickname is ``nickname`` regardless of case. Where a database from before
        holds several (see _fold_nicknames): the one spelled exactly so, else the oldest."""
        query = (_User.select(*_USER_COLUMNS).where(fn.lower(_User.nickname) == fn.lower(nickname))
                 .order_by((_User.nickname == nickname).desc(), _User.id).limit(1))
        rows = _rows(query, self._reader)
        return UserRow(*rows[0]) if rows else None

    @_storage_errors()
    def get_user(self, user_id: int) -> UserRow | None:
        return self._user(self._reader, user_id)

    @_storage_errors()
    def existing_user_ids(self, user_ids: Iterable[int]) -> set[int]:
        """Which of these accounts still exist."""
        return self._existing_ids(_User.id, user_ids)

    @_storage_errors()
    def existing_message_ids(self, message_ids: Iterable[int]) -> set[int]:
        """Which of these messages still exist (soft-deleted ones do)."""
        return self._existing_ids(_Message.id, message_ids)

    def _existing_ids(self, column: peewee.Field, ids: Iterable[int]) -> set[int]:
        wanted = sorted(ids)
        found: set[int] = set()
        # In slices: SQLite caps the parameters of one statement.
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            query = column.model.select(column).where(column.in_(wanted[start:start + _IDS_PER_QUERY]))
            found.update(row[0] for row in _rows(query, self._reader))
        return found

    @_storage_errors()
    def list_users(self, limit: int) -> list[UserRow]:
        if limit <= 0:
            return []
        query = _User.select(*_USER_COLUMNS).order_by(_User.nickname).limit(limit)
        return [UserRow(*row) for row in _rows(query, self._reader)]

    @_storage_errors()
    def list_ssh_keys(self, user_id: int) -> list[SSHKeyRow]:
        query = _SSHKey.select(*_SSH_KEY_COLUMNS).where(_SSHKey.user_id == user_id).order_by(_SSHKey.id)
        return [SSHKeyRow(*row) for row in _rows(query, self._reader)]

    @_storage_errors()
    def get_ssh_key(self, fingerprint: str) -> SSHKeyRow | None:
        rows = _rows(_SSHKey.select(*_SSH_KEY_COLUMNS).where(_SSHKey.fingerprint == fingerprint), self._reader)
        return SSHKeyRow(*rows[0]) if rows else None

    @_storage_errors()
    def list_bans(self, include_expired: bool, now_ms: int) -> list[BanRow]:
        query = _Ban.select(*_BAN_COLUMNS).order_by(_Ban.id)
        if not include_expired:
            query = query.where(_ban_active(now_ms))
        return [BanRow(*row) for row in _rows(query, self._reader)]

    @_storage_errors()
    def active_user_ban(self, user_id: int | None, nickname: str | None, now_ms: int) -> BanRow | None:
        matches = _user_ban_matches(user_id, nickname)
        if matches is None:
            return None
        query = _Ban.select(*_BAN_COLUMNS).where(matches & _ban_active(now_ms)).order_by(_Ban.id.desc()).limit(1)
        rows = _rows(query, self._reader)
        return BanRow(*rows[0]) if rows else None

    @_storage_errors()
    def active_ip_bans(self, now_ms: int) -> list[BanRow]:
        query = _Ban.select(*_BAN_COLUMNS).where((_Ban.ban_type == "ip") & _ban_active(now_ms)).order_by(_Ban.id)
        return [BanRow(*row) for row in _rows(query, self._reader)]

    @_storage_errors()
    def read_state(self, user_id: int, channel_id: int, subchannel_id: int | None) -> int:
        query = _ReadState.select(_ReadState.last_read_at).where(
            (_ReadState.user_id == user_id)
            & (_ReadState.channel_id == channel_id)
            & (_ReadState.subchannel_key == _subchannel_key(subchannel_id))
        )
        rows = _rows(query, self._reader)
        return rows[0][0] if rows else 0

    @_storage_errors()
    def count_unread_in_channel(self, channel_id: int, subchannel_id: int | None, since_ms: int) -> int:
        """Roots and replies; None counts only the messages outside every subchannel."""
        query = _Message.select(fn.COUNT(SQL("*"))).where(
            (_Message.channel_id == channel_id)
            & _in_subchannel(subchannel_id)
            & (_Message.created_at > since_ms)
            & _Message.deleted_at.is_null()
            & (_Message.shadowed == False)  # noqa: E712
        )
        return _rows(query, self._reader)[0][0]

    @_storage_errors()
    def count_unread_in_thread(self, thread_id: int, since_ms: int) -> int:
        """The root itself counts, as do replies at any depth."""
        query = _Message.select(fn.COUNT(SQL("*"))).where(
            (_Message.thread_root_id == thread_id)
            & (_Message.created_at > since_ms)
            & _Message.deleted_at.is_null()
            & (_Message.shadowed == False)  # noqa: E712
        )
        return _rows(query, self._reader)[0][0]

    @_storage_errors()
    def list_discovered_servers(self, limit: int | None, seen_since_ms: int) -> list[DiscoveredServerRow]:
        """Servers heard from at ``seen_since_ms`` or later, the most recently heard from first;
        a limit of None lists them all."""
        if limit is not None and limit <= 0:
            return []
        query = (
            _DiscoveredServer.select(*_DISCOVERED_SERVER_COLUMNS)
            .where(_DiscoveredServer.last_seen >= seen_since_ms)
            .order_by(_DiscoveredServer.last_seen.desc(), _DiscoveredServer.id.desc())
            .limit(limit)
        )
        return [DiscoveredServerRow(*row) for row in _rows(query, self._reader)]

    def database_problem(self, timeout_seconds: float) -> str | None:
        """What is wrong with the database, or None: a real query on a fresh connection.

        A fresh connection notices what the long-lived ones may not (a deleted, replaced or
        corrupted file; a server that went away); the timeout bounds the wait for a lock or a
        slow server. Safe to call from any thread.
        """
        if self._pool is not None:
            return self._postgresql_problem(timeout_seconds)
        try:
            probe = sqlite3.connect(f"file:{self._path}?mode=rw", uri=True, timeout=timeout_seconds)
            try:
                probe.execute("SELECT COUNT(*) FROM Channel").fetchone()
            finally:
                probe.close()
        except sqlite3.Error as exc:
            return str(exc)
        return None

    def _postgresql_problem(self, timeout_seconds: float) -> str | None:
        # libpq counts connect_timeout in whole seconds, and takes less than 2 as 2.
        connect_seconds = max(2, round(timeout_seconds))
        own_options = psycopg2.extensions.parse_dsn(self._url).get("options", "")
        statement_timeout = f"-c statement_timeout={int(timeout_seconds * 1000)}"
        try:
            probe = psycopg2.connect(
                self._url, connect_timeout=connect_seconds, options=f"{own_options} {statement_timeout}".strip()
            )
            try:
                with probe.cursor() as cursor:
                    cursor.execute('SELECT COUNT(*) FROM "Channel"')
                    cursor.fetchone()
            finally:
                probe.close()
        except psycopg2.Error as exc:
            return _first_line(exc)
        return None

    # -- writes: writer thread, writer connection --------------------------------------------

    @_storage_errors()
    def seed_channels(self, seeds: Sequence[tuple[str, str]], default_retention_hours: int) -> None:
        with self._writer.atomic():
            if self._writer.execute_sql(_SQL_CHANNEL_IDS_USED[self.dialect]).fetchall():
                return
            now = _now_ms()
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
                _Channel.insert(
                    name=name,
                    display_name=display_name,
                    description=description,
                    channel_type=channel_type,
                    retention_hours=retention_hours,
                    created_by=None,
                    created_at=now,
                ).on_conflict_ignore().execute(self._writer)
        self.channels_changed()

    @_storage_errors()
    def create_channel(
        self,
        name: str,
        display_name: str,
        description: str | None,
        channel_type: int,
        retention_hours: int,
        created_by: int | None,
    ) -> ChannelRow:
        with _unique(ChannelExists(name)), self._writer.atomic():
            if _rows(_Channel.select(_Channel.id).where(_Channel.name == name), self._writer):
                raise ChannelExists(name)
            now = _now_ms()
            channel_id = _Channel.insert(
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

    @_storage_errors()
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

    @_storage_errors()
    def insert_posts(self, posts: Sequence[NewPost]) -> list[MessageRow | PostRejected]:
        """Insert a batch in a new write transaction, left open for ``commit_posts``.

        Inserting is quick work in SQLite's page cache and the commit is what waits for the
        disk, so the two can run on different threads. On PostgreSQL the transaction belongs to
        the call's connection: insert and commit there within one ``post_messages``. On failure
        the transaction is gone.
        """
        db = self._writer.connection()
        cursor = db.cursor()
        cursor.execute(self._posts.begin)
        try:
            now = _now_ms()
            channels = {} if self._pool is None else _lock_channels(cursor, posts)
            return [self._insert_post(cursor, post, now, channels) for post in posts]
        except BaseException:
            self._roll_back(db)
            raise

    @_storage_errors()
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
        except _DRIVER_ERRORS:
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
        sql = self._posts
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

    @_storage_errors()
    def edit_message(self, message_id: int, content: str, shadowed: bool = False) -> MessageRow | None:
        """``shadowed``: edited under a shadowban, which hides the message from then on."""
        with self._writer.atomic():
            message = self._message(self._writer, message_id)
            if message is None or message.deleted_at is not None:
                return None
            now = _now_ms()
            shadowed = message.shadowed or shadowed
            _Message.update(content=content, edited_at=now, shadowed=shadowed).where(
                _Message.id == message_id
            ).execute(self._writer)
        return replace(message, content=content, edited_at=now, shadowed=shadowed)

    @_storage_errors()
    def soft_delete_message(self, message_id: int) -> MessageRow | None:
        with self._writer.atomic():
            message = self._message(self._writer, message_id)
            if message is None or message.deleted_at is not None:
                return None
            now = _now_ms()
            _Message.update(content="", deleted_at=now).where(_Message.id == message_id).execute(self._writer)
        # The caller still needs the original content, e.g. for moderation logs.
        return replace(message, deleted_at=now)

    @_storage_errors()
    def delete_expired_messages(self, now_ms: int) -> Expired:
        root = _Message.alias("root")
        retention_ms = _Channel.select(_Channel.retention_hours * _MS_PER_HOUR).where(_Channel.id == root.channel_id)
        # The shortest retention gives a constant bound, so only old roots are read, through the
        # created_at index; the per-channel comparison then refines it.
        oldest_kept = _Channel.select(now_ms - fn.MIN(_Channel.retention_hours) * _MS_PER_HOUR)
        expired_roots = root.select(root.channel_id, root.id).where(
            root.parent_id.is_null() & (root.created_at < oldest_kept) & (root.created_at + retention_ms < now_ms)
        )
        with self._writer.atomic():
            threads = _rows(expired_roots, self._writer)
            if not threads:
                return Expired(0, [])
            root_ids = [root_id for _, root_id in threads]
            deleted = _Message.delete().where(_Message.thread_root_id.in_(root_ids)).execute(self._writer)
        return Expired(deleted, threads)

    @_storage_errors()
    def delete_channel(self, channel_id: int) -> ChannelRow | None:
        """The channel's messages and read state go with it, through their foreign keys."""
        with self._writer.atomic():
            rows = _rows(_Channel.select(*_CHANNEL_COLUMNS).where(_Channel.id == channel_id), self._writer)
            if not rows:
                return None
            _Channel.delete().where(_Channel.id == channel_id).execute(self._writer)
        self.channels_changed()
        return ChannelRow(*rows[0])

    @_storage_errors()
    def create_user(self, nickname: str, password_hash: str, user_flags: int) -> UserRow:
        with _unique(NicknameTaken(nickname)), self._writer.atomic():
            self._check_nickname_free(nickname, None)
            now = _now_ms()
            user_id = _User.insert(
                nickname=nickname,
                user_flags=user_flags,
                password_hash=password_hash,
                created_at=now,
                last_seen=now,
            ).execute(self._writer)
        return UserRow(user_id, nickname, user_flags, password_hash, now, now)

    @_storage_errors()
    def claim_account(self, nickname: str, password_hash: str, user_flags: int) -> tuple[UserRow, bool, int]:
        """The account named exactly ``nickname`` with this password: created, or taken over, its password
        replaced, ``user_flags`` added and its SSH keys removed, so that the password is the one way in.
        Returns the account, whether it is new and how many keys went; NicknameTaken when an account
        holds the name in another case."""
        with _unique(NicknameTaken(nickname)), self._writer.atomic():
            rows = _rows(_User.select(*_USER_COLUMNS).where(_User.nickname == nickname), self._writer)
            if not rows:
                return self.create_user(nickname, password_hash, user_flags), True, 0
            user = UserRow(*rows[0])
            removed = _SSHKey.delete().where(_SSHKey.user_id == user.id).execute(self._writer)
            _User.update(password_hash=password_hash, user_flags=_User.user_flags.bin_or(user_flags)).where(
                _User.id == user.id).execute(self._writer)
        return replace(user, password_hash=password_hash, user_flags=user.user_flags | user_flags), False, removed

    @_storage_errors()
    def set_password(self, user_id: int, password_hash: str) -> None:
        """An empty hash leaves the account reachable by SSH key only."""
        _User.update(password_hash=password_hash).where(_User.id == user_id).execute(self._writer)

    @_storage_errors()
    def rename_user(self, user_id: int, nickname: str) -> None:
        with _unique(NicknameTaken(nickname)), self._writer.atomic():
            self._check_nickname_free(nickname, user_id)
            _User.update(nickname=nickname).where(_User.id == user_id).execute(self._writer)

    @_storage_errors()
    def assign_flag(self, flag: int, nicknames: Sequence[str]) -> None:
        """Exactly the named users carry ``flag`` afterwards (e.g. admin rights from the configuration)."""
        named = _User.nickname.in_(list(nicknames))
        with self._writer.atomic():
            _User.update(user_flags=_User.user_flags.bin_or(flag)).where(named).execute(self._writer)
            _User.update(user_flags=_User.user_flags.bin_and(~flag)).where(~named).execute(self._writer)

    @_storage_errors()
    def touch_user(self, user_id: int, now_ms: int) -> None:
        _User.update(last_seen=now_ms).where(_User.id == user_id).execute(self._writer)

    @_storage_errors()
    def delete_user(self, user_id: int) -> UserRow | None:
        """Keys and read state go through their foreign keys; bans lose the id and stay as history."""
        with self._writer.atomic():
            user = self._user(self._writer, user_id)
            if user is None:
                return None
            # author_nickname is left as posted: the messages stay readable, just no longer linked.
            _Message.update(author_user_id=None).where(_Message.author_user_id == user_id).execute(self._writer)
            _User.delete().where(_User.id == user_id).execute(self._writer)
        return user

    def _check_nickname_free(self, nickname: str, owner_id: int | None) -> None:
        """Within the write's transaction: no other account holds ``nickname`` in any case."""
        if self.dialect == "postgresql":
            self._writer.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_NICKNAMES_LOCK_KEY,))
        query = _User.select(_User.id).where(fn.lower(_User.nickname) == fn.lower(nickname))
        if owner_id is not None:
            query = query.where(_User.id != owner_id)
        if _rows(query, self._writer):
            raise NicknameTaken(nickname)

    @_storage_errors()
    def add_ssh_key(
        self, user_id: int, fingerprint: str, public_key: str, key_type: str, label: str | None
    ) -> SSHKeyRow:
        with _unique(SSHKeyExists(fingerprint)), self._writer.atomic():
            if _rows(_SSHKey.select(_SSHKey.id).where(_SSHKey.fingerprint == fingerprint), self._writer):
                raise SSHKeyExists(fingerprint)
            now = _now_ms()
            key_id = _SSHKey.insert(
                user_id=user_id,
                fingerprint=fingerprint,
                public_key=public_key,
                key_type=key_type,
                label=label,
                added_at=now,
            ).execute(self._writer)
        return SSHKeyRow(key_id, user_id, fingerprint, public_key, key_type, label, now, None)

    @_storage_errors()
    def relabel_ssh_key(self, user_id: int, key_id: int, label: str | None) -> bool:
        query = _SSHKey.update(label=label).where((_SSHKey.id == key_id) & (_SSHKey.user_id == user_id))
        return query.execute(self._writer) > 0

    @_storage_errors()
    def delete_ssh_key(self, user_id: int, key_id: int) -> bool:
        query = _SSHKey.delete().where((_SSHKey.id == key_id) & (_SSHKey.user_id == user_id))
        return query.execute(self._writer) > 0

    @_storage_errors()
    def touch_ssh_key(self, fingerprint: str, now_ms: int) -> None:
        _SSHKey.update(last_used_at=now_ms).where(_SSHKey.fingerprint == fingerprint).execute(self._writer)

    @_storage_errors()
    def add_user_ban(
        self,
        user_id: int | None,
        nickname: str | None,
        reason: str,
        shadowban: bool,
        banned_until: int | None,
        banned_by: str,
    ) -> BanRow:
        return self._add_ban(
            ban_type="user",
            user_id=user_id,
            nickname=nickname,
            ip_cidr=None,
            reason=reason,
            shadowban=shadowban,
            banned_until=banned_until,
            banned_by=banned_by,
        )

    @_storage_errors()
    def add_ip_ban(self, ip_cidr: str, reason: str, banned_until: int | None, banned_by: str) -> BanRow:
        return self._add_ban(
            ban_type="ip",
            user_id=None,
            nickname=None,
            ip_cidr=ip_cidr,
            reason=reason,
            shadowban=False,
            banned_until=banned_until,
            banned_by=banned_by,
        )

    def _add_ban(self, **fields) -> BanRow:
        fields["banned_at"] = _now_ms()
        ban_id = _Ban.insert(**fields).execute(self._writer)
        return BanRow(id=ban_id, **fields)

    @_storage_errors()
    def remove_user_bans(self, user_id: int | None, nickname: str | None, now_ms: int) -> int:
        """Expired bans stay as history."""
        matches = _user_ban_matches(user_id, nickname)
        if matches is None:
            return 0
        return _Ban.delete().where(matches & _ban_active(now_ms)).execute(self._writer)

    @_storage_errors()
    def remove_ip_bans(self, ip_cidr: str, now_ms: int) -> int:
        """Expired bans stay as history."""
        query = _Ban.delete().where((_Ban.ban_type == "ip") & (_Ban.ip_cidr == ip_cidr) & _ban_active(now_ms))
        return query.execute(self._writer)

    @_storage_errors()
    def log_admin_action(self, admin_user_id: int, admin_nickname: str, action: str, details: str) -> None:
        _AdminAction.insert(
            admin_user_id=admin_user_id,
            admin_nickname=admin_nickname,
            action=action,
            details=details,
            performed_at=_now_ms(),
        ).execute(self._writer)

    @_storage_errors()
    def claim_node_serial(self, node_id: str) -> int:
        """A number this database never handed out before, for a run of node ``node_id``."""
        return _NodeRun.insert(node_id=node_id, started_at=_now_ms()).execute(self._writer)

    @_storage_errors()
    def set_read_state(self, user_id: int, channel_id: int, subchannel_id: int | None, timestamp_ms: int) -> None:
        _ReadState.insert(
            user_id=user_id,
            channel_id=channel_id,
            subchannel_key=_subchannel_key(subchannel_id),
            last_read_at=timestamp_ms,
        ).on_conflict(
            conflict_target=[_ReadState.user_id, _ReadState.channel_id, _ReadState.subchannel_key],
            update={_ReadState.last_read_at: EXCLUDED.last_read_at},
        ).execute(self._writer)

    @_storage_errors()
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
        _DiscoveredServer.insert(
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
            conflict_target=[_DiscoveredServer.hostname, _DiscoveredServer.port],
            update={
                column: getattr(EXCLUDED, column.name)
                for column in (
                    _DiscoveredServer.name,
                    _DiscoveredServer.description,
                    _DiscoveredServer.max_users,
                    _DiscoveredServer.is_public,
                    _DiscoveredServer.channel_count,
                    _DiscoveredServer.last_seen,
                    _DiscoveredServer.source_ip,
                )
            },
        ).execute(self._writer)

    @_storage_errors()
    def record_heartbeat(
        self, hostname: str, port: int, user_count: int, uptime_seconds: int, channel_count: int, now_ms: int
    ) -> bool:
        """False when the server is not listed."""
        query = _DiscoveredServer.update(
            user_count=user_count, uptime_seconds=uptime_seconds, channel_count=channel_count, last_seen=now_ms
        ).where(_server_at(hostname, port))
        return query.execute(self._writer) > 0

    @_storage_errors()
    def mark_server_seen(self, hostname: str, port: int, now_ms: int) -> bool:
        """A passed health check: the server stays listed. False when it is not listed."""
        query = _DiscoveredServer.update(last_seen=now_ms).where(_server_at(hostname, port))
        return query.execute(self._writer) > 0

    @_storage_errors()
    def remove_server(self, hostname: str, port: int) -> bool:
        return _DiscoveredServer.delete().where(_server_at(hostname, port)).execute(self._writer) > 0

    @_storage_errors()
    def remove_stale_servers(self, seen_before_ms: int) -> list[DiscoveredServerRow]:
        """Remove the servers last heard from before ``seen_before_ms``; returns them."""
        stale = _DiscoveredServer.last_seen < seen_before_ms
        with self._writer.atomic():
            rows = _rows(_DiscoveredServer.select(*_DISCOVERED_SERVER_COLUMNS).where(stale), self._writer)
            if rows:
                _DiscoveredServer.delete().where(stale).execute(self._writer)
        return [DiscoveredServerRow(*row) for row in rows]

    # -- shared by both connections ----------------------------------------------------------

    @staticmethod
    def _message(db: peewee.Database, message_id: int) -> MessageRow | None:
        rows = _rows(_select_messages().where(_Message.id == message_id), db)
        return MessageRow(*rows[0]) if rows else None

    @staticmethod
    def _user(db: peewee.Database, user_id: int) -> UserRow | None:
        rows = _rows(_User.select(*_USER_COLUMNS).where(_User.id == user_id), db)
        return UserRow(*rows[0]) if rows else None
