"""Bans and the admins' audit trail."""

import operator
from functools import reduce

import peewee

from .engine import Connections, all_rows, clock_ms, storage_errors
from .models import BAN_COLUMNS, AdminAction, Ban
from .rows import BanRow


def _ban_active(now_ms: int) -> peewee.Expression:
    return Ban.banned_until.is_null() | (Ban.banned_until > now_ms)


def _user_ban_matches(user_id: int | None, nickname: str | None) -> peewee.Expression | None:
    """Either identity may be unknown; a ban on any known one matches."""
    matches = []
    if user_id is not None:
        matches.append(Ban.user_id == user_id)
    if nickname is not None:
        matches.append(Ban.nickname == nickname)
    if not matches:
        return None
    return (Ban.ban_type == "user") & reduce(operator.or_, matches)


class ModerationQueries(Connections):
    """User and address bans, active or expired, and the record of admin actions."""

    @storage_errors()
    def list_bans(self, include_expired: bool, now_ms: int) -> list[BanRow]:
        query = Ban.select(*BAN_COLUMNS).order_by(Ban.id)
        if not include_expired:
            query = query.where(_ban_active(now_ms))
        return [BanRow(*row) for row in all_rows(query, self._reader)]

    @storage_errors()
    def active_user_ban(self, user_id: int | None, nickname: str | None, now_ms: int) -> BanRow | None:
        matches = _user_ban_matches(user_id, nickname)
        if matches is None:
            return None
        query = Ban.select(*BAN_COLUMNS).where(matches & _ban_active(now_ms)).order_by(Ban.id.desc()).limit(1)
        rows = all_rows(query, self._reader)
        return BanRow(*rows[0]) if rows else None

    @storage_errors()
    def active_ip_bans(self, now_ms: int) -> list[BanRow]:
        query = Ban.select(*BAN_COLUMNS).where((Ban.ban_type == "ip") & _ban_active(now_ms)).order_by(Ban.id)
        return [BanRow(*row) for row in all_rows(query, self._reader)]

    @storage_errors()
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

    @storage_errors()
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
        fields["banned_at"] = clock_ms()
        ban_id = Ban.insert(**fields).execute(self._writer)
        return BanRow(id=ban_id, **fields)

    @storage_errors()
    def remove_user_bans(self, user_id: int | None, nickname: str | None, now_ms: int) -> int:
        """Expired bans stay as history."""
        matches = _user_ban_matches(user_id, nickname)
        if matches is None:
            return 0
        return Ban.delete().where(matches & _ban_active(now_ms)).execute(self._writer)

    @storage_errors()
    def remove_ip_bans(self, ip_cidr: str, now_ms: int) -> int:
        """Expired bans stay as history."""
        query = Ban.delete().where((Ban.ban_type == "ip") & (Ban.ip_cidr == ip_cidr) & _ban_active(now_ms))
        return query.execute(self._writer)

    @storage_errors()
    def log_admin_action(self, admin_user_id: int, admin_nickname: str, action: str, details: str) -> None:
        AdminAction.insert(
            admin_user_id=admin_user_id,
            admin_nickname=admin_nickname,
            action=action,
            details=details,
            performed_at=clock_ms(),
        ).execute(self._writer)
