"""Opening many sessions without overrunning the server's accept queue."""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from gevent.pool import Group

from .connection import SetupFailed

# A range like 127.0.0.1-127.0.0.50 may not expand to more addresses than this.
MAX_SOURCE_ADDRESSES = 65536
SETTLE_GRACE_SECONDS = 1.0

T = TypeVar("T")


def parse_source_addresses(text: str) -> list[str]:
    """``a,b,c`` and ranges ``first-last`` (inclusive) of local addresses to connect from."""
    addresses: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, sep, last = part.partition("-")
        low = ipaddress.ip_address(first.strip())
        high = ipaddress.ip_address(last.strip()) if sep else low
        if high.version != low.version or int(high) < int(low):
            raise ValueError(f"bad address range {part!r}")
        if int(high) - int(low) + len(addresses) >= MAX_SOURCE_ADDRESSES:
            raise ValueError(f"more than {MAX_SOURCE_ADDRESSES} source addresses")
        addresses.extend(str(ipaddress.ip_address(n)) for n in range(int(low), int(high) + 1))
    return addresses


class Launch(Generic[T]):
    """Runs ``establish(index, source)`` for ``count`` sessions: at most ``rate`` starts per
    second and ``inflight`` unfinished at once, none started after ``deadline``.

    ``establish`` returns a value (usually a Connection) or raises SetupFailed; failures
    are tallied by kind and by stage. ``after(index, value)`` then runs in the same
    greenlet, outside the in-flight limit: the bots scenario runs its bot there.
    """

    def __init__(self, count: int, rate: float, inflight: int, deadline: float,
                 establish: Callable[[int, str | None], T], *, sources: list[str] | None = None,
                 after: Callable[[int, T], None] | None = None):
        self.count = count
        self.results: dict[int, T] = {}
        self.failures: Counter[str] = Counter()
        self.failed_stages: Counter[str] = Counter()
        self.started_at = time.monotonic()
        self.established_at: float | None = None
        self._rate = rate
        self._slots = BoundedSemaphore(max(1, inflight))
        self._deadline = deadline
        self._establish = establish
        self._after = after
        self._sources: Iterator[str | None] = itertools.cycle(sources) if sources else itertools.repeat(None)
        self._group = Group()
        self._settled = 0
        self._all_settled = Event()
        if count <= 0:
            self._all_settled.set()
        self._spawner = gevent.spawn(self._spawn_all)

    @property
    def established(self) -> int:
        return len(self.results)

    def _spawn_all(self) -> None:
        for index in range(self.count):
            delay = self.started_at + index / self._rate - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            if not self._slots.acquire(timeout=max(0.0, self._deadline - time.monotonic())):
                not_started = self.count - index
                self.failures["setup_deadline"] += not_started
                self.failed_stages["not_started"] += not_started
                self._settle(not_started)
                return
            self._group.spawn(self._one, index, next(self._sources))

    def _one(self, index: int, source: str | None) -> None:
        try:
            value = self._establish(index, source)
        except SetupFailed as failure:
            self.failures[failure.kind] += 1
            self.failed_stages[failure.stage] += 1
            self._settle(1)
            return
        finally:
            self._slots.release()
        self.results[index] = value
        self.established_at = time.monotonic()
        self._settle(1)
        if self._after is not None:
            self._after(index, value)

    def _settle(self, count: int) -> None:
        self._settled += count
        if self._settled >= self.count:
            self._all_settled.set()

    def wait_established(self) -> None:
        """Until every session is set up or failed (the ``after`` parts may still run)."""
        # Every establish step is bounded by the deadline; the grace covers the last replies.
        self._all_settled.wait(max(0.0, self._deadline + SETTLE_GRACE_SECONDS - time.monotonic()))

    def join(self, deadline: float) -> bool:
        """Until the ``after`` parts finish too, or ``deadline``; True when all finished."""
        self._spawner.join(max(0.0, deadline - time.monotonic()))
        return self._group.join(timeout=max(0.0, deadline - time.monotonic()))

    def kill(self) -> None:
        self._spawner.kill()
        self._group.kill(timeout=1)

    @property
    def establish_seconds(self) -> float | None:
        return None if self.established_at is None else self.established_at - self.started_at

    def summary(self) -> dict:
        return _summary(self.count, self.established, self.failures, self.failed_stages, self.establish_seconds)


def merge_launches(summaries: list[dict]) -> dict:
    """One ``Launch.summary()`` from those of the processes a run was spread over, which all
    started together: the sessions add up, the last to be established ends the establishing."""
    failures: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for summary in summaries:
        failures.update(summary["failures"])
        stages.update(summary["failed_stages"])
    times = [summary["establish_seconds"] for summary in summaries if summary["establish_seconds"] is not None]
    return _summary(sum(summary["attempted"] for summary in summaries),
                    sum(summary["established"] for summary in summaries), failures, stages,
                    max(times) if times else None)


def _summary(attempted: int, established: int, failures: Counter[str], stages: Counter[str],
             seconds: float | None) -> dict:
    return {
        "attempted": attempted,
        "established": established,
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "failed_stages": dict(stages),
        "establish_seconds": None if seconds is None else round(seconds, 3),
        "establish_per_second": round(established / seconds, 1) if seconds else None,
    }
