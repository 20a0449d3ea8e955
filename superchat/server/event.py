"""The events nodes exchange: one frozen record per kind, and how a record travels through Redis.

A record travels as its ``KIND``, its fields but the frame as JSON, and its frame as raw bytes, so
that a frame is encoded once in the whole cluster. Every node of one version reads what every node
of that version writes (all nodes upgrade together).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Self, get_args

from ..storage import BanRow


class Route(StrEnum):
    """Who a delivery goes to, resolved on each node against its own sessions."""

    CHANNEL_SUBSCRIBERS = "channel_subscribers"
    THREAD_SUBSCRIBERS = "thread_subscribers"
    CHANNEL_AUDIENCE = "channel_audience"  # joined or subscribed: who hears edits, deletions, presence
    ROSTER_WATCHERS = "roster_watchers"  # sessions that asked for LIST_USERS
    EVERYONE = "everyone"


@dataclass(frozen=True)
class _Record:
    KIND: ClassVar[str]

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Self:
        """The record from its JSON fields (and its frame, for the kinds that carry one)."""
        return cls(**fields)


@dataclass(frozen=True)
class Delivery(_Record):
    """A frame for the sessions ``route`` and ``key`` name; ``private_to`` (author id, nickname)
    limits a shadowed message to its author and the admins; ``post`` (kind, channel, thread)
    marks a new message for the broadcast metrics."""

    KIND = "deliver"
    type_name: str
    route: Route
    key: int | None
    private_to: tuple[int | None, str] | None
    post: tuple[str, int, int | None] | None
    frame: bytes

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Self:
        private_to, post = fields["private_to"], fields["post"]
        return cls(fields["type_name"], Route(fields["route"]), fields["key"],
                   None if private_to is None else tuple(private_to), None if post is None else tuple(post),
                   fields["frame"])


@dataclass(frozen=True)
class ChannelCreated(_Record):
    """A new channel: every session hears of it, every node lists it."""

    KIND = "channel_created"
    frame: bytes


@dataclass(frozen=True)
class ChannelDeleted(_Record):
    """A deleted channel: its members and subscribers are let go, everyone is told."""

    KIND = "channel_deleted"
    channel_id: int
    frame: bytes


@dataclass(frozen=True)
class UserDeleted(_Record):
    """A deleted account: its sessions are expelled, everyone else is told."""

    KIND = "user_deleted"
    user_id: int
    frame: bytes


@dataclass(frozen=True)
class _BanRecord(_Record):
    """A ban just stored, travelling whole so that each node has it in force at once (a post
    checks the ban list): the sessions it names are expelled (or shadowbanned). Lifted bans are
    read again from the database, by the reconciler."""

    ban: BanRow

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Self:
        return cls(BanRow(**fields["ban"]))


@dataclass(frozen=True)
class UserBanned(_BanRecord):
    KIND = "user_banned"


@dataclass(frozen=True)
class IpBanned(_BanRecord):
    KIND = "ip_banned"


@dataclass(frozen=True)
class BansLifted(_Record):
    """Each node reads its ban list again from the database."""

    KIND = "bans_lifted"


@dataclass(frozen=True)
class ThreadsExpired(_Record):
    """Threads retention deleted: their subscriptions are dropped."""

    KIND = "threads_expired"
    thread_ids: tuple[int, ...]

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Self:
        return cls(tuple(fields["thread_ids"]))


@dataclass(frozen=True)
class SessionsGone(_Record):
    """Sessions of ``node`` that are gone: its previous run's, found when it starts again.
    ``sessions`` are roster entries (identity and channel_id)."""

    KIND = "sessions_gone"
    node: str
    sessions: tuple[dict[str, Any], ...]

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Self:
        return cls(fields["node"], tuple(fields["sessions"]))


@dataclass(frozen=True)
class NodeGone(SessionsGone):
    """A node was buried or left, with the sessions it had. Written by the burial script in Redis
    (cluster/liveness.py), in the same shape as any record."""

    KIND = "node_gone"


Event = (Delivery | ChannelCreated | ChannelDeleted | UserDeleted | UserBanned | IpBanned | BansLifted
         | ThreadsExpired | SessionsGone | NodeGone)

_KINDS: dict[str, type[Event]] = {record.KIND: record for record in get_args(Event)}


def encode(event: Event) -> tuple[str, str, bytes]:
    """The kind, the JSON fields and the frame of a stream entry."""
    fields = {field.name: getattr(event, field.name) for field in dataclasses.fields(event) if field.name != "frame"}
    return event.KIND, json.dumps(fields, default=dataclasses.asdict), getattr(event, "frame", b"")


def decode(kind: str, fields_json: bytes | str, frame: bytes) -> Event:
    """The record a stream entry holds; KeyError for a kind this version does not know."""
    record = _KINDS[kind]
    fields = json.loads(fields_json)
    if any(field.name == "frame" for field in dataclasses.fields(record)):
        fields["frame"] = frame
    return record.from_fields(fields)
