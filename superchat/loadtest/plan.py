"""One run's options, targets and deadlines, shared by every scenario."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import gevent
from gevent.socket import wait_read

from . import connection
from .ramp import Launch
from .stats import ClientUsage

T = TypeVar("T")

PROGRESS_SECONDS = 5.0
# What a process of a spread run says on stdout once set up; it is answered "go START END" on stdin.
READY = "ready"


@dataclass
class Plan:
    """Setup (connecting, subscribing) must finish within ``setup_timeout`` of the start, and
    the whole run within ``setup_timeout + duration``: the hard deadline nothing outlives.

    ``targets``: the nodes of one server, in the order given; session ``index`` goes to node
    ``index % len(targets)``, round-robin as a TCP load balancer would spread them.

    With ``--processes`` the run's sessions are spread over ``workers`` processes: this one,
    number ``worker``, opens every ``workers``-th of them, each under its index in the whole run.
    """

    opts: argparse.Namespace
    targets: list[tuple[int, tuple]]
    sources: list[str] | None
    started: float = field(default_factory=time.monotonic)
    usage: ClientUsage = field(default_factory=ClientUsage)
    worker: int = 0
    workers: int = 1

    @property
    def setup_deadline(self) -> float:
        return self.started + self.opts.setup_timeout

    @property
    def hard_deadline(self) -> float:
        return self.setup_deadline + self.opts.duration

    def left(self, cap: float | None = None) -> float:
        """Seconds to the hard deadline, at most ``cap`` (the reply timeout by default)."""
        cap = self.opts.timeout if cap is None else cap
        return max(0.0, min(cap, self.hard_deadline - time.monotonic()))

    def source(self, index: int) -> str | None:
        return self.sources[index % len(self.sources)] if self.sources else None

    def open_session(self, source: str | None, nickname: str, index: int = 0) -> connection.Connection:
        """Session ``index`` on its node; a single session of its kind (poster, prober) takes the first."""
        target = self.targets[index % len(self.targets)]
        return connection.open_session(target, source, nickname, self.setup_deadline, self.opts.timeout)

    @property
    def spread(self) -> bool:
        return self.workers > 1

    def launch(self, count: int, establish: Callable[[int, str | None], T],
               after: Callable[[int, T], None] | None = None, first_source: int = 0) -> Launch[T]:
        """This process's share of ``count`` sessions; ``establish`` and ``after`` get each one's
        index in the whole run."""
        first_source += self.worker
        sources = None
        if self.sources:
            first_source %= len(self.sources)
            sources = self.sources[first_source:] + self.sources[:first_source]

        def run_index(local: int) -> int:
            return self.worker + local * self.workers

        def establish_one(local: int, source: str | None) -> T:
            return establish(run_index(local), source)

        def after_one(local: int, value: T) -> None:
            assert after is not None
            after(run_index(local), value)

        share = len(range(self.worker, count, self.workers))
        return Launch(share, self.opts.ramp / self.workers, self.opts.max_inflight, self.setup_deadline,
                      establish_one, sources=sources, after=None if after is None else after_one)

    def start_window(self) -> tuple[float, float]:
        """The measured window, ``(start, end)`` in monotonic seconds, once this process is set up:
        from now, or, spread over processes, from the moment every process is set up. The monotonic
        clock is the machine's, the same in every process."""
        if self.spread:
            print(READY, flush=True)
            wait_read(sys.stdin.fileno())
            started, until = (float(part) for part in sys.stdin.readline().split()[1:3])
        else:
            started = time.monotonic()
            until = started + self.opts.duration
        return started, min(until, self.hard_deadline)

    def progress(self, describe) -> gevent.Greenlet | None:
        """Every few seconds, ``describe()`` on stderr (not with --json, whose stdout is one document)."""
        if self.opts.json:
            return None

        def report():
            while True:
                gevent.sleep(PROGRESS_SECONDS)
                print(f"[{time.monotonic() - self.started:6.1f}s] {describe()}", file=sys.stderr, flush=True)

        return gevent.spawn(report)


def stop(greenlet: gevent.Greenlet | None) -> None:
    if greenlet is not None:
        greenlet.kill(block=False)


def close_all(connections) -> None:
    for conn in connections:
        conn.close()
