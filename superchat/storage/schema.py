"""The schema: its migrations for SQLite and PostgreSQL, its version, and registered nicknames folded."""

from collections.abc import Callable

import peewee

from .rows import StorageError

# Migrations are frozen SQL rather than create_table() calls on the models: a step must keep
# producing the schema of its own version after the models have moved on. Append, never edit.
# One text serves SQLite and PostgreSQL: identifiers are quoted ("User" is reserved in PostgreSQL),
# integers are BIGINT (milliseconds overflow PostgreSQL's INTEGER; SQLite treats both alike), and
# the few differences are named in braces and filled in from _DIALECT_TERMS.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
NICKNAMES_LOCK_KEY = 0x5C_0002


# A database from before migration 6 may hold registered nicknames alike but for case (alice and
# Alice). Making the migration's index unique would then fail the migration and stop the server, and
# picking an account to rename or delete is the operator's call. So the migration's index is plain,
# and every start, under the migration lock, replaces it by a unique one as soon as no such pair is
# left, and otherwise names the pairs in the log. Until then nothing makes a new pair: every write of
# a nickname checks the folded name under NICKNAMES_LOCK_KEY (one writer thread on SQLite).
_SQL_NICKNAME_COLLISIONS = """SELECT id, nickname FROM "User" WHERE lower(nickname) IN
    (SELECT lower(nickname) FROM "User" GROUP BY lower(nickname) HAVING count(*) > 1)
    ORDER BY lower(nickname), id"""
_FOLDED_UNIQUE_INDEX = "idx_user_nickname_folded_unique"
_SQL_UNIQUE_FOLDED_NICKNAMES = (
    f'CREATE UNIQUE INDEX IF NOT EXISTS {_FOLDED_UNIQUE_INDEX} ON "User"(lower(nickname))',
    "DROP INDEX IF EXISTS idx_user_nickname_folded",
)


def unique_folded_nicknames_undone() -> tuple[str, ...]:
    """Statements that put the plain index of migration 6 back, for a database that is to hold
    nicknames alike but for case (an imported one)."""
    return (
        f"DROP INDEX IF EXISTS {_FOLDED_UNIQUE_INDEX}",
        'CREATE INDEX IF NOT EXISTS idx_user_nickname_folded ON "User"(lower(nickname))',
    )


def migration(dialect: str, number: int) -> list[str]:
    """The statements of migration ``number`` (1-based) for ``dialect``, "sqlite" or "postgresql"."""
    terms = _DIALECT_TERMS[dialect]
    return [statement.format(**terms) for statement in MIGRATIONS[number - 1]]


def migrate(db: peewee.Database, before_migrating: Callable[[int], None] | None = None) -> list[list[tuple[int, str]]]:
    """Bring the schema of a SQLite or PostgreSQL database up to this server's version; returns the
    registered nicknames alike but for case, as (user id, nickname) groups (see _fold_nicknames).
    ``before_migrating(version)`` is called, under the migration's lock, before the first step that
    changes a database already holding a schema."""
    postgres = isinstance(db, peewee.PostgresqlDatabase)
    dialect = "postgresql" if postgres else "sqlite"
    with db.atomic():
        if postgres:
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        version = _schema_version(db, postgres)
        if version > len(MIGRATIONS):
            raise StorageError(f"database schema version {version} is newer than this server ({len(MIGRATIONS)})")
        if 0 < version < len(MIGRATIONS) and before_migrating is not None:
            before_migrating(version)
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in migration(dialect, number):
                db.execute_sql(statement)
        if version < len(MIGRATIONS):
            _set_schema_version(db, postgres, len(MIGRATIONS))
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
