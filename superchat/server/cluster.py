"""Several scd nodes acting as one server, through Redis.

Events (see events.py) move between nodes in one Redis Stream: each node appends its own in
order and reads everyone else's from the last entry it has seen, so a node that loses Redis
for a while resumes where it left off and its clients miss nothing. While Redis is away the
events a node emits wait in its outbox and are written when Redis is back.

Who is online is kept per node in Redis (a roster hash and connection counts per address)
next to a heartbeat key with an expiry: when a node dies its key expires, and a surviving node
buries it: in one step it takes the node out of the node set, deletes its roster and writes its
departure to the stream. Every node drops a peer and its sessions together, when it reads that
departure, so /health never lists a node whose users have left, nor the other way round.

``Solo`` stands in when no Redis is configured: a single node, with nothing shared.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import gevent
import redis
from gevent.event import Event as Signal
from gevent.lock import Semaphore

from ..observability import metrics
from .event import Event, NodeGone, SessionsGone, decode, encode
from .limits import PerAddressLimit
from .session import Session

log = logging.getLogger("superchat.cluster")

PREFIX = "superchat:"
STREAM = PREFIX + "events"
NODES = PREFIX + "nodes"
# Minutes of heavy traffic: a node away for longer than that misses deliveries (and says so).
STREAM_MAX_ENTRIES = 200_000
# Events one node holds while Redis is away; past that the oldest are dropped (and counted).
MAX_OUTBOX = 100_000
HEARTBEAT_SECONDS = 2.0
# A node silent this long is gone: its sessions leave the roster.
NODE_TTL_SECONDS = 10
READ_BLOCK_MS = 2000
READ_BATCH = 1000
WRITE_BATCH = 500
RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)
# Session ids are node serial << SESSION_ID_BITS | a count of this node's sessions.
SESSION_ID_BITS = 32

# A sliding window shared by every node: at most ARGV[2] events in ARGV[1] milliseconds per key.
# Redis's own clock, so nodes whose clocks differ still agree.
_WINDOW_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window_ms = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now_ms, now[1] .. now[2] .. ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window_ms)
end
return 1
"""

# The first node to find a peer's heartbeat expired (or a node leaving, for itself) takes it out
# of the node set, deletes its roster and writes its departure, unless the peer came back
# meanwhile: then it keeps its place and nothing is announced. All in one step: a node that reads
# the departure finds the roster gone, and a burier dying half-way cannot leave it untold.
# Returns how many sessions the node had. ARGV: node, burier's node and run, stream length.
_BURY_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return false end
local entries = redis.call('HVALS', KEYS[3])
redis.call('DEL', KEYS[3], KEYS[4])
local meta = '{"node":' .. cjson.encode(ARGV[1]) .. ',"sessions":[' .. table.concat(entries, ',') .. ']}'
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'node', ARGV[2], 'run', ARGV[3], 'seq', 0,
           'kind', 'node_gone', 'meta', meta, 'frame', '')
return #entries
"""


@dataclass(frozen=True)
class RemoteSession:
    """A session of another node, as its roster entry tells."""

    session_id: int
    nickname: str
    user_id: int | None
    user_flags: int
    channel_id: int | None


def roster_entry(session: Session) -> dict:
    return {**session.identity(), "channel_id": session.joined_channel}


def _remote_session(entry: dict) -> RemoteSession:
    return RemoteSession(entry["session_id"], entry["nickname"], entry["user_id"], entry["user_flags"],
                         entry["channel_id"])


class Solo:
    """A server of one node."""

    shared = False
    node_id = ""
    first_session_id = 1

    def start(self, apply_remote: Callable[[Event], None], local_sessions: Callable[[], Iterable[Session]],
              missed: Callable[[], None]) -> None:
        pass

    def stop(self) -> None:
        pass

    def publish(self, event: Event) -> None:
        pass

    def roster_changed(self, session: Session) -> None:
        pass

    def roster_left(self, session: Session) -> None:
        pass

    def connection_opened(self, host: str) -> None:
        pass

    def connection_closed(self, host: str) -> None:
        pass

    def remote_sessions(self) -> list[RemoteSession]:
        return []

    def connections_elsewhere(self, host: str) -> int:
        return 0

    def limit(self, name: str, limit: int, seconds: float) -> PerAddressLimit:
        return PerAddressLimit(limit, seconds)

    def window_allows(self, key: str, limit: int, window_ms: int, record: bool) -> bool | None:
        return None

    def forget_window(self, key: str) -> None:
        pass

    def block(self, key: str, seconds: float) -> None:
        pass

    def seconds_blocked(self, key: str) -> float:
        return 0.0

    def status(self) -> dict | None:
        return None


class Cluster:
    """This node's link to the others through Redis."""

    shared = True

    def __init__(self, url: str, node_id: str, serial: int):
        """``serial``: a number no other run of any node was given (the database hands them out)."""
        self.node_id = node_id
        # Named, so that CLIENT LIST in Redis tells which node holds which connection.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=32, timeout=2, socket_timeout=5, socket_connect_timeout=2,
            client_name=f"{PREFIX}{node_id}",
        )
        self._redis = redis.Redis(connection_pool=pool)
        self._window = self._redis.register_script(_WINDOW_SCRIPT)
        self._bury_script = self._redis.register_script(_BURY_SCRIPT)
        self._alive_key = _alive_key(node_id)
        # Tells this run's events from an earlier run's of the same node id (for de-duplication).
        self._incarnation = secrets.token_hex(8)
        self._sequence = 0
        # Stream fields, numbered when published so that a retried write repeats the same numbers.
        self._outbox: deque[dict] = deque()
        self._dropped = 0
        self._roster_updates: dict[int, dict | None] = {}
        self._address_updates: dict[str, int] = {}
        self._resync = True
        self._wake = Signal()
        # Per node, the run and sequence number of its last event read: one entry per node, as a
        # node's new run (a restart) follows its last.
        self._last_seen: dict[str, tuple[str, int]] = {}
        # Until Redis says where its stream ends: from now on, should it be unreachable at start.
        self._stream_position = f"{time.time_ns() // 1_000_000}-0"
        # Peers are not buried until then: after an outage every heartbeat key has expired at once.
        self._bury_after = 0.0
        # The other nodes, from when a heartbeat finds them alive until they are buried or leave.
        self.peers: tuple[str, ...] = ()
        # Peers dropped so far: a heartbeat that saw a peer alive before it was buried must not
        # take it back in.
        self._departures = 0
        # Why Redis is unusable right now, or None.
        self.problem: str | None = None
        # Session ids from a range of this node's own.
        self.first_session_id = serial << SESSION_ID_BITS | 1
        # The other nodes' sessions by node, read from Redis once, then kept up to date by the
        # roster events each node publishes with every change (so LIST_USERS costs no round trip).
        self._remote: dict[str, dict[int, RemoteSession]] = {}
        self._remote_stale = True
        # While a full read is under way: the roster changes applied meanwhile, to apply again after it.
        self._replay: list[tuple[Callable[[Any], None], Any]] | None = None
        self._roster_turn = Semaphore()
        # Set by an outage: the stream may have been trimmed past this node's position meanwhile.
        self._check_for_gap = False
        self._greenlets: list[gevent.Greenlet] = []
        self._apply_remote: Callable[[Event], None] = lambda event: None
        self._local_sessions: Callable[[], Iterable[Session]] = tuple
        self._missed: Callable[[], None] = lambda: None
        metrics.cluster_enabled(node_id)
        self._join()

    def _join(self) -> None:
        try:
            self._stream_position = self._newest_entry()
            self._reachable()
            # Sessions of this node's previous run (it died, or restarted before its key expired).
            earlier = [json.loads(entry) for entry in self._redis.hvals(_roster_key(self.node_id))]
            if earlier:
                self.publish(SessionsGone(self.node_id, tuple(earlier)))
        except redis.RedisError as exc:
            self._unreachable(exc)
            log.warning("Redis unreachable at start (%s): this node joins the others when it comes", exc)

    def _newest_entry(self) -> str:
        newest = self._redis.xrevrange(STREAM, count=1)
        return newest[0][0].decode() if newest else "0-0"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, apply_remote: Callable[[Event], None], local_sessions: Callable[[], Iterable[Session]],
              missed: Callable[[], None]) -> None:
        """``missed`` is called when events were lost to this node (trimmed from the stream before
        it could read them): what the database knows must then be made good."""
        self._apply_remote = apply_remote
        self._local_sessions = local_sessions
        self._missed = missed
        self._greenlets = [
            gevent.spawn(self._retrying, self._write_step),
            gevent.spawn(self._retrying, self._read_step),
            gevent.spawn(self._heartbeat_loop),
        ]

    def stop(self) -> None:
        """Write what is waiting (briefly), then leave the cluster at once rather than by expiry."""
        self._wake.set()
        deadline = gevent.Timeout(2, False)
        with deadline:
            while (self._outbox or self._roster_updates) and self.problem is None:
                gevent.sleep(0.05)
        gevent.killall(self._greenlets)
        # Without Redis the others notice this node's heartbeat expire instead.
        if self.problem is None:
            try:
                self._leave()
            except redis.RedisError as exc:
                log.warning("Could not leave the cluster cleanly: %s", exc)
        self._redis.close()

    def _leave(self) -> None:
        """Buries this node itself: the others drop it and its sessions at once."""
        self._redis.delete(self._alive_key)
        self._bury_node(self.node_id)

    # -- what handlers and the transport call -------------------------------------------------

    def publish(self, event: Event) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self._outbox.popleft()
            self._dropped += 1
            metrics.cluster_outbox(len(self._outbox), 1)
            if self._dropped == 1:
                log.error("Cluster outbox full (%d events): dropping the oldest until Redis is back", MAX_OUTBOX)
        self._outbox.append(self._fields(event))
        self._wake.set()

    def roster_changed(self, session: Session) -> None:
        if session.nickname:
            self._roster_updates[session.id] = roster_entry(session)
            self._wake.set()

    def roster_left(self, session: Session) -> None:
        self._roster_updates[session.id] = None
        self._wake.set()

    def connection_opened(self, host: str) -> None:
        self._address_updates[host] = self._address_updates.get(host, 0) + 1
        self._wake.set()

    def connection_closed(self, host: str) -> None:
        self._address_updates[host] = self._address_updates.get(host, 0) - 1
        self._wake.set()

    def remote_sessions(self) -> list[RemoteSession]:
        """The sessions of every other live node; none while Redis is away."""
        if self.problem is not None or not self.peers:
            return []
        if self._remote_stale:
            with self._roster_turn:  # one full read at a time; the callers waiting find its result
                if self._remote_stale:
                    self._read_rosters()
        return [session for peer in self.peers for session in self._remote.get(peer, {}).values()]

    def _read_rosters(self) -> None:
        self._replay = []
        try:
            pipe = self._redis.pipeline(transaction=False)
            peers = self.peers
            for peer in peers:
                pipe.hvals(_roster_key(peer))
            rosters = pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)
            return
        finally:
            replay, self._replay = self._replay, None
        self._remote = {peer: {entry["session_id"]: _remote_session(entry) for entry in map(json.loads, entries)}
                        for peer, entries in zip(peers, rosters, strict=True)}
        # Changes read from the stream while the rosters were on their way may be newer than them.
        for change, meta in replay:
            change(meta)
        self._remote_stale = False

    def _apply_roster(self, meta: dict) -> None:
        if self._replay is not None:
            self._replay.append((self._apply_roster, meta))
        node = meta["node"]
        sessions = {} if meta["full"] else self._remote.setdefault(node, {})
        for session_id, entry in meta["entries"].items():
            if entry is None:
                sessions.pop(int(session_id), None)
            else:
                sessions[int(session_id)] = _remote_session(entry)
        self._remote[node] = sessions

    def connections_elsewhere(self, host: str) -> int:
        """Connections from ``host`` to the other live nodes; 0 while Redis is away."""
        peers = self.peers
        if self.problem is not None or not peers:
            return 0
        try:
            pipe = self._redis.pipeline(transaction=False)
            for peer in peers:
                pipe.hget(_addresses_key(peer), host)
            return sum(int(count or 0) for count in pipe.execute())
        except redis.RedisError as exc:
            self._failed(exc)
            return 0

    def limit(self, name: str, limit: int, seconds: float) -> SharedLimit:
        return SharedLimit(self, name, limit, seconds)

    def window_allows(self, key: str, limit: int, window_ms: int, record: bool) -> bool | None:
        """Whether the shared window ``key`` has room (and take it when ``record``); None when
        Redis cannot tell."""
        allowed = self._quietly(lambda: self._window(
            keys=[f"{PREFIX}limit:{key}"], args=[window_ms, limit, "1" if record else "0", secrets.token_hex(4)]))
        return None if allowed is None else bool(allowed)

    def forget_window(self, key: str) -> None:
        self._quietly(lambda: self._redis.delete(f"{PREFIX}limit:{key}"))

    def block(self, key: str, seconds: float) -> None:
        """Refuse ``key`` on every node for ``seconds``."""
        self._quietly(lambda: self._redis.set(f"{PREFIX}block:{key}", 1, px=int(seconds * 1000)))

    def seconds_blocked(self, key: str) -> float:
        remaining_ms = self._quietly(lambda: self._redis.pttl(f"{PREFIX}block:{key}"))
        return max(0, remaining_ms or 0) / 1000

    def _quietly(self, command: Callable[[], Any]) -> Any:
        """One command, or None while Redis is away: callers then rely on this node's own state."""
        if self.problem is not None:
            return None
        try:
            return command()
        except redis.RedisError as exc:
            self._failed(exc)
            return None

    def status(self) -> dict:
        return {"node": self.node_id, "peers": list(self.peers),
                "redis": "ok" if self.problem is None else f"error: {self.problem}"}

    # -- background work ----------------------------------------------------------------------

    def _retrying(self, step: Callable[[], None]) -> None:
        """Run ``step`` for ever; while it fails, wait a little longer before each retry."""
        failures = 0
        while True:
            try:
                step()
            except redis.RedisError as exc:
                self._failed(exc)
            except Exception:
                # A bug, or a reply nobody expected: logged, and the loop goes on rather than
                # leave this node deaf or mute for the rest of its run.
                log.exception("Cluster %s failed", step.__name__)
            else:
                failures = 0
                continue
            gevent.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
            failures += 1

    def _write_step(self) -> None:
        """Writes the outbox and roster changes in order, or waits for some."""
        if not (self._outbox or self._roster_updates or self._address_updates or self._resync):
            self._wake.wait()
            self._wake.clear()
            return
        self._write_batch()
        self._reachable()
        metrics.cluster_outbox(len(self._outbox))

    def _write_batch(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        resyncing, self._resync = self._resync, False
        roster = self._queue_full_roster(pipe) if resyncing else {}
        roster.update(self._roster_updates)
        self._roster_updates = {}
        addresses, self._address_updates = self._address_updates, {}
        self._queue_roster(pipe, roster, addresses)
        if roster or resyncing:
            # Ahead of the batch's events, so that a SERVER_PRESENCE they carry never comes before
            # the roster that lists the session. Unnumbered: it may be written again, and a roster
            # written again whole (after a failed write) replaces what came before.
            meta = {"node": self.node_id, "full": resyncing, "entries": roster}
            pipe.xadd(STREAM, {"node": self.node_id, "run": self._incarnation, "seq": 0, "kind": "roster",
                               "meta": json.dumps(meta), "frame": b""},
                      maxlen=STREAM_MAX_ENTRIES, approximate=True)
        batch = [self._outbox[i] for i in range(min(WRITE_BATCH, len(self._outbox)))]
        for fields in batch:
            pipe.xadd(STREAM, fields, maxlen=STREAM_MAX_ENTRIES, approximate=True)
        try:
            pipe.execute()
        except BaseException:
            # Not known what was written: the roster is rewritten whole next time, and events
            # written twice are skipped by the readers (sequence numbers).
            self._resync = True
            raise
        for _ in batch:
            self._outbox.popleft()
        metrics.cluster_events("published", len(batch))

    def _fields(self, event: Event) -> dict:
        self._sequence += 1
        kind, meta, frame = encode(event)
        return {"node": self.node_id, "run": self._incarnation, "seq": self._sequence, "kind": kind,
                "meta": meta, "frame": frame}

    def _queue_full_roster(self, pipe) -> dict[int, dict | None]:
        """Queues this node's whole roster and connection counts, replacing what Redis holds;
        returns the roster entries."""
        sessions = list(self._local_sessions())
        pipe.delete(_roster_key(self.node_id), _addresses_key(self.node_id))
        counts: dict[str, int] = {}
        for session in sessions:
            counts[session.host] = counts.get(session.host, 0) + 1
        if counts:
            pipe.hset(_addresses_key(self.node_id), mapping=counts)
        # The snapshot already holds every change made so far.
        self._roster_updates.clear()
        self._address_updates.clear()
        return {session.id: roster_entry(session) for session in sessions if session.nickname}

    def _queue_roster(self, pipe, roster: dict[int, dict | None], addresses: dict[str, int]) -> None:
        roster_key, addresses_key = _roster_key(self.node_id), _addresses_key(self.node_id)
        gone = [session_id for session_id, entry in roster.items() if entry is None]
        present = {session_id: json.dumps(entry) for session_id, entry in roster.items() if entry is not None}
        if gone:
            pipe.hdel(roster_key, *gone)
        if present:
            pipe.hset(roster_key, mapping=present)
        for host, delta in addresses.items():
            if delta:
                pipe.hincrby(addresses_key, host, delta)

    def _read_step(self) -> None:
        """Applies the other nodes' events in stream order, resuming after the last one seen."""
        if self._check_for_gap:
            self._look_for_gap()
        found = self._redis.xread({STREAM: self._stream_position}, count=READ_BATCH, block=READ_BLOCK_MS)
        self._reachable()
        for _, entries in found:
            for entry_id, fields in entries:
                self._stream_position = entry_id.decode()
                self._receive(fields)

    def _look_for_gap(self) -> None:
        """After an outage: were entries this node had yet to read trimmed meanwhile?"""
        try:
            info = self._redis.xinfo_stream(STREAM)
        except redis.ResponseError:
            info = None  # no stream yet: nothing was trimmed
        self._check_for_gap = False
        # entries-added: Redis 7 and later; before that, only the oldest entry tells.
        if info is None or info.get("entries-added") == info["length"]:
            return
        # Trimming takes the oldest entries. Some were trimmed past this node's position: those
        # are lost (or, when the trim stopped right at the position, nothing was, and the check
        # against the database that follows finds nothing to do).
        if info["first-entry"]:
            milliseconds, sequence = _entry_order(info["first-entry"][0].decode())
            # The id right before the oldest entry: all up to it is gone.
            gone = (milliseconds, sequence - 1) if sequence else (milliseconds - 1, 2**64 - 1)
        else:
            gone = _entry_order(info["last-generated-id"].decode())
        if gone > _entry_order(self._stream_position):
            log.error("Events after %s were trimmed from the stream before this node read them: live "
                      "deliveries of that time are lost here (the messages are stored); checking bans, "
                      "accounts and channels against the database", self._stream_position)
            # Reported once: reading resumes at the first entry still there.
            self._stream_position = f"{gone[0]}-{gone[1]}"
            metrics.cluster_stream_gap()
            self._missed()

    def _receive(self, fields: dict) -> None:
        kind = fields[b"kind"].decode()
        if kind == NodeGone.KIND:
            # Written by the burial itself, once, by whichever node buried: every node applies
            # it here, the burier too, in its place among the buried node's last events.
            self._node_gone(decode(kind, fields[b"meta"], b""))
            return
        if fields[b"node"].decode() == self.node_id and fields[b"run"].decode() == self._incarnation:
            return
        if kind == "roster":
            self._apply_roster(json.loads(fields[b"meta"]))
            return
        node, run, sequence = fields[b"node"].decode(), fields[b"run"].decode(), int(fields[b"seq"])
        last_run, last_sequence = self._last_seen.get(node, ("", 0))
        if run == last_run and sequence <= last_sequence:
            return  # written twice after a failed write
        self._last_seen[node] = (run, sequence)
        metrics.cluster_events("received", 1)
        try:
            event = decode(kind, fields[b"meta"], fields[b"frame"])
            if isinstance(event, SessionsGone):
                self._forget_sessions(event)
            self._apply_remote(event)
        except Exception:
            log.exception("Cannot apply %s event from node %s", kind, node)

    def _forget_sessions(self, event: SessionsGone) -> None:
        if self._replay is not None:
            self._replay.append((self._forget_sessions, event))
        sessions = self._remote.get(event.node, {})
        for entry in event.sessions:
            sessions.pop(entry["session_id"], None)

    def _node_gone(self, event: NodeGone) -> None:
        """A node was buried or left: it leaves the peers and its sessions the roster at the same
        moment, then this node's sessions are told its users left."""
        self._drop_peer(event.node)
        try:
            self._apply_remote(event)
        except Exception:
            log.exception("Cannot tell this node's sessions that node %s's sessions left", event.node)

    def _drop_peer(self, node: str) -> None:
        if self._replay is not None:
            self._replay.append((self._drop_peer, node))
        self._remote.pop(node, None)
        if node in self.peers:
            self.peers = tuple(peer for peer in self.peers if peer != node)
            self._departures += 1
            metrics.cluster_peers(len(self.peers))

    def _heartbeat_loop(self) -> None:
        while True:
            try:
                self._heartbeat()
            except redis.RedisError as exc:
                self._failed(exc)
            except Exception:
                log.exception("Cluster heartbeat failed")
            gevent.sleep(HEARTBEAT_SECONDS)

    def _heartbeat(self) -> None:
        departures = self._departures
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._alive_key, self._incarnation, ex=NODE_TTL_SECONDS, get=True)
        pipe.sadd(NODES, self.node_id)
        pipe.smembers(NODES)
        previous, _, members = pipe.execute()
        self._reachable()
        if previous is None or previous.decode() != self._incarnation:
            # Redis lost our keys (restarted, or thought us dead: this node may have been frozen
            # while its connections lived): write our roster anew, and find what was missed.
            self._resync = True
            self._check_for_gap = True
            self._remote_stale = True
            self._wake.set()
        others = sorted(member.decode() for member in members if member.decode() != self.node_id)
        pipe = self._redis.pipeline(transaction=False)
        for other in others:
            pipe.exists(_alive_key(other))
        alive = pipe.execute() if others else []
        living = [node for node, is_alive in zip(others, alive, strict=True) if is_alive]
        # Read before a departure this node applied meanwhile: the departed may be listed as alive.
        outdated = self._departures != departures
        # A peer missing from the node set was buried, or left: its departure is in the stream
        # already (it went in with the burial), and tells this node's sessions when read.
        for node in self.peers:
            if node not in others:
                self._drop_peer(node)
        joined = [] if outdated else [node for node in living if node not in self.peers]
        if joined:
            self.peers = tuple(sorted((*self.peers, *joined)))
        metrics.cluster_peers(len(self.peers))
        if time.monotonic() < self._bury_after:
            return
        for node in others:
            if node not in living:
                self._bury(node)

    def _bury(self, node: str) -> None:
        """A node whose heartbeat expired: the first node to notice buries it. It stays a peer of
        every node, this one too, until its departure is read from the stream."""
        sessions = self._bury_node(node)
        if sessions is not None:
            log.warning("Node %s stopped answering; %d of its sessions left the roster", node, sessions)

    def _bury_node(self, node: str) -> int | None:
        """How many sessions the buried node had; None when another node got there first, or it is back."""
        sessions = self._bury_script(
            keys=[_alive_key(node), NODES, _roster_key(node), _addresses_key(node), STREAM],
            args=[node, self.node_id, self._incarnation, STREAM_MAX_ENTRIES])
        if sessions is not None:
            metrics.cluster_events("published", 1)
        return sessions

    def _reachable(self) -> None:
        if self.problem is not None:
            log.info("Redis reachable again")
            self._bury_after = time.monotonic() + NODE_TTL_SECONDS
            # Roster events may have been trimmed meanwhile: read the rosters whole again.
            self._remote_stale = True
            self.problem = None
            self._dropped = 0
        metrics.redis_reachable(True)

    def _failed(self, exc: redis.RedisError) -> None:
        """A command failed. Only a lost or silent Redis makes this node fall back on its own state:
        an error reply, or every pooled connection busy, is one command's failure."""
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and not _pool_busy(exc):
            self._unreachable(exc)
        else:
            log.warning("Redis command failed: %s", exc)

    def _unreachable(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if self.problem is None:
            log.error("Redis unreachable: %s (serving this node's sessions; events wait in the outbox)", text)
        self.problem = text
        self._check_for_gap = True
        metrics.redis_reachable(False)


class SharedLimit:
    """A per-key sliding window every node shares; each node's own window while Redis is away."""

    def __init__(self, cluster: Cluster, name: str, limit: int, seconds: float):
        self._cluster = cluster
        self._name = name
        self._limit = limit
        self._window_ms = int(seconds * 1000)
        self._local = PerAddressLimit(limit, seconds)

    def allow(self, key: str) -> bool:
        return self._ask(key, record=True)

    def has_room(self, key: str) -> bool:
        return self._ask(key, record=False)

    def _ask(self, key: str, record: bool) -> bool:
        local = self._local.allow(key) if record else self._local.has_room(key)
        shared = self._cluster.window_allows(f"{self._name}:{key}", self._limit, self._window_ms, record)
        return local if shared is None else shared


def _pool_busy(exc: redis.RedisError) -> bool:
    # What redis-py's BlockingConnectionPool raises when no connection comes free in time.
    return isinstance(exc, redis.ConnectionError) and str(exc) == "No connection available."


def _entry_order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _alive_key(node: str) -> str:
    return f"{PREFIX}node:{node}:alive"


def _roster_key(node: str) -> str:
    return f"{PREFIX}node:{node}:roster"


def _addresses_key(node: str) -> str:
    return f"{PREFIX}node:{node}:addresses"
