"""Frames to many sessions: one write per session for the broadcasts of a round of
acknowledgements, and the writing spread over two cores when the audience is large.

A group commit acknowledges a batch of posts at once, and each greenlet it wakes sends its
acknowledgement and broadcasts its post. Inside ``writes_together`` and until those greenlets
have all run (one round of the hub's callbacks), the broadcasts are held in the sessions'
queues; then each session gets one write of all it was sent: a subscriber of a channel that
had five of the batch's posts gets them in one system call. A reply (an acknowledgement) is
never held: it goes out at once, with whatever was held for its session before it, so that a
client waiting for its acknowledgement sends its next request as soon as it would have. A
session is never held more than HOLD_AT_MOST_BYTES (session.py): past that it is written at once.

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
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import gevent
from gevent import monkey

if TYPE_CHECKING:
    import socket

    from .session import Session

# Below this many straight writes, waking the helper costs more than it saves.
HELPER_FROM = 128

_start_thread = monkey.get_original("_thread", "start_new_thread")
_native_lock = monkey.get_original("_thread", "allocate_lock")


class _Helper:
    """An OS thread that writes to a list of sockets, each its own bytes, when told to."""

    def __init__(self) -> None:
        self._work = _native_lock()
        self._done = _native_lock()
        self._work.acquire()
        self._done.acquire()
        self._sockets: Sequence[socket.socket] = ()
        self._data: Sequence[bytes] = ()
        self.results: list[int | OSError] = []
        self._failure: BaseException | None = None
        _start_thread(self._run, ())

    def start(self, sockets: Sequence[socket.socket], data: Sequence[bytes]) -> None:
        self._sockets, self._data = sockets, data
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
                self.results = write_each(self._sockets, self._data)
            except BaseException as exc:  # raised on the hub instead, which would otherwise wait forever
                self._failure = exc
            finally:
                self._sockets, self._data = (), ()
                self._done.release()


def write_each(sockets: Sequence[socket.socket], data: Sequence[bytes]) -> list[int | OSError]:
    """What each socket took of its bytes (never blocking), or why it failed."""
    results: list[int | OSError] = []
    for sock, chunk in zip(sockets, data, strict=True):
        try:
            results.append(sock.send(chunk))
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
    """Send ``frame`` to every session of ``audience``; returns how many that was. In a round it
    is held for the round's write, otherwise written now."""
    held = _round.sessions if _round.holding else []
    for session in audience:
        if session.hold(frame):
            held.append(session)
    if not _round.holding:
        _write_held(held)
    return len(audience)


@contextmanager
def writes_together() -> Iterator[None]:
    """Hold what is broadcast from here until the greenlets woken inside the block have run, then
    write each session's share at once."""
    _round.holding = True
    try:
        yield
    finally:
        if not _round.release_due:
            _round.release_due = True
            # Callbacks run in order: this one after those that resume the greenlets woken above.
            gevent.get_hub().loop.run_callback(_release)


def timed(started: float, observe: Callable[[float], None]) -> None:
    """Tell ``observe`` how long a broadcast begun at ``started`` (``time.perf_counter``) took: until
    its frames were handed to the kernel, at the end of its round's write when it was held."""
    if _round.holding:
        _round.timings.append((started, observe))
    else:
        observe(time.perf_counter() - started)


class _Round:
    __slots__ = ("holding", "release_due", "sessions", "timings")

    def __init__(self) -> None:
        self.holding = False
        self.release_due = False
        self.sessions: list[Session] = []
        self.timings: list[tuple[float, Callable[[float], None]]] = []


_round = _Round()

# The two-thread path takes this many sessions' held bytes at a time, so that a round to a large
# audience never has a joined copy for every session at once (at most HOLD_AT_MOST_BYTES each).
_SLICE = HELPER_FROM


def _release() -> None:
    _round.holding = _round.release_due = False
    sessions, _round.sessions = _round.sessions, []
    timings, _round.timings = _round.timings, []
    _write_held(sessions)
    written = time.perf_counter()
    for started, observe in timings:
        observe(written - started)


def _write_held(sessions: list[Session]) -> None:
    """Write what each session holds."""
    straight: list[Session] = []
    if len(sessions) >= HELPER_FROM and _SEVERAL_CORES:
        straight = [session for session in sessions if session.link.os_socket is not None]
    if len(straight) < HELPER_FROM:
        for session in sessions:
            session.write_held()
        return
    if len(straight) < len(sessions):
        for session in sessions:
            if session.link.os_socket is None:
                session.write_held()
    for first in range(0, len(straight), _SLICE):
        held = [(session, session.take_held()) for session in straight[first:first + _SLICE]]
        held = [(session, data) for session, data in held if data]
        if held:
            _write_from_two_threads([session for session, _ in held], [data for _, data in held])


def _write_from_two_threads(sessions: list[Session], data: list[bytes]) -> None:
    """Write ``data[i]`` straight to the OS socket of ``sessions[i]``, half of them from the helper."""
    half = len(sessions) // 2
    helper = _the_helper()
    helper.start([session.link.os_socket for session in sessions[half:]], data[half:])
    try:
        my_results = write_each([session.link.os_socket for session in sessions[:half]], data[:half])
    finally:
        their_results = helper.wait()
    for session, chunk, result in zip(sessions, data, my_results + their_results, strict=True):
        session.wrote(chunk, result)


def _the_helper() -> _Helper:
    global _helper
    if _helper is None:
        _helper = _Helper()
    return _helper
