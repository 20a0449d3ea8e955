"""Command line of ``sc-loadtest``: options, the run, and its report."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import gevent

from ..open_files import raise_open_files_limit
from . import bots, fanout, idle, spread, throughput
from .connection import SKIPPED, resolve
from .plan import Plan
from .ramp import parse_source_addresses

SCENARIOS = {"bots": bots, "idle": idle, "fanout": fanout, "throughput": throughput}
# Past the hard deadline the scenario is abandoned; this is how long it gets to wind down first.
WATCHDOG_GRACE_SECONDS = 5.0
# Sockets the tool needs besides one per session: stdio, the poster or prober, the event loop.
SPARE_FILES = 32
EXIT_USAGE = 2
# One process on one core: past this the tool's own queueing shows up in the latencies.
CPU_BOUND_PERCENT = 90

DESCRIPTION = """\
Load a SuperChat server (scd or the upstream Go server) over its binary protocol and
report what it sustained. One process, gevent, or several with --processes; every run is
bounded: setup must finish within --setup-timeout and the whole run within
--setup-timeout + --duration. It reports its own CPU, and warns when it was the limit.

Scenarios:
  bots        (default) the upstream load test: --clients bots connect, set nicknames, list
              channels, join and subscribe to a random one, then post every --min-delay to
              --max-delay (mostly replies, sometimes new threads; only new threads in a chat
              channel, which refuses replies). Ends with upstream's "=== Final Results ===".
  idle        open --clients sessions (ramped), hold them for --duration and report the time
              to establish them, failures by kind, server RSS per session (--server-pid) and
              PING round trips of --ping-sample sessions pinging once a second.
  fanout      --subscribers subscribe to --channel, one poster posts --rate posts/s for
              --duration; reports delivered/expected, losses, duplicates, per-delivery latency
              and the latency until the last subscriber had each post.
  throughput  --clients closed-loop posters (one post outstanding each) on --channel for
              --duration; reports acknowledged posts/s, errors by code, acknowledgement time,
              and PING round trips of a prober on its own connection (10 pings/s).

Durations take Go's form (500ms, 30s, 1m30s) or plain seconds. Go-style single-dash
flags (-clients 10, -duration=1m) work as well as --clients 10.
"""

EPILOG = """\
The server must allow the load, or it answers with ERROR 5001 (message rate) and 5003
(connections per IP), which are counted by code. For scd, for example:
  SUPERCHAT_LIMITS_MESSAGE_RATE_LIMIT=65535 SUPERCHAT_LIMITS_MAX_CONNECTIONS_PER_IP=255 scd
255 is the most one address may hold; more sessions need more source addresses. Linux
routes all of 127.0.0.0/8 to lo, so on loopback 10,000 sessions fit in 40 addresses:
  sc-loadtest --scenario idle --clients 10000 --source-addresses 127.0.0.1-127.0.0.40
Both sides need a file limit above the session count (this tool raises its own soft
RLIMIT_NOFILE to the hard limit; the server needs e.g. LimitNOFILE= or ulimit -n).
--setup-timeout must cover connecting them all: a server that accepts 500 sessions/s
needs 20 s for 10,000, so raise it for big runs.

Examples:
  sc-loadtest --server localhost:6465 --clients 50 --duration 1m
  sc-loadtest --scenario idle --clients 5000 --duration 30s --server-pid $(pgrep -of bin/scd)
  sc-loadtest --scenario fanout --subscribers 1000 --rate 20 --duration 20s --json
  sc-loadtest --scenario throughput --clients 32 --duration 10s
  sc-loadtest --scenario fanout --subscribers 999 --server node-a:6465,node-b:6465,node-c:6465

With --json exactly one JSON document goes to stdout: scenario, parameters, figures.
Exit status: 0 after a run (whatever it measured), 1 if the run could not be made
(e.g. no such channel), 2 for bad options.
"""

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds from ``1m30s``/``250ms`` (Go's time.ParseDuration form) or a plain number."""
    try:
        value = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None
        value = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative duration: {text!r}")
    return value


def _positive(kind):
    def convert(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return convert


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _sources(text: str) -> list[str]:
    try:
        addresses = parse_source_addresses(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not addresses:
        raise argparse.ArgumentTypeError("no addresses given")
    return addresses


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sc-loadtest", description=DESCRIPTION, epilog=EPILOG, add_help=False, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def option(name: str, **kwargs) -> None:
        p.add_argument(f"--{name}", f"-{name}", **kwargs)

    p.add_argument("-h", "--help", "-help", action="help", help="show this help and exit")
    option("scenario", choices=sorted(SCENARIOS), default="bots", help="what to measure (default bots)")
    option("server", default="localhost:6465", metavar="HOST:PORT[,...]",
           help="server address (default localhost:6465); several addresses (the nodes of one server) get "
                "the sessions round-robin, the fanout poster and the throughput prober use the first")
    option("clients", type=_count, default=10, metavar="N",
           help="bots (bots), sessions (idle) or posters (throughput) (default 10)")
    option("duration", type=duration, default=60.0, metavar="D",
           help="how long to post or hold, after setup (default 1m)")
    option("min-delay", type=duration, default=0.1, metavar="D", help="bots: shortest pause between posts (100ms)")
    option("max-delay", type=duration, default=1.0, metavar="D", help="bots: longest pause between posts (1s)")
    option("subscribers", type=_count, default=100, metavar="S", help="fanout: subscribing sessions (default 100)")
    option("rate", type=_positive(float), default=10.0, metavar="R", help="fanout: posts per second (default 10)")
    option("channel", default="general", metavar="NAME",
           help="fanout and throughput: channel to post in (default general)")
    option("ramp", type=_positive(float), default=2000.0, metavar="PER_S",
           help="new connections per second while setting up (default 2000)")
    option("max-inflight", type=_positive(int), default=200, metavar="N",
           help="connections being set up at once, at most (default 200)")
    option("setup-timeout", type=duration, default=30.0, metavar="D",
           help="connecting and subscribing must finish within this (default 30s)")
    option("timeout", type=_positive(duration), default=10.0, metavar="D",
           help="longest wait for any one reply (default 10s)")
    option("server-pid", type=_positive(int), metavar="PID",
           help="idle: server process whose VmRSS is read before and after connecting")
    option("ping-sample", type=_count, default=50, metavar="N",
           help="idle: sessions that PING once a second while held (default 50)")
    option("keepalive", type=_positive(duration), default=30.0, metavar="D",
           help="idle: every other session PINGs this often, like a real client (default 30s)")
    option("source-addresses", type=_sources, metavar="LIST",
           help="local addresses to connect from in turn: a,b,c and ranges first-last "
                "(e.g. 127.0.0.1-127.0.0.40)")
    option("processes", type=_positive(int), default=1, metavar="N",
           help=f"spread the sessions over N processes of this tool, for loads one core cannot make "
                f"({' and '.join(spread.SCENARIOS_SPREAD)}; default 1)")
    # One of the processes of a spread run: which one (the rest is the run's own options).
    option("worker", type=_count, help=argparse.SUPPRESS)
    option("json", action="store_true", help="print one JSON document on stdout instead of the summary")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    opts = p.parse_args(argv)
    if opts.min_delay > opts.max_delay:
        p.error("--min-delay must not exceed --max-delay")
    if opts.processes > 1 and opts.scenario not in spread.SCENARIOS_SPREAD:
        p.error(f"--processes spreads only {' and '.join(spread.SCENARIOS_SPREAD)}, not {opts.scenario}")
    if opts.worker is not None and opts.worker >= opts.processes:
        p.error("--worker must be below --processes")
    return opts


def sessions_needed(opts: argparse.Namespace) -> int:
    return opts.subscribers if opts.scenario == "fanout" else opts.clients


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    try:
        targets = [resolve(address.strip()) for address in opts.server.split(",")]
    except (ValueError, OSError) as exc:
        print(f"sc-loadtest: cannot resolve --server {opts.server}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    open_files = raise_open_files_limit()
    if sessions_needed(opts) + SPARE_FILES > open_files:
        print(f"sc-loadtest: warning: {sessions_needed(opts)} sessions but only {open_files} open files allowed",
              file=sys.stderr)
    workers = opts.processes if opts.worker is not None else 1
    plan = Plan(opts, targets, opts.source_addresses, worker=opts.worker or 0, workers=workers)
    wall_started = time.time()
    if opts.processes > 1 and opts.worker is None:
        result, client = spread.run(opts, argv, plan.hard_deadline, SCENARIOS[opts.scenario].merge)
    else:
        watchdog = plan.hard_deadline - time.monotonic() + WATCHDOG_GRACE_SECONDS
        try:
            with gevent.Timeout(watchdog):
                result = SCENARIOS[opts.scenario].run(plan)
        except gevent.Timeout:
            result = {"error": "the scenario overran its hard deadline and was abandoned"}
        client = {**plan.usage.summary(), "open_files_limit": open_files, "skipped_frames": dict(SKIPPED)}
    document = {
        "scenario": opts.scenario,
        "server": opts.server,
        "parameters": {key: value for key, value in vars(opts).items() if key not in ("json", "worker")},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_started)),
        "elapsed_seconds": round(time.monotonic() - plan.started, 3),
        "client": client,
        **result,
    }
    if opts.json:
        print(json.dumps(document))
    else:
        print("\n".join(render(document)))
    return 1 if "error" in result else 0


def render(document: dict) -> list[str]:
    params = document["parameters"]
    lines = [f"sc-loadtest {document['scenario']} against {document['server']} "
             f"(duration {params['duration']:g}s, elapsed {document['elapsed_seconds']:.1f}s)"]
    if "error" in document:
        return lines + [f"Error: {document['error']}"]
    lines += SCENARIOS[document["scenario"]].render(document)
    client = document["client"]
    if "processes" in client:
        lines.append(f"Load tool: {len(client['processes'])} processes, {client['cpu_seconds']:.1f} s CPU in all, "
                     f"the busiest at {client['cpu_percent']}% of one core, max RSS {client['max_rss_kib']} KiB")
        lines.append(f"  while measuring: the busiest at {client['window_cpu_percent']}% of one core, all "
                     f"together {client['all_window_cpu_percent']}% of one core ({client['cores']} cores)")
    else:
        lines.append(f"Load tool: {client['cpu_seconds']:.1f} s CPU ({client['cpu_percent']}% of one core), "
                     f"max RSS {client['max_rss_kib']} KiB")
        if client["window_cpu_percent"] is not None:
            lines.append(f"  {client['window_cpu_percent']}% of one core while measuring")
    if max(client["window_cpu_percent"] or 0, client["cpu_percent"] or 0) > CPU_BOUND_PERCENT:
        lines.append("  warning: the load tool was CPU bound; figures may show its limit, not the server's "
                     "(spread it with --processes)")
    if client["skipped_frames"]:
        skipped = ", ".join(f"{name} {n}" for name, n in sorted(client["skipped_frames"].items()))
        lines.append(f"Unsolicited frames skipped: {skipped}")
    return lines
