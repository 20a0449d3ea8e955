"""Connections to the database (SQLite's reader and writer, PostgreSQL's pool) and the drivers'
errors in the store's terms."""

import _socket
import functools
import heapq
import ipaddress
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import peewee
import psycopg2
import psycopg2.errors
import psycopg2.extensions
from playhouse.pool import MaxConnectionsExceeded, PoolConnection, PooledPostgresqlDatabase

from ..config import POSTGRESQL_SCHEMES
from .rows import MAX_STORED_INTEGER, DiskFull, StorageError

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


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


def in_dialect(sql: str, dialect: str) -> str:
    """Literal SQL written with SQLite's "?" placeholders, as ``dialect``'s driver takes them."""
    return sql if dialect == "sqlite" else sql.replace("?", "%s")


def all_rows(query: peewee.BaseQuery, db: peewee.Database) -> list[tuple]:
    # Draining the cursor ends SQLite's implicit read transaction at once, so the reader never
    # pins an old WAL snapshot between calls.
    return list(query.tuples().execute(db))


DRIVER_ERRORS = (peewee.PeeweeException, MaxConnectionsExceeded, sqlite3.Error, psycopg2.Error)


def first_line(exc: Exception) -> str:
    # libpq explains itself over several lines; the first says what went wrong, and a log line or
    # /health holds one.
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def storage_error(exc: Exception, text: str = "") -> StorageError:
    """What the server is told of a driver's error: a full disk under its own name."""
    driver_error = getattr(exc, "orig", None) or exc  # peewee wraps the driver's error in its own
    # The low byte of an extended result code is its primary code.
    full = (isinstance(driver_error, sqlite3.Error)
            and getattr(driver_error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
            or isinstance(driver_error, psycopg2.errors.DiskFull))
    return (DiskFull if full else StorageError)(text or first_line(exc))


@contextmanager
def translated_errors():
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise storage_error(exc) from exc


def storage_errors() -> Callable[[Callable], Callable]:
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
            except DRIVER_ERRORS as exc:
                raise storage_error(exc) from exc

        return call

    return decorate


def _storable(value):
    return MAX_STORED_INTEGER if type(value) is int and value > MAX_STORED_INTEGER else value


@contextmanager
def duplicate_raises(conflict: Exception):
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


class ConnectionPool(PooledPostgresqlDatabase):
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


def open_pool(url: str) -> ConnectionPool:
    # autoconnect off: a query outside a call's connection is a bug, and fails loudly.
    return ConnectionPool(url, max_connections=_POOL_CONNECTIONS, timeout=_POOL_WAIT_SECONDS, autoconnect=False)


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
    # An IPv4 or IPv6 address's first item is the host; only those families have ports.
    addresses = list(dict.fromkeys(str(address[4][0]) for address in found))
    # The name once per address: libpq tries each in turn, as it would the addresses it found, and
    # still checks the server's certificate against the name and names it in its errors.
    return {"host": ",".join([host] * len(addresses)), "hostaddr": ",".join(addresses)}


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def postgresql_url(target: os.PathLike | str) -> str | None:
    """The URL in the form peewee passes to libpq whole, or None for an SQLite file."""
    if isinstance(target, str) and target.startswith(POSTGRESQL_SCHEMES):
        return "postgresql://" + target.partition("://")[2]
    return None


class _SqliteDatabase(peewee.SqliteDatabase):
    def rollback(self) -> None:
        # SQLite has rolled the transaction back itself when its COMMIT failed (a full disk does
        # that): peewee's ROLLBACK would fail then, its error hiding why the commit failed.
        if not self.is_closed() and self.connection().in_transaction:
            super().rollback()


def open_sqlite(path: Path, lock_type: str | None = None) -> peewee.SqliteDatabase:
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


class Connections:
    """What every part of the store works through. On SQLite, reads go to ``_reader`` on the hub
    thread and writes to ``_writer`` on the writer thread, two connections to one file; on
    PostgreSQL both are the pool, ``_pool``."""

    dialect: str
    _reader: peewee.Database
    _writer: peewee.Database
    _pool: ConnectionPool | None

    def _existing_ids(self, column: peewee.Field, ids: Iterable[int]) -> set[int]:
        wanted = sorted(ids)
        found: set[int] = set()
        # In slices: SQLite caps the parameters of one statement.
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            query = column.model.select(column).where(column.in_(wanted[start:start + _IDS_PER_QUERY]))
            found.update(row[0] for row in all_rows(query, self._reader))
        return found
