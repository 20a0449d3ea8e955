"""Which nodes are alive: this node's heartbeat, and the burial of peers whose heartbeat expired.

Each node keeps a heartbeat key with an expiry in Redis: when a node dies its key expires, and a
surviving node buries it: in one step it takes the node out of the node set, deletes its roster
and writes its departure to the stream. Every node drops a peer and its sessions together, when
it reads that departure, so /health never lists a node whose users have left, nor the other way
round.
"""

from __future__ import annotations

import logging
import time

import gevent
import redis

from ...observability import metrics
from ..event import NodeGone
from .keys import NODES, STREAM, addresses_key, alive_key, roster_key
from .redis_link import RedisLink
from .roster import Roster
from .stream import STREAM_MAX_ENTRIES, EventStream

log = logging.getLogger("superchat.cluster")

HEARTBEAT_SECONDS = 2.0
# A node silent this long is gone: its sessions leave the roster.
NODE_TTL_SECONDS = 10

# The first node to find a peer's heartbeat expired (or a node leaving, for itself) takes it out
# of the node set, deletes its roster and writes its departure, unless the peer came back
# meanwhile: then it keeps its place and nothing is announced. All in one step: a node that reads
# the departure finds the roster gone, and a burier dying half-way cannot leave it untold.
# The departure is a NodeGone record (event.py) in the shape every record has.
# Returns how many sessions the node had. ARGV: node, burier's node and run, stream length, kind.
_BURY_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return false end
local entries = redis.call('HVALS', KEYS[3])
redis.call('DEL', KEYS[3], KEYS[4])
local meta = '{"node":' .. cjson.encode(ARGV[1]) .. ',"sessions":[' .. table.concat(entries, ',') .. ']}'
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'node', ARGV[2], 'run', ARGV[3], 'seq', 0,
           'kind', ARGV[5], 'meta', meta, 'frame', '')
return #entries
"""


class Liveness:
    """This node's heartbeat, which also finds the peers that joined, left or died."""

    def __init__(self, link: RedisLink, roster: Roster, stream: EventStream):
        self._link = link
        self._roster = roster
        self._stream = stream
        self._alive_key = alive_key(link.node_id)
        self._bury_script = link.redis.register_script(_BURY_SCRIPT)
        # Peers are not buried until then: after an outage every heartbeat key has expired at once.
        self._bury_after = 0.0
        link.when_back(self._postpone_burials)

    def _postpone_burials(self) -> None:
        self._bury_after = time.monotonic() + NODE_TTL_SECONDS

    def heartbeat_loop(self) -> None:
        while True:
            try:
                self._heartbeat()
            except redis.RedisError as exc:
                self._link.failed(exc)
            except Exception:
                log.exception("Cluster heartbeat failed")
            gevent.sleep(HEARTBEAT_SECONDS)

    def _heartbeat(self) -> None:
        roster = self._roster
        departures = roster.departures
        pipe = self._link.redis.pipeline(transaction=False)
        pipe.set(self._alive_key, self._link.run, ex=NODE_TTL_SECONDS, get=True)
        pipe.sadd(NODES, self._link.node_id)
        pipe.smembers(NODES)
        previous, _, members = pipe.execute()
        self._link.reachable()
        if previous is None or previous.decode() != self._link.run:
            # Redis lost our keys (restarted, or thought us dead: this node may have been frozen
            # while its connections lived): write our roster anew, and find what was missed.
            self._stream.start_over()
            roster.mark_stale()
        others = sorted(member.decode() for member in members if member.decode() != self._link.node_id)
        pipe = self._link.redis.pipeline(transaction=False)
        for other in others:
            pipe.exists(alive_key(other))
        alive = pipe.execute() if others else []
        living = [node for node, is_alive in zip(others, alive, strict=True) if is_alive]
        # Read before a departure this node applied meanwhile: the departed may be listed as alive.
        outdated = roster.departures != departures
        # A peer missing from the node set was buried, or left: its departure is in the stream
        # already (it went in with the burial), and tells this node's sessions when read.
        for node in roster.peers:
            if node not in others:
                roster.drop_peer(node)
        joined = [] if outdated else [node for node in living if node not in roster.peers]
        if joined:
            roster.add_peers(joined)
        metrics.cluster_peers(len(roster.peers))
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

    def leave(self) -> None:
        """Buries this node itself: the others drop it and its sessions at once."""
        self._link.redis.delete(self._alive_key)
        self._bury_node(self._link.node_id)

    def _bury_node(self, node: str) -> int | None:
        """How many sessions the buried node had; None when another node got there first, or it is back."""
        sessions = self._bury_script(
            keys=[alive_key(node), NODES, roster_key(node), addresses_key(node), STREAM],
            args=[node, self._link.node_id, self._link.run, STREAM_MAX_ENTRIES, NodeGone.KIND])
        if sessions is not None:
            metrics.cluster_events("published", 1)
        return sessions
