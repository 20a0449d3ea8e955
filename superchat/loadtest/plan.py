"""One run's options, targets and deadlines, shared by every scenario."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import gevent

from . import connection
from .ramp import Launch
from .stats import ClientUsage

T = TypeVar("T")

PROGRESS_SECONDS = 5.0


@dataclass
class Plan:
    """Setup (connecting, subscribing) must finish within ``setup_timeout`` of the start, and
    the whole run within ``setup_timeout + duration``: the hard deadline nothing outlives.

    ``targets``: the nodes of one server, in the order given; session ``index`` goes to node
    ``index % len(targets)``, round-robin as a TCP load balancer would spread them.
    """

    opts: argparse.Namespace
    targets: list[tuple[int, tuple]]
    sources: list[str] | None
    started: float = field(default_factory=time.monotonic)
    usage: ClientUsage = field(default_factory=ClientUsage)

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

    def launch(self, count: int, establish: Callable[[int, str | None], T],
               after: Callable[[int, T], None] | None = None, first_source: int = 0) -> Launch[T]:
        sources = self.sources[first_source:] + self.sources[:first_source] if self.sources else None
        return Launch(count, self.opts.ramp, self.opts.max_inflight, self.setup_deadline, establish,
                      sources=sources, after=after)

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
