"""Registered accounts and their SSH keys."""

from collections.abc import Iterable, Sequence
from dataclasses import replace

import peewee
from peewee import fn

from .engine import Connections, all_rows, clock_ms, duplicate_raises, storage_errors
from .models import SSH_KEY_COLUMNS, USER_COLUMNS, Message, SSHKey, User
from .rows import NicknameTaken, SSHKeyExists, SSHKeyRow, UserRow
from .schema import NICKNAMES_LOCK_KEY


class AccountQueries(Connections):
    """Accounts: nicknames unique regardless of case, passwords, flags, SSH keys."""

    @storage_errors()
    def get_user_by_nickname(self, nickname: str) -> UserRow | None:
        rows = all_rows(User.select(*USER_COLUMNS).where(User.nickname == nickname), self._reader)
        return UserRow(*rows[0]) if rows else None

    @storage_errors()
    def get_user_by_folded_nickname(self, nickname: str) -> UserRow | None:
        """The account whose nickname is ``nickname`` regardless of case. Where a database from before
        holds several (see schema.py): the one spelled exactly so, else the oldest."""
        query = (User.select(*USER_COLUMNS).where(fn.lower(User.nickname) == fn.lower(nickname))
                 .order_by((User.nickname == nickname).desc(), User.id).limit(1))
        rows = all_rows(query, self._reader)
        return UserRow(*rows[0]) if rows else None

    @storage_errors()
    def get_user(self, user_id: int) -> UserRow | None:
        return self._user(self._reader, user_id)

    @storage_errors()
    def existing_user_ids(self, user_ids: Iterable[int]) -> set[int]:
        """Which of these accounts still exist."""
        return self._existing_ids(User.id, user_ids)

    @storage_errors()
    def list_users(self, limit: int) -> list[UserRow]:
        if limit <= 0:
            return []
        query = User.select(*USER_COLUMNS).order_by(User.nickname).limit(limit)
        return [UserRow(*row) for row in all_rows(query, self._reader)]

    @storage_errors()
    def create_user(self, nickname: str, password_hash: str, user_flags: int) -> UserRow:
        with duplicate_raises(NicknameTaken(nickname)), self._writer.atomic():
            self._check_nickname_free(nickname, None)
            now = clock_ms()
            user_id = User.insert(
                nickname=nickname,
                user_flags=user_flags,
                password_hash=password_hash,
                created_at=now,
                last_seen=now,
            ).execute(self._writer)
        return UserRow(user_id, nickname, user_flags, password_hash, now, now)

    @storage_errors()
    def claim_account(self, nickname: str, password_hash: str, user_flags: int) -> tuple[UserRow, bool, int]:
        """The account named exactly ``nickname`` with this password: created, or taken over, its password
        replaced, ``user_flags`` added and its SSH keys removed, so that the password is the one way in.
        Returns the account, whether it is new and how many keys went; NicknameTaken when an account
        holds the name in another case."""
        with duplicate_raises(NicknameTaken(nickname)), self._writer.atomic():
            rows = all_rows(User.select(*USER_COLUMNS).where(User.nickname == nickname), self._writer)
            if not rows:
                return self.create_user(nickname, password_hash, user_flags), True, 0
            user = UserRow(*rows[0])
            removed = SSHKey.delete().where(SSHKey.user_id == user.id).execute(self._writer)
            User.update(password_hash=password_hash, user_flags=User.user_flags.bin_or(user_flags)).where(
                User.id == user.id).execute(self._writer)
        return replace(user, password_hash=password_hash, user_flags=user.user_flags | user_flags), False, removed

    @storage_errors()
    def set_password(self, user_id: int, password_hash: str) -> None:
        """An empty hash leaves the account reachable by SSH key only."""
        User.update(password_hash=password_hash).where(User.id == user_id).execute(self._writer)

    @storage_errors()
    def rename_user(self, user_id: int, nickname: str) -> None:
        with duplicate_raises(NicknameTaken(nickname)), self._writer.atomic():
            self._check_nickname_free(nickname, user_id)
            User.update(nickname=nickname).where(User.id == user_id).execute(self._writer)

    @storage_errors()
    def assign_flag(self, flag: int, nicknames: Sequence[str]) -> None:
        """Exactly the named users carry ``flag`` afterwards (e.g. admin rights from the configuration)."""
        named = User.nickname.in_(list(nicknames))
        with self._writer.atomic():
            User.update(user_flags=User.user_flags.bin_or(flag)).where(named).execute(self._writer)
            User.update(user_flags=User.user_flags.bin_and(~flag)).where(~named).execute(self._writer)

    @storage_errors()
    def touch_user(self, user_id: int, now_ms: int) -> None:
        User.update(last_seen=now_ms).where(User.id == user_id).execute(self._writer)

    @storage_errors()
    def delete_user(self, user_id: int) -> UserRow | None:
        """Keys and read state go through their foreign keys; bans lose the id and stay as history."""
        with self._writer.atomic():
            user = self._user(self._writer, user_id)
            if user is None:
                return None
            # author_nickname is left as posted: the messages stay readable, just no longer linked.
            Message.update(author_user_id=None).where(Message.author_user_id == user_id).execute(self._writer)
            User.delete().where(User.id == user_id).execute(self._writer)
        return user

    def _check_nickname_free(self, nickname: str, owner_id: int | None) -> None:
        """Within the write's transaction: no other account holds ``nickname`` in any case."""
        if self.dialect == "postgresql":
            self._writer.execute_sql("SELECT pg_advisory_xact_lock(%s)", (NICKNAMES_LOCK_KEY,))
        query = User.select(User.id).where(fn.lower(User.nickname) == fn.lower(nickname))
        if owner_id is not None:
            query = query.where(User.id != owner_id)
        if all_rows(query, self._writer):
            raise NicknameTaken(nickname)

    @staticmethod
    def _user(db: peewee.Database, user_id: int) -> UserRow | None:
        rows = all_rows(User.select(*USER_COLUMNS).where(User.id == user_id), db)
        return UserRow(*rows[0]) if rows else None

    @storage_errors()
    def list_ssh_keys(self, user_id: int) -> list[SSHKeyRow]:
        query = SSHKey.select(*SSH_KEY_COLUMNS).where(SSHKey.user_id == user_id).order_by(SSHKey.id)
        return [SSHKeyRow(*row) for row in all_rows(query, self._reader)]

    @storage_errors()
    def get_ssh_key(self, fingerprint: str) -> SSHKeyRow | None:
        rows = all_rows(SSHKey.select(*SSH_KEY_COLUMNS).where(SSHKey.fingerprint == fingerprint), self._reader)
        return SSHKeyRow(*rows[0]) if rows else None

    @storage_errors()
    def add_ssh_key(
        self, user_id: int, fingerprint: str, public_key: str, key_type: str, label: str | None
    ) -> SSHKeyRow:
        with duplicate_raises(SSHKeyExists(fingerprint)), self._writer.atomic():
            if all_rows(SSHKey.select(SSHKey.id).where(SSHKey.fingerprint == fingerprint), self._writer):
                raise SSHKeyExists(fingerprint)
            now = clock_ms()
            key_id = SSHKey.insert(
                user_id=user_id,
                fingerprint=fingerprint,
                public_key=public_key,
                key_type=key_type,
                label=label,
                added_at=now,
            ).execute(self._writer)
        return SSHKeyRow(key_id, user_id, fingerprint, public_key, key_type, label, now, None)

    @storage_errors()
    def relabel_ssh_key(self, user_id: int, key_id: int, label: str | None) -> bool:
        query = SSHKey.update(label=label).where((SSHKey.id == key_id) & (SSHKey.user_id == user_id))
        return query.execute(self._writer) > 0

    @storage_errors()
    def delete_ssh_key(self, user_id: int, key_id: int) -> bool:
        query = SSHKey.delete().where((SSHKey.id == key_id) & (SSHKey.user_id == user_id))
        return query.execute(self._writer) > 0

    @storage_errors()
    def touch_ssh_key(self, fingerprint: str, now_ms: int) -> None:
        SSHKey.update(last_used_at=now_ms).where(SSHKey.fingerprint == fingerprint).execute(self._writer)
