"""The sliding windows behind every rate limit: events in any window-long span, never more."""

from __future__ import annotations

import time

from superchat.server.limits import SlidingWindow


def test_a_window_refuses_past_its_limit_and_allows_again_as_events_age():
    window = SlidingWindow(3, 0.2)
    assert [window.allow() for _ in range(4)] == [True, True, True, False]
    assert not window.has_room()
    time.sleep(0.25)
    assert window.has_room()
    assert [window.allow() for _ in range(4)] == [True, True, True, False]


def test_a_busy_window_allows_exactly_what_its_span_has_room_for(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("superchat.server.limits.time.monotonic", lambda: clock[0])
    window = SlidingWindow(10, 0.05)
    allowed: list[float] = []
    for _ in range(5000):
        clock[0] += 0.0013
        in_span = sum(1 for at in allowed if clock[0] - at < 0.05)
        assert window.allow() == (in_span < 10)
        if in_span < 10:
            allowed.append(clock[0])
        allowed = allowed[-20:]
