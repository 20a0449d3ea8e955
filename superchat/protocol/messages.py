"""Every message type of the SuperChat protocol, one declaration each.

A declaration names the type code, the protocol's name for it and its fields in
wire order; the same declaration encodes and decodes, so the two directions
cannot drift apart. Layouts follow the bytes the reference server sends where
its prose disagrees (for example AUTH_RESPONSE's trailing user_flags byte).
The records of lists are in ``records``, the registry of types in ``registry``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .fields import BOOL, I64, STRING, TIMESTAMP, U8, U16, U32, U64, array, optional, trailing, when
from .records import (
    BanEntry,
    ChannelEntry,
    ChannelUserEntry,
    MessageEntry,
    ServerInfo,
    SSHKeyInfo,
    UnreadCount,
    UnreadTarget,
    UserEntry,
)
from .registry import BY_CODE as BY_CODE
from .registry import UNIMPLEMENTED_NAMES as UNIMPLEMENTED_NAMES
from .registry import Message, message
from .registry import decode_payload as decode_payload
from .registry import encode_payload as encode_payload
from .registry import type_name as type_name

# ---- client to server ----


@message(0x01, "AUTH_REQUEST")
class AuthRequest(Message):
    nickname: str = STRING
    password: str = STRING


@message(0x02, "SET_NICKNAME")
class SetNickname(Message):
    nickname: str = STRING


@message(0x03, "REGISTER_USER")
class RegisterUser(Message):
    password: str = STRING


@message(0x04, "LIST_CHANNELS")
class ListChannels(Message):
    from_channel_id: int = U64
    limit: int = U16


@message(0x05, "JOIN_CHANNEL")
class JoinChannel(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)


@message(0x06, "LEAVE_CHANNEL")
class LeaveChannel(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)


@message(0x07, "CREATE_CHANNEL")
class CreateChannel(Message):
    name: str = STRING
    display_name: str = STRING
    description: str | None = optional(STRING)
    channel_type: int = U8
    retention_hours: int = U32


@message(0x09, "LIST_MESSAGES")
class ListMessages(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    limit: int = U16
    before_id: int | None = optional(U64)
    parent_id: int | None = optional(U64)
    after_id: int | None = optional(U64)


@message(0x0A, "POST_MESSAGE")
class PostMessage(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    parent_id: int | None = optional(U64)
    content: str = STRING


@message(0x0B, "EDIT_MESSAGE")
class EditMessage(Message):
    message_id: int = U64
    new_content: str = STRING


@message(0x0C, "DELETE_MESSAGE")
class DeleteMessage(Message):
    message_id: int = U64


@message(0x0D, "ADD_SSH_KEY")
class AddSSHKey(Message):
    public_key: str = STRING
    label: str = STRING


@message(0x0E, "CHANGE_PASSWORD")
class ChangePassword(Message):
    old_password: str = STRING
    new_password: str = STRING


@message(0x0F, "GET_USER_INFO")
class GetUserInfo(Message):
    nickname: str = STRING


@message(0x10, "PING")
class Ping(Message):
    timestamp: int = I64


@message(0x11, "DISCONNECT")
class Disconnect(Message):
    reason: str | None = optional(STRING)


@message(0x12, "UPDATE_SSH_KEY_LABEL")
class UpdateSSHKeyLabel(Message):
    key_id: int = I64
    new_label: str = STRING


@message(0x13, "DELETE_SSH_KEY")
class DeleteSSHKey(Message):
    key_id: int = I64


@message(0x14, "LIST_SSH_KEYS")
class ListSSHKeys(Message):
    pass


@message(0x16, "LIST_USERS")
class ListUsers(Message):
    limit: int = U16
    # Older clients send only the limit; include_offline then reads as None.
    include_offline: bool | None = trailing(BOOL)


@message(0x17, "LIST_CHANNEL_USERS")
class ListChannelUsers(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)


@message(0x18, "GET_UNREAD_COUNTS")
class GetUnreadCounts(Message):
    since_timestamp: int | None = optional(I64)
    targets: Sequence[UnreadTarget] = array(U16, UnreadTarget)


@message(0x1C, "LOGOUT")
class Logout(Message):
    pass


@message(0x1D, "UPDATE_READ_STATE")
class UpdateReadState(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    timestamp: int = I64


@message(0x51, "SUBSCRIBE_THREAD")
class SubscribeThread(Message):
    thread_id: int = U64


@message(0x52, "UNSUBSCRIBE_THREAD")
class UnsubscribeThread(Message):
    thread_id: int = U64


@message(0x53, "SUBSCRIBE_CHANNEL")
class SubscribeChannel(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)


@message(0x54, "UNSUBSCRIBE_CHANNEL")
class UnsubscribeChannel(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)


@message(0x55, "LIST_SERVERS")
class ListServers(Message):
    limit: int = U16


@message(0x56, "REGISTER_SERVER")
class RegisterServer(Message):
    hostname: str = STRING
    port: int = U16
    name: str = STRING
    description: str = STRING
    max_users: int = U32
    is_public: bool = BOOL
    channel_count: int = U32


@message(0x57, "HEARTBEAT")
class Heartbeat(Message):
    hostname: str = STRING
    port: int = U16
    user_count: int = U32
    uptime_seconds: int = U64
    channel_count: int = U32


@message(0x58, "VERIFY_RESPONSE")
class VerifyResponse(Message):
    challenge: int = U64


@message(0x59, "BAN_USER")
class BanUser(Message):
    user_id: int | None = optional(U64)
    nickname: str | None = optional(STRING)
    reason: str = STRING
    shadowban: bool = BOOL
    duration_seconds: int | None = optional(U64)


@message(0x5A, "BAN_IP")
class BanIP(Message):
    ip_cidr: str = STRING
    reason: str = STRING
    duration_seconds: int | None = optional(U64)


@message(0x5B, "UNBAN_USER")
class UnbanUser(Message):
    user_id: int | None = optional(U64)
    nickname: str | None = optional(STRING)


@message(0x5C, "UNBAN_IP")
class UnbanIP(Message):
    ip_cidr: str = STRING


@message(0x5D, "LIST_BANS")
class ListBans(Message):
    include_expired: bool = BOOL


@message(0x5E, "DELETE_USER")
class DeleteUser(Message):
    user_id: int = U64


@message(0x5F, "DELETE_CHANNEL")
class DeleteChannel(Message):
    channel_id: int = U64
    reason: str = STRING


# ---- server to client ----


@message(0x81, "AUTH_RESPONSE")
class AuthResponse(Message):
    success: bool = BOOL
    user_id: int = when('success', U64)
    nickname: str = when('success', STRING)
    message: str = STRING
    user_flags: int | None = trailing(U8)


@message(0x82, "NICKNAME_RESPONSE")
class NicknameResponse(Message):
    success: bool = BOOL
    message: str = STRING


@message(0x83, "REGISTER_RESPONSE")
class RegisterResponse(Message):
    success: bool = BOOL
    user_id: int = when('success', U64)
    message: str = STRING


@message(0x84, "CHANNEL_LIST")
class ChannelList(Message):
    channels: Sequence[ChannelEntry] = array(U16, ChannelEntry)


@message(0x85, "JOIN_RESPONSE")
class JoinResponse(Message):
    success: bool = BOOL
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    message: str = STRING


@message(0x86, "LEAVE_RESPONSE")
class LeaveResponse(Message):
    success: bool = BOOL
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    message: str = STRING


@message(0x87, "CHANNEL_CREATED")
class ChannelCreated(Message):
    success: bool = BOOL
    channel_id: int = when('success', U64)
    name: str = when('success', STRING)
    description: str = when('success', STRING)
    type: int = when('success', U8)
    retention_hours: int = when('success', U32)
    message: str = STRING


@message(0x89, "MESSAGE_LIST")
class MessageList(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    parent_id: int | None = optional(U64)
    messages: Sequence[MessageEntry] = array(U16, MessageEntry)


@message(0x8A, "MESSAGE_POSTED")
class MessagePosted(Message):
    success: bool = BOOL
    message_id: int = U64
    message: str = STRING


@message(0x8B, "MESSAGE_EDITED")
class MessageEdited(Message):
    success: bool = BOOL
    message_id: int = U64
    edited_at: int = when('success', TIMESTAMP)
    new_content: str = when('success', STRING)
    message: str = STRING


@message(0x8C, "MESSAGE_DELETED")
class MessageDeleted(Message):
    success: bool = BOOL
    message_id: int = U64
    deleted_at: int = when('success', TIMESTAMP)
    message: str = STRING


@message(0x8D, "NEW_MESSAGE")
class NewMessage(MessageEntry, Message):
    """A post as its channel's subscribers get it: the fields of a listed one."""


@message(0x8E, "PASSWORD_CHANGED")
class PasswordChanged(Message):
    success: bool = BOOL
    error_message: str = STRING


@message(0x8F, "USER_INFO")
class UserInfo(Message):
    nickname: str = STRING
    is_registered: bool = BOOL
    user_id: int | None = optional(U64)
    online: bool = BOOL


@message(0x90, "PONG")
class Pong(Message):
    client_timestamp: int = I64


@message(0x91, "ERROR")
class Error(Message):
    error_code: int = U16
    message: str = STRING


@message(0x92, "SSH_KEY_LABEL_UPDATED")
class SSHKeyLabelUpdated(Message):
    success: bool = BOOL
    error_message: str = STRING


@message(0x93, "SSH_KEY_DELETED")
class SSHKeyDeleted(Message):
    success: bool = BOOL
    error_message: str = STRING


@message(0x94, "SSH_KEY_LIST")
class SSHKeyList(Message):
    keys: Sequence[SSHKeyInfo] = array(U32, SSHKeyInfo)


@message(0x95, "SSH_KEY_ADDED")
class SSHKeyAdded(Message):
    success: bool = BOOL
    key_id: int = I64
    fingerprint: str = STRING
    error_message: str = STRING


@message(0x97, "UNREAD_COUNTS")
class UnreadCounts(Message):
    counts: Sequence[UnreadCount] = array(U16, UnreadCount)


@message(0x98, "SERVER_CONFIG")
class ServerConfig(Message):
    protocol_version: int = U8
    max_message_rate: int = U16
    max_channel_creates: int = U16
    inactive_cleanup_days: int = U16
    max_connections_per_ip: int = U8
    max_message_length: int = U32
    max_thread_subscriptions: int = U16
    max_channel_subscriptions: int = U16
    directory_enabled: bool = BOOL


@message(0x99, "SUBSCRIBE_OK")
class SubscribeOk(Message):
    type: int = U8  # 1 = thread, 2 = channel
    id: int = U64
    subchannel_id: int | None = optional(U64)


@message(0x9A, "USER_LIST")
class UserList(Message):
    users: Sequence[UserEntry] = array(U16, UserEntry)


@message(0x9B, "SERVER_LIST")
class ServerList(Message):
    servers: Sequence[ServerInfo] = array(U16, ServerInfo)


@message(0x9C, "REGISTER_ACK")
class RegisterAck(Message):
    success: bool = BOOL
    heartbeat_interval: int = when('success', U32)
    message: str = STRING


@message(0x9D, "HEARTBEAT_ACK")
class HeartbeatAck(Message):
    heartbeat_interval: int = U32


@message(0x9E, "VERIFY_REGISTRATION")
class VerifyRegistration(Message):
    challenge: int = U64


@message(0x9F, "USER_BANNED")
class UserBanned(Message):
    success: bool = BOOL
    ban_id: int = when('success', U64)
    message: str = STRING


@message(0xA5, "IP_BANNED")
class IPBanned(Message):
    success: bool = BOOL
    ban_id: int = when('success', U64)
    message: str = STRING


@message(0xA6, "USER_UNBANNED")
class UserUnbanned(Message):
    success: bool = BOOL
    message: str = STRING


@message(0xA7, "IP_UNBANNED")
class IPUnbanned(Message):
    success: bool = BOOL
    message: str = STRING


@message(0xA8, "BAN_LIST")
class BanList(Message):
    bans: Sequence[BanEntry] = array(U16, BanEntry)


@message(0xA9, "USER_DELETED")
class UserDeleted(Message):
    success: bool = BOOL
    message: str = STRING


@message(0xAA, "CHANNEL_DELETED")
class ChannelDeleted(Message):
    success: bool = BOOL
    channel_id: int = U64
    message: str = STRING


@message(0xAB, "CHANNEL_USER_LIST")
class ChannelUserList(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    users: Sequence[ChannelUserEntry] = array(U16, ChannelUserEntry)


@message(0xAC, "CHANNEL_PRESENCE")
class ChannelPresence(Message):
    channel_id: int = U64
    subchannel_id: int | None = optional(U64)
    session_id: int = U64
    nickname: str = STRING
    is_registered: bool = BOOL
    user_id: int | None = optional(U64)
    user_flags: int = U8
    joined: bool = BOOL


@message(0xAD, "SERVER_PRESENCE")
class ServerPresence(Message):
    session_id: int = U64
    nickname: str = STRING
    is_registered: bool = BOOL
    user_id: int | None = optional(U64)
    user_flags: int = U8
    online: bool = BOOL
