"""What the store takes and gives: rows as read, posts to write, and its errors."""

from dataclasses import dataclass
from enum import Enum

CHAT_CHANNEL_NAME = "chat"
CHANNEL_TYPE_CHAT = 0
CHANNEL_TYPE_FORUM = 1

# Both databases store signed 64-bit integers, and the drivers refuse to send a larger one. The
# protocol's ids are unsigned 64-bit: one past this names nothing that can exist, and as a bound
# (before_id, a duration's end) it means no bound short of the end.
MAX_STORED_INTEGER = 2**63 - 1


@dataclass(frozen=True)
class ChannelRow:
    id: int
    name: str
    display_name: str
    description: str | None
    channel_type: int
    retention_hours: int
    created_by: int | None
    created_at: int


@dataclass(frozen=True)
class MessageRow:
    id: int
    channel_id: int
    subchannel_id: int | None
    parent_id: int | None
    thread_root_id: int
    author_user_id: int | None
    author_nickname: str
    content: str
    created_at: int
    edited_at: int | None
    deleted_at: int | None
    # Posted while its author was shadowbanned: only the author and admins ever see it.
    shadowed: bool
    # Direct, not-deleted, not-shadowed replies; only computed for roots, replies always carry 0.
    reply_count: int


@dataclass(frozen=True)
class UserRow:
    id: int
    nickname: str
    user_flags: int
    password_hash: str
    created_at: int
    last_seen: int | None


@dataclass(frozen=True)
class SSHKeyRow:
    id: int
    user_id: int
    fingerprint: str
    public_key: str
    key_type: str
    label: str | None
    added_at: int
    last_used_at: int | None


@dataclass(frozen=True)
class BanRow:
    id: int
    ban_type: str  # "user" or "ip"
    user_id: int | None
    nickname: str | None
    ip_cidr: str | None
    reason: str
    shadowban: bool
    banned_at: int
    banned_until: int | None  # None: permanent
    banned_by: str


@dataclass(frozen=True)
class DiscoveredServerRow:
    """A server listed by this directory."""

    id: int
    hostname: str
    port: int
    name: str
    description: str
    user_count: int
    max_users: int
    uptime_seconds: int
    is_public: bool
    channel_count: int
    last_seen: int  # the last heartbeat or passed health check, in ms
    source_ip: str  # the address the registration came from
    created_at: int


@dataclass(frozen=True)
class NewPost:
    channel_id: int
    subchannel_id: int | None
    parent_id: int | None
    author_user_id: int | None
    author_nickname: str
    content: str
    shadowed: bool = False


@dataclass(frozen=True)
class Viewer:
    """Who lists messages: shadowed posts are shown only to their author and to admins."""

    user_id: int | None
    nickname: str
    sees_shadowed: bool


class PostRejected(Enum):
    NO_CHANNEL = "no_channel"
    # The parent is missing, soft-deleted or belongs to another channel.
    NO_PARENT = "no_parent"


@dataclass(frozen=True)
class Expired:
    """What a retention sweep removed: a count of messages, and the threads they formed."""

    messages: int
    threads: list[tuple[int, int]]  # (channel_id, thread root id)


class ChannelExists(Exception):
    pass


class NicknameTaken(Exception):
    pass


class SSHKeyExists(Exception):
    pass


class StorageError(Exception):
    pass


class DiskFull(StorageError):
    """The disk under the database (SQLite's file, or the PostgreSQL server's) is full: the write
    was not made, and one may succeed again once space is freed."""
