"""``fanout``: many subscribers of one channel, one poster at a steady rate; delivery and latency."""

from __future__ import annotations

import math
import secrets
import time
from array import array
from collections import Counter

import gevent

from ..protocol import messages
from .connection import LoadError, ServerError, SetupFailed, find_channel
from .plan import Plan, close_all, stop
from .stats import Histogram, describe

DRAIN_POLL_SECONDS = 0.02
CHANNEL_SUBSCRIPTION = 2


class Deliveries:
    """What the subscribers received, checked against what the poster sent.

    Each post's content is ``fanout <run> <seq> <send_ns>``; ``send_ns`` is this
    process's perf_counter_ns when the post was written, so latency needs no clock sync.
    """

    def __init__(self, run_tag: str, posts: int):
        self.run_tag = run_tag
        self.posts = posts
        self.send_ns = array("q", [0]) * posts
        self.acknowledged = bytearray(posts)
        self.copies = array("l", [0]) * posts
        self.last_arrival = array("q", [0]) * posts
        self.delivered = 0
        self.duplicates = 0
        self.foreign = 0
        self.latency = Histogram()
        # One bit per (subscriber, post): exact duplicate counting in S*N/8 bytes.
        self._seen: list[bytearray] = []
        self._row = (posts + 7) // 8

    def content(self, seq: int) -> str:
        send_ns = time.perf_counter_ns()
        self.send_ns[seq] = send_ns
        return f"fanout {self.run_tag} {seq} {send_ns}"

    def subscriber(self):
        """A NEW_MESSAGE callback for one more subscriber."""
        seen = bytearray(self._row)
        self._seen.append(seen)

        def on_new_message(msg, arrived_ns: int) -> None:
            parts = msg.content.split(" ")
            if len(parts) != 4 or parts[0] != "fanout" or parts[1] != self.run_tag:
                self.foreign += 1
                return
            seq, sent = int(parts[2]), int(parts[3])
            if not 0 <= seq < self.posts:
                self.foreign += 1
                return
            byte, bit = divmod(seq, 8)
            if seen[byte] & (1 << bit):
                self.duplicates += 1
                return
            seen[byte] |= 1 << bit
            self.delivered += 1
            self.copies[seq] += 1
            if arrived_ns > self.last_arrival[seq]:
                self.last_arrival[seq] = arrived_ns
            self.latency.record_ns(arrived_ns - sent)

        return on_new_message


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

    def establish(index: int, source: str | None):
        conn = plan.open_session(source, f"fan{index}")
        try:
            reply, _ = conn.request(messages.SubscribeChannel(channel_id=channel.id), messages.SubscribeOk.TYPE,
                                    timeout=min(opts.timeout, plan.setup_deadline - time.monotonic()))
        except LoadError as exc:
            conn.close()
            raise SetupFailed.answered("subscribe", exc) from None
        if (reply.type, reply.id) != (CHANNEL_SUBSCRIPTION, channel.id):
            conn.close()
            raise SetupFailed("subscribe", "subscribe_mismatch")
        conn.on_new_message = deliveries.subscriber()
        return conn

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
    lost_subscribers = sum(conn.closed for conn in subscribers)
    close_all(subscribers)
    poster.close()
    launch.kill()

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
