"""Who is there: user info, the server roster and channel rosters."""

from __future__ import annotations

from ...protocol import ErrorCode, messages
from ..cluster import RemoteSession
from ..context import ServerContext
from ..outbound import Refused, send
from ..permissions import is_admin
from ..session import Session

DEFAULT_USER_LIMIT = 100
MAX_USER_LIMIT = 500


def get_user_info(ctx: ServerContext, session: Session, msg: messages.GetUserInfo) -> None:
    user = ctx.store.get_user_by_nickname(msg.nickname)
    online = any(other.nickname == msg.nickname for other in ctx.sessions.by_id.values()) or any(
        other.nickname == msg.nickname for other in ctx.cluster.remote_sessions())
    send(session, messages.UserInfo(
        nickname=msg.nickname,
        is_registered=user is not None,
        user_id=user.id if user else None,
        online=online,
    ))


def list_users(ctx: ServerContext, session: Session, msg: messages.ListUsers) -> None:
    limit = min(msg.limit or DEFAULT_USER_LIMIT, MAX_USER_LIMIT)
    if msg.include_offline:
        if not is_admin(session):
            raise Refused.error(ErrorCode.PERMISSION_DENIED, "Admin permission required for include_offline")
        online_ids = ({local.user_id for local in ctx.sessions.by_id.values()}
                      | {remote.user_id for remote in ctx.cluster.remote_sessions()})
        users = [
            messages.UserEntry(nickname=user.nickname, is_registered=True, user_id=user.id,
                               online=user.id in online_ids)
            for user in ctx.store.list_users(limit)
        ]
    else:
        users, seen = [], set()
        # Newest connections first (this node's, then the others'), one entry per nickname.
        local = sorted(ctx.sessions.by_id.values(), key=lambda s: s.id, reverse=True)
        newest_first: list[Session | RemoteSession] = [
            *local, *sorted(ctx.cluster.remote_sessions(), key=lambda s: s.session_id, reverse=True)]
        for other in newest_first:
            if not other.nickname or other.nickname in seen:
                continue
            seen.add(other.nickname)
            users.append(messages.UserEntry(nickname=other.nickname, is_registered=other.user_id is not None,
                                            user_id=other.user_id, online=True))
            if len(users) >= limit:
                break
    # Asking for the roster is asking to be kept up to date: SERVER_PRESENCE follows from now on.
    ctx.sessions.watch_roster(session)
    send(session, messages.UserList(users=users))


def list_channel_users(ctx: ServerContext, session: Session, msg: messages.ListChannelUsers) -> None:
    if not msg.channel_id or ctx.store.get_channel(msg.channel_id) is None:
        raise Refused.error(ErrorCode.CHANNEL_NOT_FOUND, "Channel does not exist")
    if msg.subchannel_id is not None:
        raise Refused.error(ErrorCode.SUBCHANNEL_NOT_FOUND, "Subchannel does not exist")
    members = [
        messages.ChannelUserEntry(session_id=member.id, nickname=member.nickname,
                                  is_registered=member.user_id is not None, user_id=member.user_id,
                                  user_flags=member.user_flags)
        for member in ctx.sessions.channel_members(msg.channel_id)
        if member.nickname
    ]
    members += [
        messages.ChannelUserEntry(session_id=member.session_id, nickname=member.nickname,
                                  is_registered=member.user_id is not None, user_id=member.user_id,
                                  user_flags=member.user_flags)
        for member in ctx.cluster.remote_sessions()
        if member.channel_id == msg.channel_id
    ]
    send(session, messages.ChannelUserList(
        channel_id=msg.channel_id, users=sorted(members, key=lambda member: member.session_id)
    ))


HANDLERS = {
    messages.GetUserInfo: get_user_info,
    messages.ListUsers: list_users,
    messages.ListChannelUsers: list_channel_users,
}
