"""The event stream: this node's outbox written in order, the other nodes' events read in order.

Each node appends its own events to one Redis Stream and reads everyone else's from the last
entry it has seen, so a node that loses Redis for a while resumes where it left off and its
clients miss nothing. While Redis is away the events a node emits wait in its outbox and are
written when Redis is back.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable

import redis
from gevent.event import Event as Signal

from ...observability import metrics, trace
from ..event import Event, NodeGone, SessionsGone, decode, encode
from .keys import STREAM
from .redis_link import RedisLink
from .roster import Roster

log = logging.getLogger("superchat.cluster")

# Minutes of heavy traffic: a node away for longer than that misses deliveries (and says so).
STREAM_MAX_ENTRIES = 200_000
# Events one node holds while Redis is away; past that the oldest are dropped (and counted).
MAX_OUTBOX = 100_000
READ_BLOCK_MS = 2000
READ_BATCH = 1000
WRITE_BATCH = 500
# The kind of the entries that carry roster changes, for the roster rather than the appliers.
ROSTER_KIND = "roster"


class EventStream:
    """This node's side of the stream."""

    def __init__(self, link: RedisLink, roster: Roster, wake: Signal):
        self._link = link
        self._roster = roster
        self._wake = wake
        self._sequence = 0
        # Stream fields, numbered when published so that a retried write repeats the same numbers.
        self._outbox: deque[dict] = deque()
        self._dropped = 0
        self._resync = True
        # Per node, the run and sequence number of its last event read: one entry per node, as a
        # node's new run (a restart) follows its last.
        self._last_seen: dict[str, tuple[str, int]] = {}
        # Until Redis says where its stream ends: from now on, should it be unreachable at start.
        self._position = f"{time.time_ns() // 1_000_000}-0"
        # Set by an outage: the stream may have been trimmed past this node's position meanwhile.
        self._check_for_gap = False
        self._apply_remote: Callable[[Event], None] = lambda event: None
        self._missed: Callable[[], None] = lambda: None
        link.when_lost(self._may_have_gap)
        link.when_back(self._outbox_kept)

    def start(self, apply_remote: Callable[[Event], None], missed: Callable[[], None]) -> None:
        self._apply_remote = apply_remote
        self._missed = missed

    def read_from_end(self) -> None:
        """Read only what is written from now on."""
        newest = self._link.redis.xrevrange(STREAM, count=1)
        self._position = _entry_id(newest[0][0]) if newest else "0-0"

    def start_over(self) -> None:
        """Redis lost this node's keys: write its roster anew, and find what was missed."""
        self._resync = True
        self._check_for_gap = True
        self._wake.set()

    @property
    def unwritten(self) -> bool:
        """Whether events or roster changes wait to be written."""
        return bool(self._outbox) or self._roster.unwritten

    def _may_have_gap(self) -> None:
        self._check_for_gap = True

    def _outbox_kept(self) -> None:
        self._dropped = 0

    # -- writing ----------------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self._outbox.popleft()
            self._dropped += 1
            metrics.cluster_outbox(len(self._outbox), 1)
            if self._dropped == 1:
                log.error("Cluster outbox full (%d events): dropping the oldest until Redis is back", MAX_OUTBOX)
        fields = self._fields(event)
        if trace.enabled:
            trace.cluster_event("out", fields["kind"], self._link.node_id)
        self._outbox.append(fields)
        self._wake.set()

    def write_step(self) -> None:
        """Writes the outbox and roster changes in order, or waits for some."""
        if not (self._outbox or self._roster.has_changes or self._resync):
            self._wake.wait()
            self._wake.clear()
            return
        self._write_batch()
        self._link.reachable()
        metrics.cluster_outbox(len(self._outbox))

    def _write_batch(self) -> None:
        pipe = self._link.redis.pipeline(transaction=False)
        resyncing, self._resync = self._resync, False
        roster = self._roster.queue_changes(pipe, whole=resyncing)
        if roster or resyncing:
            # Ahead of the batch's events, so that a SERVER_PRESENCE they carry never comes before
            # the roster that lists the session. Unnumbered: it may be written again, and a roster
            # written again whole (after a failed write) replaces what came before.
            meta = {"node": self._link.node_id, "full": resyncing, "entries": roster}
            pipe.xadd(STREAM, {"node": self._link.node_id, "run": self._link.run, "seq": 0, "kind": ROSTER_KIND,
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
        return {"node": self._link.node_id, "run": self._link.run, "seq": self._sequence, "kind": kind,
                "meta": meta, "frame": frame}

    # -- reading ----------------------------------------------------------------------------------

    def read_step(self) -> None:
        """Applies the other nodes' events in stream order, resuming after the last one seen."""
        if self._check_for_gap:
            self._look_for_gap()
        found = self._link.redis.xread({STREAM: self._position}, count=READ_BATCH, block=READ_BLOCK_MS)
        self._link.reachable()
        if not isinstance(found, list):
            raise TypeError(f"XREAD replied {type(found).__name__}, not RESP2's list of streams")
        for _, entries in found:
            for entry_id, fields in entries:
                self._position = entry_id.decode()
                self._receive(fields)

    def _look_for_gap(self) -> None:
        """After an outage: were entries this node had yet to read trimmed meanwhile?"""
        try:
            info = self._link.redis.xinfo_stream(STREAM)
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
        if gone > _entry_order(self._position):
            log.error("Events after %s were trimmed from the stream before this node read them: live "
                      "deliveries of that time are lost here (the messages are stored); checking bans, "
                      "accounts and channels against the database", self._position)
            # Reported once: reading resumes at the first entry still there.
            self._position = f"{gone[0]}-{gone[1]}"
            metrics.cluster_stream_gap()
            self._missed()

    def _receive(self, fields: dict) -> None:
        kind = fields[b"kind"].decode()
        if kind == NodeGone.KIND:
            # Written by the burial itself, once, by whichever node buried: every node applies
            # it here, the burier too, in its place among the buried node's last events.
            self._node_gone(NodeGone.from_fields(json.loads(fields[b"meta"])))
            return
        node, run = fields[b"node"].decode(), fields[b"run"].decode()
        if node == self._link.node_id and run == self._link.run:
            return
        if kind == ROSTER_KIND:
            self._roster.apply(json.loads(fields[b"meta"]))
            return
        sequence = int(fields[b"seq"])
        last_run, last_sequence = self._last_seen.get(node, ("", 0))
        if run == last_run and sequence <= last_sequence:
            return  # written twice after a failed write
        self._last_seen[node] = (run, sequence)
        metrics.cluster_events("received", 1)
        if trace.enabled:
            trace.cluster_event("in", kind, node)
        try:
            event = decode(kind, fields[b"meta"], fields[b"frame"])
            if isinstance(event, SessionsGone):
                self._roster.forget_sessions(event)
            self._apply_remote(event)
        except Exception:
            log.exception("Cannot apply %s event from node %s", kind, node)

    def _node_gone(self, event: NodeGone) -> None:
        """A node was buried or left: it leaves the peers and its sessions the roster at the same
        moment, then this node's sessions are told its users left."""
        self._roster.drop_peer(event.node)
        try:
            self._apply_remote(event)
        except Exception:
            log.exception("Cannot tell this node's sessions that node %s's sessions left", event.node)


def _entry_id(entry_id: bytes | str | None) -> str:
    """An entry's id as the node's client replies it: bytes, as it decodes no replies."""
    if not isinstance(entry_id, bytes):
        raise TypeError(f"stream entry id {entry_id!r} is not bytes")
    return entry_id.decode()


def _entry_order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)
