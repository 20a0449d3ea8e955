"""Databases in the format the upstream (Go) SuperChat server writes, for the import tests.

The schema is upstream's as its nine migrations leave it, replayed step by step as upstream
applies them (pkg/database/migrations/, version 9); the statements are ours, written from those
facts. Rows follow what the running upstream server writes:

- WAL mode, never checkpointed: after a clean stop nearly everything sits in ``superchat.db-wal``
  (``close()`` leaves the files so; ``checkpoint()`` folds the log in);
- message ids are snowflakes ``((ms - 2024-01-01) << 22) | worker << 12 | seq``; a root's
  thread_root_id is its own id, a reply takes its parent's root;
- times in milliseconds, except UserChannelState.updated_at, uptime_seconds and
  heartbeat_interval in seconds;
- passwords are ``$2a$10$`` bcrypt of the 43-character hash the client sends, NULL for SSH-only
  accounts; admin status lives in upstream's configuration (user_flags 0);
- a deleted message keeps its content with deleted_at set; the running server writes no
  MessageVersion rows (its in-memory store bypasses them), though the table exists;
- each start seeds the five default channels with INSERT OR IGNORE, which advances the Channel
  id counter by five.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

EPOCH_MS = 1704067200000  # 2024-01-01T00:00:00Z, upstream's snowflake epoch
BCRYPT_COST = 10  # Go's bcrypt.DefaultCost
DEFAULT_CHANNELS = (
    ("chat", ">chat", "General chat (linear conversation)", 0, 24),
    ("general", "#general", "General discussion", 1, 168),
    ("tech", "#tech", "Technical topics", 1, 168),
    ("random", "#random", "Off-topic chat", 1, 168),
    ("feedback", "#feedback", "Bug reports and feature requests", 1, 168),
)
_NULL_PASSWORD = object()

# (version, name, foreign keys off while it runs, statements)
MIGRATIONS: tuple[tuple[int, str, bool, tuple[str, ...]], ...] = (
    (1, "initial", False, (
        "CREATE TABLE IF NOT EXISTS Channel (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,"
        " display_name TEXT NOT NULL, description TEXT, channel_type INTEGER NOT NULL DEFAULT 1,"
        " message_retention_hours INTEGER NOT NULL DEFAULT 168, created_by INTEGER, created_at INTEGER NOT NULL,"
        " is_private INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS Session (id INTEGER PRIMARY KEY, user_id INTEGER, nickname TEXT NOT NULL,"
        " connection_type TEXT NOT NULL, connected_at INTEGER NOT NULL, last_activity INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS Message (id INTEGER PRIMARY KEY, channel_id INTEGER NOT NULL,"
        " subchannel_id INTEGER, parent_id INTEGER, thread_root_id INTEGER, author_user_id INTEGER,"
        " author_nickname TEXT NOT NULL, content TEXT NOT NULL, created_at INTEGER NOT NULL, edited_at INTEGER,"
        " deleted_at INTEGER,"
        " FOREIGN KEY (channel_id) REFERENCES Channel(id) ON DELETE CASCADE,"
        " FOREIGN KEY (parent_id) REFERENCES Message(id) ON DELETE CASCADE,"
        " FOREIGN KEY (thread_root_id) REFERENCES Message(id) ON DELETE CASCADE)",
        "CREATE TABLE IF NOT EXISTS MessageVersion (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " message_id INTEGER NOT NULL, content TEXT NOT NULL, author_nickname TEXT NOT NULL,"
        " created_at INTEGER NOT NULL, version_type TEXT NOT NULL,"
        " FOREIGN KEY (message_id) REFERENCES Message(id) ON DELETE CASCADE)",
        "CREATE INDEX IF NOT EXISTS idx_messages_channel ON Message(channel_id, created_at DESC)",
        "CREATE INDEX IF NOT EXISTS idx_messages_parent ON Message(parent_id) WHERE parent_id IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS idx_messages_thread_root ON Message(thread_root_id)"
        " WHERE thread_root_id IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS idx_messages_retention ON Message(created_at, parent_id)",
        "CREATE INDEX IF NOT EXISTS idx_sessions_activity ON Session(last_activity)",
    )),
    (2, "add_user_table", False, (
        "CREATE TABLE IF NOT EXISTS User (id INTEGER PRIMARY KEY AUTOINCREMENT, nickname TEXT UNIQUE NOT NULL,"
        " user_flags INTEGER NOT NULL DEFAULT 0, password_hash TEXT, created_at INTEGER NOT NULL,"
        " last_seen INTEGER NOT NULL)",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_users_nickname ON User(nickname)",
    )),
    # The Channel table gets its foreign key by being made anew, with foreign keys off.
    (3, "user_created_channels", True, (
        "CREATE TABLE IF NOT EXISTS Channel_new (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,"
        " display_name TEXT NOT NULL, description TEXT, channel_type INTEGER NOT NULL DEFAULT 1,"
        " message_retention_hours INTEGER NOT NULL DEFAULT 168, created_by INTEGER, created_at INTEGER NOT NULL,"
        " is_private INTEGER NOT NULL DEFAULT 0, FOREIGN KEY (created_by) REFERENCES User(id) ON DELETE SET NULL)",
        "INSERT INTO Channel_new SELECT id, name, display_name, description, channel_type,"
        " message_retention_hours, created_by, created_at, is_private FROM Channel",
        "DROP TABLE Channel",
        "ALTER TABLE Channel_new RENAME TO Channel",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_channel_name ON Channel(name)",
    )),
    (4, "add_discovered_server", False, (
        "CREATE TABLE IF NOT EXISTS DiscoveredServer (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " hostname TEXT NOT NULL, port INTEGER NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,"
        " max_users INTEGER NOT NULL DEFAULT 0, is_public INTEGER NOT NULL DEFAULT 1,"
        " user_count INTEGER NOT NULL DEFAULT 0, uptime_seconds INTEGER NOT NULL DEFAULT 0,"
        " last_heartbeat INTEGER NOT NULL, heartbeat_interval INTEGER NOT NULL DEFAULT 300,"
        " discovered_via TEXT NOT NULL CHECK(discovered_via IN ('registration', 'gossip')), source_ip TEXT,"
        " created_at INTEGER NOT NULL, UNIQUE(hostname, port))",
        "CREATE INDEX IF NOT EXISTS idx_discovered_server_last_heartbeat ON DiscoveredServer(last_heartbeat DESC)",
        "CREATE INDEX IF NOT EXISTS idx_discovered_server_hostname_port ON DiscoveredServer(hostname, port)",
        "CREATE INDEX IF NOT EXISTS idx_discovered_server_source_ip ON DiscoveredServer(source_ip)",
    )),
    (5, "add_ssh_keys", False, (
        "CREATE TABLE IF NOT EXISTS SSHKey (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL,"
        " fingerprint TEXT UNIQUE NOT NULL, public_key TEXT NOT NULL, key_type TEXT NOT NULL, label TEXT,"
        " added_at INTEGER NOT NULL, last_used_at INTEGER,"
        " FOREIGN KEY (user_id) REFERENCES User(id) ON DELETE CASCADE)",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_ssh_fingerprint ON SSHKey(fingerprint)",
        "CREATE INDEX IF NOT EXISTS idx_ssh_user ON SSHKey(user_id)",
    )),
    (6, "add_channel_count_to_discovered_server", False, (
        "ALTER TABLE DiscoveredServer ADD COLUMN channel_count INTEGER NOT NULL DEFAULT 0",
    )),
    (7, "add_admin_tables", False, (
        "CREATE TABLE IF NOT EXISTS Ban (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " ban_type TEXT NOT NULL CHECK(ban_type IN ('user', 'ip')), user_id INTEGER, nickname TEXT, ip_cidr TEXT,"
        " reason TEXT NOT NULL, shadowban INTEGER NOT NULL DEFAULT 0, banned_at INTEGER NOT NULL,"
        " banned_until INTEGER, banned_by TEXT NOT NULL, FOREIGN KEY (user_id) REFERENCES User(id) ON DELETE CASCADE)",
        "CREATE INDEX IF NOT EXISTS idx_ban_user ON Ban(user_id) WHERE ban_type = 'user'",
        "CREATE INDEX IF NOT EXISTS idx_ban_ip ON Ban(ip_cidr) WHERE ban_type = 'ip'",
        "CREATE INDEX IF NOT EXISTS idx_ban_expiry ON Ban(banned_until) WHERE banned_until IS NOT NULL",
        "CREATE TABLE IF NOT EXISTS AdminAction (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " admin_nickname TEXT NOT NULL, action_type TEXT NOT NULL, target_type TEXT NOT NULL, target_id INTEGER,"
        " target_identifier TEXT, details TEXT, performed_at INTEGER NOT NULL, ip_address TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS idx_admin_action_admin ON AdminAction(admin_nickname, performed_at DESC)",
        "CREATE INDEX IF NOT EXISTS idx_admin_action_target ON AdminAction(target_type, target_id)",
        "CREATE INDEX IF NOT EXISTS idx_admin_action_time ON AdminAction(performed_at DESC)",
    )),
    (8, "add_user_channel_state", False, (
        "CREATE TABLE IF NOT EXISTS UserChannelState (user_id INTEGER NOT NULL, channel_id INTEGER NOT NULL,"
        " subchannel_id INTEGER, last_read_at INTEGER NOT NULL DEFAULT 0,"
        " updated_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),"
        " PRIMARY KEY (user_id, channel_id, subchannel_id),"
        " FOREIGN KEY (user_id) REFERENCES User(id) ON DELETE CASCADE,"
        " FOREIGN KEY (channel_id) REFERENCES Channel(id) ON DELETE CASCADE)",
        "CREATE INDEX IF NOT EXISTS idx_user_channel_state_user ON UserChannelState(user_id, channel_id)",
        "CREATE INDEX IF NOT EXISTS idx_user_channel_state_updated ON UserChannelState(updated_at)",
    )),
    # subchannel_id becomes NOT NULL DEFAULT 0, so that ON CONFLICT sees the main channel's rows.
    (9, "fix_user_channel_state_nulls", False, (
        "DELETE FROM UserChannelState WHERE rowid NOT IN (SELECT MAX(rowid) FROM UserChannelState"
        " GROUP BY user_id, channel_id, COALESCE(subchannel_id, 0))",
        "DROP TABLE IF EXISTS UserChannelState",
        "CREATE TABLE UserChannelState (user_id INTEGER NOT NULL, channel_id INTEGER NOT NULL,"
        " subchannel_id INTEGER NOT NULL DEFAULT 0, last_read_at INTEGER NOT NULL DEFAULT 0,"
        " updated_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')),"
        " PRIMARY KEY (user_id, channel_id, subchannel_id),"
        " FOREIGN KEY (user_id) REFERENCES User(id) ON DELETE CASCADE,"
        " FOREIGN KEY (channel_id) REFERENCES Channel(id) ON DELETE CASCADE)",
        "CREATE INDEX IF NOT EXISTS idx_user_channel_state_user ON UserChannelState(user_id, channel_id)",
        "CREATE INDEX IF NOT EXISTS idx_user_channel_state_updated ON UserChannelState(updated_at)",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


# -- helpers --------------------------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def snowflake(ms: int, worker: int = 0, seq: int = 0) -> int:
    """Upstream's message id for a message posted at ``ms``."""
    return ((ms - EPOCH_MS) << 22) | (worker << 12) | seq


def snowflake_ms(message_id: int) -> int:
    return (message_id >> 22) + EPOCH_MS


def ms(iso: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time (UTC unless it names its zone)."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def upstream_bcrypt(client_hash: str) -> str:
    """What upstream stores for an account whose client sends ``client_hash``: Go's bcrypt, $2a$10$."""
    return bcrypt.hashpw(client_hash.encode(), bcrypt.gensalt(BCRYPT_COST, prefix=b"2a")).decode()


def ssh_fingerprint(public_key_line: str) -> str:
    """As Go's ssh.FingerprintSHA256: SHA256: and the unpadded base64 of the key blob's digest."""
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ed25519_public_key(comment: str = "") -> str:
    """A fresh, valid OpenSSH public key line."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}" if comment else line


def client_hash(label: str) -> str:
    """A stand-in for the hash a client sends (43 characters of unpadded URL-safe base64), fixed per label."""
    digest = hashlib.sha256(b"superchat test client hash:" + label.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def open_copy(path: Path, into: Path) -> sqlite3.Connection:
    """The database at ``path`` with its WAL, copied into the folder ``into`` and opened there, so
    the original is never written (opening a WAL database writes its -shm)."""
    copy = into / path.name
    shutil.copyfile(path, copy)
    for suffix in ("-wal", "-shm"):
        if path.with_name(path.name + suffix).exists():
            shutil.copyfile(path.with_name(path.name + suffix), copy.with_name(copy.name + suffix))
    return sqlite3.connect(copy)


def schema_summary(path: Path | str) -> dict:
    """Tables with their columns (type, notnull, default, pk), foreign keys, CHECK clauses and
    indexes (unique, origin, partial, columns with their order), read from a copy of the file."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        db = open_copy(Path(path), Path(folder))
        try:
            return _summary(db)
        finally:
            db.close()


def _summary(db: sqlite3.Connection) -> dict:
    tables: dict = {}
    names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    for table in names:
        columns = [[name, kind, bool(notnull), default, pk]
                   for _, name, kind, notnull, default, pk in db.execute(f'PRAGMA table_info("{table}")')]
        keys = sorted([row[3], row[2], row[4], row[6]]  # from, table, to, on delete
                      for row in db.execute(f'PRAGMA foreign_key_list("{table}")'))
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        indexes = {}
        for _, name, unique, origin, partial in db.execute(f'PRAGMA index_list("{table}")'):
            parts = [[column, bool(desc)] for _, _, column, desc, _, key in db.execute(f'PRAGMA index_xinfo("{name}")')
                     if key]
            (index_sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
            where = _normal(index_sql.split(" WHERE ", 1)[1]) if partial and index_sql else None
            indexes[name] = {"unique": bool(unique), "origin": origin, "columns": parts, "where": where}
        tables[table] = {"columns": columns, "foreign_keys": keys, "checks": _checks(sql or ""),
                         "indexes": dict(sorted(indexes.items()))}
    return {"tables": tables}


def row_patterns(path: Path | str) -> dict[str, dict[str, list[str]]]:
    """What kinds of value each column of each table holds: null, text, real, a bcrypt hash
    ($2a$10$), an address with its port, or an integer as a snowflake, milliseconds or seconds since
    the epoch, or a small number. Read from a copy of the file."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        db = open_copy(Path(path), Path(folder))
        try:
            patterns: dict[str, dict[str, list[str]]] = {}
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE"
                                       " 'sqlite_%' ORDER BY name"):
                cursor = db.execute(f'SELECT * FROM "{table}"')
                names = [column[0] for column in cursor.description]
                kinds: dict[str, set[str]] = {name: set() for name in names}
                for row in cursor:
                    for name, value in zip(names, row, strict=True):
                        kinds[name].add(_kind(value))
                patterns[table] = {name: sorted(found) for name, found in kinds.items()}
            return patterns
        finally:
            db.close()


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        if value.startswith("$2a$10$") and len(value) == 60:
            return "bcrypt $2a$10$"
        host, _, port = value.rpartition(":")
        return "address:port" if port.isdigit() and host.count(".") == 3 else "text"
    if isinstance(value, float):
        return "real"
    if isinstance(value, bytes):
        return "blob"
    if value >= 1 << 50:
        return "snowflake"
    if value >= 10**11:
        return "ms"
    return "s" if value >= 10**9 else "int"


def _normal(text: str) -> str:
    return "".join(text.split()).lower()


def _checks(sql: str) -> list[str]:
    """The CHECK clauses of a CREATE TABLE, whitespace and case aside."""
    found, lowered, start = [], sql.lower(), 0
    while (at := lowered.find("check", start)) >= 0:
        depth, opening = 0, lowered.index("(", at)
        end = opening
        for end in range(opening, len(sql)):
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            if depth == 0:
                break
        found.append(_normal(sql[at:end + 1]))
        start = end
    return found


# -- the database ---------------------------------------------------------------------------------


class UpstreamDatabase:
    """An upstream server's database being written; ``close()`` leaves it as a stopped server does."""

    def __init__(self, path: Path | str, created_at: int | None = None, *, seed_channels: bool = True,
                 schema_version: int = SCHEMA_VERSION):
        """``schema_version``: stop after that migration, as an upstream server of that time left it."""
        self.path = Path(path)
        self.clock = now_ms() if created_at is None else created_at
        self.channels: dict[str, int] = {}
        self._sequence: dict[int, int] = {}
        self._db: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode = WAL", "wal_autocheckpoint = 0", "busy_timeout = 5000",
                       "foreign_keys = ON", "synchronous = NORMAL"):
            self.db.execute(f"PRAGMA {pragma}")
        self._migrate(schema_version)
        if seed_channels:
            self._seed_default_channels()

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "closed"
        return self._db

    def __enter__(self) -> UpstreamDatabase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _at(self, at: int | None) -> int:
        if at is not None:
            return at
        self.clock += 1
        return self.clock

    def _insert(self, table: str, **values) -> int:
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        return self.db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(values.values())).lastrowid

    def _migrate(self, up_to: int) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                        " name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
        for version, name, foreign_keys_off, statements in MIGRATIONS[:up_to]:
            if foreign_keys_off:
                self.db.execute("PRAGMA foreign_keys = OFF")
            self.db.execute("BEGIN")
            for statement in statements:
                self.db.execute(statement)
            self._insert("schema_migrations", version=version, name=name, applied_at=self.clock)
            self.db.execute("COMMIT")
            if foreign_keys_off:
                self.db.execute("PRAGMA foreign_keys = ON")

    def _seed_default_channels(self) -> None:
        at = self._at(None)
        for name, display, description, kind, hours in DEFAULT_CHANNELS:
            self.db.execute("INSERT OR IGNORE INTO Channel (name, display_name, description, channel_type,"
                            " message_retention_hours, created_by, created_at, is_private)"
                            " VALUES (?, ?, ?, ?, ?, NULL, ?, 0)", (name, display, description, kind, hours, at))
        self._read_channels()

    def _read_channels(self) -> None:
        self.channels = dict(self.db.execute("SELECT name, id FROM Channel ORDER BY id"))

    def restart(self, at: int | None = None) -> None:
        """What a start of the upstream server does to the database once it is set up: it seeds the
        default channels again, and every ignored insert still takes an id."""
        if at is not None:
            self.clock = at
        self._seed_default_channels()

    # -- rows --

    def add_user(self, nickname: str, client_hash: str | None = None, *, password_hash=None, flags: int = 0,
                 created_at: int | None = None, last_seen: int | None = None) -> int:
        """``client_hash`` None and no ``password_hash``: an SSH-only account (password NULL)."""
        if password_hash is None and client_hash is not None:
            password_hash = upstream_bcrypt(client_hash)
        created_at = self._at(created_at)
        return self._insert("User", nickname=nickname, user_flags=flags, password_hash=password_hash,
                            created_at=created_at, last_seen=created_at if last_seen is None else last_seen)

    def rename_user(self, user_id: int, nickname: str) -> None:
        self.db.execute("UPDATE User SET nickname = ? WHERE id = ?", (nickname, user_id))

    def add_ssh_key(self, user_id: int, public_key: str | None = None, *, label: str | None = None,
                    added_at: int | None = None, last_used_at: int | None = None) -> int:
        public_key = public_key or ed25519_public_key()
        return self._insert("SSHKey", user_id=user_id, fingerprint=ssh_fingerprint(public_key), public_key=public_key,
                            key_type=public_key.split()[0], label=label, added_at=self._at(added_at),
                            last_used_at=last_used_at)

    def add_channel(self, name: str, display_name: str | None = None, description: str | None = None, *,
                    channel_type: int = 1, retention_hours: int = 168, created_by: int | None = None,
                    created_at: int | None = None, is_private: bool = False) -> int:
        channel_id = self._insert("Channel", name=name, display_name=display_name or f"#{name}",
                                  description=description, channel_type=channel_type,
                                  message_retention_hours=retention_hours, created_by=created_by,
                                  created_at=self._at(created_at), is_private=int(is_private))
        self.channels[name] = channel_id
        return channel_id

    def add_message(self, channel: int | str, author_nickname: str, content: str, *, parent: int | None = None,
                    author_user_id: int | None = None, at: int | None = None, edited_at: int | None = None,
                    deleted_at: int | None = None, subchannel_id: int | None = None, thread_root_id=...) -> int:
        """A message posted at ``at``, its id the snowflake of that time; a reply takes its parent's root."""
        channel_id = self.channels[channel] if isinstance(channel, str) else channel
        at = self._at(at)
        seq = self._sequence[at] = self._sequence.get(at, -1) + 1
        message_id = snowflake(at, seq=seq)
        if thread_root_id is ...:
            if parent is None:
                thread_root_id = message_id
            else:
                (thread_root_id,) = self.db.execute("SELECT thread_root_id FROM Message WHERE id = ?",
                                                    (parent,)).fetchone()
        self._insert("Message", id=message_id, channel_id=channel_id, subchannel_id=subchannel_id, parent_id=parent,
                     thread_root_id=thread_root_id, author_user_id=author_user_id, author_nickname=author_nickname,
                     content=content, created_at=at, edited_at=edited_at, deleted_at=deleted_at)
        return message_id

    def edit_message(self, message_id: int, content: str, at: int | None = None) -> int:
        at = self._at(at)
        self.db.execute("UPDATE Message SET content = ?, edited_at = ? WHERE id = ?", (content, at, message_id))
        return at

    def delete_message(self, message_id: int, at: int | None = None) -> int:
        """Upstream's soft delete: deleted_at set, the content kept."""
        at = self._at(at)
        self.db.execute("UPDATE Message SET deleted_at = ? WHERE id = ?", (at, message_id))
        return at

    def add_message_version(self, message_id: int, content: str, author_nickname: str, version_type: str = "edited",
                            created_at: int | None = None) -> int:
        return self._insert("MessageVersion", message_id=message_id, content=content, author_nickname=author_nickname,
                            created_at=self._at(created_at), version_type=version_type)

    def add_ban(self, ban_type: str = "user", *, user_id: int | None = None, nickname: str | None = None,
                ip_cidr: str | None = None, reason: str = "", shadowban: bool = False, banned_at: int | None = None,
                banned_until: int | None = None, banned_by: str = "warden") -> int:
        return self._insert("Ban", ban_type=ban_type, user_id=user_id, nickname=nickname, ip_cidr=ip_cidr,
                            reason=reason, shadowban=int(shadowban), banned_at=self._at(banned_at),
                            banned_until=banned_until, banned_by=banned_by)

    def lift_ban(self, ban_id: int) -> None:
        """Upstream's unban deletes the row (the audit trail keeps the action)."""
        self.db.execute("DELETE FROM Ban WHERE id = ?", (ban_id,))

    def add_admin_action(self, admin_nickname: str, action_type: str, target_type: str, *,
                         target_id: int | None = None, target_identifier: str | None = None,
                         details: str | None = None, performed_at: int | None = None,
                         ip_address: str = "127.0.0.1") -> int:
        return self._insert("AdminAction", admin_nickname=admin_nickname, action_type=action_type,
                            target_type=target_type, target_id=target_id, target_identifier=target_identifier,
                            details=details, performed_at=self._at(performed_at), ip_address=ip_address)

    def set_read_state(self, user_id: int, channel_id: int, last_read_at: int, *, subchannel_id: int = 0,
                       updated_at: int | None = None) -> None:
        """``last_read_at`` in milliseconds, ``updated_at`` in seconds, as upstream writes them."""
        updated_at = self._at(None) // 1000 if updated_at is None else updated_at
        self.db.execute("INSERT INTO UserChannelState (user_id, channel_id, subchannel_id, last_read_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(user_id, channel_id, subchannel_id)"
                        " DO UPDATE SET last_read_at = excluded.last_read_at, updated_at = excluded.updated_at",
                        (user_id, channel_id, subchannel_id, last_read_at, updated_at))

    def add_discovered_server(self, hostname: str, port: int, name: str, description: str = "", *,
                              max_users: int = 0, is_public: bool = True, user_count: int = 0,
                              uptime_seconds: int = 0, last_heartbeat: int | None = None,
                              heartbeat_interval: int = 300, discovered_via: str = "registration",
                              source_ip: str | None = None, created_at: int | None = None,
                              channel_count: int = 0) -> int:
        """``source_ip`` as upstream keeps it, with the port: ``203.0.113.5:40122``."""
        created_at = self._at(created_at)
        return self._insert("DiscoveredServer", hostname=hostname, port=port, name=name, description=description,
                            max_users=max_users, is_public=int(is_public), user_count=user_count,
                            uptime_seconds=uptime_seconds,
                            last_heartbeat=created_at if last_heartbeat is None else last_heartbeat,
                            heartbeat_interval=heartbeat_interval, discovered_via=discovered_via,
                            source_ip=source_ip, created_at=created_at, channel_count=channel_count)

    def add_session(self, nickname: str, *, user_id: int | None = None, connection_type: str = "tcp",
                    connected_at: int | None = None) -> int:
        """A connection's row, as a server that did not stop cleanly leaves them."""
        at = self._at(connected_at)
        return self._insert("Session", id=snowflake(at, seq=4095), user_id=user_id, nickname=nickname,
                            connection_type=connection_type, connected_at=at, last_activity=at)

    # -- the files --

    def checkpoint(self) -> None:
        """Fold the WAL into the main file, which upstream never does."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Leave the files as a stopped upstream server does: the WAL and -shm beside the main file.

        SQLite checkpoints and removes the WAL when its last connection closes, and Python cannot
        ask it not to; so the three files are copied while the connection is open and put back after."""
        if self._db is None:
            return
        names = [self.path.name + suffix for suffix in ("", "-wal", "-shm")]
        kept = {name: self.path.with_name(name).read_bytes() for name in names if self.path.with_name(name).exists()}
        self._db.close()
        self._db = None
        for name in names:
            self.path.with_name(name).unlink(missing_ok=True)
        for name, content in kept.items():
            self.path.with_name(name).write_bytes(content)


# The community the import tests build; it uses the helpers above, so it is imported after them.
from tests.upstream_community import Account, Community, Post, big_community, fill_community  # noqa: E402, F401
