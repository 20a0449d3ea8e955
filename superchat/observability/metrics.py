"""Every Prometheus metric of the server, named here and nowhere else.

Names, labels and buckets follow the operations guide. The server feeds them from a
few points of truth: a session opened or closed, a frame in, a frame out, a
broadcast, a subscription changed. The per-thread metrics have at most
``max_thread_series`` series naming a thread each, and a thread_id="other" series for the rest,
so that neither memory nor a scrape grows with the threads a server has seen.
"""

from __future__ import annotations

import gc
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from operator import itemgetter

from gevent import monkey
from greenlet import greenlet
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Every metric value guards itself with threading.Lock, which gevent's patching turns into a
# lock written in Python; at several updates per post that was a tenth of the server's time.
# An updating greenlet never yields while holding it, so the OS lock serves just as well.
values.Lock = monkey.get_original("_thread", "allocate_lock")

# The guide's counters have no *_created companions; leaving them would double every series.
disable_created_metrics()

FANOUT_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000)

ACTIVE_SESSIONS = Gauge("superchat_active_sessions", "Current number of active sessions")
SESSIONS_CREATED = Counter("superchat_sessions_created", "Total sessions created since server start")
SESSIONS_DISCONNECTED = Counter("superchat_sessions_disconnected", "Total sessions disconnected")
MESSAGES_RECEIVED = Counter("superchat_messages_received", "Messages received from clients by type", ["type"])
MESSAGES_SENT = Counter("superchat_messages_sent", "Messages sent to clients by type", ["type"])
MESSAGES_BROADCAST = Counter("superchat_messages_broadcast", "Unique messages broadcast (not deliveries)")
CHANNEL_SUBSCRIBERS = Gauge("superchat_channel_subscribers", "Active subscribers per channel", ["channel_id"])
BROADCAST_FANOUT = Histogram(
    "superchat_broadcast_fanout", "Recipients per broadcast message", ["type"], buckets=FANOUT_BUCKETS
)
BROADCAST_DURATION = Histogram(
    "superchat_broadcast_duration_seconds", "Time to broadcast a message to all subscribers", ["type"]
)
# The guide's session metrics carry no labels; these say which way the sessions came in.
TRANSPORTS = ("tcp", "websocket", "ssh")
TRANSPORT_SESSIONS = Gauge("superchat_transport_sessions", "Active sessions by transport", ["transport"])
TRANSPORT_CONNECTIONS = Counter(
    "superchat_transport_connections", "Connections accepted by transport, refused ones included", ["transport"]
)
for _transport in TRANSPORTS:  # every series exists from the start, at zero
    TRANSPORT_SESSIONS.labels(_transport)
    TRANSPORT_CONNECTIONS.labels(_transport)
UNFINISHED_FRAME_BYTES = Gauge(
    "superchat_unfinished_frame_bytes",
    "Bytes of clients' unfinished frames counted against partial_frame_memory_mb (past 64 KiB each)",
)
GREENLETS = Gauge(
    "superchat_greenlets", "Live greenlets, the counterpart of go_goroutines: a steady rise means a leak"
)
GREENLETS.set_function(lambda: sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet)))
# The guide's DatabaseGrowthRapid rule predicts from process memory, all a Go server offered it;
# this is what the rule is about.
DATABASE_SIZE = Gauge(
    "superchat_database_size_bytes",
    "Bytes the database takes on disk: the SQLite file with its WAL, or pg_database_size on PostgreSQL",
)
# Several nodes sharing Redis (exported only when redis_url is set).
CLUSTER_NODE = Gauge("superchat_cluster_node_info", "This node's id in the cluster (always 1)", ["node"],
                     registry=None)
REDIS_UP = Gauge("superchat_redis_up", "Whether the last exchange with Redis succeeded (1) or failed (0)",
                 registry=None)
CLUSTER_PEERS = Gauge("superchat_cluster_peers", "Other live nodes this node sees", registry=None)
CLUSTER_EVENTS = Counter("superchat_cluster_events", "Events exchanged with other nodes through Redis",
                         ["direction"], registry=None)
CLUSTER_OUTBOX = Gauge("superchat_cluster_outbox_events", "Events waiting to be written to Redis", registry=None)
CLUSTER_EVENTS_DROPPED = Counter(
    "superchat_cluster_events_dropped", "Events dropped because Redis was away longer than the outbox holds",
    registry=None,
)
CLUSTER_STREAM_GAPS = Counter(
    "superchat_cluster_stream_gaps", "Times events were trimmed from the stream before this node read them",
    registry=None,
)


def connection_opened(transport: str) -> None:
    """A client reached the server over ``transport`` (tcp, websocket or ssh), refused or not."""
    TRANSPORT_CONNECTIONS.labels(transport).inc()


def session_opened(transport: str) -> None:
    SESSIONS_CREATED.inc()
    ACTIVE_SESSIONS.inc()
    TRANSPORT_SESSIONS.labels(transport).inc()


def session_closed(transport: str) -> None:
    SESSIONS_DISCONNECTED.inc()
    ACTIVE_SESSIONS.dec()
    TRANSPORT_SESSIONS.labels(transport).dec()


def database_size(size: int | None) -> None:
    """The latest measure of the database on disk; None (it could not be read) shows as NaN."""
    DATABASE_SIZE.set(math.nan if size is None else size)


def unfinished_frame_bytes(held: int) -> None:
    UNFINISHED_FRAME_BYTES.set(held)


# Children by type name: labels() resolves its arguments on every call, and these run per frame.
_received: dict[str, Counter] = {}
_sent: dict[str, Counter] = {}


def frame_received(type_name: str) -> None:
    child = _received.get(type_name)
    if child is None:
        child = _received[type_name] = MESSAGES_RECEIVED.labels(type_name)
    child.inc()


def frames_sent(type_name: str, count: int = 1) -> None:
    if count:
        child = _sent.get(type_name)
        if child is None:
            child = _sent[type_name] = MESSAGES_SENT.labels(type_name)
        child.inc(count)


# The label value of the series that stand for the threads left without one of their own.
OTHER_THREADS = "other"


class _DeliveriesByThread:
    """superchat_messages_delivered_total{channel_id, thread_id}, in bounded memory.

    Root posts count in their channel's series with an empty thread_id; replies in their
    thread's series, of which at most ``limit`` exist. Threads keep coming for as long as the
    server runs, so past the limit the thread series least recently delivered to leaves, as does
    the series of a thread that expired; its count moves to its channel's thread_id="other".

    Why this keeps Prometheus right. The sum over every series, and over each channel's, is the
    number of deliveries at every scrape and never falls, so totals built from the metric hold.
    "other" never falls either: it gains the count of each series that leaves, and nothing else.
    A thread delivered to again starts a new series at zero rather than taking its count back out
    of "other": that would make "other" fall, and rate() reads a fall as a reset and counts the
    whole value again. What "other" gains was already counted by rate() of the series that left,
    so rates leave it out: ``sum(rate(superchat_messages_delivered_total{thread_id!="other"}[5m]))``.
    That holds while the threads delivered to within one rate window fit in the limit; past it a
    series can leave and come back within the window, and rate() reads its old and new counts as
    one series.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        self._roots: dict[int, float] = {}
        # thread id -> [channel id, deliveries], least recently delivered to first.
        self._threads: OrderedDict[int, list] = OrderedDict()
        self._moved: dict[int, float] = {}

    def add(self, channel_id: int, thread_id: int | None, recipients: int) -> None:
        if thread_id is None:
            self._roots[channel_id] = self._roots.get(channel_id, 0) + recipients
            return
        entry = self._threads.get(thread_id)
        if entry is None:
            entry = self._threads[thread_id] = [channel_id, 0]
            if self.limit is not None and len(self._threads) > self.limit:
                self._move_to_other(self._threads.popitem(last=False)[1])
        else:
            self._threads.move_to_end(thread_id)
        entry[1] += recipients

    def thread_gone(self, thread_id: int) -> None:
        entry = self._threads.pop(thread_id, None)
        if entry is not None:
            self._move_to_other(entry)

    def _move_to_other(self, entry: list) -> None:
        channel_id, deliveries = entry
        self._moved[channel_id] = self._moved.get(channel_id, 0) + deliveries

    def describe(self):
        yield CounterMetricFamily("superchat_messages_delivered", "Message deliveries to clients",
                                  labels=["channel_id", "thread_id"])

    def collect(self):
        family = next(self.describe())
        for channel_id, deliveries in self._roots.items():
            family.add_metric([str(channel_id), ""], deliveries)
        for thread_id, (channel_id, deliveries) in self._threads.items():
            family.add_metric([str(channel_id), str(thread_id)], deliveries)
        for channel_id, deliveries in self._moved.items():
            family.add_metric([str(channel_id), OTHER_THREADS], deliveries)
        yield family


class _ThreadSubscribers:
    """superchat_thread_subscribers{thread_id}, read from the sessions at each scrape: the ``limit``
    threads with the most subscribers have a series each, and thread_id="other" holds the
    subscribers of the rest, so the sum over the series is every thread subscription."""

    def __init__(self) -> None:
        self.limit: int | None = None
        self.counts: Callable[[], Iterable[tuple[int, int]]] = tuple

    def describe(self):
        yield GaugeMetricFamily("superchat_thread_subscribers", "Active subscribers per thread", labels=["thread_id"])

    def collect(self):
        family = next(self.describe())
        counts = list(self.counts())
        shown = counts if self.limit is None or len(counts) <= self.limit else heapq.nlargest(
            self.limit, counts, key=itemgetter(1))
        for thread_id, subscribers in shown:
            family.add_metric([str(thread_id)], subscribers)
        if len(shown) < len(counts):
            family.add_metric([OTHER_THREADS], sum(n for _, n in counts) - sum(n for _, n in shown))
        yield family


_deliveries = _DeliveriesByThread()
_thread_subscribers = _ThreadSubscribers()
REGISTRY.register(_deliveries)
REGISTRY.register(_thread_subscribers)


def cap_thread_series(limit: int) -> None:
    """At most ``limit`` series naming a thread in each per-thread metric."""
    _deliveries.limit = _thread_subscribers.limit = limit


def count_thread_subscribers(counts: Callable[[], Iterable[tuple[int, int]]]) -> None:
    """Where superchat_thread_subscribers comes from: (thread id, subscriber count) of every
    thread with subscribers, read when scraped rather than kept per thread."""
    _thread_subscribers.counts = counts


_fanout: dict[str, Histogram] = {}
_broadcast_duration: dict[str, Histogram] = {}


def message_broadcast(kind: str, channel_id: int, thread_id: int | None, recipients: int, seconds: float) -> None:
    """One new message delivered to ``recipients`` sessions; ``kind`` is "channel" or "thread"."""
    MESSAGES_BROADCAST.inc()
    if recipients:
        _deliveries.add(channel_id, thread_id, recipients)
    fanout = _fanout.get(kind)
    if fanout is None:
        fanout = _fanout[kind] = BROADCAST_FANOUT.labels(kind)
        _broadcast_duration[kind] = BROADCAST_DURATION.labels(kind)
    fanout.observe(recipients)
    _broadcast_duration[kind].observe(seconds)


def channel_subscribers(channel_id: int, count: int) -> None:
    _set_or_drop(CHANNEL_SUBSCRIBERS, str(channel_id), count)


def threads_expired(threads) -> None:
    """(channel_id, thread_id) threads that no longer exist: their delivery counts move to "other"."""
    for _, thread_id in threads:
        _deliveries.thread_gone(thread_id)


def _set_or_drop(gauge: Gauge, label: str, count: int) -> None:
    # A gauge at zero is removed rather than kept: subscriptions come and go by the thousand.
    if count:
        gauge.labels(label).set(count)
    else:
        _remove(gauge, label)


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def cluster_enabled(node_id: str) -> None:
    """Export the cluster metrics: a single node has no use for them."""
    for metric in (CLUSTER_NODE, REDIS_UP, CLUSTER_PEERS, CLUSTER_EVENTS, CLUSTER_OUTBOX, CLUSTER_EVENTS_DROPPED,
                   CLUSTER_STREAM_GAPS):
        REGISTRY.register(metric)
    CLUSTER_NODE.labels(node_id).set(1)
    for direction in ("published", "received"):
        CLUSTER_EVENTS.labels(direction)


def redis_reachable(up: bool) -> None:
    REDIS_UP.set(1 if up else 0)


def cluster_peers(count: int) -> None:
    CLUSTER_PEERS.set(count)


def cluster_events(direction: str, count: int) -> None:
    CLUSTER_EVENTS.labels(direction).inc(count)


def cluster_stream_gap() -> None:
    CLUSTER_STREAM_GAPS.inc()


def cluster_outbox(waiting: int, dropped: int = 0) -> None:
    CLUSTER_OUTBOX.set(waiting)
    if dropped:
        CLUSTER_EVENTS_DROPPED.inc(dropped)
