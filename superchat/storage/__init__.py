"""Persistence for the SuperChat server: SQLite, embedded, or PostgreSQL, which servers can share.

Every SQL statement of the server lives in this package. Its API is synchronous and knows
nothing about gevent (``green`` aside, which bin/scd installs to make psycopg2 wait through
gevent). On SQLite, reads run on the hub thread against the reader connection, writes run on one
dedicated writer thread against the writer connection. Two peewee databases share the same file
so that the hub never waits for the writer's fsync; WAL lets the reader see every committed write.

On PostgreSQL, every call takes a connection from a bounded pool and gives it back when it
returns. peewee keeps a connection per thread, and under gevent's monkey-patching a thread-local
is a greenlet-local: a connection held only for the length of a call cannot outlive its greenlet.

The parts: ``rows`` (what calls take and give), ``schema`` (migrations), ``models`` (the tables
for peewee), ``engine`` (connections and driver errors), the queries by concern (``channels``,
``messages``, ``readstate``, ``posting``, ``accounts``, ``moderation``, ``directory``), and
``store``, which makes one ``Store`` of them.
"""

from .rows import (
    CHANNEL_TYPE_CHAT,
    CHANNEL_TYPE_FORUM,
    CHAT_CHANNEL_NAME,
    MAX_STORED_INTEGER,
    BanRow,
    ChannelExists,
    ChannelRow,
    DiscoveredServerRow,
    DiskFull,
    Expired,
    MessageRow,
    NewPost,
    NicknameTaken,
    PostRejected,
    SSHKeyExists,
    SSHKeyRow,
    StorageError,
    UserRow,
    Viewer,
)
from .store import Store

__all__ = [
    "CHANNEL_TYPE_CHAT",
    "CHANNEL_TYPE_FORUM",
    "CHAT_CHANNEL_NAME",
    "MAX_STORED_INTEGER",
    "BanRow",
    "ChannelExists",
    "ChannelRow",
    "DiscoveredServerRow",
    "DiskFull",
    "Expired",
    "MessageRow",
    "NewPost",
    "NicknameTaken",
    "PostRejected",
    "SSHKeyExists",
    "SSHKeyRow",
    "StorageError",
    "Store",
    "UserRow",
    "Viewer",
]
