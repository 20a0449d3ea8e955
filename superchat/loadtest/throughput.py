"""``throughput``: closed-loop posters, one post outstanding each, with a PING prober beside them."""

from __future__ import annotations

import time
from collections import Counter

from gevent.event import AsyncResult

from ..protocol import messages
from .connection import Closed, LoadError, ReplyTimeout, ServerError, SetupFailed, find_channel
from .ping import PONG_GRACE_SECONDS, Pinger
from .plan import Plan, close_all, stop
from .ramp import merge_launches
from .stats import Histogram, describe

PROBE_INTERVAL_SECONDS = 0.1


class Tally:
    def __init__(self) -> None:
        self.acknowledged = 0
        self.errors: Counter[str] = Counter()
        self.timeouts = 0
        self.disconnections = 0
        self.acks = Histogram()


def post_loop(plan: Plan, conn, channel_id: int, index: int, window: AsyncResult, tally: Tally) -> None:
    until = window.get()
    sequence = 0
    while time.monotonic() < until:
        sequence += 1
        msg = messages.PostMessage(channel_id=channel_id, content=f"throughput {index} {sequence}")
        try:
            # The last post may finish after the window: cutting it short would count a false timeout.
            reply, round_trip = conn.request(msg, messages.MessagePosted.TYPE, timeout=plan.left())
        except ServerError as exc:
            tally.errors[str(exc.code)] += 1
            continue
        except ReplyTimeout:
            tally.timeouts += 1
            continue
        except Closed:
            tally.disconnections += 1
            return
        if reply.success:
            tally.acknowledged += 1
            tally.acks.record_ns(round_trip)
        else:
            tally.errors["unsuccessful"] += 1


def run(plan: Plan) -> dict:
    opts = plan.opts
    try:
        # Spread over processes, each finds the channel for itself; the first one probes.
        prober = plan.open_session(plan.source(0), f"tpprobe{plan.worker or ''}")
    except SetupFailed as failure:
        return {"error": f"prober could not connect: {failure}"}
    try:
        channel = find_channel(prober, opts.channel, plan.left())
    except LoadError as exc:
        prober.close()
        return {"error": f"LIST_CHANNELS failed: {exc}"}
    if channel is None:
        prober.close()
        return {"error": f"no channel named {opts.channel!r}"}

    tally = Tally()
    window = AsyncResult()  # the end of the posting window, set once all posters are set up

    def after(index: int, conn) -> None:
        post_loop(plan, conn, channel.id, index, window, tally)

    launch = plan.launch(opts.clients, lambda index, source: plan.open_session(source, f"tp{index}", index),
                         after=after, first_source=1)
    reporter = plan.progress(lambda: f"{launch.established} posters, {tally.acknowledged} posts acknowledged")
    launch.wait_established()
    # Everyone starts together, so the window measures all posters at once rather than a ramp.
    started, until = plan.start_window()
    began = time.monotonic()
    plan.usage.begin_window()
    window.set(until)
    pinger = Pinger([prober] if plan.worker == 0 else [])
    pinger.run(PROBE_INTERVAL_SECONDS, until)
    launch.join(min(until + opts.timeout, plan.hard_deadline))
    elapsed = time.monotonic() - started
    plan.usage.end_window()
    pinger.wait_for_stragglers(min(time.monotonic() + PONG_GRACE_SECONDS, plan.hard_deadline))
    stop(reporter)
    posters = list(launch.results.values())
    close_all(posters)
    prober.close()
    launch.kill()

    if plan.spread:
        return {"part": {"posters": launch.summary(), "window_seconds": elapsed, "began": began,
                         "acknowledged": tally.acknowledged,
                         "errors": dict(tally.errors), "timeouts": tally.timeouts,
                         "disconnections": tally.disconnections, "acks": tally.acks.state(),
                         "ping": pinger.counts(), "round_trips": pinger.round_trips.state()}}
    return _result(launch.summary(), elapsed, tally, pinger.summary())


def _result(posters: dict, elapsed: float, tally: Tally, ping: dict) -> dict:
    return {
        "posters": posters,
        "window_seconds": round(elapsed, 3),
        "posts": {
            "acknowledged": tally.acknowledged,
            "per_second": round(tally.acknowledged / elapsed, 1) if elapsed > 0 else None,
            "errors": dict(tally.errors),
            "timeouts": tally.timeouts,
            "disconnections": tally.disconnections,
        },
        "ack": tally.acks.summary(),
        "ping": ping,
    }


def merge(parts: list[dict], opts) -> dict:
    """One run's result from the parts of the processes it was spread over."""
    tally, pinger = Tally(), Pinger([])
    for part in parts:
        tally.acknowledged += part["acknowledged"]
        tally.errors.update(part["errors"])
        tally.timeouts += part["timeouts"]
        tally.disconnections += part["disconnections"]
        tally.acks.merge(part["acks"])
        pinger.merge(part["ping"], part["round_trips"])
    # The windows are one window, started together: the longest is the run's.
    elapsed = max(part["window_seconds"] for part in parts)
    began = [part["began"] for part in parts]
    return {**_result(merge_launches([part["posters"] for part in parts]), elapsed, tally, pinger.summary()),
            "windows_apart_ms": round(1000 * (max(began) - min(began)), 1)}


def render(result: dict) -> list[str]:
    posters, posts = result["posters"], result["posts"]
    lines = [f"Posters: {posters['attempted']} attempted, {posters['established']} established, "
             f"{posters['failed']} failed"]
    lines += [f"  - {kind}: {count}" for kind, count in sorted(posters["failures"].items())]
    lines.append(f"Posts acknowledged: {posts['acknowledged']} in {result['window_seconds']:.1f} s "
                 f"({posts['per_second']}/s)")
    if "windows_apart_ms" in result:
        lines.append(f"  the processes began posting within {result['windows_apart_ms']} ms of each other")
    lines.append(f"Errors: {posts['errors'] or 'none'}, timeouts {posts['timeouts']}, "
                 f"disconnections {posts['disconnections']}")
    lines.append(f"Acknowledgement time: {describe(result['ack'])}")
    ping = result["ping"]
    lines.append(f"PING (10/s on its own connection): {ping['sent']} sent, {ping['lost']} lost; {describe(ping)}")
    return lines
