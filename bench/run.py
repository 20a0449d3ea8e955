#!/usr/bin/env python3
"""Run the benchmarks of BENCHMARKS.md: sc-loadtest against scd and, optionally, the upstream server.

    python3 bench/run.py --upstream-binary /path/to/upstream/server

Every benchmark starts a fresh server with a fresh temporary data directory, runs one
bounded ``sc-loadtest --json`` against it, and stops it. The whole run happens inside a
private network namespace (``unshare -n``) with only loopback up, so nothing can reach or be
reached from another host and the upstream server's fixed side ports (:9090, :8080,
:6466, localhost:6060) collide with nothing. Where no namespace can be made, scd runs on
loopback directly and the upstream server is skipped.

Results go to ``bench/results/<date>.json``; a table is printed at the end, and the chart
is drawn when matplotlib is installed (``pip install -r bench/requirements.txt``).
``--report FILE`` prints the table of an earlier results file, ``--markdown`` as Markdown.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
SCD = REPO / "bin" / "scd"
LOADTEST = REPO / "bin" / "sc-loadtest"
IN_NAMESPACE_FLAG = "--in-namespace"

# 250 loopback source addresses: 50,000 sessions are 200 per address, under scd's cap of 255.
SOURCE_ADDRESSES = "127.0.0.1-127.0.0.250"
# Files a server or the tool may hold besides its sessions' sockets.
SPARE_OPEN_FILES = 1024
# The load is TCP only: the WebSocket and SSH ports stay shut, so nothing else can be listening there.
SCD_LIMITS = {"SUPERCHAT_LIMITS_MAX_CONNECTIONS_PER_IP": "255", "SUPERCHAT_LIMITS_MESSAGE_RATE_LIMIT": "65535",
              "SUPERCHAT_SERVER_HTTP_PORT": "0", "SUPERCHAT_SERVER_SSH_PORT": "0"}
# Inside the namespace the ports are free for certain; the upstream server's metrics port is fixed.
SCD_PORT, SCD_METRICS_PORT = 7000, 7090
UPSTREAM_PORT, UPSTREAM_METRICS_PORT = 7001, 9090
SERVER_START_SECONDS = 30.0
SERVER_STOP_SECONDS = 15.0
# Past --setup-timeout + --duration the tool abandons its scenario itself; this is its margin.
TOOL_MARGIN_SECONDS = 60.0
FANOUT_RATE = 20.0
# Past this many copies a second the tool's one reading process would be the limit: large
# audiences get fewer posts a second (1,000 subscribers and more: 20,000 copies/s).
FANOUT_COPIES_PER_SECOND = 20_000
# The bots of upstream's own load test: each posts, then waits this long (uniform) before the next.
BOT_DELAYS = ("50ms", "300ms")
REPLY_TIMEOUT = "10s"


@dataclass
class Benchmark:
    name: str
    scenario: str
    size: int
    setup_timeout: float
    duration: float
    args: list[str] = field(default_factory=list)

    def tool_args(self) -> list[str]:
        return ["--scenario", self.scenario, "--setup-timeout", f"{self.setup_timeout:g}",
                "--duration", f"{self.duration:g}", "--timeout", REPLY_TIMEOUT, *self.args]


def benchmarks(opts: argparse.Namespace) -> list[Benchmark]:
    plan = []
    for sessions in opts.idle:
        # Connecting and naming each session is the slow part: a generous 10 ms each, 30 s at least.
        plan.append(Benchmark(f"idle-{sessions}", "idle", sessions, max(30.0, 30.0 + sessions / 100), opts.idle_hold,
                              ["--clients", str(sessions), "--ping-sample", "50"]))
    for subscribers in sorted(set(opts.fanout)):
        plan.append(Benchmark(f"fanout-{subscribers}", "fanout", subscribers, max(60.0, 30.0 + subscribers / 100),
                              opts.fanout_duration,
                              ["--subscribers", str(subscribers), "--rate", f"{fanout_rate(subscribers):g}"]))
    for posters in opts.throughput:
        plan.append(Benchmark(f"throughput-{posters}", "throughput", posters, 60.0, opts.throughput_duration,
                              ["--clients", str(posters), "--processes", str(opts.tool_processes)]))
    for bots in opts.bots:
        plan.append(Benchmark(f"bots-{bots}", "bots", bots, max(60.0, 30.0 + bots / 100), opts.bots_duration,
                              ["--clients", str(bots), "--min-delay", BOT_DELAYS[0], "--max-delay", BOT_DELAYS[1],
                               "--processes", str(opts.tool_processes)]))
    if opts.only:
        wanted = set(opts.only)
        plan = [bench for bench in plan if bench.name in wanted or bench.scenario in wanted]
    return plan


def fanout_rate(subscribers: int) -> float:
    return min(FANOUT_RATE, round(FANOUT_COPIES_PER_SECOND / subscribers, 2))


# -- the servers --


def _raise_open_files() -> None:
    """In the server's child process before exec: soft RLIMIT_NOFILE up to the hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def raise_open_files_limit(plan: list[Benchmark]) -> None:
    """The hard RLIMIT_NOFILE of this run (inherited by the servers and the tool) raised to what
    its largest benchmark needs, where that is allowed (as root, up to fs.nr_open)."""
    needed = max((bench.size for bench in plan), default=0) + SPARE_OPEN_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, needed))
        except (ValueError, OSError) as exc:
            print(f"bench: cannot raise the open-files limit from {hard} to {needed} ({exc}): the largest "
                  "benchmarks may not seat every session", file=sys.stderr)


class Server:
    """One server process with its own HOME and data directory, started fresh for one benchmark."""

    def __init__(self, kind: str, binary: str | None, root: Path, port: int, metrics_port: int):
        self.kind = kind
        self.binary = binary
        self.root = root
        self.port = port
        self.metrics_port = metrics_port
        self.log_path = root / "server.log"
        # Settings of this run's own, as SUPERCHAT_* variables, over SCD_LIMITS.
        self.env: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        if self.kind == "scd":
            return [sys.executable, str(SCD), "--port", str(self.port), "--bind", "127.0.0.1",
                    "--metrics-port", str(self.metrics_port), "--metrics-bind", "127.0.0.1", "--pprof-port", "0",
                    "--config", str(self.root / "config.toml")]
        return [self.binary, "--port", str(self.port), "--config", str(self.root / "config.toml"),
                "--db", str(self.root / "superchat.db")]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERCHAT_")}
        env.update(HOME=str(self.root), XDG_DATA_HOME=str(self.root / "data"), PYTHONUNBUFFERED="1")
        if self.kind == "scd":
            env.update(SCD_LIMITS)
            env.update(self.env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=_raise_open_files,
                                         start_new_session=True)
        ready = re.compile(r"Server started on port \d+" if self.kind == "scd" else r"started successfully")
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if ready.search(self.log_path.read_text(errors="replace")) and _accepts(self.port):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not start within {SERVER_START_SECONDS:g} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time of the server process so far, from /proc."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status_kib(self, key: str) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    def broadcast_metrics(self) -> dict | None:
        """``superchat_broadcast_duration_seconds`` from /metrics (both servers export it)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
                text = reply.read().decode("utf-8", "replace")
        except OSError:
            return None
        total = count = 0.0
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("superchat_broadcast_duration_seconds_sum"):
                total += float(value)
            elif name.startswith("superchat_broadcast_duration_seconds_count"):
                count += float(value)
        return {"count": int(count), "sum_seconds": round(total, 6),
                "mean_ms": round(1000 * total / count, 3) if count else None}

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SERVER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        """Lines of the server's log that look like trouble (tracebacks, errors, panics), at most 20."""
        pattern = re.compile(r"Traceback|\bERROR\b|\berror\b|panic|[Ff]ailed|overflow|WARN")
        try:
            found = [line for line in self.log_path.read_text(errors="replace").splitlines() if pattern.search(line)]
        except OSError:
            return []
        return found[:20] + ([f"... and {len(found) - 20} more"] if len(found) > 20 else [])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# -- one benchmark against one server --


def run_one(bench: Benchmark, kind: str, binary: str | None, ports: tuple[int, int], log) -> dict:
    # Other work on the machine skews every figure: the load average shows whether there was any.
    record: dict = {"benchmark": bench.name, "scenario": bench.scenario, "size": bench.size, "server": kind,
                    "loadavg_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix=f"scbench-{kind}-") as tmp:
        server = Server(kind, binary, Path(tmp), *ports)
        try:
            server.start()
        except RuntimeError as exc:
            record["error"] = str(exc)
            return record
        try:
            args = [sys.executable, str(LOADTEST), "--server", f"127.0.0.1:{server.port}", "--json",
                    "--source-addresses", SOURCE_ADDRESSES, *bench.tool_args()]
            if bench.scenario == "idle":
                args += ["--server-pid", str(server.pid)]
            record["command"] = ["sc-loadtest", *args[2:]]
            cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
            proc = run_tool(args, bench, record)
            wall = time.monotonic() - wall_before
            cpu_after = server.cpu_seconds()
            if proc is not None:
                read_report(proc, record)
            stats: dict = {"pid": server.pid, "tool_wall_seconds": round(wall, 3),
                           "peak_rss_kib": server.status_kib("VmHWM"), "rss_kib": server.status_kib("VmRSS")}
            if cpu_before is not None and cpu_after is not None:
                stats["cpu_seconds"] = round(cpu_after - cpu_before, 2)
                stats["cpu_percent"] = round(100 * (cpu_after - cpu_before) / wall, 1) if wall > 0 else None
            if bench.scenario == "fanout":
                stats["broadcast"] = server.broadcast_metrics()
            record["server_stats"] = stats
        finally:
            record["server_exit"] = server.stop()
            problems = server.log_problems()
            if problems:
                record["server_log_problems"] = problems
            if "error" in record:
                record["server_log_tail"] = server.log_tail()
    print(f"  {kind:8} {bench.name:16} {headline(record)}", file=log, flush=True)
    return record


# -- the machine --


def run_tool(args: list[str], bench: Benchmark, record: dict) -> subprocess.CompletedProcess | None:
    """sc-loadtest run within the benchmark's time; None (and why, in ``record["error"]``) when it overran."""
    limit = bench.setup_timeout + bench.duration + TOOL_MARGIN_SECONDS
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        record["error"] = f"sc-loadtest did not finish within {limit:g} s"
        return None


def read_report(proc: subprocess.CompletedProcess, record: dict) -> None:
    """The load tool's JSON report into ``record["result"]``, or why there is none into ``record["error"]``."""
    try:
        record["result"] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        record["error"] = f"sc-loadtest exited {proc.returncode} without a report: {proc.stderr[-2000:]}"
    else:
        if "error" in record["result"]:
            record["error"] = record["result"]["error"]


def _first_line(args: list[str]) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine(upstream: str | None) -> dict:
    info: dict = {"nproc": os.cpu_count(), "kernel": f"{platform.system()} {platform.release()}",
                  "python": platform.python_version()}
    try:
        info["memory_gib"] = round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
                                   / 1024 / 1024, 1)
    except (OSError, TypeError):
        pass
    try:
        models = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        info["cpu_model"] = models[0].strip() if models else None
    except OSError:
        pass
    for package in ("gevent", "greenlet"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    info["scd_commit"] = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    info["scd_uncommitted_changes"] = bool(dirty)
    if shutil.which("go"):
        info["go"] = _first_line(["go", "version"])
    if upstream:
        info["upstream_binary"] = upstream
        info["upstream_version"] = _first_line([upstream, "--version"])
        if shutil.which("go"):
            # "path: go1.19.8": the toolchain the binary was built with.
            info["upstream_built_with"] = _first_line(["go", "version", upstream])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    info["open_files_hard_limit"] = hard
    return info


# -- the network namespace --


def namespace_command() -> list[str] | None:
    """``unshare`` arguments that make a private network namespace here, or None if none can."""
    if not shutil.which("unshare"):
        return None
    for attempt in (["unshare", "--net"], ["unshare", "--map-root-user", "--net"]):
        try:
            if subprocess.run([*attempt, "true"], capture_output=True, timeout=10).returncode == 0:
                return attempt
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2: a new network namespace starts with lo down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        if not flags & iff_up:
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the report --


def _ms(value) -> str:
    return "–" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _latencies(summary: dict | None, names=("p50", "p95", "p99", "max")) -> str:
    if not summary or not summary.get("count"):
        return "–"
    return " / ".join(_ms(summary[f"{name}_ms"]) for name in names)


def _failures(failures: dict) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(failures.items())) or "none"


def _tool_cpu(result: dict) -> str:
    client = result.get("client", {})
    figures = f"{client.get('window_cpu_percent')} % ({client.get('cpu_percent')} % over the run)"
    if "processes" in client:
        figures = (f"{len(client['processes'])} processes, the busiest at {figures}, all together "
                   f"{client.get('all_window_cpu_percent')} %")
    return figures


def headline(record: dict) -> str:
    """One short line per finished run, for the progress log."""
    if "error" in record:
        return f"ERROR: {record['error'].splitlines()[0][:150]}"
    result = record["result"]
    if record["scenario"] == "idle":
        s, per_session = result["sessions"], (result["server_rss"] or {}).get("per_session_kib")
        return (f"{s['established']}/{s['attempted']} in {s['establish_seconds']} s, "
                f"{per_session} KiB/session, ping p99 {result['ping']['p99_ms']} ms")
    if record["scenario"] == "fanout":
        d, last = result["deliveries"], result["last_subscriber_latency"]
        return (f"{d['delivered']}/{d['expected']} delivered, last-subscriber p50 {last['p50_ms']} "
                f"p99 {last['p99_ms']} ms")
    if record["scenario"] == "bots":
        msgs, response = result["messages"], result["response"]
        return (f"{msgs['per_second']} posts/s, {result['expected']['efficiency_percent']} % of the offered load, "
                f"response mean {response['mean_ms']} p99 {response['p99_ms']} ms")
    posts = result["posts"]
    return f"{posts['per_second']} posts/s, ack p99 {result['ack']['p99_ms']} ms, errors {posts['errors']}"


def rows_for(bench: str, scenario: str, result: dict, stats: dict) -> list[tuple[str, str]]:
    """(figure, value) pairs of one run, in the order the table shows them."""
    rows: list[tuple[str, str]] = []
    if scenario == "idle":
        s, rss, ping = result["sessions"], result.get("server_rss") or {}, result["ping"]
        rows += [
            ("sessions established / attempted", f"{s['established']} / {s['attempted']}"),
            ("setup failures", _failures(s["failures"])),
            ("time to establish all (s)", "–" if s["establish_seconds"] is None
             else f"{s['establish_seconds']:.2f} ({s['establish_per_second']}/s)"),
            ("dropped while held", str(s["dropped_during_hold"])),
            ("server RSS per session (KiB)", "–" if rss.get("per_session_kib") is None
             else f"{rss['per_session_kib']:.1f}"),
            ("server RSS idle → established (MiB)", "–" if rss.get("established_kib") is None
             else f"{rss['before_kib'] / 1024:.0f} → {rss['established_kib'] / 1024:.0f}"),
            ("PING p50 / p99 (ms)", f"{_latencies(ping, ('p50', 'p99'))} ({ping['sent']} sent, {ping['lost']} lost)"),
        ]
    elif scenario == "fanout":
        d, posts = result["deliveries"], result["posts"]
        last = result["last_subscriber_latency"]
        broadcast = (stats.get("broadcast") or {}).get("mean_ms")
        rows += [
            ("posts sent / acknowledged", f"{posts['sent']} / {posts['acknowledged']} ({posts['per_second']}/s)"),
            ("delivered / expected", f"{d['delivered']} / {d['expected']}"),
            ("lost / duplicates / unexpected", f"{d['lost']} / {d['duplicates']} / {d['unexpected']}"),
            ("per-delivery p50/p95/p99/max (ms)", _latencies(result["latency"])),
            ("last-subscriber p50/p95/p99/max (ms)", _latencies(last)),
            ("server's own broadcast time, mean (ms)", _ms(broadcast)),
            ("post acknowledgement p50/p99 (ms)", _latencies(posts["ack"], ("p50", "p99"))),
        ]
    elif scenario == "bots":
        clients, msgs, expected = result["clients"], result["messages"], result["expected"]
        failures = {**msgs["errors"], **{kind: msgs[kind] for kind in ("timeouts", "disconnections") if msgs[kind]},
                    **result["connection_failures"]}
        rows += [
            ("bots established / attempted", f"{clients['successful']} / {clients['attempted']}"),
            ("posts/s (of the load offered)", f"{msgs['per_second']} ({expected['efficiency_percent']} %)"),
            ("failures", _failures(failures)),
            ("response mean / p50 / p99 (ms)", _latencies(result["response"], ("mean", "p50", "p99"))),
        ]
    else:
        posts, ping = result["posts"], result["ping"]
        errors = dict(posts["errors"])
        if posts["timeouts"]:
            errors["timeouts"] = posts["timeouts"]
        if posts["disconnections"]:
            errors["disconnections"] = posts["disconnections"]
        rows += [
            ("posters established", f"{result['posters']['established']} / {result['posters']['attempted']}"),
            ("acknowledged posts/s", f"{posts['per_second']}"),
            ("errors by code", _failures(errors)),
            ("ack time p50/p95/p99 (ms)", _latencies(result["ack"], ("p50", "p95", "p99"))),
            ("PING p99 (ms, prober at 10/s)", f"{_latencies(ping, ('p99',))} ({ping['lost']} lost)"),
        ]
    rows.append(("load tool CPU, measuring window", _tool_cpu(result)))
    if stats.get("cpu_percent") is not None:
        rows.append(("server CPU over the tool's run", f"{stats['cpu_percent']} %"))
    return rows


def table(document: dict, markdown: bool) -> str:
    servers = document["servers"]
    by_key = {(r["benchmark"], r["server"]): r for r in document["runs"]}
    order = list(dict.fromkeys(r["benchmark"] for r in document["runs"]))
    lines: list[list[str]] = [["benchmark", "figure", *servers]]
    for bench in order:
        columns: dict[str, dict[str, str]] = {}
        figures: list[str] = []
        for server in servers:
            record = by_key.get((bench, server))
            if record is None:
                continue
            if "error" in record or "result" not in record:
                columns[server] = {"error": (record.get("error") or "no result").splitlines()[0][:80]}
                if "error" not in figures:
                    figures.append("error")
                continue
            for figure, value in rows_for(bench, record["scenario"], record["result"], record.get("server_stats", {})):
                columns.setdefault(server, {})[figure] = value
                if figure not in figures:
                    figures.append(figure)
        for i, figure in enumerate(figures):
            lines.append([bench if i == 0 else "", figure, *(columns.get(s, {}).get(figure, "–") for s in servers)])
    if markdown:
        out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in lines[1:]]
        return "\n".join(out)
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    out = []
    for n, row in enumerate(lines):
        if n and row[0]:
            out.append("")
        out.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def sweep_table(document: dict, markdown: bool) -> str:
    """Last-subscriber latency p50 / p99 (ms) against the subscriber count, per server."""
    servers = document["servers"]
    points: dict[int, dict[str, str]] = {}
    for record in document["runs"]:
        if record["scenario"] == "fanout" and "result" in record and "error" not in record:
            last = record["result"]["last_subscriber_latency"]
            points.setdefault(record["size"], {})[record["server"]] = _latencies(last, ("p50", "p99"))
    header = ["subscribers", *(f"{server} last-subscriber p50 / p99 (ms)" for server in servers)]
    rows = [[str(size), *(points[size].get(server, "–") for server in servers)] for size in sorted(points)]
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def newest_results() -> Path | None:
    # Dated files only: bench/cluster.py writes cluster-<date>.json beside them, in its own shape.
    found = sorted(RESULTS.glob("[0-9]*.json"), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def results_path() -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y-%m-%d")
    path, n = RESULTS / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = RESULTS / f"{stem}-{n}.json"
    return path


def draw_chart(path: Path, output: Path | None) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import chart

        out = chart.draw(json.loads(path.read_text()), output or chart.DEFAULT_OUTPUT)
    except ImportError as exc:
        print(f"chart not drawn ({exc}); pip install -r bench/requirements.txt, then python3 bench/chart.py {path}")
        return
    print(f"chart: {out}")


# -- the command --


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream-binary", metavar="PATH", help="the upstream Go server's binary, to benchmark beside scd")
    p.add_argument("--idle", type=_sizes, default=[1000, 5000, 10000], metavar="N,N",
                   help="idle session counts (default 1000,5000,10000)")
    p.add_argument("--idle-hold", type=float, default=20.0, metavar="S", help="seconds to hold idle sessions (20)")
    p.add_argument("--fanout", type=_sizes, default=[10, 100, 250, 500, 1000], metavar="N,N",
                   help=f"fan-out subscriber counts at {FANOUT_RATE:g} posts/s (default 10,100,250,500,1000)")
    p.add_argument("--fanout-duration", type=float, default=20.0, metavar="S", help="seconds of posting (20)")
    p.add_argument("--throughput", type=_sizes, default=[50, 200], metavar="N,N",
                   help="closed-loop poster counts (default 50,200)")
    p.add_argument("--throughput-duration", type=float, default=20.0, metavar="S", help="seconds of posting (20)")
    p.add_argument("--bots", type=_sizes, default=[300], metavar="N,N",
                   help=f"bot counts of upstream's load test, each posting every {BOT_DELAYS[0]}-{BOT_DELAYS[1]} "
                        "(default 300)")
    p.add_argument("--bots-duration", type=float, default=60.0, metavar="S", help="seconds the bots run (60)")
    p.add_argument("--tool-processes", type=int, default=2, metavar="N",
                   help="processes the load tool spreads the posters and bots over, so that one core is not the "
                        "limit of what it measures (default 2)")
    p.add_argument("--only", type=lambda text: text.split(","), metavar="NAME,...",
                   help="only these benchmarks (idle-1000, fanout-100, ...) or scenarios (idle, fanout, "
                        "throughput, bots)")
    p.add_argument("--quick", action="store_true", help="a small, short smoke run of the whole pipeline")
    p.add_argument("--output", type=Path, metavar="FILE", help="results file (default bench/results/<date>.json)")
    p.add_argument("--no-namespace", action="store_true", help="run on loopback here; skips the upstream server")
    p.add_argument("--no-chart", action="store_true", help="do not draw bench/fanout-latency.png")
    p.add_argument("--report", type=Path, metavar="FILE", nargs="?", const=True,
                   help="only print the table of a results file (default: the newest)")
    p.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    p.add_argument(IN_NAMESPACE_FLAG, action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.quick:
        opts.idle, opts.fanout, opts.throughput, opts.bots = [100, 300], [10, 50], [5], [10]
        opts.idle_hold = opts.fanout_duration = opts.throughput_duration = opts.bots_duration = 3.0
    if opts.upstream_binary:
        opts.upstream_binary = os.path.abspath(opts.upstream_binary)
        if not os.access(opts.upstream_binary, os.X_OK):
            p.error(f"--upstream-binary {opts.upstream_binary} is not an executable file")
    return opts


def print_report(document: dict, markdown: bool) -> None:
    print(table(document, markdown))
    if any(run["scenario"] == "fanout" for run in document["runs"]):
        print()
        print(sweep_table(document, markdown))


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    if opts.report:
        path = newest_results() if opts.report is True else opts.report
        if path is None:
            print("no results file in bench/results", file=sys.stderr)
            return 1
        print(f"{path}\n")
        print_report(json.loads(Path(path).read_text()), opts.markdown)
        return 0

    isolated = opts.in_namespace
    if not isolated and not opts.no_namespace:
        unshare = namespace_command()
        if unshare is not None:
            # The whole run, servers and tools, in one private network namespace with only lo.
            return subprocess.call([*unshare, sys.executable, os.path.abspath(__file__), IN_NAMESPACE_FLAG, *argv])
        print("bench: cannot make a private network namespace (unshare -n failed): running scd on loopback here",
              file=sys.stderr)
    upstream = opts.upstream_binary
    if isolated:
        loopback_up()
        scd_ports, upstream_ports = (SCD_PORT, SCD_METRICS_PORT), (UPSTREAM_PORT, UPSTREAM_METRICS_PORT)
    else:
        scd_ports, upstream_ports = (_free_port(), _free_port()), (0, 0)
        if upstream:
            print("bench: skipping the upstream server: it binds fixed ports on every interface, so it only runs "
                  "inside a private network namespace", file=sys.stderr)
            upstream = None

    servers = ["scd"] + (["upstream"] if upstream else [])
    plan = benchmarks(opts)
    raise_open_files_limit(plan)
    output = opts.output or results_path()
    document = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python3", "bench/run.py", *(arg for arg in argv if arg != IN_NAMESPACE_FLAG)]),
        "network_namespace": isolated,
        "machine": machine(upstream),
        "servers": servers,
        "settings": {"source_addresses": SOURCE_ADDRESSES, "fanout_rate": FANOUT_RATE,
                     "fanout_copies_per_second": FANOUT_COPIES_PER_SECOND, "bot_delays": BOT_DELAYS,
                     "scd_env": SCD_LIMITS,
                     "benchmarks": [vars(bench) for bench in plan]},
        "runs": [],
    }
    print(f"bench: {len(plan)} benchmarks x {len(servers)} servers ({', '.join(servers)}); results to {output}",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    for bench in plan:
        for kind in servers:
            ports = scd_ports if kind == "scd" else upstream_ports
            document["runs"].append(run_one(bench, kind, upstream, ports, sys.stderr))
            # Written after every run, so an interrupted benchmark keeps what it measured.
            document["elapsed_seconds"] = round(time.monotonic() - started, 1)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(document, indent=1) + "\n")
    print(f"bench: done in {time.monotonic() - started:.0f} s; results in {output}\n", file=sys.stderr)
    print_report(document, opts.markdown)
    if not opts.no_chart:
        # A smoke run or a results file of its own leaves bench/fanout-latency.png alone.
        custom = opts.quick or opts.output is not None
        draw_chart(output, output.with_name(output.stem + "-fanout-latency.png") if custom else None)
    failed = [r for r in document["runs"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
