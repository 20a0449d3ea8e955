#!/usr/bin/env python3
"""Benchmark scd as several nodes sharing PostgreSQL and Redis, beside one node on its own.

    python3 bench/cluster.py

Starts a throwaway PostgreSQL (fsync on) and Redis (append-only; ``--redis-appendfsync``) on
loopback, then, each with freshly started ``bin/scd`` nodes, a fresh database and an emptied Redis:

- fan-out: ``--subscribers`` on one node on SQLite without Redis, on one node on PostgreSQL +
  Redis, and spread over ``--nodes`` nodes on PostgreSQL + Redis; one poster on the first node
  posts ``--rate`` posts/s for ``--fanout-duration`` seconds;
- throughput: ``--posters`` closed-loop posters for ``--throughput-duration`` seconds against
  one node on SQLite, one node on PostgreSQL without and with Redis, and ``--nodes`` nodes on
  PostgreSQL + Redis.

Sessions are spread over the nodes round-robin by ``sc-loadtest --server a,b,c``, as a TCP
load balancer would. Besides the load tool's figures, each run records every node's CPU time
from /proc and the most sessions it held at once, the CPU time of PostgreSQL and Redis, and how
often PostgreSQL flushed its WAL to disk.
Results go to ``bench/results/cluster-<date>.json``; ``--report FILE`` prints an earlier one.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg2
import run as single  # bench/run.py: the scd process wrapper, ports, machine facts and figure formats

sys.path.insert(0, str(single.REPO))
from tests.postgres_server import PostgresServer  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SETUP_TIMEOUT_SECONDS = 60.0
CLUSTER_FORMS_SECONDS = 30.0
SESSION_POLL_SECONDS = 0.5
# Durable as SQLite's WAL with synchronous=FULL: a post is acknowledged after its commit reached the disk.
POSTGRES_SETTINGS = {"fsync": "on", "synchronous_commit": "on"}
POSTGRES_SHOWN = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Setup:
    name: str
    label: str
    nodes: int
    postgresql: bool
    redis: bool


def setups(nodes: int, scenario: str) -> list[Setup]:
    alone = [Setup("postgresql-redis-1", "1 node, PostgreSQL + Redis", 1, True, True)]
    if scenario == "throughput":
        # Without Redis as well: it tells the cost of PostgreSQL from that of taking part in a cluster.
        alone.insert(0, Setup("postgresql-1", "1 node, PostgreSQL", 1, True, False))
    return [Setup("sqlite-1", "1 node, SQLite", 1, False, False), *alone,
            Setup(f"postgresql-redis-{nodes}", f"{nodes} nodes, PostgreSQL + Redis", nodes, True, True)]


def plan(opts: argparse.Namespace) -> list[tuple[single.Benchmark, Setup]]:
    runs = []
    fanout = single.Benchmark(f"fanout-{opts.subscribers}", "fanout", opts.subscribers, SETUP_TIMEOUT_SECONDS,
                              opts.fanout_duration,
                              ["--subscribers", str(opts.subscribers), "--rate", f"{opts.rate:g}"])
    runs += [(fanout, setup) for setup in setups(opts.nodes, "fanout")]
    for posters in opts.posters:
        bench = single.Benchmark(f"throughput-{posters}", "throughput", posters, SETUP_TIMEOUT_SECONDS,
                                 opts.throughput_duration, ["--clients", str(posters)])
        runs += [(bench, setup) for setup in setups(opts.nodes, "throughput")]
    return runs


# -- PostgreSQL and Redis --


def process_cpu_seconds(pid: int, reaped_children: bool = False) -> float | None:
    """User plus system CPU time of ``pid`` from /proc, with that of the children it has waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = sum(int(value) for value in fields[11:15 if reaped_children else 13])
    return ticks / CLOCK_TICKS


class Services:
    def __init__(self, redis_appendfsync: str):
        self.postgres = PostgresServer(**POSTGRES_SETTINGS)
        self.redis = RedisServer()
        self._redis_appendfsync = redis_appendfsync
        self._databases = 0

    def start(self) -> Services:
        self.postgres.start()
        self.redis.start()
        self.redis.command("CONFIG", "SET", "appendfsync", self._redis_appendfsync)
        return self

    def stop(self) -> None:
        self.redis.destroy()
        self.postgres.stop()

    def new_database(self) -> str:
        self._databases += 1
        name = f"bench_{self._databases}"
        self.postgres.create_database(name)
        return name

    def settings(self) -> dict:
        with closing(psycopg2.connect(**self.postgres.connect_args())) as conn, conn.cursor() as cursor:
            postgres = {}
            for name in POSTGRES_SHOWN:
                cursor.execute(f"SHOW {name}")
                postgres[name] = cursor.fetchone()[0]
        redis = {"version": self.redis.command("INFO", "server").split("redis_version:")[1].split()[0]}
        for name in ("appendonly", "appendfsync"):
            redis[name] = self.redis.command("CONFIG", "GET", name).split()[1]
        return {"postgresql": postgres, "redis": redis}

    def wal_syncs(self) -> int | None:
        """How often PostgreSQL has flushed its WAL to disk: commits that waited for the disk, in groups."""
        try:
            with closing(psycopg2.connect(**self.postgres.connect_args())) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT wal_sync FROM pg_stat_wal")
                return int(cursor.fetchone()[0])
        except psycopg2.Error:
            return None

    def postgres_cpu_seconds(self) -> float | None:
        """The postmaster's CPU time, its live backends' and that of the backends it has reaped."""
        try:
            postmaster = int((self.postgres.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        total = process_cpu_seconds(postmaster, reaped_children=True)
        if total is None:
            return None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == postmaster:
                total += process_cpu_seconds(int(stat.parent.name)) or 0.0
        return total

    def redis_cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.redis.proc.pid)


# -- the nodes --


def _toml(sections: dict[str, dict[str, str]]) -> str:
    # JSON's string escapes are TOML's basic-string escapes.
    return "".join(f"[{section}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
                   for section, values in sections.items())


def start_nodes(setup: Setup, services: Services, database: str | None, tmp: Path) -> list[single.Server]:
    """The setup's nodes, one after the other (the first creates the schema), each with its own config."""
    nodes: list[single.Server] = []
    try:
        for node_id in string.ascii_lowercase[:setup.nodes]:
            root = tmp / node_id
            root.mkdir()
            config: dict[str, dict[str, str]] = {}
            if database is not None:
                config["server"] = {"database_url": services.postgres.url(database)}
            if setup.redis:
                config["cluster"] = {"redis_url": services.redis.url, "node_id": node_id}
            (root / "config.toml").write_text(_toml(config))
            node = single.Server("scd", None, root, single._free_port(), single._free_port())
            nodes.append(node)
            node.start()
        if setup.redis:
            wait_for_peers(nodes)
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def health(node: single.Server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/health", timeout=5) as reply:
        return json.loads(reply.read())


def wait_for_peers(nodes: list[single.Server]) -> None:
    """Until every node sees all the others through Redis: before that, a post may miss a node."""
    deadline = time.monotonic() + CLUSTER_FORMS_SECONDS
    while True:
        seen = [len(health(node).get("peers", [])) for node in nodes]
        if all(count == len(nodes) - 1 for count in seen):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes did not all see each other within {CLUSTER_FORMS_SECONDS:g} s: {seen}")
        time.sleep(0.2)


class PeakSessions(threading.Thread):
    """The most sessions each node held at once, from its /health a few times a second: whether the
    load tool spread the sessions as meant."""

    def __init__(self, nodes: list[single.Server]):
        super().__init__(daemon=True)
        self.nodes = nodes
        self.peaks = [0] * len(nodes)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SESSION_POLL_SECONDS):
            for i, node in enumerate(self.nodes):
                try:
                    self.peaks[i] = max(self.peaks[i], health(node)["sessions"])
                except (OSError, ValueError, KeyError):
                    continue

    def finish(self) -> list[int]:
        self._done.set()
        self.join()
        return self.peaks


def stop_nodes(nodes: list[single.Server]) -> list[int | None]:
    return [node.stop() for node in nodes]


# -- one run --


def run_one(bench: single.Benchmark, setup: Setup, services: Services) -> dict:
    record: dict = {"benchmark": bench.name, "scenario": bench.scenario, "size": bench.size, "setup": setup.name,
                    "label": setup.label, "nodes": setup.nodes, "loadavg_before": os.getloadavg()[0]}
    database = services.new_database() if setup.postgresql else None
    try:
        with tempfile.TemporaryDirectory(prefix=f"scbench-{setup.name}-") as tmp:
            try:
                nodes = start_nodes(setup, services, database, Path(tmp))
            except (RuntimeError, OSError) as exc:
                record["error"] = f"the nodes did not start: {exc}"
            else:
                measure_and_stop(bench, nodes, services, database, record)
    finally:
        # The next run starts from nothing: no stream entries, rosters or limits left in Redis, no rows.
        services.redis.command("FLUSHALL")
        if database is not None:
            services.postgres.drop_database(database)
    print(f"  {setup.label:30} {bench.name:16} {single.headline(record)}", file=sys.stderr, flush=True)
    return record


def measure_and_stop(bench: single.Benchmark, nodes: list[single.Server], services: Services, database: str | None,
                     record: dict) -> None:
    wal_before = services.wal_syncs() if database is not None else None
    try:
        measure(bench, nodes, services, record)
    finally:
        exits = stop_nodes(nodes)
        # After the nodes are gone: their backends report what they flushed when they exit.
        wal_after = services.wal_syncs() if database is not None else None
        if wal_before is not None and wal_after is not None:
            record["postgresql_wal_syncs"] = wal_after - wal_before
        for stats, node, code in zip(record.get("node_stats", []), nodes, exits, strict=False):
            stats["exit"] = code
            problems = node.log_problems()
            if problems:
                stats["log_problems"] = problems
        if "error" in record:
            record["log_tails"] = {node_id: node.log_tail()
                                   for node_id, node in zip(string.ascii_lowercase, nodes, strict=False)}


def measure(bench: single.Benchmark, nodes: list[single.Server], services: Services, record: dict) -> None:
    args = [sys.executable, str(single.LOADTEST), "--server", ",".join(f"127.0.0.1:{node.port}" for node in nodes),
            "--json", "--source-addresses", single.SOURCE_ADDRESSES, *bench.tool_args()]
    record["command"] = ["sc-loadtest", *args[2:]]
    cpu_before = [node.cpu_seconds() for node in nodes]
    sessions = PeakSessions(nodes)
    sessions.start()
    postgres_before, redis_before = services.postgres_cpu_seconds(), services.redis_cpu_seconds()
    started = time.monotonic()
    proc = single.run_tool(args, bench, record)
    wall = time.monotonic() - started
    record["tool_wall_seconds"] = round(wall, 3)
    record["node_stats"] = []
    peaks = sessions.finish()
    for node_id, node, cpu, peak in zip(string.ascii_lowercase, nodes, cpu_before, peaks, strict=False):
        cpu_after = node.cpu_seconds()
        stats: dict = {"node": node_id, "pid": node.pid, "peak_sessions": peak,
                       "peak_rss_kib": node.status_kib("VmHWM")}
        if cpu is not None and cpu_after is not None:
            stats["cpu_seconds"] = round(cpu_after - cpu, 2)
            stats["cpu_percent"] = round(100 * (cpu_after - cpu) / wall, 1)
        if bench.scenario == "fanout":
            stats["broadcast"] = node.broadcast_metrics()
        record["node_stats"].append(stats)
    for name, before, after in (("postgresql", postgres_before, services.postgres_cpu_seconds()),
                                ("redis", redis_before, services.redis_cpu_seconds())):
        if before is not None and after is not None:
            record[f"{name}_cpu_seconds"] = round(after - before, 2)
    if proc is not None:
        single.read_report(proc, record)


# -- the report --


def _per_node(record: dict, value) -> str:
    parts = [f"{stats['node']} {value(stats)}" for stats in record.get("node_stats", [])]
    return " / ".join(parts) or "–"


def _flushes(record: dict, posts: int) -> str:
    syncs = record.get("postgresql_wal_syncs")
    if not syncs:
        return "–"
    return f"{syncs} ({posts / syncs:.1f})"


def _cpu(seconds) -> str:
    return "–" if seconds is None else f"{seconds:.1f}"


def rows_for(record: dict) -> list[tuple[str, str]]:
    result = record["result"]
    rows: list[tuple[str, str]] = []
    if record["scenario"] == "fanout":
        subs, posts, d = result["subscribers"], result["posts"], result["deliveries"]
        rows += [
            ("subscribers established / attempted", f"{subs['established']} / {subs['attempted']}"),
            ("posts sent / acknowledged", f"{posts['sent']} / {posts['acknowledged']} ({posts['per_second']}/s)"),
            ("delivered / expected", f"{d['delivered']} / {d['expected']}"),
            ("lost / duplicates", f"{d['lost']} / {d['duplicates']}"),
            ("per-delivery p50 / p99 (ms)", single._latencies(result["latency"], ("p50", "p99"))),
            ("last-subscriber p50 / p99 (ms)",
             single._latencies(result["last_subscriber_latency"], ("p50", "p99"))),
            ("post acknowledgement p50 / p99 (ms)", single._latencies(posts["ack"], ("p50", "p99"))),
            ("broadcast time per node, mean (ms)",
             _per_node(record, lambda s: single._ms((s.get("broadcast") or {}).get("mean_ms")))),
        ]
    else:
        posts = result["posts"]
        errors = dict(posts["errors"])
        for kind in ("timeouts", "disconnections"):
            if posts[kind]:
                errors[kind] = posts[kind]
        rows += [
            ("posters established / attempted", f"{result['posters']['established']} / "
                                                f"{result['posters']['attempted']}"),
            ("acknowledged posts/s", f"{posts['per_second']}"),
            ("errors", single._failures(errors)),
            ("ack time p50 / p99 (ms)", single._latencies(result["ack"], ("p50", "p99"))),
            ("PING p99 (ms, prober on the first node)", single._latencies(result["ping"], ("p99",))),
            ("PostgreSQL WAL flushes (posts per flush)", _flushes(record, posts["acknowledged"])),
        ]
    rows += [
        ("sessions per node, most at once", _per_node(record, lambda s: s.get("peak_sessions", "–"))),
        ("CPU seconds per node", _per_node(record, lambda s: _cpu(s.get("cpu_seconds")))),
        ("CPU seconds: PostgreSQL / Redis", f"{_cpu(record.get('postgresql_cpu_seconds'))} / "
                                            f"{_cpu(record.get('redis_cpu_seconds'))}"),
        ("CPU seconds: load tool", _cpu(result["client"].get("cpu_seconds"))),
        ("tool's run (s); load average before", f"{record['tool_wall_seconds']:.0f}; {record['loadavg_before']:.2f}"),
    ]
    return rows


def table(runs: list[dict], markdown: bool) -> str:
    labels = list(dict.fromkeys(record["label"] for record in runs))
    columns: dict[str, dict[str, str]] = {}
    figures: list[str] = []
    for record in runs:
        if "error" in record or "result" not in record:
            pairs = [("error", (record.get("error") or "no result").splitlines()[0][:80])]
        else:
            pairs = rows_for(record)
        for figure, value in pairs:
            columns.setdefault(record["label"], {})[figure] = value
            if figure not in figures:
                figures.append(figure)
    lines = [["figure", *labels], *([figure, *(columns.get(label, {}).get(figure, "–") for label in labels)]
                                    for figure in figures)]
    if markdown:
        return "\n".join(["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
                         + ["| " + " | ".join(row) + " |" for row in lines[1:]])
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in lines)


def print_report(document: dict, markdown: bool) -> None:
    for bench in dict.fromkeys(record["benchmark"] for record in document["runs"]):
        print(f"{'### ' if markdown else ''}{bench}\n")
        print(table([record for record in document["runs"] if record["benchmark"] == bench], markdown))
        print()


def results_path() -> Path:
    single.RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "cluster-" + time.strftime("%Y-%m-%d")
    path, n = single.RESULTS / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = single.RESULTS / f"{stem}-{n}.json"
    return path


def _uncommitted() -> list[str]:
    """``git status --porcelain`` lines: which files differed from the commit measured."""
    try:
        out = subprocess.run(["git", "-C", str(single.REPO), "status", "--porcelain"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.splitlines()


# -- the command --


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/cluster.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3, metavar="N", help="nodes of the cluster runs (3)")
    p.add_argument("--subscribers", type=int, default=1000, metavar="S", help="fan-out subscribers (1000)")
    p.add_argument("--rate", type=float, default=20.0, metavar="R", help="fan-out posts per second (20)")
    p.add_argument("--fanout-duration", type=float, default=20.0, metavar="S", help="seconds of posting (20)")
    p.add_argument("--posters", type=single._sizes, default=[50, 200], metavar="N,N",
                   help="closed-loop poster counts (50,200)")
    p.add_argument("--throughput-duration", type=float, default=20.0, metavar="S", help="seconds of posting (20)")
    p.add_argument("--redis-appendfsync", choices=("always", "everysec", "no"), default="everysec",
                   help="how often Redis flushes its append-only file (everysec, Redis's default)")
    p.add_argument("--quick", action="store_true", help="a small, short smoke run of the whole pipeline")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="results file (default bench/results/cluster-<date>.json)")
    p.add_argument("--report", type=Path, metavar="FILE", help="only print the tables of a results file")
    p.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    opts = p.parse_args(argv)
    if opts.nodes < 2:
        p.error("--nodes must be at least 2")
    if opts.quick:
        opts.subscribers, opts.posters = 60, [10]
        opts.fanout_duration = opts.throughput_duration = 3.0
    return opts


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    if opts.report:
        print_report(json.loads(opts.report.read_text()), opts.markdown)
        return 0
    runs = plan(opts)
    output = opts.output or results_path()
    services = Services(opts.redis_appendfsync)
    try:
        services.start()
        document = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["python3", "bench/cluster.py", *argv]),
            "machine": {**single.machine(None), "uncommitted": _uncommitted()},
            "settings": {"nodes": opts.nodes, "subscribers": opts.subscribers, "fanout_rate": opts.rate,
                         "source_addresses": single.SOURCE_ADDRESSES, "scd_env": single.SCD_LIMITS,
                         "services": services.settings(),
                         "sqlite": "WAL, synchronous=FULL (scd's own setting)",
                         "runs": [{**vars(bench), "setup": asdict(setup)} for bench, setup in runs]},
            "runs": [],
        }
        print(f"bench: {len(runs)} runs; results to {output}", file=sys.stderr, flush=True)
        started = time.monotonic()
        for bench, setup in runs:
            document["runs"].append(run_one(bench, setup, services))
            # Written after every run, so an interrupted benchmark keeps what it measured.
            document["elapsed_seconds"] = round(time.monotonic() - started, 1)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(document, indent=1) + "\n")
    finally:
        services.stop()
    print(f"bench: done in {time.monotonic() - started:.0f} s; results in {output}\n", file=sys.stderr)
    print_report(document, opts.markdown)
    return 1 if any("error" in record for record in document["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
