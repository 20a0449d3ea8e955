"""Who is online on the other nodes, and this node's own roster and connection counts in Redis.

Each node keeps its roster (a hash of session entries) and its connection counts per address in
Redis, and publishes every change to the stream: the others read the rosters whole once, then
keep them up to date from those changes, so LIST_USERS costs no round trip.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import redis
from gevent.lock import Semaphore
from redis.typing import EncodableT, FieldT

from ...observability import metrics
from ..event import SessionsGone
from ..session import Session
from .keys import addresses_key, roster_key
from .link import RemoteSession
from .redis_link import RedisLink


def roster_entry(session: Session) -> dict:
    return {**session.identity(), "channel_id": session.joined_channel}


def _remote_session(entry: dict) -> RemoteSession:
    return RemoteSession(entry["session_id"], entry["nickname"], entry["user_id"], entry["user_flags"],
                         entry["channel_id"])


class Roster:
    """The peers (the other live nodes) and their sessions; this node's roster changes to write."""

    def __init__(self, link: RedisLink, wake_writer: Callable[[], None]):
        self._node_id = link.node_id
        self._link = link
        self._wake_writer = wake_writer
        # The other nodes, from when a heartbeat finds them alive until they are buried or leave.
        self.peers: tuple[str, ...] = ()
        # Peers dropped so far: a heartbeat that saw a peer alive before it was buried must not
        # take it back in.
        self.departures = 0
        # The other nodes' sessions by node, read from Redis once, then kept up to date by the
        # roster events each node publishes with every change.
        self._remote: dict[str, dict[int, RemoteSession]] = {}
        self._remote_stale = True
        # While a full read is under way: the roster changes applied meanwhile, to apply again after it.
        self._replay: list[tuple[Callable[[Any], None], Any]] | None = None
        self._roster_turn = Semaphore()
        self._updates: dict[int, dict | None] = {}
        self._address_updates: dict[str, int] = {}
        self._local_sessions: Callable[[], Iterable[Session]] = tuple
        # Roster events may have been trimmed while Redis was away: read the rosters whole again.
        link.when_back(self.mark_stale)

    def start(self, local_sessions: Callable[[], Iterable[Session]]) -> None:
        self._local_sessions = local_sessions

    def mark_stale(self) -> None:
        self._remote_stale = True

    # -- this node's changes ----------------------------------------------------------------------

    def changed(self, session: Session) -> None:
        if session.nickname:
            self._updates[session.id] = roster_entry(session)
            self._wake_writer()

    def left(self, session: Session) -> None:
        self._updates[session.id] = None
        self._wake_writer()

    def connection_opened(self, host: str) -> None:
        self._address_updates[host] = self._address_updates.get(host, 0) + 1
        self._wake_writer()

    def connection_closed(self, host: str) -> None:
        self._address_updates[host] = self._address_updates.get(host, 0) - 1
        self._wake_writer()

    @property
    def unwritten(self) -> bool:
        """Whether roster changes wait to be written."""
        return bool(self._updates)

    @property
    def has_changes(self) -> bool:
        return bool(self._updates or self._address_updates)

    def queue_changes(self, pipe: redis.client.Pipeline, whole: bool) -> dict[int, dict | None]:
        """Queues the changes to this node's roster and counts (all of them, replacing what Redis
        holds, when ``whole``); returns the roster entries changed."""
        roster = self._queue_whole(pipe) if whole else {}
        roster.update(self._updates)
        self._updates = {}
        addresses, self._address_updates = self._address_updates, {}
        own_roster, own_addresses = roster_key(self._node_id), addresses_key(self._node_id)
        gone = [session_id for session_id, entry in roster.items() if entry is None]
        present: dict[FieldT, EncodableT] = {
            session_id: json.dumps(entry) for session_id, entry in roster.items() if entry is not None
        }
        if gone:
            pipe.hdel(own_roster, *gone)
        if present:
            pipe.hset(own_roster, mapping=present)
        for host, delta in addresses.items():
            if delta:
                pipe.hincrby(own_addresses, host, delta)
        return roster

    def _queue_whole(self, pipe: redis.client.Pipeline) -> dict[int, dict | None]:
        sessions = list(self._local_sessions())
        pipe.delete(roster_key(self._node_id), addresses_key(self._node_id))
        counts: dict[str, int] = {}
        for session in sessions:
            counts[session.host] = counts.get(session.host, 0) + 1
        if counts:
            # redis-py types a hash's fields as a mapping of its own key types, exactly.
            fields: dict[FieldT, EncodableT] = {host: count for host, count in counts.items()}
            pipe.hset(addresses_key(self._node_id), mapping=fields)
        # The snapshot already holds every change made so far.
        self._updates.clear()
        self._address_updates.clear()
        return {session.id: roster_entry(session) for session in sessions if session.nickname}

    # -- the other nodes --------------------------------------------------------------------------

    def remote_sessions(self) -> list[RemoteSession]:
        """The sessions of every other live node; none while Redis is away."""
        if self._link.problem is not None or not self.peers:
            return []
        if self._remote_stale:
            with self._roster_turn:  # one full read at a time; the callers waiting find its result
                if self._remote_stale:
                    self._read_rosters()
        return [session for peer in self.peers for session in self._remote.get(peer, {}).values()]

    def _read_rosters(self) -> None:
        self._replay = []
        try:
            pipe = self._link.redis.pipeline(transaction=False)
            peers = self.peers
            for peer in peers:
                pipe.hvals(roster_key(peer))
            rosters = pipe.execute()
        except redis.RedisError as exc:
            self._link.failed(exc)
            return
        finally:
            replay, self._replay = self._replay, None
        self._remote = {peer: {entry["session_id"]: _remote_session(entry) for entry in map(json.loads, entries)}
                        for peer, entries in zip(peers, rosters, strict=True)}
        # Changes read from the stream while the rosters were on their way may be newer than them.
        for change, argument in replay:
            change(argument)
        self._remote_stale = False

    def apply(self, meta: dict) -> None:
        """A roster event another node wrote."""
        if self._replay is not None:
            self._replay.append((self.apply, meta))
        node = meta["node"]
        sessions = {} if meta["full"] else self._remote.setdefault(node, {})
        for session_id, entry in meta["entries"].items():
            if entry is None:
                sessions.pop(int(session_id), None)
            else:
                sessions[int(session_id)] = _remote_session(entry)
        self._remote[node] = sessions

    def forget_sessions(self, event: SessionsGone) -> None:
        if self._replay is not None:
            self._replay.append((self.forget_sessions, event))
        sessions = self._remote.get(event.node, {})
        for entry in event.sessions:
            sessions.pop(entry["session_id"], None)

    def add_peers(self, joined: list[str]) -> None:
        self.peers = tuple(sorted((*self.peers, *joined)))

    def drop_peer(self, node: str) -> None:
        if self._replay is not None:
            self._replay.append((self.drop_peer, node))
        self._remote.pop(node, None)
        if node in self.peers:
            self.peers = tuple(peer for peer in self.peers if peer != node)
            self.departures += 1
            metrics.cluster_peers(len(self.peers))

    def connections_elsewhere(self, host: str) -> int:
        """Connections from ``host`` to the other live nodes; 0 while Redis is away."""
        peers = self.peers
        if self._link.problem is not None or not peers:
            return 0
        try:
            pipe = self._link.redis.pipeline(transaction=False)
            for peer in peers:
                pipe.hget(addresses_key(peer), host)
            return sum(int(count or 0) for count in pipe.execute())
        except redis.RedisError as exc:
            self._link.failed(exc)
            return 0
