"""The records that arrive in lists inside messages: channels, posts, users, servers, keys, bans."""

from __future__ import annotations

from .fields import BOOL, I64, STRING, TIMESTAMP, U8, U16, U32, U64, Record, optional, record


@record
class ChannelEntry(Record):
    id: int = U64
    name: str = STRING
    description: str = STRING
    user_count: int = U32
    is_operator: bool = BOOL
    type: int = U8
    retention_hours: int = U32


@record
class MessageEntry(Record):
    id: int = U64
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    parent_id: int | None = optional(U64)
    author_user_id: int | None = optional(U64)
    author_nickname: str = STRING
    content: str = STRING
    created_at: int = TIMESTAMP
    edited_at: int | None = optional(TIMESTAMP)
    reply_count: int = U32


@record
class UnreadTarget(Record):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    thread_id: int | None = optional(U64)


@record
class UnreadCount(Record):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    thread_id: int | None = optional(U64)
    unread_count: int = U32


@record
class UserEntry(Record):
    nickname: str = STRING
    is_registered: bool = BOOL
    user_id: int | None = optional(U64)
    online: bool = BOOL


@record
class ChannelUserEntry(Record):
    session_id: int = U64
    nickname: str = STRING
    is_registered: bool = BOOL
    user_id: int | None = optional(U64)
    user_flags: int = U8


@record
class ServerInfo(Record):
    hostname: str = STRING
    port: int = U16
    name: str = STRING
    description: str = STRING
    user_count: int = U32
    max_users: int = U32
    uptime_seconds: int = U64
    is_public: bool = BOOL
    channel_count: int = U32


@record
class SSHKeyInfo(Record):
    id: int = I64
    fingerprint: str = STRING
    key_type: str = STRING
    label: str = STRING
    added_at: int = I64
    last_used_at: int = I64


@record
class BanEntry(Record):
    id: int = U64
    type: str = STRING
    user_id: int | None = optional(U64)
    nickname: str | None = optional(STRING)
    ip_cidr: str | None = optional(STRING)
    reason: str = STRING
    shadowban: bool = BOOL
    banned_at: int = I64
    banned_until: int | None = optional(I64)
    banned_by: str = STRING
