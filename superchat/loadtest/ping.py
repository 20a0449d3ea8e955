"""Open-loop PING probes: round trips measured from the timestamp the server echoes."""

from __future__ import annotations

import itertools
import time

import gevent

from ..protocol import messages
from .connection import LoadError
from .stats import Histogram

PONG_GRACE_SECONDS = 1.0


class Pinger:
    """Pings its sessions every interval, open loop: a slow PONG never delays the next PING."""

    def __init__(self, connections: list):
        self.connections = connections
        self.sent = 0
        self.received = 0
        self.round_trips = Histogram()
        self._merged_sessions = 0
        for conn in connections:
            conn.on_pong = self._pong

    def _pong(self, timestamp: int, arrived_ns: int) -> None:
        self.received += 1
        self.round_trips.record_ns(arrived_ns - timestamp)

    def run(self, interval: float, until: float) -> None:
        """Until ``until``, each connection once per ``interval``; their phases are spread over the
        interval so that the probes do not queue behind each other at the server."""
        if self.connections:
            step = interval / len(self.connections)
            next_at = time.monotonic()
            for conn in itertools.cycle(self.connections):
                if next_at >= until:
                    break
                gevent.sleep(max(0.0, next_at - time.monotonic()))
                if ping(conn, time.perf_counter_ns()):
                    self.sent += 1
                next_at += step
        gevent.sleep(max(0.0, until - time.monotonic()))

    def wait_for_stragglers(self, until: float) -> None:
        while self.received < self.sent and time.monotonic() < until:
            gevent.sleep(0.01)

    def counts(self) -> dict:
        return {"sessions": len(self.connections), "sent": self.sent, "received": self.received}

    def merge(self, counts: dict, round_trips: dict) -> None:
        """Add another process's ``counts()`` and round-trip histogram state."""
        self._merged_sessions += counts["sessions"]
        self.sent += counts["sent"]
        self.received += counts["received"]
        self.round_trips.merge(round_trips)

    def summary(self) -> dict:
        return {"sessions": len(self.connections) + self._merged_sessions, "sent": self.sent,
                "received": self.received, "lost": self.sent - self.received, **self.round_trips.summary()}


def ping(conn, timestamp: int) -> bool:
    try:
        conn.send(messages.Ping(timestamp=timestamp))
    except LoadError:
        return False
    return True
