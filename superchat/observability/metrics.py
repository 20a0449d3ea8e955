"""Every Prometheus metric of the server, named here and nowhere else.

Names, labels and buckets follow the operations guide. The server feeds them from a
few points of truth: a session opened or closed, a frame in, a frame out, a
broadcast, a subscription changed.
"""

from __future__ import annotations

import gc

from gevent import monkey
from greenlet import greenlet
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, values

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
MESSAGES_DELIVERED = Counter(
    "superchat_messages_delivered", "Message deliveries to clients", ["channel_id", "thread_id"]
)
CHANNEL_SUBSCRIBERS = Gauge("superchat_channel_subscribers", "Active subscribers per channel", ["channel_id"])
THREAD_SUBSCRIBERS = Gauge("superchat_thread_subscribers", "Active subscribers per thread", ["thread_id"])
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


_fanout: dict[str, Histogram] = {}
_broadcast_duration: dict[str, Histogram] = {}
_delivered: dict[tuple[int, int | None], Counter] = {}


def message_broadcast(kind: str, channel_id: int, thread_id: int | None, recipients: int, seconds: float) -> None:
    """One new message delivered to ``recipients`` sessions; ``kind`` is "channel" or "thread"."""
    MESSAGES_BROADCAST.inc()
    if recipients:
        key = (channel_id, thread_id)
        child = _delivered.get(key)
        if child is None:
            child = _delivered[key] = MESSAGES_DELIVERED.labels(str(channel_id), _thread_label(thread_id))
        child.inc(recipients)
    fanout = _fanout.get(kind)
    if fanout is None:
        fanout = _fanout[kind] = BROADCAST_FANOUT.labels(kind)
        _broadcast_duration[kind] = BROADCAST_DURATION.labels(kind)
    fanout.observe(recipients)
    _broadcast_duration[kind].observe(seconds)


def channel_subscribers(channel_id: int, count: int) -> None:
    _set_or_drop(CHANNEL_SUBSCRIBERS, str(channel_id), count)


def thread_subscribers(thread_id: int, count: int) -> None:
    _set_or_drop(THREAD_SUBSCRIBERS, str(thread_id), count)


def threads_expired(threads) -> None:
    """Drop the delivery series of (channel_id, thread_id) threads that no longer exist."""
    for channel_id, thread_id in threads:
        _delivered.pop((channel_id, thread_id), None)
        _remove(MESSAGES_DELIVERED, str(channel_id), str(thread_id))


def _thread_label(thread_id: int | None) -> str:
    # Root posts are broadcast to the channel: they carry an empty thread label.
    return "" if thread_id is None else str(thread_id)


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
