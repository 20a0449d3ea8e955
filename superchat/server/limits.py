"""Rate limits as sliding windows of recent event times, per session or per client address."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

log = logging.getLogger("superchat.limits")


def exceeded(who: str, limit: str, detail: str) -> None:
    """A request a limit refused, logged as the operations guide shows abuse (``[ERROR] Rate limit
    exceeded for session 2``); the rest of the line holds the guide's lower-case "rate limit
    exceeded" as well, for its grep recipe."""
    log.error("Rate limit exceeded for %s: %s rate limit exceeded (%s)", who, limit, detail)


def session_named(session_id: int, nickname: str | None) -> str:
    return f"session {session_id} ({nickname or '-'})"


class SlidingWindow:
    """Allows at most ``limit`` events in any ``seconds``-long window."""

    __slots__ = ("_limit", "_seconds", "_times", "_first")

    def __init__(self, limit: int, seconds: float):
        self._limit = limit
        self._seconds = seconds
        # The times from _first on are the window's. A list, not a deque: every session keeps a
        # window of its nickname changes, and a list of a few times costs about 100 bytes where an
        # empty deque costs 760.
        self._times: list[float] = []
        self._first = 0

    def allow(self) -> bool:
        """Record an event if the window has room; False means refuse it."""
        if not self.has_room():
            return False
        self._times.append(time.monotonic())
        return True

    def has_room(self) -> bool:
        """Whether an event would be allowed now, without recording one."""
        now = time.monotonic()
        times, first = self._times, self._first
        while first < len(times) and now - times[first] >= self._seconds:
            first += 1
        # Dropped once they are half the list: each time is moved at most once on average.
        if first and first * 2 >= len(times):
            del times[:first]
            first = 0
        self._first = first
        return len(times) - first < self._limit


class PerAddressLimit:
    """A SlidingWindow per client address, in bounded memory: past ``max_tracked`` addresses the
    least recently seen one is forgotten, which can only let it act sooner, never lock anyone out."""

    def __init__(self, limit: int, seconds: float, max_tracked: int = 4096):
        self._limit = limit
        self._seconds = seconds
        self._max_tracked = max_tracked
        self._windows: OrderedDict[str, SlidingWindow] = OrderedDict()

    def allow(self, address: str) -> bool:
        """Record an event for ``address`` if its window has room; False means refuse it."""
        return self._window(address).allow()

    def has_room(self, address: str) -> bool:
        window = self._windows.get(address)
        return window is None or window.has_room()

    def _window(self, address: str) -> SlidingWindow:
        window = self._windows.pop(address, None) or SlidingWindow(self._limit, self._seconds)
        self._windows[address] = window  # now the most recently seen
        if len(self._windows) > self._max_tracked:
            self._windows.popitem(last=False)
        return window
