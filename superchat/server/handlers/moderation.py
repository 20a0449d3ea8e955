"""Admin actions: bans, account and channel deletion. Each one is logged naming admin and target."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from ...protocol import encode_message, messages
from ...protocol.registry import Message
from ...storage import StorageError
from .. import bans as banlist
from .. import events
from ..context import ServerContext
from ..event import BansLifted, ChannelDeleted, IpBanned, UserBanned, UserDeleted
from ..outbound import Refused, send
from ..preconditions import admin_only
from ..session import Session

log = logging.getLogger("superchat.moderation")

# Timed bans end within a century; longer ones would not fit the wire's and the database's 64-bit
# millisecond timestamps for long (and a permanent ban is simply one without a duration).
MAX_BAN_SECONDS = 100 * 366 * 24 * 3600


def _audit(ctx: ServerContext, session: Session, action: str, details: str) -> None:
    """Log line and audit row. The action has already happened: a failed audit write must not turn its
    answer into a database error (the admin would retry and ban twice) nor skip its effects."""
    log.info("Admin %s %s", session.nickname, details)
    try:
        ctx.writer.run(ctx.store.log_admin_action, session.user_id, session.nickname, action, details)
    except StorageError as exc:
        if not ctx.writer.disk_space.tells(exc):
            log.error("Admin %s: %s not recorded in the audit table: database error: %s", session.nickname, action,
                      exc)


def _until(duration_seconds: int | None) -> int | None:
    return None if duration_seconds is None else banlist.now_ms() + duration_seconds * 1000


def _duration_problem(duration_seconds: int | None) -> str:
    """Why a ban duration cannot be used, or "" (no duration means a permanent ban)."""
    if duration_seconds is None:
        return ""
    if duration_seconds == 0:
        return "Ban duration must be at least 1 second (omit it for a permanent ban)"
    if duration_seconds > MAX_BAN_SECONDS:
        return f"Ban duration must be at most {MAX_BAN_SECONDS} seconds (omit it for a permanent ban)"
    return ""


def _account_of(ctx: ServerContext, nickname: str | None) -> int | None:
    """The id of the account registered under ``nickname``, if any."""
    if not nickname:
        return None
    user = ctx.store.get_user_by_nickname(nickname)
    return None if user is None else user.id


def _user_ban_failed(text: str) -> messages.UserBanned:
    return messages.UserBanned(success=False, ban_id=0, message=text)


@admin_only(reply=_user_ban_failed)
def ban_user(ctx: ServerContext, session: Session, msg: messages.BanUser) -> None:
    if msg.user_id is None and not msg.nickname:
        raise Refused(_user_ban_failed("Must provide either UserID or Nickname"))
    problem = _duration_problem(msg.duration_seconds)
    if problem:
        raise Refused(_user_ban_failed(problem))
    nickname, user_id = msg.nickname, msg.user_id
    if user_id is not None:
        user = ctx.store.get_user(user_id)
        if user is None:
            raise Refused(_user_ban_failed("User not found"))
        nickname = nickname or user.nickname
    else:
        # A ban by nickname also names the account registered under it, so that the ban follows the
        # account through a rename (a shadowbanned user stays logged in and could rename) and can be
        # lifted by either identity.
        user_id = _account_of(ctx, nickname)
    if user_id == session.user_id or nickname == session.nickname:
        raise Refused(_user_ban_failed("Cannot ban yourself"))
    ban = ctx.writer.run(ctx.store.add_user_ban, user_id, nickname, msg.reason, msg.shadowban,
                         _until(msg.duration_seconds), session.nickname)
    target = nickname or f"user_id:{user_id}"
    _audit(ctx, session, "BAN_USER", f"banned user {target} (ban_id={ban.id}, reason={msg.reason!r}, "
                                     f"shadowban={msg.shadowban}, {banlist.describe(ban).split('.')[0]})")
    events.emit(ctx, UserBanned(ban), exclude=session)
    send(session, messages.UserBanned(success=True, ban_id=ban.id, message=f"User {target} banned successfully"))


def _requested_network(text: str, failed: Callable[[str], Message]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The address or range an admin named; refused with ``failed`` when it is not one."""
    if not text.strip():
        raise Refused(failed("IP/CIDR address required"))
    try:
        return banlist.parse_network(text)
    except ValueError:
        raise Refused(failed(f"Invalid IP address or CIDR range: {text}")) from None


def _ip_ban_failed(text: str) -> messages.IPBanned:
    return messages.IPBanned(success=False, ban_id=0, message=text)


@admin_only(reply=_ip_ban_failed)
def ban_ip(ctx: ServerContext, session: Session, msg: messages.BanIP) -> None:
    network = _requested_network(msg.ip_cidr, _ip_ban_failed)
    problem = _duration_problem(msg.duration_seconds)
    if problem:
        raise Refused(_ip_ban_failed(problem))
    if banlist.address_in(session.host, network):
        raise Refused(_ip_ban_failed("Refusing to ban a range that contains your own address"))
    ban = ctx.writer.run(ctx.store.add_ip_ban, str(network), msg.reason, _until(msg.duration_seconds), session.nickname)
    _audit(ctx, session, "BAN_IP", f"banned IP {network} (ban_id={ban.id}, reason={msg.reason!r}, "
                                   f"{banlist.describe(ban).split('.')[0]})")
    events.emit(ctx, IpBanned(ban))
    send(session, messages.IPBanned(success=True, ban_id=ban.id, message=f"IP {network} banned successfully"))


def _user_unban_failed(text: str) -> messages.UserUnbanned:
    return messages.UserUnbanned(success=False, message=text)


@admin_only(reply=_user_unban_failed)
def unban_user(ctx: ServerContext, session: Session, msg: messages.UnbanUser) -> None:
    if msg.user_id is None and not msg.nickname:
        raise Refused(_user_unban_failed("Must provide either UserID or Nickname"))
    # Either identity names the account: a ban recorded under its id or its nickname is lifted.
    nickname, user_id = msg.nickname, msg.user_id
    if user_id is None:
        user_id = _account_of(ctx, nickname)
    elif not nickname:
        user = ctx.store.get_user(user_id)
        nickname = None if user is None else user.nickname
    removed = ctx.writer.run(ctx.store.remove_user_bans, user_id, nickname, banlist.now_ms())
    if not removed:
        raise Refused(_user_unban_failed("No active ban found for this user"))
    target = nickname or f"user_id:{user_id}"
    _audit(ctx, session, "UNBAN_USER", f"unbanned user {target} ({removed} bans removed)")
    ctx.bans.reload()
    events.emit(ctx, BansLifted())
    send(session, messages.UserUnbanned(success=True,
                                        message=f"User {target} unbanned successfully ({removed} bans removed)"))


def _ip_unban_failed(text: str) -> messages.IPUnbanned:
    return messages.IPUnbanned(success=False, message=text)


@admin_only(reply=_ip_unban_failed)
def unban_ip(ctx: ServerContext, session: Session, msg: messages.UnbanIP) -> None:
    network = _requested_network(msg.ip_cidr, _ip_unban_failed)
    removed = ctx.writer.run(ctx.store.remove_ip_bans, str(network), banlist.now_ms())
    if not removed:
        raise Refused(_ip_unban_failed("No active ban found for this IP"))
    _audit(ctx, session, "UNBAN_IP", f"unbanned IP {network} ({removed} bans removed)")
    ctx.bans.reload()
    events.emit(ctx, BansLifted())
    send(session, messages.IPUnbanned(success=True,
                                      message=f"IP {network} unbanned successfully ({removed} bans removed)"))


@admin_only()
def list_bans(ctx: ServerContext, session: Session, msg: messages.ListBans) -> None:
    send(session, messages.BanList(bans=[
        messages.BanEntry(
            id=ban.id, type=ban.ban_type, user_id=ban.user_id, nickname=ban.nickname, ip_cidr=ban.ip_cidr,
            reason=ban.reason, shadowban=ban.shadowban, banned_at=ban.banned_at, banned_until=ban.banned_until,
            banned_by=ban.banned_by,
        )
        for ban in ctx.store.list_bans(msg.include_expired, banlist.now_ms())
    ]))


def _user_deletion_failed(text: str) -> messages.UserDeleted:
    return messages.UserDeleted(success=False, message=text)


@admin_only(reply=_user_deletion_failed)
def delete_user(ctx: ServerContext, session: Session, msg: messages.DeleteUser) -> None:
    if msg.user_id == session.user_id:
        raise Refused(_user_deletion_failed("Cannot delete your own account"))
    user = ctx.writer.run(ctx.store.delete_user, msg.user_id)
    if user is None:
        raise Refused(_user_deletion_failed("User not found"))
    _audit(ctx, session, "DELETE_USER", f"deleted user {user.nickname} (user_id={user.id})")
    expelled = sum(1 for other in ctx.sessions.sessions_of_user(user.id) if not other.finishing)
    expelled += sum(1 for other in ctx.cluster.remote_sessions() if other.user_id == user.id)
    notice = messages.UserDeleted(
        success=True,
        message=f"User '{user.nickname}' deleted successfully "
                f"(messages anonymized, {expelled} sessions disconnected)",
    )
    events.emit(ctx, UserDeleted(user.id, encode_message(notice)))


def _channel_deletion_failed(text: str) -> messages.ChannelDeleted:
    return messages.ChannelDeleted(success=False, channel_id=0, message=text)


@admin_only(reply=_channel_deletion_failed)
def delete_channel(ctx: ServerContext, session: Session, msg: messages.DeleteChannel) -> None:
    channel = ctx.writer.run(ctx.store.delete_channel, msg.channel_id)
    if channel is None:
        raise Refused(messages.ChannelDeleted(success=False, channel_id=msg.channel_id, message="Channel not found"))
    _audit(ctx, session, "DELETE_CHANNEL",
           f"deleted channel {channel.name} (channel_id={channel.id}, reason={msg.reason!r})")
    notice = messages.ChannelDeleted(
        success=True, channel_id=channel.id, message=f"Channel '{channel.name}' deleted successfully"
    )
    events.emit(ctx, ChannelDeleted(channel.id, encode_message(notice)))


HANDLERS = {
    messages.BanUser: ban_user,
    messages.BanIP: ban_ip,
    messages.UnbanUser: unban_user,
    messages.UnbanIP: unban_ip,
    messages.ListBans: list_bans,
    messages.DeleteUser: delete_user,
    messages.DeleteChannel: delete_channel,
}
