"""Every message type of the SuperChat protocol, one declaration each.

A declaration names the type code, the protocol's name for it and its fields in
wire order; the same declaration encodes and decodes, so the two directions
cannot drift apart. Layouts follow the bytes the reference server sends where
its prose disagrees (for example AUTH_RESPONSE's trailing user_flags byte).
"""

from __future__ import annotations

from .fields import (
    BOOL,
    I64,
    STRING,
    TIMESTAMP,
    U8,
    U16,
    U32,
    U64,
    Array,
    Optional,
    Trailing,
    When,
    record,
)

BY_CODE: dict[int, type] = {}

# Types the protocol document lists but no SuperChat server implements; they are
# named so that logs and metrics can say what arrived.
UNIMPLEMENTED_NAMES = {
    0x08: "CREATE_SUBCHANNEL",
    0x15: "GET_SUBCHANNELS",
    0x19: "START_DM",
    0x1A: "PROVIDE_PUBLIC_KEY",
    0x1B: "ALLOW_UNENCRYPTED",
    0x88: "SUBCHANNEL_CREATED",
    0x96: "SUBCHANNEL_LIST",
    0xA0: "SERVER_STATS",
    0xA1: "KEY_REQUIRED",
    0xA2: "DM_READY",
    0xA3: "DM_PENDING",
    0xA4: "DM_REQUEST",
}


def message(code: int, name: str, *entries) -> type:
    cls = record(_class_name(name), *entries, namespace={"TYPE": code, "NAME": name})
    if code in BY_CODE:
        raise ValueError(f"type 0x{code:02X} declared twice")
    BY_CODE[code] = cls
    return cls


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def encode_payload(msg) -> bytes:
    out = bytearray()
    msg.put(out)
    return bytes(out)


def decode_payload(code: int, payload: bytes):
    """Decode a payload of a declared type; trailing bytes are ignored, as upstream does."""
    cls = BY_CODE.get(code)
    if cls is None:
        raise KeyError(code)
    msg, _ = cls.take(payload, 0)
    return msg


def type_name(code: int) -> str:
    cls = BY_CODE.get(code)
    if cls is not None:
        return cls.NAME
    return UNIMPLEMENTED_NAMES.get(code, "UNKNOWN")


OPT_U64 = Optional(U64)
OPT_STRING = Optional(STRING)

# ---- records nested in lists ----

ChannelEntry = record(
    "ChannelEntry",
    ("id", U64),
    ("name", STRING),
    ("description", STRING),
    ("user_count", U32),
    ("is_operator", BOOL),
    ("type", U8),
    ("retention_hours", U32),
)

_MESSAGE_FIELDS = (
    ("id", U64),
    ("channel_id", U64),
    ("subchannel_id", OPT_U64),
    ("parent_id", OPT_U64),
    ("author_user_id", OPT_U64),
    ("author_nickname", STRING),
    ("content", STRING),
    ("created_at", TIMESTAMP),
    ("edited_at", Optional(TIMESTAMP)),
    ("reply_count", U32),
)
MessageEntry = record("MessageEntry", *_MESSAGE_FIELDS)

UnreadTarget = record("UnreadTarget", ("channel_id", U64), ("subchannel_id", OPT_U64), ("thread_id", OPT_U64))
UnreadCount = record(
    "UnreadCount",
    ("channel_id", U64),
    ("subchannel_id", OPT_U64),
    ("thread_id", OPT_U64),
    ("unread_count", U32),
)
UserEntry = record(
    "UserEntry", ("nickname", STRING), ("is_registered", BOOL), ("user_id", OPT_U64), ("online", BOOL)
)
ChannelUserEntry = record(
    "ChannelUserEntry",
    ("session_id", U64),
    ("nickname", STRING),
    ("is_registered", BOOL),
    ("user_id", OPT_U64),
    ("user_flags", U8),
)
ServerInfo = record(
    "ServerInfo",
    ("hostname", STRING),
    ("port", U16),
    ("name", STRING),
    ("description", STRING),
    ("user_count", U32),
    ("max_users", U32),
    ("uptime_seconds", U64),
    ("is_public", BOOL),
    ("channel_count", U32),
)
SSHKeyInfo = record(
    "SSHKeyInfo",
    ("id", I64),
    ("fingerprint", STRING),
    ("key_type", STRING),
    ("label", STRING),
    ("added_at", I64),
    ("last_used_at", I64),
)
BanEntry = record(
    "BanEntry",
    ("id", U64),
    ("type", STRING),
    ("user_id", OPT_U64),
    ("nickname", OPT_STRING),
    ("ip_cidr", OPT_STRING),
    ("reason", STRING),
    ("shadowban", BOOL),
    ("banned_at", I64),
    ("banned_until", Optional(I64)),
    ("banned_by", STRING),
)

# ---- client to server ----

AuthRequest = message(0x01, "AUTH_REQUEST", ("nickname", STRING), ("password", STRING))
SetNickname = message(0x02, "SET_NICKNAME", ("nickname", STRING))
RegisterUser = message(0x03, "REGISTER_USER", ("password", STRING))
ListChannels = message(0x04, "LIST_CHANNELS", ("from_channel_id", U64), ("limit", U16))
JoinChannel = message(0x05, "JOIN_CHANNEL", ("channel_id", U64), ("subchannel_id", OPT_U64))
LeaveChannel = message(0x06, "LEAVE_CHANNEL", ("channel_id", U64), ("subchannel_id", OPT_U64))
CreateChannel = message(
    0x07,
    "CREATE_CHANNEL",
    ("name", STRING),
    ("display_name", STRING),
    ("description", OPT_STRING),
    ("channel_type", U8),
    ("retention_hours", U32),
)
ListMessages = message(
    0x09,
    "LIST_MESSAGES",
    ("channel_id", U64),
    ("subchannel_id", OPT_U64),
    ("limit", U16),
    ("before_id", OPT_U64),
    ("parent_id", OPT_U64),
    ("after_id", OPT_U64),
)
PostMessage = message(
    0x0A,
    "POST_MESSAGE",
    ("channel_id", U64),
    ("subchannel_id", OPT_U64),
    ("parent_id", OPT_U64),
    ("content", STRING),
)
EditMessage = message(0x0B, "EDIT_MESSAGE", ("message_id", U64), ("new_content", STRING))
DeleteMessage = message(0x0C, "DELETE_MESSAGE", ("message_id", U64))
AddSSHKey = message(0x0D, "ADD_SSH_KEY", ("public_key", STRING), ("label", STRING))
ChangePassword = message(0x0E, "CHANGE_PASSWORD", ("old_password", STRING), ("new_password", STRING))
GetUserInfo = message(0x0F, "GET_USER_INFO", ("nickname", STRING))
Ping = message(0x10, "PING", ("timestamp", I64))
Disconnect = message(0x11, "DISCONNECT", ("reason", OPT_STRING))
UpdateSSHKeyLabel = message(0x12, "UPDATE_SSH_KEY_LABEL", ("key_id", I64), ("new_label", STRING))
DeleteSSHKey = message(0x13, "DELETE_SSH_KEY", ("key_id", I64))
ListSSHKeys = message(0x14, "LIST_SSH_KEYS")
# Older clients send only the limit; include_offline then reads as None.
ListUsers = message(0x16, "LIST_USERS", ("limit", U16), ("include_offline", Trailing(BOOL)))
ListChannelUsers = message(0x17, "LIST_CHANNEL_USERS", ("channel_id", U64), ("subchannel_id", OPT_U64))
GetUnreadCounts = message(
    0x18, "GET_UNREAD_COUNTS", ("since_timestamp", Optional(I64)), ("targets", Array(U16, UnreadTarget))
)
Logout = message(0x1C, "LOGOUT")
UpdateReadState = message(
    0x1D, "UPDATE_READ_STATE", ("channel_id", U64), ("subchannel_id", OPT_U64), ("timestamp", I64)
)
SubscribeThread = message(0x51, "SUBSCRIBE_THREAD", ("thread_id", U64))
UnsubscribeThread = message(0x52, "UNSUBSCRIBE_THREAD", ("thread_id", U64))
SubscribeChannel = message(0x53, "SUBSCRIBE_CHANNEL", ("channel_id", U64), ("subchannel_id", OPT_U64))
UnsubscribeChannel = message(0x54, "UNSUBSCRIBE_CHANNEL", ("channel_id", U64), ("subchannel_id", OPT_U64))
ListServers = message(0x55, "LIST_SERVERS", ("limit", U16))
RegisterServer = message(
    0x56,
    "REGISTER_SERVER",
    ("hostname", STRING),
    ("port", U16),
    ("name", STRING),
    ("description", STRING),
    ("max_users", U32),
    ("is_public", BOOL),
    ("channel_count", U32),
)
Heartbeat = message(
    0x57,
    "HEARTBEAT",
    ("hostname", STRING),
    ("port", U16),
    ("user_count", U32),
    ("uptime_seconds", U64),
    ("channel_count", U32),
)
VerifyResponse = message(0x58, "VERIFY_RESPONSE", ("challenge", U64))
BanUser = message(
    0x59,
    "BAN_USER",
    ("user_id", OPT_U64),
    ("nickname", OPT_STRING),
    ("reason", STRING),
    ("shadowban", BOOL),
    ("duration_seconds", OPT_U64),
)
BanIP = message(0x5A, "BAN_IP", ("ip_cidr", STRING), ("reason", STRING), ("duration_seconds", OPT_U64))
UnbanUser = message(0x5B, "UNBAN_USER", ("user_id", OPT_U64), ("nickname", OPT_STRING))
UnbanIP = message(0x5C, "UNBAN_IP", ("ip_cidr", STRING))
ListBans = message(0x5D, "LIST_BANS", ("include_expired", BOOL))
DeleteUser = message(0x5E, "DELETE_USER", ("user_id", U64))
DeleteChannel = message(0x5F, "DELETE_CHANNEL", ("channel_id", U64), ("reason", STRING))

# ---- server to client ----

AuthResponse = message(
    0x81,
    "AUTH_RESPONSE",
    ("success", BOOL),
    ("user_id", When("success", U64)),
    ("nickname", When("success", STRING, "")),
    ("message", STRING),
    ("user_flags", Trailing(U8)),
)
NicknameResponse = message(0x82, "NICKNAME_RESPONSE", ("success", BOOL), ("message", STRING))
RegisterResponse = message(
    0x83, "REGISTER_RESPONSE", ("success", BOOL), ("user_id", When("success", U64)), ("message", STRING)
)
ChannelList = message(0x84, "CHANNEL_LIST", ("channels", Array(U16, ChannelEntry)))
_JOIN_LEAVE = (("success", BOOL), ("channel_id", U64), ("subchannel_id", OPT_U64), ("message", STRING))
JoinResponse = message(0x85, "JOIN_RESPONSE", *_JOIN_LEAVE)
LeaveResponse = message(0x86, "LEAVE_RESPONSE", *_JOIN_LEAVE)
ChannelCreated = message(
    0x87,
    "CHANNEL_CREATED",
    ("success", BOOL),
    ("channel_id", When("success", U64)),
    ("name", When("success", STRING, "")),
    ("description", When("success", STRING, "")),
    ("type", When("success", U8)),
    ("retention_hours", When("success", U32)),
    ("message", STRING),
)
MessageList = message(
    0x89,
    "MESSAGE_LIST",
    ("channel_id", U64),
    ("subchannel_id", OPT_U64),
    ("parent_id", OPT_U64),
    ("messages", Array(U16, MessageEntry)),
)
MessagePosted = message(0x8A, "MESSAGE_POSTED", ("success", BOOL), ("message_id", U64), ("message", STRING))
MessageEdited = message(
    0x8B,
    "MESSAGE_EDITED",
    ("success", BOOL),
    ("message_id", U64),
    ("edited_at", When("success", TIMESTAMP)),
    ("new_content", When("success", STRING, "")),
    ("message", STRING),
)
MessageDeleted = message(
    0x8C,
    "MESSAGE_DELETED",
    ("success", BOOL),
    ("message_id", U64),
    ("deleted_at", When("success", TIMESTAMP)),
    ("message", STRING),
)
NewMessage = message(0x8D, "NEW_MESSAGE", *_MESSAGE_FIELDS)
PasswordChanged = message(0x8E, "PASSWORD_CHANGED", ("success", BOOL), ("error_message", STRING))
UserInfo = message(
    0x8F, "USER_INFO", ("nickname", STRING), ("is_registered", BOOL), ("user_id", OPT_U64), ("online", BOOL)
)
Pong = message(0x90, "PONG", ("client_timestamp", I64))
Error = message(0x91, "ERROR", ("error_code", U16), ("message", STRING))
SSHKeyLabelUpdated = message(0x92, "SSH_KEY_LABEL_UPDATED", ("success", BOOL), ("error_message", STRING))
SSHKeyDeleted = message(0x93, "SSH_KEY_DELETED", ("success", BOOL), ("error_message", STRING))
SSHKeyList = message(0x94, "SSH_KEY_LIST", ("keys", Array(U32, SSHKeyInfo)))
SSHKeyAdded = message(
    0x95,
    "SSH_KEY_ADDED",
    ("success", BOOL),
    ("key_id", I64),
    ("fingerprint", STRING),
    ("error_message", STRING),
)
UnreadCounts = message(0x97, "UNREAD_COUNTS", ("counts", Array(U16, UnreadCount)))
ServerConfig = message(
    0x98,
    "SERVER_CONFIG",
    ("protocol_version", U8),
    ("max_message_rate", U16),
    ("max_channel_creates", U16),
    ("inactive_cleanup_days", U16),
    ("max_connections_per_ip", U8),
    ("max_message_length", U32),
    ("max_thread_subscriptions", U16),
    ("max_channel_subscriptions", U16),
    ("directory_enabled", BOOL),
)
# type: 1 = thread, 2 = channel
SubscribeOk = message(0x99, "SUBSCRIBE_OK", ("type", U8), ("id", U64), ("subchannel_id", OPT_U64))
UserList = message(0x9A, "USER_LIST", ("users", Array(U16, UserEntry)))
ServerList = message(0x9B, "SERVER_LIST", ("servers", Array(U16, ServerInfo)))
RegisterAck = message(
    0x9C,
    "REGISTER_ACK",
    ("success", BOOL),
    ("heartbeat_interval", When("success", U32)),
    ("message", STRING),
)
HeartbeatAck = message(0x9D, "HEARTBEAT_ACK", ("heartbeat_interval", U32))
VerifyRegistration = message(0x9E, "VERIFY_REGISTRATION", ("challenge", U64))
UserBanned = message(
    0x9F, "USER_BANNED", ("success", BOOL), ("ban_id", When("success", U64)), ("message", STRING)
)
IPBanned = message(0xA5, "IP_BANNED", ("success", BOOL), ("ban_id", When("success", U64)), ("message", STRING))
UserUnbanned = message(0xA6, "USER_UNBANNED", ("success", BOOL), ("message", STRING))
IPUnbanned = message(0xA7, "IP_UNBANNED", ("success", BOOL), ("message", STRING))
BanList = message(0xA8, "BAN_LIST", ("bans", Array(U16, BanEntry)))
UserDeleted = message(0xA9, "USER_DELETED", ("success", BOOL), ("message", STRING))
ChannelDeleted = message(0xAA, "CHANNEL_DELETED", ("success", BOOL), ("channel_id", U64), ("message", STRING))
ChannelUserList = message(
    0xAB,
    "CHANNEL_USER_LIST",
    ("channel_id", U64),
    ("subchannel_id", OPT_U64),
    ("users", Array(U16, ChannelUserEntry)),
)
ChannelPresence = message(
    0xAC,
    "CHANNEL_PRESENCE",
    ("channel_id", U64),
    ("subchannel_id", OPT_U64),
    ("session_id", U64),
    ("nickname", STRING),
    ("is_registered", BOOL),
    ("user_id", OPT_U64),
    ("user_flags", U8),
    ("joined", BOOL),
)
ServerPresence = message(
    0xAD,
    "SERVER_PRESENCE",
    ("session_id", U64),
    ("nickname", STRING),
    ("is_registered", BOOL),
    ("user_id", OPT_U64),
    ("user_flags", U8),
    ("online", BOOL),
)
