"""What one client's input may cost everyone else: its share of the hub, of memory, of time.

A greenlet runs until it blocks, and a client that pipelines thousands of frames never makes its
reader block: without turns it would hold the hub, and every other client's PING, for as long
as its frames take. A frame announced but not finished holds memory, and a client trickling its
bytes would hold it for ever if every byte counted as activity.
"""

from __future__ import annotations

import time

import gevent

from ..observability import metrics
from ..protocol import Frame, FrameDecoder

# How long one session's frames may hold the hub before the others get their turn.
TURN_SECONDS = 0.001
# Any positive sleep waits for the loop's next iteration.
NEXT_ITERATION_SECONDS = 1e-6
# Unfinished frames up to this size are the ordinary case and are not counted against the
# server-wide allowance; past it every byte held is.
UNCOUNTED_PARTIAL_BYTES = 64 * 1024
# A client whose replies pile up unread this far is not read from until it reads them.
PAUSE_READING_BYTES = 256 * 1024


class Turn:
    """A session's turn on the hub: ``take_breath()`` after each frame yields once the turn is over.

    The turn starts when the hub resumes the session (a new loop iteration): the time spent
    blocked in a read is never counted against it.
    """

    __slots__ = ("_loop", "_iteration", "_started")

    def __init__(self) -> None:
        self._loop = gevent.get_hub().loop
        self._iteration = -1
        self._started = 0.0

    def take_breath(self) -> None:
        now = time.monotonic()
        iteration = self._loop.iteration
        if iteration != self._iteration:
            self._iteration = iteration
            self._started = now
        elif now - self._started >= TURN_SECONDS:
            # Not sleep(0): that resumes us from the hub's callbacks, which look at the clock only
            # every 50 callbacks, so the loop could go 100 ms without polling anyone's socket. A
            # timer waits for the next loop iteration, after every ready socket has been served.
            gevent.sleep(NEXT_ITERATION_SECONDS)
            self._iteration = self._loop.iteration
            self._started = time.monotonic()


class PartialFrameMemory:
    """The bytes of unfinished frames that all sessions together may hold."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    def hold(self, before: int, after: int) -> bool:
        """Move one session's holding from ``before`` to ``after`` buffered bytes; False, and
        nothing changed, when the server has no room for the growth."""
        change = _counted(after) - _counted(before)
        if change > 0 and self._held + change > self.limit_bytes:
            return False
        if change:
            self._held += change
            metrics.unfinished_frame_bytes(self._held)
        return True


def _counted(buffered: int) -> int:
    return max(0, buffered - UNCOUNTED_PARTIAL_BYTES)


class OverAllowance(Exception):
    """A session's unfinished frame would take more memory than the server has left for them."""


class FrameIntake:
    """One session's incoming frames: the decoder, the deadline of the frame under way, and what
    the server-wide allowance counts for it. ``close()`` gives that back."""

    def __init__(self, memory: PartialFrameMemory, frame_seconds: float):
        self._decoder = FrameDecoder()
        self._memory = memory
        self._frame_seconds = frame_seconds
        self._held = 0
        self._received_at = 0.0
        self._frame_started: float | None = None

    @property
    def mid_frame(self) -> bool:
        return self._frame_started is not None

    def seconds_left(self, idle_seconds: float) -> float:
        """How long to wait for more bytes: the idle timeout, or less when a frame is under way
        (0 or less: that frame is overdue). Every byte counts as activity; only a whole frame
        counts as progress."""
        if self._frame_started is None:
            return idle_seconds
        return min(idle_seconds, self._frame_started + self._frame_seconds - time.monotonic())

    def receive(self, data: bytes) -> None:
        """Take bytes from the link. Raises OverAllowance when the server cannot hold them."""
        self._decoder.receive(data)
        self._account()
        self._received_at = time.monotonic()

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes arrive. Raises FrameError when the
        stream has lost its framing."""
        frame = self._decoder.next_frame()
        if frame is not None:
            self._frame_started = None
            return frame
        # What is left is the start of the next frame, which arrived with the latest bytes.
        self._account()
        if self._decoder.buffered and self._frame_started is None:
            self._frame_started = self._received_at
        return None

    def _account(self) -> None:
        buffered = self._decoder.buffered
        if not self._memory.hold(self._held, buffered):
            raise OverAllowance(self._memory.held)
        self._held = buffered

    def close(self) -> None:
        self._memory.hold(self._held, 0)
        self._held = 0
