#!/usr/bin/env python3
"""Whether scd's memory and /metrics stay flat through a long run of upstream's load test.

    python3 bench/memory.py --duration 300

Starts a fresh ``bin/scd`` (SQLite in a temporary data directory, loopback, free ports), runs
``sc-loadtest --scenario bots`` against it (300 bots posting every 50-300 ms by default), and
every ``--sample-every`` seconds reads the server's VmRSS from /proc and fetches /metrics (its
size, its series, the series of ``superchat_messages_delivered_total``). Prints the samples, the
RSS change from the end of ``--warmup`` to the end, and /metrics at the end; writes everything
to ``bench/results/memory-<date>.json``. Figures only: nothing passes or fails.

``--heap-top N`` also fetches the server's tracemalloc heap (/debug/pprof/heap?debug=1) after
the warm-up and at the end and prints the N allocation sites that grew most in between
(tracing costs the server time and memory of its own: RSS figures of such a run are not
comparable with those of a run without it).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import run as single  # bench/run.py: the scd process wrapper, free ports, machine facts

DELIVERED = "superchat_messages_delivered_total"
SETUP_TIMEOUT_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 10.0
# A stack of /debug/pprof/heap?debug=1 opens with its values (alloc objects, alloc bytes, in-use objects,
# in-use bytes) and " @", then one "#\tfunction\tfile:line" line per frame, innermost first.
_HEAP_RECORD = re.compile(r"^\d+ \d+ \d+ (\d+) @$")


class MemoryServer(single.Server):
    """bench/run.py's scd, with its database named on the command line and the profiling port open."""

    def __init__(self, root: Path, extra_env: dict[str, str]):
        super().__init__("scd", None, root, single._free_port(), single._free_port())
        self.pprof_port = single._free_port()
        self.env.update(extra_env)

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--pprof-port") + 1] = str(self.pprof_port)
        return [*command, "--pprof-bind", "127.0.0.1", "--db", str(self.root / "data" / "superchat.db")]


def http_text(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as reply:
            return reply.read().decode("utf-8", "replace")
    except OSError:
        return None


def metrics_sample(server: MemoryServer) -> dict:
    text = http_text(f"http://127.0.0.1:{server.metrics_port}/metrics")
    if text is None:
        return {"metrics_bytes": None}
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    sessions = next((float(line.split()[-1]) for line in series if line.startswith("superchat_active_sessions ")),
                    None)
    return {"metrics_bytes": len(text.encode()), "series": len(series),
            "delivered_series": sum(1 for line in series if line.startswith(DELIVERED + "{")),
            "delivered_total": sum(float(line.split()[-1]) for line in series if line.startswith(DELIVERED + "{")),
            "sessions": sessions}


def heap_by_site(server: MemoryServer) -> dict[str, int] | None:
    """Live bytes by allocation site: the innermost frame, and the innermost frame of scd's own code."""
    text = http_text(f"http://127.0.0.1:{server.pprof_port}/debug/pprof/heap?debug=1")
    if text is None:
        return None
    sites: dict[str, int] = {}
    for record in text.split("\n\n")[1:]:
        values, *frames = record.strip().splitlines()
        match = _HEAP_RECORD.match(values)
        if not match or not frames:
            continue
        where = [frame.lstrip("#").strip().replace("\t", " ") for frame in frames]
        ours = next((frame for frame in where if "/superchat/" in frame), None)
        site = where[0] if ours in (None, where[0]) else f"{where[0]} < {ours}"
        sites[site] = sites.get(site, 0) + int(match[1])
    return sites


def grown_sites(before: dict[str, int], after: dict[str, int], top: int) -> list[tuple[str, int]]:
    growth = {site: after.get(site, 0) - before.get(site, 0) for site in set(before) | set(after)}
    return sorted(((site, grew) for site, grew in growth.items() if grew > 0), key=lambda item: -item[1])[:top]


def run(opts: argparse.Namespace) -> dict:
    record: dict = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": " ".join(["python3", "bench/memory.py", *opts.argv]),
                    "machine": single.machine(None), "samples": []}
    with tempfile.TemporaryDirectory(prefix="scbench-memory-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        server = MemoryServer(root, dict(opts.env))
        server.start()
        try:
            tool = [sys.executable, str(single.LOADTEST), "--scenario", "bots", "--server",
                    f"127.0.0.1:{server.port}", "--clients", str(opts.clients), "--duration", f"{opts.duration:g}",
                    "--min-delay", opts.min_delay, "--max-delay", opts.max_delay, "--setup-timeout",
                    f"{SETUP_TIMEOUT_SECONDS:g}", "--source-addresses", single.SOURCE_ADDRESSES, "--json"]
            record["loadtest_command"] = ["sc-loadtest", *tool[2:]]
            record["scd_command"] = ["bin/scd", *server.command()[2:]]
            record["scd_env"] = {**single.SCD_LIMITS, **server.env}
            measure(opts, server, tool, record)
        finally:
            record["server_exit"] = server.stop()
            problems = server.log_problems()
            if problems:
                record["server_log_problems"] = problems
    summarise(opts, record)
    return record


def measure(opts: argparse.Namespace, server: MemoryServer, tool: list[str], record: dict) -> None:
    limit = SETUP_TIMEOUT_SECONDS + opts.duration + single.TOOL_MARGIN_SECONDS
    finished = threading.Event()
    outcome: dict = {}

    def load() -> None:
        try:
            outcome["proc"] = subprocess.run(tool, capture_output=True, text=True, timeout=limit,
                                             stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            outcome["error"] = f"sc-loadtest did not finish within {limit:g} s"
        finally:
            finished.set()

    started = time.monotonic()
    threading.Thread(target=load, daemon=True).start()
    heap_before = None
    while not finished.is_set():
        elapsed = time.monotonic() - started
        # RssAnon is the heap (Python's and SQLite's); RssFile the mapped files (libraries, the WAL index).
        sample = {"t": round(elapsed, 1), "rss_kib": server.status_kib("VmRSS"),
                  "rss_anon_kib": server.status_kib("RssAnon"), "rss_file_kib": server.status_kib("RssFile"),
                  **metrics_sample(server)}
        record["samples"].append(sample)
        print(format_sample(sample), file=sys.stderr, flush=True)
        if opts.heap_top and heap_before is None and elapsed >= opts.warmup:
            heap_before = heap_by_site(server)
        finished.wait(opts.sample_every)
    record["final"] = {"rss_kib": server.status_kib("VmRSS"), "peak_rss_kib": server.status_kib("VmHWM"),
                       **metrics_sample(server)}
    if opts.heap_top and heap_before is not None:
        heap_after = heap_by_site(server)
        if heap_after is not None:
            record["heap_growth"] = grown_sites(heap_before, heap_after, opts.heap_top)
    if "error" in outcome:
        record["error"] = outcome["error"]
        return
    proc = outcome["proc"]
    try:
        record["loadtest"] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        record["error"] = f"sc-loadtest exited {proc.returncode} without a report: {proc.stderr[-2000:]}"


def format_sample(sample: dict) -> str:
    rss = sample["rss_kib"]
    size = sample.get("metrics_bytes")
    return (f"  t={sample['t']:6.1f} s  RSS {'–' if rss is None else f'{rss / 1024:6.1f} MiB'}  "
            f"sessions {sample.get('sessions')}  /metrics {'–' if size is None else f'{size / 1024:7.1f} KiB'} "
            f"{sample.get('series')} series ({sample.get('delivered_series')} of {DELIVERED})")


def summarise(opts: argparse.Namespace, record: dict) -> None:
    samples = [s for s in record["samples"] if s["rss_kib"] is not None]
    warm = [s for s in samples if s["t"] >= opts.warmup]
    summary: dict = {"warmup_seconds": opts.warmup}
    if warm:
        after = [s["rss_kib"] for s in warm]
        summary.update(rss_after_warmup_kib=after[0], rss_end_kib=after[-1],
                       rss_change_after_warmup_kib=after[-1] - after[0],
                       rss_range_after_warmup_kib=[min(after), max(after)])
        # A straight line through the samples after warm-up: a leak shows as a steady slope.
        if len(warm) > 1:
            ts = [s["t"] for s in warm]
            mean_t, mean_r = sum(ts) / len(ts), sum(after) / len(after)
            slope = sum((t - mean_t) * (r - mean_r) for t, r in zip(ts, after, strict=True)) / sum(
                (t - mean_t) ** 2 for t in ts)
            summary["rss_slope_kib_per_minute"] = round(slope * 60, 1)
    messages = (record.get("loadtest") or {}).get("messages") or {}
    summary["posted"], summary["posts_per_second"] = messages.get("posted"), messages.get("per_second")
    record["summary"] = summary


def _mib(kib: int | None) -> str:
    return "–" if kib is None else f"{kib / 1024:.1f}"


def print_report(record: dict) -> None:
    summary, final = record["summary"], record.get("final", {})
    print(f"scd: {' '.join(record['scd_command'])}")
    print(f"load: {' '.join(record['loadtest_command'])}")
    print(f"\n{'t (s)':>7} {'RSS (MiB)':>10} {'anon':>6} {'file':>6} {'sessions':>9} {'/metrics (KiB)':>15} "
          f"{'series':>7} {'delivered series':>17}")
    for s in record["samples"]:
        rss, anon, file = (_mib(s.get(key)) for key in ("rss_kib", "rss_anon_kib", "rss_file_kib"))
        size = "–" if s.get("metrics_bytes") is None else f"{s['metrics_bytes'] / 1024:.1f}"
        print(f"{s['t']:>7.0f} {rss:>10} {anon:>6} {file:>6} {s.get('sessions') or '–'!s:>9} {size:>15} "
              f"{s.get('series', '–')!s:>7} {s.get('delivered_series', '–')!s:>17}")
    if "rss_after_warmup_kib" in summary:
        low, high = summary["rss_range_after_warmup_kib"]
        print(f"\nRSS after the {summary['warmup_seconds']:g} s warm-up: "
              f"{summary['rss_after_warmup_kib'] / 1024:.1f} MiB -> {summary['rss_end_kib'] / 1024:.1f} MiB at the end "
              f"({summary['rss_change_after_warmup_kib'] / 1024:+.1f} MiB; "
              f"range {low / 1024:.1f}-{high / 1024:.1f} MiB; "
              f"slope {summary.get('rss_slope_kib_per_minute', 0) / 1024:+.2f} MiB/min)")
    if final.get("metrics_bytes") is not None:
        print(f"/metrics at the end: {final['metrics_bytes'] / 1024:.1f} KiB, {final['series']} series, "
              f"{final['delivered_series']} of {DELIVERED} (their sum {final['delivered_total']:.0f} deliveries)")
    if final.get("peak_rss_kib") is not None:
        print(f"peak RSS: {final['peak_rss_kib'] / 1024:.1f} MiB")
    if summary.get("posted") is not None:
        print(f"posts acknowledged: {summary['posted']} ({summary['posts_per_second']}/s)")
    for site, grew in record.get("heap_growth", []):
        print(f"heap grew {grew / 1024:9.1f} KiB at {site}")
    if "error" in record:
        print(f"ERROR: {record['error']}")
    problems = record.get("server_log_problems", [])
    for line in problems[:5]:
        print(f"server log: {line}")
    if len(problems) > 5:
        print(f"server log: ... (bench/results file: {len(problems)} lines kept)")


def results_path() -> Path:
    single.RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"memory-{time.strftime('%Y-%m-%d')}"
    path, n = single.RESULTS / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = single.RESULTS / f"{stem}-{n}.json"
    return path


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("SUPERCHAT_"):
        raise argparse.ArgumentTypeError(f"expected SUPERCHAT_SECTION_KEY=VALUE, got {text!r}")
    return name, value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/memory.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=300.0, metavar="S", help="seconds of posting (300)")
    p.add_argument("--clients", type=int, default=300, metavar="N", help="bots (300)")
    p.add_argument("--min-delay", default="50ms", metavar="D", help="shortest pause between a bot's posts (50ms)")
    p.add_argument("--max-delay", default="300ms", metavar="D", help="longest pause between a bot's posts (300ms)")
    p.add_argument("--sample-every", type=float, default=10.0, metavar="S", help="seconds between samples (10)")
    p.add_argument("--warmup", type=float, default=60.0, metavar="S",
                   help="seconds from the start before RSS is expected to settle (60)")
    p.add_argument("--heap-top", type=int, default=0, metavar="N",
                   help="print the N allocation sites whose live bytes grew most after the warm-up")
    p.add_argument("--set", dest="env", type=_setting, action="append", default=[], metavar="SUPERCHAT_X_Y=V",
                   help="a configuration override for scd, as an environment variable (repeatable)")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="results file (default bench/results/memory-<date>.json)")
    opts = p.parse_args(argv)
    opts.argv = argv
    return opts


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    output = opts.output or results_path()
    print(f"bench: bots x {opts.clients} for {opts.duration:g} s; results to {output}", file=sys.stderr, flush=True)
    record = run(opts)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1) + "\n")
    print_report(record)
    return 1 if "error" in record else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
