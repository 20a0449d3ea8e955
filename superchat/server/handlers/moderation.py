"""Admin actions: bans, account and channel deletion. Each one is logged naming admin and target."""

from __future__ import annotations

import logging

from ...protocol import ErrorCode, encode_message, flags, messages
from ...storage import StorageError
from .. import bans as banlist
from .. import events
from ..context import ServerContext
from ..event import BansLifted, ChannelDeleted, IpBanned, UserBanned, UserDeleted
from ..outbound import Refused, send
from ..session import Session

log = logging.getLogger("superchat.moderation")

DENIED = "Permission denied: admin access required"
# Timed bans end within a century; longer ones would not fit the wire's and the database's 64-bit
# millisecond timestamps for long (and a permanent ban is simply one without a duration).
MAX_BAN_SECONDS = 100 * 366 * 24 * 3600


def _is_admin(session: Session) -> bool:
    return session.user_id is not None and bool(session.user_flags & flags.ADMIN)


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


def ban_user(ctx: ServerContext, session: Session, msg) -> None:
    def answer(text: str, ban_id: int | None = None) -> None:
        send(session, messages.UserBanned(success=ban_id is not None, ban_id=ban_id or 0, message=text))

    if not _is_admin(session):
        answer(DENIED)
        return
    if msg.user_id is None and not msg.nickname:
        answer("Must provide either UserID or Nickname")
        return
    problem = _duration_problem(msg.duration_seconds)
    if problem:
        answer(problem)
        return
    nickname, user_id = msg.nickname, msg.user_id
    if user_id is not None:
        user = ctx.store.get_user(user_id)
        if user is None:
            answer("User not found")
            return
        nickname = nickname or user.nickname
    else:
        # A ban by nickname also names the account registered under it, so that the ban follows the
        # account through a rename (a shadowbanned user stays logged in and could rename) and can be
        # lifted by either identity.
        user_id = _account_of(ctx, nickname)
    if user_id == session.user_id or nickname == session.nickname:
        answer("Cannot ban yourself")
        return
    ban = ctx.writer.run(ctx.store.add_user_ban, user_id, nickname, msg.reason, msg.shadowban,
                         _until(msg.duration_seconds), session.nickname)
    target = nickname or f"user_id:{user_id}"
    _audit(ctx, session, "BAN_USER", f"banned user {target} (ban_id={ban.id}, reason={msg.reason!r}, "
                                     f"shadowban={msg.shadowban}, {banlist.describe(ban).split('.')[0]})")
    events.emit(ctx, UserBanned(ban), exclude=session)
    answer(f"User {target} banned successfully", ban.id)


def _requested_network(text: str):
    """The address or range an admin named, or why it is not one."""
    if not text.strip():
        return None, "IP/CIDR address required"
    try:
        return banlist.parse_network(text), ""
    except ValueError:
        return None, f"Invalid IP address or CIDR range: {text}"


def ban_ip(ctx: ServerContext, session: Session, msg) -> None:
    def answer(text: str, ban_id: int | None = None) -> None:
        send(session, messages.IPBanned(success=ban_id is not None, ban_id=ban_id or 0, message=text))

    if not _is_admin(session):
        answer(DENIED)
        return
    network, problem = _requested_network(msg.ip_cidr)
    if problem:
        answer(problem)
        return
    problem = _duration_problem(msg.duration_seconds)
    if problem:
        answer(problem)
        return
    if banlist.address_in(session.host, network):
        answer("Refusing to ban a range that contains your own address")
        return
    ban = ctx.writer.run(ctx.store.add_ip_ban, str(network), msg.reason, _until(msg.duration_seconds), session.nickname)
    _audit(ctx, session, "BAN_IP", f"banned IP {network} (ban_id={ban.id}, reason={msg.reason!r}, "
                                   f"{banlist.describe(ban).split('.')[0]})")
    events.emit(ctx, IpBanned(ban))
    answer(f"IP {network} banned successfully", ban.id)


def unban_user(ctx: ServerContext, session: Session, msg) -> None:
    def answer(text: str, success: bool = False) -> None:
        send(session, messages.UserUnbanned(success=success, message=text))

    if not _is_admin(session):
        answer(DENIED)
        return
    if msg.user_id is None and not msg.nickname:
        answer("Must provide either UserID or Nickname")
        return
    # Either identity names the account: a ban recorded under its id or its nickname is lifted.
    nickname, user_id = msg.nickname, msg.user_id
    if user_id is None:
        user_id = _account_of(ctx, nickname)
    elif not nickname:
        user = ctx.store.get_user(user_id)
        nickname = None if user is None else user.nickname
    removed = ctx.writer.run(ctx.store.remove_user_bans, user_id, nickname, banlist.now_ms())
    if not removed:
        answer("No active ban found for this user")
        return
    target = nickname or f"user_id:{user_id}"
    _audit(ctx, session, "UNBAN_USER", f"unbanned user {target} ({removed} bans removed)")
    ctx.bans.reload()
    events.emit(ctx, BansLifted())
    answer(f"User {target} unbanned successfully ({removed} bans removed)", True)


def unban_ip(ctx: ServerContext, session: Session, msg) -> None:
    def answer(text: str, success: bool = False) -> None:
        send(session, messages.IPUnbanned(success=success, message=text))

    if not _is_admin(session):
        answer(DENIED)
        return
    network, problem = _requested_network(msg.ip_cidr)
    if problem:
        answer(problem)
        return
    removed = ctx.writer.run(ctx.store.remove_ip_bans, str(network), banlist.now_ms())
    if not removed:
        answer("No active ban found for this IP")
        return
    _audit(ctx, session, "UNBAN_IP", f"unbanned IP {network} ({removed} bans removed)")
    ctx.bans.reload()
    events.emit(ctx, BansLifted())
    answer(f"IP {network} unbanned successfully ({removed} bans removed)", True)


def list_bans(ctx: ServerContext, session: Session, msg) -> None:
    if not _is_admin(session):
        raise Refused(ErrorCode.PERMISSION_DENIED, DENIED)
    send(session, messages.BanList(bans=[
        messages.BanEntry(
            id=ban.id, type=ban.ban_type, user_id=ban.user_id, nickname=ban.nickname, ip_cidr=ban.ip_cidr,
            reason=ban.reason, shadowban=ban.shadowban, banned_at=ban.banned_at, banned_until=ban.banned_until,
            banned_by=ban.banned_by,
        )
        for ban in ctx.store.list_bans(msg.include_expired, banlist.now_ms())
    ]))


def delete_user(ctx: ServerContext, session: Session, msg) -> None:
    def refuse(text: str) -> None:
        send(session, messages.UserDeleted(success=False, message=text))

    if not _is_admin(session):
        refuse(DENIED)
        return
    if msg.user_id == session.user_id:
        refuse("Cannot delete your own account")
        return
    user = ctx.writer.run(ctx.store.delete_user, msg.user_id)
    if user is None:
        refuse("User not found")
        return
    _audit(ctx, session, "DELETE_USER", f"deleted user {user.nickname} (user_id={user.id})")
    expelled = sum(1 for other in ctx.sessions.sessions_of_user(user.id) if not other.finishing)
    expelled += sum(1 for other in ctx.cluster.remote_sessions() if other.user_id == user.id)
    notice = messages.UserDeleted(
        success=True,
        message=f"User '{user.nickname}' deleted successfully "
                f"(messages anonymized, {expelled} sessions disconnected)",
    )
    events.emit(ctx, UserDeleted(user.id, encode_message(notice)))


def delete_channel(ctx: ServerContext, session: Session, msg) -> None:
    def refuse(text: str, channel_id: int = 0) -> None:
        send(session, messages.ChannelDeleted(success=False, channel_id=channel_id, message=text))

    if not _is_admin(session):
        refuse(DENIED)
        return
    channel = ctx.writer.run(ctx.store.delete_channel, msg.channel_id)
    if channel is None:
        refuse("Channel not found", msg.channel_id)
        return
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
