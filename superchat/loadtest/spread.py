"""``--processes N``: one run spread over N processes of this tool, for loads one core cannot make.

Each process is this tool again, told its number (``--worker K``): it opens every N-th session of
the run and prints its part of the figures as one JSON document. In the throughput scenario the
measured window starts in all of them at once: each says ``ready`` once set up, and all are told
``go START END`` when the last one is (or has ended). The parts are merged into the run's one
report, with the CPU of every process: the busiest one says whether the tool was the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import gevent

from .plan import READY

LOADTEST = Path(__file__).resolve().parents[2] / "bin" / "sc-loadtest"
SCENARIOS_SPREAD = ("bots", "throughput")
# A process that outlives the run's hard deadline by this much is killed.
GRACE_SECONDS = 10.0


@dataclass
class _Process:
    number: int
    proc: subprocess.Popen
    stdin: IO[str]
    stdout: IO[str]
    ready: bool = False
    ended: bool = False
    document: dict | None = None


def _start(number: int, argv: list[str]) -> _Process:
    proc = subprocess.Popen([sys.executable, str(LOADTEST), *argv, "--json", "--worker", str(number)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    return _Process(number, proc, proc.stdin, proc.stdout)


def run(opts: argparse.Namespace, argv: list[str], hard_deadline: float,
        merge: Callable[[list[dict], argparse.Namespace], dict]) -> tuple[dict, dict]:
    """The result of the scenario, ``merge`` of the processes' parts, and the tool's usage over
    all of them."""
    processes = [_start(number, argv) for number in range(opts.processes)]
    went = False

    def go_when_all_set_up() -> None:
        nonlocal went
        if went or not all(p.ready or p.ended for p in processes):
            return
        went = True
        started = time.monotonic()
        for p in processes:
            if p.ready and not p.ended:
                try:
                    p.stdin.write(f"go {started!r} {started + opts.duration!r}\n")
                    p.stdin.flush()
                except OSError:
                    pass  # it ended meanwhile: it is reported as ended without its part

    def follow(p: _Process) -> None:
        for line in p.stdout:
            if line.strip() == READY:
                p.ready = True
                go_when_all_set_up()
            elif line.startswith("{"):
                p.document = json.loads(line)
        p.ended = True
        go_when_all_set_up()

    readers = [gevent.spawn(follow, p) for p in processes]
    gevent.joinall(readers, timeout=max(0.0, hard_deadline + GRACE_SECONDS - time.monotonic()))
    for p in processes:
        if p.proc.poll() is None:
            p.proc.kill()
        p.proc.wait()
    gevent.killall(readers)
    return _result(opts, processes, merge), _usage(processes)


def _result(opts: argparse.Namespace, processes: list[_Process],
            merge: Callable[[list[dict], argparse.Namespace], dict]) -> dict:
    parts = []
    for p in processes:
        if p.document is None:
            return {"error": f"load process {p.number} ended without its figures (exit status {p.proc.returncode})"}
        if "error" in p.document:
            return {"error": f"load process {p.number}: {p.document['error']}"}
        parts.append(p.document["part"])
    return merge(parts, opts)


def _usage(processes: list[_Process]) -> dict:
    """The tool's CPU and memory: every process's, and the busiest one's as the tool's."""
    each = [p.document["client"] for p in processes if p.document is not None]
    if not each:
        return {"processes": [], "cpu_seconds": 0.0, "cpu_percent": None, "window_cpu_percent": None,
                "max_rss_kib": 0, "open_files_limit": None, "skipped_frames": {}, "cores": os.cpu_count()}
    skipped: Counter[str] = Counter()
    for client in each:
        skipped.update(client["skipped_frames"])
    return {
        "processes": [{key: client[key] for key in ("cpu_seconds", "cpu_percent", "window_cpu_percent",
                                                      "max_rss_kib")} for client in each],
        "cpu_seconds": round(sum(client["cpu_seconds"] for client in each), 3),
        "cpu_percent": max(client["cpu_percent"] or 0 for client in each),
        "window_cpu_percent": max(client["window_cpu_percent"] or 0 for client in each),
        "all_window_cpu_percent": round(sum(client["window_cpu_percent"] or 0 for client in each), 1),
        "max_rss_kib": max(client["max_rss_kib"] for client in each),
        "open_files_limit": min(client["open_files_limit"] for client in each),
        "skipped_frames": dict(skipped),
        "cores": os.cpu_count(),
    }
