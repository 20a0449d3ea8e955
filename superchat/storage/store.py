"""The store, made of its parts by concern."""

import os
import sqlite3
from pathlib import Path

import psycopg2
import psycopg2.extensions

from ..config import masked_url
from .accounts import AccountQueries
from .backup import backup_before_migrating
from .channels import ChannelQueries
from .directory import DirectoryQueries
from .engine import (
    DRIVER_ERRORS,
    clock_ms,
    first_line,
    open_pool,
    open_sqlite,
    postgresql_url,
    storage_error,
    storage_errors,
    translated_errors,
)
from .imports import ImportQueries
from .messages import MessageQueries
from .models import NodeRun
from .moderation import ModerationQueries
from .posting import PostingQueries
from .readstate import ReadStateQueries
from .rows import StorageError
from .schema import migrate


class Store(ImportQueries, ChannelQueries, MessageQueries, ReadStateQueries, PostingQueries, AccountQueries,
            ModerationQueries, DirectoryQueries):
    """The server's one way to its data: every query, on SQLite or PostgreSQL."""

    def __init__(self, target: os.PathLike | str):
        """``target``: an SQLite database file, or a postgresql:// (or postgres://) URL."""
        url = postgresql_url(target)
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
        self._pool = None
        with translated_errors():
            # IMMEDIATE: take the write lock when the transaction starts, so a write transaction
            # never fails half-way on a lock upgrade.
            self._writer = open_sqlite(path, lock_type="IMMEDIATE")
            try:
                self.nickname_collisions = self._migrate_sqlite(path)
                self._reader = open_sqlite(path)
            except BaseException:
                self._writer.close()
                raise

    def _migrate_sqlite(self, path: Path) -> list[list[tuple[int, str]]]:
        backups: list[Path] = []
        try:
            return migrate(self._writer, lambda version: backups.append(backup_before_migrating(path, version)))
        except (StorageError, *DRIVER_ERRORS) as exc:
            if not backups:
                raise
            raise StorageError(f"the migration of {path} failed ({first_line(exc)}); the database as it was "
                               f"before is in {backups[0]}") from exc

    def _open_postgresql(self, url: str) -> None:
        self.dialect = "postgresql"
        self._url = url
        self._pool = open_pool(url)
        self._reader = self._writer = self._pool
        try:
            with self._pool.connection_context():
                self.nickname_collisions = migrate(self._pool)
        except BaseException as exc:
            self._pool.close_all()
            if isinstance(exc, DRIVER_ERRORS):
                # Under gevent, libpq's reason leaves out which server it could not reach.
                raise storage_error(exc, f"{self.location}: {first_line(exc)}") from exc
            raise

    def close(self) -> None:
        with translated_errors():
            if self._pool is not None:
                self._pool.close_all()
                return
            self._reader.close()
            self._writer.close()

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
            return first_line(exc)
        return None

    @storage_errors()
    def database_size_bytes(self) -> int:
        """What the data takes on disk: SQLite's file with its write-ahead log, or the PostgreSQL
        database as pg_database_size counts it."""
        if self._pool is not None:
            return self._reader.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0]
        return sum(_file_size(path) for path in (self._path, self._path.with_name(self._path.name + "-wal")))

    @storage_errors()
    def claim_node_serial(self, node_id: str) -> int:
        """A number this database never handed out before, for a run of node ``node_id``."""
        return NodeRun.insert(node_id=node_id, started_at=clock_ms()).execute(self._writer)


def _file_size(path: Path) -> int:
    # The write-ahead log comes and goes with checkpoints and the last connection's close.
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
