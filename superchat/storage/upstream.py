"""The database of an upstream SuperChat server (the Go server, its schema as of migration 9), read
row by row as this server's tables take them.

The upstream server keeps its database in WAL mode and never checkpoints it, so after a clean stop
nearly everything sits in ``superchat.db-wal``. The file and its log are copied aside and the copy
is opened: SQLite then reads the log in, and nothing is ever written beside the upstream file.
"""

from __future__ import annotations

import ipaddress
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..sshkeys import InvalidKey, parse_public_key

KNOWN_SCHEMA_VERSION = 9
SQLITE_HEADER = b"SQLite format 3\x00"
# The tables an upstream database has once its 9 migrations ran, with a column each that only
# upstream's schema has: a database lacking any is not one.
_UPSTREAM_TABLES = {
    "Channel": "message_retention_hours",
    "Message": "thread_root_id",
    "MessageVersion": "version_type",
    "User": "last_seen",
    "SSHKey": "fingerprint",
    "Ban": "banned_by",
    "AdminAction": "target_identifier",
    "UserChannelState": "subchannel_id",
    "DiscoveredServer": "discovered_via",
}
ROWS_PER_READ = 1000


class NotUpstream(Exception):
    """The file is no upstream database this server can read; the text says why, in one line."""


@dataclass
class Carried:
    """What went over, per kind; what did not, counted by reason (``left_behind``) or named one by one
    (``refused``); and what went over changed (``changed``)."""

    counts: Counter[str] = field(default_factory=Counter)
    left_behind: Counter[str] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def leave(self, reason: str, count: int = 1) -> None:
        if count:
            self.left_behind[reason] += count


@dataclass(frozen=True)
class _Shadowban:
    user_id: int | None
    nickname: str | None
    since: int
    until: int | None

    def covers(self, user_id: int | None, nickname: str, at: int) -> bool:
        named = (user_id is not None and user_id == self.user_id) or (
            user_id is None and self.nickname is not None and nickname == self.nickname
        )
        return named and self.since <= at and (self.until is None or at < self.until)


class _TextRepair:
    """Upstream stores strings as its clients sent them, bytes that are not UTF-8 and NUL characters
    included; this server refuses both from its clients, and PostgreSQL can hold neither. Such
    text goes over with U+FFFD in their place, and is counted."""

    def __init__(self) -> None:
        self.repaired = 0

    def __call__(self, data: bytes) -> str:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            text = data.decode(errors="replace")
            self.repaired += 1
            return text.replace("\x00", "\ufffd")
        if "\x00" in text:
            self.repaired += 1
            return text.replace("\x00", "\ufffd")
        return text


class UpstreamSource:
    """A copy of an upstream database, opened; ``close()`` removes the copy."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise NotUpstream(f"no file at {path}")
        with path.open("rb") as file:
            if file.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise NotUpstream(f"{path} is not an SQLite database")
        self._copy_dir = Path(tempfile.mkdtemp(prefix="scd-import-"))
        try:
            copy = self._copy_dir / "upstream.db"
            shutil.copyfile(path, copy)
            log = path.with_name(path.name + "-wal")
            if log.is_file():
                shutil.copyfile(log, copy.with_name(copy.name + "-wal"))
            self._db = sqlite3.connect(copy)
            self._text = _TextRepair()
            self._db.text_factory = self._text
            _check_schema(self._db, path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        shutil.rmtree(self._copy_dir, ignore_errors=True)

    def nicknames_alike(self) -> list[list[str]]:
        """Registered nicknames upstream tells apart by case alone, in groups."""
        groups: dict[str, list[str]] = {}
        for (nickname,) in self._db.execute('SELECT nickname FROM "User" WHERE lower(nickname) IN (SELECT '
                                            'lower(nickname) FROM "User" GROUP BY 1 HAVING COUNT(*) > 1) ORDER BY id'):
            groups.setdefault(nickname.lower(), []).append(nickname)
        return list(groups.values())

    def count(self, table: str) -> int:
        return self._db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]

    def total_rows(self) -> int:
        return sum(self.count(table) for table in _UPSTREAM_TABLES)

    def _rows(self, sql: str, params: tuple = ()) -> Iterator[sqlite3.Row]:
        cursor = self._db.cursor()
        cursor.row_factory = sqlite3.Row
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(ROWS_PER_READ):
            yield from batch

    # -- each kind as this server stores it -------------------------------------------------------

    def users(self) -> Iterator[dict[str, Any]]:
        for row in self._rows('SELECT id, nickname, user_flags, password_hash, created_at, last_seen FROM "User" '
                              "ORDER BY id"):
            # No password: an account that signs in by SSH key only, which this server marks with "".
            yield {"id": row["id"], "nickname": row["nickname"], "user_flags": row["user_flags"],
                   "password_hash": row["password_hash"] or "", "created_at": row["created_at"],
                   "last_seen": row["last_seen"]}

    def ssh_keys(self, carried: Carried) -> Iterator[dict[str, Any]]:
        for row in self._rows('SELECT * FROM "SSHKey" ORDER BY id'):
            try:
                key = parse_public_key(row["public_key"])
            except InvalidKey as exc:
                carried.refused.append(f"SSH key {row['id']}: not a public key this server reads ({exc})")
                continue
            if key.fingerprint != row["fingerprint"]:
                carried.refused.append(f"SSH key {row['id']}: its stored fingerprint does not match its key")
                continue
            yield {"id": row["id"], "user_id": row["user_id"], "fingerprint": row["fingerprint"],
                   "public_key": row["public_key"], "key_type": row["key_type"], "label": row["label"],
                   "added_at": row["added_at"], "last_used_at": row["last_used_at"]}

    def channels(self, carried: Carried) -> Iterator[dict[str, Any]]:
        for row in self._rows('SELECT * FROM "Channel" ORDER BY id'):
            if row["is_private"]:
                carried.changed.append(f"channel {row['name']}: marked private, which this server does not know; "
                                       "imported as a public channel")
            yield {"id": row["id"], "name": row["name"], "display_name": row["display_name"],
                   "description": row["description"], "channel_type": row["channel_type"],
                   "retention_hours": row["message_retention_hours"], "created_by": row["created_by"],
                   "created_at": row["created_at"]}

    def _shadowbans(self) -> list[_Shadowban]:
        return [_Shadowban(row["user_id"], row["nickname"], row["banned_at"], row["banned_until"])
                for row in self._rows("SELECT user_id, nickname, banned_at, banned_until FROM \"Ban\" "
                                      "WHERE ban_type = 'user' AND shadowban != 0")]

    def messages(self, channel_ids: set[int], carried: Carried) -> Iterator[dict[str, Any]]:
        """Parents before their replies, each written where this server's foreign key wants it: in id
        order, the order of posting (ids are time-ordered snowflakes), except that a reply whose id
        is below its parent's (the clock went back between two runs of the upstream server, which
        starts its snowflakes from the clock) waits for its parent."""
        shadowbans = self._shadowbans()
        left: set[int] = set()
        waiting: dict[int, list[sqlite3.Row]] = {}
        for row in self._rows('SELECT m.*, p.id IS NOT NULL AS parent_found FROM "Message" m '
                              'LEFT JOIN "Message" p ON p.id = m.parent_id ORDER BY m.id'):
            parent_id = row["parent_id"]
            if parent_id is not None and parent_id > row["id"] and row["parent_found"] and parent_id not in left:
                waiting.setdefault(parent_id, []).append(row)
                continue
            pending = [row]
            while pending:
                row = pending.pop()
                message = self._message(row, channel_ids, left, shadowbans, carried)
                if message is not None:
                    yield message
                # What waited for this message follows it, in id order.
                pending.extend(reversed(waiting.pop(row["id"], [])))

    def _message(self, row: sqlite3.Row, channel_ids: set[int], left: set[int], shadowbans: list[_Shadowban],
                 carried: Carried) -> dict[str, Any] | None:
        """The message as this server stores it, or None (counted in ``carried``) when it cannot go over."""
        message_id, parent_id = row["id"], row["parent_id"]
        if row["channel_id"] not in channel_ids:
            reason = "messages of a channel that no longer exists"
        elif parent_id is not None and parent_id in left:
            reason = "replies to a message that could not be carried over"
        elif parent_id is not None and not row["parent_found"]:
            reason = "replies whose parent is missing from the upstream database"
        else:
            root = self._thread_root(message_id, parent_id, row["thread_root_id"])
            reason = "replies whose parent is missing from the upstream database" if root is None else ""
        if reason:
            carried.leave(reason)
            left.add(message_id)
            return None
        author_id, nickname, created_at = row["author_user_id"], row["author_nickname"], row["created_at"]
        return {"id": message_id, "channel_id": row["channel_id"], "subchannel_id": row["subchannel_id"],
                "parent_id": parent_id, "thread_root_id": root, "author_user_id": author_id,
                "author_nickname": nickname, "content": row["content"], "created_at": created_at,
                "edited_at": row["edited_at"], "deleted_at": row["deleted_at"],
                "shadowed": any(ban.covers(author_id, nickname, created_at) for ban in shadowbans)}

    def _thread_root(self, message_id: int, parent_id: int | None, stored_root: int | None) -> int | None:
        if parent_id is None:
            return message_id
        if stored_root is not None:
            return stored_root
        # Upstream names the root of every reply; should one lack it, its ancestors do.
        seen = {message_id}
        while parent_id is not None and parent_id not in seen:
            seen.add(parent_id)
            row = self._db.execute('SELECT parent_id, thread_root_id FROM "Message" WHERE id = ?',
                                   (parent_id,)).fetchone()
            if row is None:
                return None
            if row[0] is None:
                return parent_id
            if row[1] is not None:
                return row[1]
            parent_id = row[0]
        return None

    def bans(self, user_ids: set[int], carried: Carried) -> Iterator[dict[str, Any]]:
        for row in self._rows('SELECT * FROM "Ban" ORDER BY id'):
            is_ip = row["ban_type"] == "ip"
            if is_ip != (row["ip_cidr"] is not None):
                carried.refused.append(f"ban {row['id']}: an IP ban without an address, or a user ban with one")
                continue
            if is_ip and not _is_network(row["ip_cidr"]):
                carried.refused.append(f"ban {row['id']}: {row['ip_cidr']!r} is no IP address or range")
                continue
            if not is_ip and row["user_id"] is None and not row["nickname"]:
                carried.refused.append(f"ban {row['id']}: a user ban naming no user")
                continue
            user_id = row["user_id"] if row["user_id"] in user_ids else None
            yield {"id": row["id"], "ban_type": row["ban_type"], "user_id": user_id, "nickname": row["nickname"],
                   "ip_cidr": row["ip_cidr"], "reason": row["reason"], "shadowban": bool(row["shadowban"]),
                   "banned_at": row["banned_at"], "banned_until": row["banned_until"],
                   "banned_by": row["banned_by"]}

    def admin_actions(self, user_ids_by_name: dict[str, int]) -> Iterator[dict[str, Any]]:
        for row in self._rows('SELECT * FROM "AdminAction" ORDER BY id'):
            target = " ".join(str(part) for part in (row["target_type"], row["target_identifier"]) if part)
            if row["target_id"] is not None:
                # Upstream's bans name the ban they made, not the account or address.
                kind = "ban" if row["action_type"] in ("ban_user", "ban_ip") else "id"
                target += f" ({kind} {row['target_id']})"
            details = f"{target}: {row['details']}" if row["details"] else target
            yield {"id": row["id"], "admin_user_id": user_ids_by_name.get(row["admin_nickname"].lower(), 0),
                   "admin_nickname": row["admin_nickname"], "action": row["action_type"].upper(),
                   "details": f"{details} (from {row['ip_address']})", "performed_at": row["performed_at"]}

    def read_states(self, user_ids: set[int], channel_ids: set[int], carried: Carried) -> Iterator[dict[str, Any]]:
        for row in self._rows('SELECT * FROM "UserChannelState"'):
            if row["user_id"] not in user_ids or row["channel_id"] not in channel_ids:
                carried.leave("read states of an account or channel that no longer exists")
                continue
            yield {"user_id": row["user_id"], "channel_id": row["channel_id"],
                   "subchannel_key": row["subchannel_id"] or 0, "last_read_at": row["last_read_at"]}

    def discovered_servers(self) -> Iterator[dict[str, Any]]:
        for row in self._rows('SELECT * FROM "DiscoveredServer" ORDER BY id'):
            yield {"id": row["id"], "hostname": row["hostname"], "port": row["port"], "name": row["name"],
                   "description": row["description"], "user_count": row["user_count"],
                   "max_users": row["max_users"], "uptime_seconds": row["uptime_seconds"],
                   "is_public": bool(row["is_public"]), "channel_count": row["channel_count"],
                   "last_seen": row["last_heartbeat"], "source_ip": row["source_ip"] or "",
                   "created_at": row["created_at"]}

    def not_carried(self, carried: Carried) -> None:
        """The kinds this server has no place for."""
        carried.leave("earlier versions of edited messages (scd keeps the current text and the time of the "
                      "last edit)", self.count("MessageVersion"))
        carried.leave("records of the upstream server's connections (Session)", self.count("Session"))
        if self._text.repaired:
            carried.changed.append(f"{self._text.repaired} texts held bytes that are not UTF-8 or NUL characters, "
                                   "which scd stores neither of: imported with U+FFFD in their place")


def _check_schema(db: sqlite3.Connection, path: Path) -> None:
    """Refuse, with NotUpstream, a database that is no upstream one of schema version 9."""
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise NotUpstream(f"{path} cannot be read as SQLite: {exc}") from None
    if "schema_migrations" not in tables:
        raise NotUpstream(f"{path} is not an upstream SuperChat database (it has no schema_migrations table)")
    # Other programs keep a schema_migrations table too (Rails: one text column).
    columns = {row[1] for row in db.execute("PRAGMA table_info(schema_migrations)")}
    if not {"version", "name", "applied_at"} <= columns:
        raise NotUpstream(f"{path} is not an upstream SuperChat database (its schema_migrations table is "
                          "another program's)")
    (version,) = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    if version is not None and not isinstance(version, int):
        raise NotUpstream(f"{path} is not an upstream SuperChat database (schema_migrations holds version "
                          f"{version!r})")
    if version is None or version < KNOWN_SCHEMA_VERSION:
        raise NotUpstream(f"{path} has upstream schema version {version or 0}; start the upstream server "
                          f"once to bring it to version {KNOWN_SCHEMA_VERSION}, then import")
    if version > KNOWN_SCHEMA_VERSION:
        raise NotUpstream(f"{path} has upstream schema version {version}, newer than the "
                          f"{KNOWN_SCHEMA_VERSION} this scd can import")
    for table, column in _UPSTREAM_TABLES.items():
        columns = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
        if column not in columns:
            raise NotUpstream(f"{path} is not an upstream SuperChat database (no {table}.{column})")


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True
