"""``fanout``: many subscribers of one channel, one poster at a steady rate; delivery and latency.

Once subscribed, every subscriber socket is read by one ``Receiver``: a greenlet that waits
on an epoll of the raw sockets rather than a greenlet per socket, so that a post reaching a
thousand subscribers costs the tool a thousand recv calls and a clock read each, not a
thousand greenlet switches and full decodes while the later deliveries queue behind them.
"""

from __future__ import annotations

import errno
import math
import secrets
import struct
import time
from array import array
from collections import Counter

import gevent
from gevent import monkey
from gevent.socket import wait_read

from ..protocol import FrameError, PayloadError, messages, type_name
from ..protocol.frame import MAX_FRAME_LENGTH, Frame
from .connection import SKIPPED, Connection, LoadError, ServerError, SetupFailed, find_channel
from .plan import Plan, close_all, stop
from .stats import Histogram, describe

DRAIN_POLL_SECONDS = 0.02
CHANNEL_SUBSCRIPTION = 2
RECV_BYTES = 64 * 1024
# Chunks received but not yet parsed: parsing waits until no socket is ready, or this many
# (about 30 ms of parsing, the longest the poster can be held up when deliveries never pause).
PARSE_BACKLOG = 5_000
# While sockets keep being ready the receiver lets the other greenlets (the poster) run this often.
YIELD_SECONDS = 0.001
# gevent's select module hides epoll; the receiver drives one itself and gevent waits on its fd.
_epoll = monkey.get_original("select", "epoll")
_EPOLLIN = monkey.get_original("select", "EPOLLIN")
# Posts whose parsed content is remembered: those still arriving at the subscribers, many times over.
PARSED_CACHE = 4096
_HEADER = struct.Struct(">IBBB")
_NEW_MESSAGE = messages.NewMessage.TYPE


class Deliveries:
    """What the subscribers received, checked against what the poster sent.

    Each post's content is ``fanout <run> <seq> <send_ns>``; ``send_ns`` is this
    process's perf_counter_ns when the post was written, so latency needs no clock sync.
    """

    def __init__(self, run_tag: str, posts: int):
        self.run_tag = run_tag
        self.posts = posts
        self.prefix = f"fanout {run_tag} ".encode()
        self.send_ns = array("q", [0]) * posts
        self.acknowledged = bytearray(posts)
        self.copies = array("l", [0]) * posts
        self.last_arrival = array("q", [0]) * posts
        self.delivered = 0
        self.duplicates = 0
        self.foreign = 0
        self.latency = Histogram()
        self._row = (posts + 7) // 8
        self._parsed: dict[bytes, tuple[int, int, int, int]] = {}

    def content(self, seq: int) -> str:
        send_ns = time.perf_counter_ns()
        self.send_ns[seq] = send_ns
        return f"fanout {self.run_tag} {seq} {send_ns}"

    def subscriber(self) -> bytearray:
        """The record of one more subscriber: one bit per post, exact duplicate counting in S*N/8 bytes."""
        return bytearray(self._row)

    def post_of(self, content: bytes) -> tuple[int, int, int, int] | None:
        """``(seq, send_ns, byte, mask)`` of one of this run's posts from its content; None for anything else."""
        prefix = self.prefix
        if not content.startswith(prefix):
            return None
        try:
            seq_text, sent_text = content[len(prefix):].split(b" ")
            seq, sent = int(seq_text), int(sent_text)
        except ValueError:
            return None
        if not 0 <= seq < self.posts:
            return None
        return seq, sent, seq >> 3, 1 << (seq & 7)

    def content_bytes(self, seen: bytearray, content: bytes, arrived_ns: int) -> None:
        """One NEW_MESSAGE's content (UTF-8), received by the subscriber whose record is ``seen``."""
        # Every subscriber gets the same bytes for a post, so each post's content is parsed once.
        post = self._parsed.get(content)
        if post is None:
            post = self.post_of(content)
            if post is None:
                self.foreign += 1
                return
            if len(self._parsed) >= PARSED_CACHE:
                self._parsed.clear()
            self._parsed[content] = post
        seq, sent, byte, mask = post
        if seen[byte] & mask:
            self.duplicates += 1
            return
        seen[byte] |= mask
        self.delivered += 1
        self.copies[seq] += 1
        if arrived_ns > self.last_arrival[seq]:
            self.last_arrival[seq] = arrived_ns
        self.latency.record_ns(arrived_ns - sent)


class _Subscriber:
    __slots__ = ("conn", "raw", "fd", "seen", "rest")

    def __init__(self, conn, raw, seen: bytearray, rest: bytes):
        self.conn = conn
        self.raw = raw
        self.fd = raw.fileno()
        self.seen = seen
        self.rest = rest


class Receiver:
    """Reads every subscriber socket in one greenlet and feeds what arrives to ``Deliveries``.

    The loop asks the epoll for ready sockets without blocking, receives from each and notes
    the time right after each recv; only when no socket is ready (or the backlog is long)
    does it parse what arrived: frame headers, and of a NEW_MESSAGE only the offsets that lead
    to its content. While sockets keep being ready it lets the other greenlets (the poster)
    run every millisecond; when none is, it waits in gevent's hub for the epoll's own fd.
    """

    def __init__(self, deliveries: Deliveries):
        self.deliveries = deliveries
        self._epoll = _epoll()
        self._subscribers: dict[int, _Subscriber] = {}
        self._chunks: list[tuple[_Subscriber, bytes, int]] = []
        self._greenlet = gevent.spawn(self._loop)

    def add(self, conn) -> None:
        """Take over ``conn``'s socket from its reader; a connection that is already gone counts as lost."""
        raw, rest = conn.detach()
        if conn.closed:
            return
        sub = _Subscriber(conn, raw, self.deliveries.subscriber(), rest)
        self._subscribers[sub.fd] = sub
        self._epoll.register(sub.fd, _EPOLLIN)

    def stop(self) -> None:
        """Stop waiting, take what the sockets already hold, and parse everything received."""
        self._greenlet.kill()
        while self._receive_ready():
            pass
        self._parse()
        self._epoll.close()

    def _loop(self) -> None:
        ready_fd = self._epoll.fileno()
        clock = time.monotonic
        yielded = clock()
        while True:
            if self._receive_ready():
                if len(self._chunks) >= PARSE_BACKLOG:
                    self._parse()
                if clock() - yielded >= YIELD_SECONDS:
                    gevent.sleep(0)
                    yielded = clock()
            elif self._chunks:
                self._parse()
            else:
                wait_read(ready_fd)

    def _receive_ready(self) -> bool:
        """One round over the ready sockets; False when none was ready."""
        events = self._epoll.poll(0)
        if not events:
            return False
        subscribers = self._subscribers
        chunks = self._chunks
        clock = time.perf_counter_ns
        for fd, _ in events:
            sub = subscribers.get(fd)
            if sub is None:
                continue
            try:
                data = sub.raw.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            arrived = clock()
            if data:
                chunks.append((sub, data, arrived))
            else:
                self._lose(sub)
        return True

    def _lose(self, sub: _Subscriber) -> None:
        if self._subscribers.pop(sub.fd, None) is not None:
            try:
                self._epoll.unregister(sub.fd)
            except OSError as exc:
                if exc.errno not in (errno.EBADF, errno.ENOENT):
                    raise
        sub.conn.close()

    def _parse(self) -> None:
        chunks, self._chunks = self._chunks, []
        unpack = _HEADER.unpack_from
        for sub, chunk, arrived in chunks:
            if sub.rest:
                chunk = sub.rest + chunk
                sub.rest = b""
            end = len(chunk)
            pos = 0
            while end - pos >= 7:
                length, _, kind, flags = unpack(chunk, pos)
                if not 3 <= length <= MAX_FRAME_LENGTH:
                    self._lose(sub)  # the stream has lost its framing
                    pos = end
                    break
                stop_at = pos + 4 + length
                if stop_at > end:
                    break
                if kind != _NEW_MESSAGE:
                    SKIPPED[type_name(kind)] += 1
                elif flags:
                    self._decode(sub, Frame(chunk[pos + 4], kind, flags, chunk[pos + 7:stop_at]), arrived)
                else:
                    self._content(sub, chunk, pos + 7, stop_at, arrived)
                pos = stop_at
            if pos < end:
                sub.rest = chunk[pos:]

    def _content(self, sub: _Subscriber, buf: bytes, at: int, stop_at: int, arrived: int) -> None:
        """Walk a NEW_MESSAGE payload to its content: id, channel_id, three optional u64s, nickname."""
        try:
            at += 16
            at += 9 if buf[at] else 1
            at += 9 if buf[at] else 1
            at += 9 if buf[at] else 1
            at += 2 + int.from_bytes(buf[at:at + 2], "big")
            size = int.from_bytes(buf[at:at + 2], "big")
        except IndexError:
            size = -1
        at += 2
        if size < 0 or at + size > stop_at:
            self.deliveries.foreign += 1
            return
        self.deliveries.content_bytes(sub.seen, buf[at:at + size], arrived)

    def _decode(self, sub: _Subscriber, frame: Frame, arrived: int) -> None:
        """A compressed (or otherwise wrapped) NEW_MESSAGE: the full decoder, rare enough not to matter."""
        try:
            msg, _ = messages.NewMessage.take(frame.unwrapped_payload(), 0)
        except (PayloadError, FrameError, ValueError):
            self.deliveries.foreign += 1
            return
        self.deliveries.content_bytes(sub.seen, msg.content.encode(), arrived)


def run(plan: Plan) -> dict:
    opts = plan.opts
    posts = max(1, math.ceil(opts.rate * opts.duration))
    deliveries = Deliveries(secrets.token_hex(4), posts)
    try:
        poster = plan.open_session(plan.source(0), "fanposter")
    except SetupFailed as failure:
        return {"error": f"poster could not connect: {failure}"}
    try:
        channel = find_channel(poster, opts.channel, plan.left())
    except LoadError as exc:
        poster.close()
        return {"error": f"LIST_CHANNELS failed: {exc}"}
    if channel is None:
        poster.close()
        return {"error": f"no channel named {opts.channel!r}"}

    def establish(index: int, source: str | None) -> Connection:
        conn = plan.open_session(source, f"fan{index}", index)
        try:
            reply, _ = conn.request(messages.SubscribeChannel(channel_id=channel.id), messages.SubscribeOk.TYPE,
                                    timeout=min(opts.timeout, plan.setup_deadline - time.monotonic()))
        except LoadError as exc:
            conn.close()
            raise SetupFailed.answered("subscribe", exc) from None
        if (reply.type, reply.id) != (CHANNEL_SUBSCRIPTION, channel.id):
            conn.close()
            raise SetupFailed("subscribe", "subscribe_mismatch")
        receiver.add(conn)
        return conn

    receiver = Receiver(deliveries)
    launch = plan.launch(opts.subscribers, establish, first_source=1)
    reporter = plan.progress(lambda: f"{launch.established} subscribed, {deliveries.delivered} delivered")
    launch.wait_established()
    subscribers = [launch.results[index] for index in sorted(launch.results)]

    acks = Histogram()
    errors: Counter[str] = Counter()
    outcome = {"sent": 0, "acknowledged": 0, "unanswered": 0}

    def on_ack(seq: int):
        def settle(reply, arrived_ns: int) -> None:
            if isinstance(reply, ServerError):
                errors[str(reply.code)] += 1
            elif isinstance(reply, LoadError) or not reply.success:
                outcome["unanswered"] += 1
            else:
                outcome["acknowledged"] += 1
                deliveries.acknowledged[seq] = 1
                acks.record_ns(arrived_ns - deliveries.send_ns[seq])

        return settle

    plan.usage.begin_window()
    post_started = time.monotonic()
    post_until = min(post_started + opts.duration, plan.hard_deadline)
    for seq in range(posts):
        at = post_started + seq / opts.rate
        if at >= post_until or poster.closed:
            break
        gevent.sleep(max(0.0, at - time.monotonic()))
        msg = messages.PostMessage(channel_id=channel.id, content=deliveries.content(seq))
        try:
            poster.send(msg, (messages.MessagePosted.TYPE,), on_ack(seq))
        except LoadError:
            break
        outcome["sent"] += 1
    post_seconds = time.monotonic() - post_started

    # Deliveries still in flight get the reply timeout to land, within the hard deadline.
    drain_until = time.monotonic() + plan.left()
    while time.monotonic() < drain_until:
        answered = outcome["acknowledged"] + outcome["unanswered"] + sum(errors.values())
        expected = outcome["acknowledged"] * len(subscribers)
        if answered >= outcome["sent"] and deliveries.delivered >= expected:
            break
        gevent.sleep(DRAIN_POLL_SECONDS)
    plan.usage.end_window()
    stop(reporter)
    launch.kill()
    receiver.stop()
    lost_subscribers = sum(conn.closed for conn in subscribers)
    close_all(subscribers)
    poster.close()

    return summarize(deliveries, launch.summary(), len(subscribers), lost_subscribers, outcome, errors, acks,
                     post_seconds)


def summarize(deliveries: Deliveries, setup: dict, subscribers: int, lost_subscribers: int, outcome: dict,
              errors: Counter, acks: Histogram, post_seconds: float) -> dict:
    acknowledged = deliveries.acknowledged
    delivered = sum(deliveries.copies[seq] for seq in range(deliveries.posts) if acknowledged[seq])
    expected = outcome["acknowledged"] * subscribers
    last = Histogram()
    complete = 0
    for seq in range(deliveries.posts):
        if acknowledged[seq] and subscribers and deliveries.copies[seq] == subscribers:
            complete += 1
            last.record_ns(deliveries.last_arrival[seq] - deliveries.send_ns[seq])
    setup["lost_during_run"] = lost_subscribers
    return {
        "subscribers": setup,
        "posts": {
            "scheduled": deliveries.posts,
            "sent": outcome["sent"],
            "acknowledged": outcome["acknowledged"],
            "per_second": round(outcome["sent"] / post_seconds, 2) if post_seconds > 0 else None,
            "errors": dict(errors),
            "unanswered": outcome["sent"] - outcome["acknowledged"] - sum(errors.values()),
            "ack": acks.summary(),
        },
        "deliveries": {
            "expected": expected,
            "delivered": delivered,
            "lost": expected - delivered,
            "duplicates": deliveries.duplicates,
            # Deliveries of posts the server refused or never acknowledged, and other traffic.
            "unexpected": deliveries.delivered - delivered + deliveries.foreign,
        },
        "latency": deliveries.latency.summary(),
        "last_subscriber_latency": {"complete_posts": complete, **last.summary()},
    }


def render(result: dict) -> list[str]:
    subs, posts, deliveries = result["subscribers"], result["posts"], result["deliveries"]
    lines = [f"Subscribers: {subs['attempted']} attempted, {subs['established']} subscribed, "
             f"{subs['failed']} failed, {subs['lost_during_run']} lost during the run"]
    lines += [f"  - {kind}: {count}" for kind, count in sorted(subs["failures"].items())]
    lines.append(f"Posts: {posts['sent']} sent ({posts['per_second']}/s), {posts['acknowledged']} acknowledged, "
                 f"{posts['unanswered']} unanswered, errors {posts['errors'] or 'none'}")
    lines.append(f"Acknowledgement: {describe(posts['ack'])}")
    lines.append(f"Deliveries: {deliveries['delivered']}/{deliveries['expected']} delivered, "
                 f"{deliveries['lost']} lost, {deliveries['duplicates']} duplicates, "
                 f"{deliveries['unexpected']} unexpected")
    lines.append(f"Per-delivery latency: {describe(result['latency'])}")
    lines.append(f"Last-subscriber latency: {describe(result['last_subscriber_latency'])}")
    return lines
