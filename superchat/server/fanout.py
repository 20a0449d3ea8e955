"""One frame to many sessions, written from two cores when the audience is large.

A delivery costs one ``send`` system call, most of it the kernel's work on the receiver's
socket, which runs without the interpreter lock. So for a large audience an OS thread of
its own writes to half of the sessions while the hub writes to the other half, and a
broadcast to 1,000 subscribers takes little more than half the time.

The hub does not switch greenlets while the helper writes (it waits on an OS lock, not on a
gevent one), so no other greenlet writes to those sockets meanwhile: each socket has one
writer at a time, as when the hub writes alone. The helper touches nothing but the OS sockets
it is given; what it could not write is queued by the hub afterwards, in the session's order.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from gevent import monkey

from ..observability import trace

if TYPE_CHECKING:
    import socket

    from .session import Session

# Below this many straight writes, waking the helper costs more than it saves.
HELPER_FROM = 128

_start_thread = monkey.get_original("_thread", "start_new_thread")
_native_lock = monkey.get_original("_thread", "allocate_lock")


class _Helper:
    """An OS thread that writes one frame to a list of sockets when told to."""

    def __init__(self) -> None:
        self._work = _native_lock()
        self._done = _native_lock()
        self._work.acquire()
        self._done.acquire()
        self._sockets: Sequence[socket.socket] = ()
        self._frame = b""
        self.results: list[int | OSError] = []
        self._failure: BaseException | None = None
        _start_thread(self._run, ())

    def start(self, sockets: Sequence[socket.socket], frame: bytes) -> None:
        self._sockets, self._frame = sockets, frame
        self._work.release()

    def wait(self) -> list[int | OSError]:
        self._done.acquire()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        return self.results

    def _run(self) -> None:
        while True:
            self._work.acquire()
            try:
                self.results = write_each(self._sockets, self._frame)
            except BaseException as exc:  # raised on the hub instead, which would otherwise wait forever
                self._failure = exc
            finally:
                self._sockets = ()
                self._done.release()


def write_each(sockets: Sequence[socket.socket], frame: bytes) -> list[int | OSError]:
    """What each socket took of ``frame`` (never blocking), or why it failed."""
    results: list[int | OSError] = []
    for sock in sockets:
        try:
            results.append(sock.send(frame))
        except BlockingIOError:
            results.append(0)
        except OSError as exc:
            results.append(exc)
    return results


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_SEVERAL_CORES = _cores() > 1
_helper: _Helper | None = None


def send_all(audience: Collection[Session], frame: bytes) -> int:
    """Send ``frame`` to every session of ``audience``; returns how many that was."""
    straight: list[Session] = []
    # With the DEBUG lines on, each frame out is told session by session, on the hub.
    if len(audience) >= HELPER_FROM and _SEVERAL_CORES and not trace.enabled:
        straight = [session for session in audience if session.writes_straight]
    if len(straight) < HELPER_FROM:
        for session in audience:
            session.send(frame)
        return len(audience)
    mine, theirs = straight[:len(straight) // 2], straight[len(straight) // 2:]
    helper = _the_helper()
    helper.start([session.link.os_socket for session in theirs], frame)
    try:
        my_results = write_each([session.link.os_socket for session in mine], frame)
        if len(straight) < len(audience):
            writes_straight = set(straight)
            for session in audience:
                if session not in writes_straight:
                    session.send(frame)
    finally:
        their_results = helper.wait()
    for session, result in zip(mine + theirs, my_results + their_results, strict=True):
        session.wrote(frame, result)
    return len(audience)


def _the_helper() -> _Helper:
    global _helper
    if _helper is None:
        _helper = _Helper()
    return _helper
