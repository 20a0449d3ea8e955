"""``bots``: the upstream load test's behaviour and report.

Each bot connects, sets a nickname, lists the channels, joins and subscribes to a
random one, then until the duration is over posts at random intervals: mostly
replies to a thread it has seen, sometimes a new thread, and every third post it
refreshes its view of the threads and follows one of them.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import gevent

from ..protocol import messages
from .connection import Closed, LoadError, ReplyTimeout, ServerError, SetupFailed
from .plan import Plan, close_all, stop
from .ramp import merge_launches
from .stats import Histogram, describe

NEW_THREAD_CHANCE = 0.1
FETCH_EVERY = 3
FETCH_LIMIT = 50
CHAT_CHANNEL = 0  # replies are refused there, so bots in it only start threads
WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea commodo "
    "consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur excepteur sint "
    "occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est laborum"
).split()


class BotStats:
    def __init__(self) -> None:
        self.posted = 0
        self.post_failures = 0
        self.fetch_failures = 0
        self.timeouts = 0
        self.disconnections = 0
        self.subscribe_failures = 0
        self.errors: Counter[str] = Counter()
        self.response = Histogram()

    @property
    def failed(self) -> int:
        return self.post_failures + self.timeouts + self.disconnections

    def state(self) -> dict:
        return {**{name: getattr(self, name) for name in _COUNTS}, "errors": dict(self.errors),
                "response": self.response.state()}

    def merge(self, state: dict) -> None:
        """Add the ``state()`` of another process's bots."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + state[name])
        self.errors.update(state["errors"])
        self.response.merge(state["response"])


_COUNTS = ("posted", "post_failures", "fetch_failures", "timeouts", "disconnections", "subscribe_failures")


class Bot:
    def __init__(self, conn, channel, stats: BotStats, rng: random.Random):
        self.conn = conn
        self.channel_id = channel.id
        self.threaded = channel.type != CHAT_CHANNEL
        self.stats = stats
        self.rng = rng
        self.roots: list[int] = []
        self.thread: int | None = None

    def run(self, plan: Plan) -> None:
        opts = plan.opts
        end = min(time.monotonic() + opts.duration, plan.hard_deadline)
        self.fetch(plan)
        iteration = 0
        while time.monotonic() < end and not self.conn.closed:
            iteration += 1
            self.post(plan)
            if iteration % FETCH_EVERY == 0:
                self.fetch(plan)
            delay = self.rng.uniform(opts.min_delay, opts.max_delay)
            gevent.sleep(max(0.0, min(delay, end - time.monotonic())))
        try:
            self.conn.send(messages.Disconnect())
        except LoadError:
            pass
        self.conn.close()

    def post(self, plan: Plan) -> None:
        stats = self.stats
        parent = None
        if self.threaded and self.roots and self.rng.random() >= NEW_THREAD_CHANCE:
            parent = self.rng.choice(self.roots)
        content = " ".join(self.rng.choices(WORDS, k=self.rng.randint(5, 20)))
        msg = messages.PostMessage(channel_id=self.channel_id, parent_id=parent, content=content)
        try:
            reply, round_trip = self.conn.request(msg, messages.MessagePosted.TYPE, timeout=plan.left())
        except ServerError as exc:
            stats.post_failures += 1
            stats.errors[str(exc.code)] += 1
            return
        except ReplyTimeout:
            stats.timeouts += 1
            return
        except Closed:
            stats.disconnections += 1
            return
        if not reply.success:
            stats.post_failures += 1
            stats.errors["unsuccessful"] += 1
            return
        stats.posted += 1
        stats.response.record_ns(round_trip)
        if parent is None:
            self.roots.append(reply.message_id)

    def fetch(self, plan: Plan) -> None:
        """Refresh the known threads and follow a random one of them instead of the last."""
        msg = messages.ListMessages(channel_id=self.channel_id, limit=FETCH_LIMIT)
        try:
            reply, _ = self.conn.request(msg, messages.MessageList.TYPE, timeout=plan.left())
        except LoadError:
            self.stats.fetch_failures += 1
            return
        self.roots = [entry.id for entry in reply.messages]
        if not self.threaded or not self.roots:
            return
        follow = self.rng.choice(self.roots)
        if follow == self.thread:
            return
        ok = (messages.SubscribeOk.TYPE,)
        try:
            # Replies are not awaited; registering them keeps them from answering a later request.
            if self.thread is not None:
                self.conn.send(messages.UnsubscribeThread(thread_id=self.thread), ok)
            self.conn.send(messages.SubscribeThread(thread_id=follow), ok)
        except LoadError:
            return
        self.thread = follow


def setup(plan: Plan, stats: BotStats, rng: random.Random, index: int, source: str | None) -> Bot:
    """Connect (stages connect, server_config, nickname) then list, join and subscribe."""
    conn = plan.open_session(source, f"bot{index}", index)

    def timeout() -> float:
        return min(plan.opts.timeout, plan.setup_deadline - time.monotonic())

    stage = "list_channels"
    try:
        listing, _ = conn.request(messages.ListChannels(from_channel_id=0, limit=0), messages.ChannelList.TYPE,
                                  timeout=timeout())
        if not listing.channels:
            raise SetupFailed("no_channels", "no_channels")
        channel = rng.choice(listing.channels)
        stage = "join"
        joined, _ = conn.request(messages.JoinChannel(channel_id=channel.id), messages.JoinResponse.TYPE,
                                 timeout=timeout())
        if not joined.success:
            raise SetupFailed(stage, "join_refused")
    except LoadError as exc:
        conn.close()
        raise SetupFailed.answered(stage, exc) from None
    except SetupFailed:
        conn.close()
        raise
    try:
        conn.request(messages.SubscribeChannel(channel_id=channel.id), messages.SubscribeOk.TYPE, timeout=timeout())
    except LoadError:
        stats.subscribe_failures += 1  # as upstream: a bot without the subscription still posts
    return Bot(conn, channel, stats, rng)


def run(plan: Plan) -> dict:
    opts = plan.opts
    stats = BotStats()
    rng = random.Random()
    bots: list[Bot] = []

    def after(index: int, bot: Bot) -> None:
        bots.append(bot)
        bot.run(plan)

    plan.usage.begin_window()
    launch = plan.launch(opts.clients, lambda index, source: setup(plan, stats, rng, index, source), after=after)
    started = time.monotonic()

    def progress() -> str:
        elapsed = time.monotonic() - started
        mean = stats.response.mean()
        return (f"Stats: {stats.posted} posted ({stats.posted / elapsed:.1f}/s), {stats.failed} failed, "
                f"{sum(launch.failures.values())} conn errors, avg {(mean or 0) / 1000:.2f}ms")

    reporter = plan.progress(progress)
    finished = launch.join(plan.hard_deadline)
    plan.usage.end_window()
    stop(reporter)
    launch.kill()
    close_all(bot.conn for bot in bots)
    if plan.spread:
        return {"part": {"stats": stats.state(), "setup": launch.summary(), "finished": finished}}
    return summarize(opts, stats, launch.summary(), finished)


def merge(parts: list[dict], opts) -> dict:
    """One run's result from the parts of the processes it was spread over."""
    stats = BotStats()
    for part in parts:
        stats.merge(part["stats"])
    return summarize(opts, stats, merge_launches([part["setup"] for part in parts]),
                     all(part["finished"] for part in parts))


def summarize(opts, stats: BotStats, setup_summary: dict, finished: bool) -> dict:
    successful = setup_summary["established"]
    stages = setup_summary["failed_stages"]
    mean_delay = (opts.min_delay + opts.max_delay) / 2
    per_client = opts.duration / mean_delay if mean_delay > 0 else None
    expected = per_client * successful if per_client is not None else None
    attempts = stats.posted + stats.failed
    return {
        "clients": {
            "attempted": opts.clients,
            "successful": successful,
            "successful_percent": round(100 * successful / opts.clients, 1) if opts.clients else None,
            "establish_seconds": setup_summary["establish_seconds"],
        },
        "duration_seconds": opts.duration,
        "finished_in_time": finished,
        "messages": {
            "posted": stats.posted,
            "per_second": round(stats.posted / opts.duration, 1),
            "failed": stats.failed,
            "post_failures": stats.post_failures,
            "fetch_failures": stats.fetch_failures,
            "timeouts": stats.timeouts,
            "disconnections": stats.disconnections,
            "errors": dict(stats.errors),
        },
        "connection_errors": setup_summary["failed"],
        "connection_failures": setup_summary["failures"],
        "connect_phase": {stage: stages.get(stage, 0) for stage in ("connect", "server_config", "nickname")},
        "setup_phase": {
            "list_channels": stages.get("list_channels", 0),
            "no_channels": stages.get("no_channels", 0),
            "join": stages.get("join", 0),
            "subscribe": stats.subscribe_failures,
            "not_started": stages.get("not_started", 0),
        },
        "response": stats.response.summary(),
        "expected": {
            "messages": round(expected) if expected is not None else None,
            "per_client": round(per_client, 1) if per_client is not None else None,
            "efficiency_percent": round(100 * stats.posted / expected, 1) if expected else None,
        },
        "success_rate_percent": round(100 * stats.posted / attempts, 1) if attempts else None,
    }


def render(result: dict) -> list[str]:
    clients, msgs = result["clients"], result["messages"]
    mean = result["response"]["mean_ms"]
    lines = [
        "=== Final Results ===",
        f"Clients: {clients['attempted']} attempted, {clients['successful']} successful "
        f"({clients['successful_percent']}%)",
        f"Duration: {result['duration_seconds']:g}s",
        f"Messages posted: {msgs['posted']} ({msgs['per_second']}/s)",
        f"Messages failed: {msgs['failed']}",
        f"  - Post failures: {msgs['post_failures']}",
        f"  - Fetch failures: {msgs['fetch_failures']}",
        f"  - Timeouts: {msgs['timeouts']}",
        f"  - Disconnections: {msgs['disconnections']}",
    ]
    if msgs["errors"]:
        lines.append("  ERROR codes: " + ", ".join(f"{code}: {n}" for code, n in sorted(msgs["errors"].items())))
    lines.append(f"Connection errors: {result['connection_errors']}")
    if result["connection_errors"]:
        lines.append("  Connect phase breakdown: "
                     + ", ".join(f"{stage} {n}" for stage, n in result["connect_phase"].items()))
        lines.append("  Setup phase breakdown: "
                     + ", ".join(f"{stage} {n}" for stage, n in result["setup_phase"].items()))
        kinds = sorted(result["connection_failures"].items())
        lines.append("  By kind: " + ", ".join(f"{kind} {n}" for kind, n in kinds))
    lines.append(f"Average response time: {mean or 0:.2f}ms")
    lines.append(f"Response time: {describe(result['response'])}")
    expected = result["expected"]
    if expected["messages"] is not None:
        lines.append(f"Expected throughput: {expected['messages']} messages ({expected['per_client']} per client)")
    if expected["efficiency_percent"] is not None:
        lines.append(f"Actual vs expected: {expected['efficiency_percent']}% efficiency")
    if result["success_rate_percent"] is not None:
        lines.append(f"Success rate: {result['success_rate_percent']}%")
    return lines
