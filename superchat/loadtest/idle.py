"""``idle``: open many sessions, hold them, and measure what holding them costs the server."""

from __future__ import annotations

import itertools
import time

import gevent

from .ping import PONG_GRACE_SECONDS, Pinger, ping
from .plan import Plan, close_all, stop
from .stats import describe
from .system import rss_kib

SAMPLE_PING_SECONDS = 1.0
# Keepalive pings are sent in bursts at most this far apart rather than one sleep per session.
KEEPALIVE_TICK_SECONDS = 0.05


def keepalive(connections: list, interval: float, until: float) -> None:
    """PING every connection once per ``interval``, spread evenly, as real clients do, so a hold
    longer than the server's idle timeout (120 s by default) does not lose the sessions."""
    if not connections:
        return
    step = interval / len(connections)
    next_at = time.monotonic()
    for conn in itertools.cycle(connections):
        next_at += step
        if next_at >= until:
            return
        ahead = next_at - time.monotonic()
        if ahead > KEEPALIVE_TICK_SECONDS:
            gevent.sleep(ahead)
        ping(conn, 0)


def run(plan: Plan) -> dict:
    opts = plan.opts
    pid = opts.server_pid
    rss_before = rss_kib(pid) if pid else None
    launch = plan.launch(opts.clients, lambda index, source: plan.open_session(source, f"idle{index}", index))
    reporter = plan.progress(lambda: f"{launch.established} sessions established, {launch.summary()['failed']} failed")
    launch.wait_established()
    rss_after = rss_kib(pid) if pid else None
    connections = [launch.results[index] for index in sorted(launch.results)]

    stride = max(1, len(connections) // max(1, opts.ping_sample))
    sampled = connections[::stride][: opts.ping_sample]
    sampled_ids = {id(conn) for conn in sampled}
    pinger = Pinger(sampled)
    plan.usage.begin_window()
    hold_started = time.monotonic()
    hold_until = min(hold_started + opts.duration, plan.hard_deadline)
    keeper = gevent.spawn(keepalive, [c for c in connections if id(c) not in sampled_ids], opts.keepalive, hold_until)
    pinger.run(SAMPLE_PING_SECONDS, hold_until)
    keeper.join(max(0.0, hold_until - time.monotonic()))
    stop(keeper)
    pinger.wait_for_stragglers(min(time.monotonic() + PONG_GRACE_SECONDS, plan.hard_deadline))
    held = time.monotonic() - hold_started
    plan.usage.end_window()
    open_at_end = sum(not conn.closed for conn in connections)
    rss_end = rss_kib(pid) if pid else None
    stop(reporter)
    close_all(connections)
    launch.kill()

    sessions = launch.summary()
    sessions["dropped_during_hold"] = len(connections) - open_at_end
    sessions["open_at_end"] = open_at_end
    rss = None
    if pid:
        per_session = None
        if rss_before is not None and rss_after is not None and connections:
            per_session = round((rss_after - rss_before) / len(connections), 2)
        rss = {"pid": pid, "before_kib": rss_before, "established_kib": rss_after, "end_kib": rss_end,
               "per_session_kib": per_session}
    return {"sessions": sessions, "held_seconds": round(held, 3), "server_rss": rss, "ping": pinger.summary()}


def render(result: dict) -> list[str]:
    sessions = result["sessions"]
    lines = [
        f"Sessions: {sessions['attempted']} attempted, {sessions['established']} established, "
        f"{sessions['failed']} failed",
    ]
    if sessions["failures"]:
        lines += [f"  - {kind}: {count}" for kind, count in sorted(sessions["failures"].items())]
    if sessions["establish_seconds"] is not None:
        lines.append(f"Time to establish: {sessions['establish_seconds']:.3f} s "
                     f"({sessions['establish_per_second']} sessions/s)")
    lines.append(f"Held for {result['held_seconds']:.1f} s: {sessions['dropped_during_hold']} dropped, "
                 f"{sessions['open_at_end']} open at the end")
    rss = result["server_rss"]
    if rss:
        per = rss["per_session_kib"]
        lines.append(f"Server RSS: {rss['before_kib']} KiB before, {rss['established_kib']} KiB established, "
                     f"{rss['end_kib']} KiB at the end; "
                     + (f"{per:.2f} KiB per session" if per is not None else "per session unknown"))
    ping = result["ping"]
    lines.append(f"PING on {ping['sessions']} sessions: {ping['sent']} sent, {ping['lost']} lost; {describe(ping)}")
    return lines
