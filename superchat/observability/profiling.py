"""The Go-style /debug/pprof/ endpoints for a gevent server, readable by ``go tool pprof``.

Every profile is a pprof protobuf (see ``pprof.py``); ``?debug=1`` renders the same data as text.

- ``profile``: a worker OS thread samples the hub thread's current frame every 10 ms. Whatever Python frame
  runs there is the greenlet holding the CPU; ticks where the hub idles in its event loop are dropped.
- ``heap`` and ``allocs``: tracemalloc's live allocations by stack. Tracing starts on the first request and
  stays on; until it has seen anything, live objects by type from ``gc.get_objects()`` stand in.
- ``goroutine``: the stack of every greenlet, plus every other OS thread (the database writer, say).
- ``block``: stacks that kept the hub from switching greenlets, as reported by gevent's monitor thread.

Heavy work (sampling, heap walks, snapshots, encoding) runs on the hub's thread pool, so the hub keeps serving
in between the worker's turns with the GIL rather than stalling for the whole job.
"""

from __future__ import annotations

import bisect
import gc
import os
import re
import sys
import time
import tracemalloc
import types
import warnings
from collections.abc import Callable
from urllib.parse import parse_qs

import gevent
import greenlet
import zope.event
from gevent import monkey
from gevent.events import IEventLoopBlocked
from gevent.hub import Hub

from superchat.observability.pprof import Frame, Profile

PREFIX = "/debug/pprof/"
CPU_DEFAULT_SECONDS = 30
CPU_INTERVAL_SECONDS = 0.01
MAX_SECONDS = 300
TRACEMALLOC_FRAMES = 16

# The sampler and the blocking monitor are real OS threads: they need the unpatched primitives.
_real_sleep = monkey.get_original("time", "sleep")
_real_get_ident = monkey.get_original("_thread", "get_ident")
_real_allocate_lock = monkey.get_original("_thread", "allocate_lock")

# The hub thread shows this frame, and nothing above it, while it waits for events.
_HUB_LOOP = Hub.run.__code__

_HEAP_TYPES = [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"),
               ("inuse_space", "bytes")]
_TRACEBACK_LINE = re.compile(r'^  File "(.*)", line (\d+), in (.*)$', re.MULTILINE)
_TEXT = "text/plain; charset=utf-8"

_cpu_profile_running = False
# The code index of _index_code; holding the code objects keeps their ids unique.
_code_lock = _real_allocate_lock()
_indexed_code: dict[int, types.CodeType] = {}
_code_extents: dict[str, list[tuple[int, int, str]]] = {}
_tracing_since: str | None = None
# Written by the monitor thread, read by request greenlets: a real lock, held only to update or copy.
_blocked_lock = _real_allocate_lock()
_blocked: dict[tuple[tuple[str, int, str], ...], list[int]] = {}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def enable_block_profiling(threshold_seconds: float = 0.1) -> None:
    """Collect the stacks that block the hub for ``threshold_seconds`` or more, for /debug/pprof/block.

    Call from the hub's thread. gevent's own printed report of each block is turned off.
    """
    if threshold_seconds <= 0:
        raise ValueError("threshold_seconds must be positive")
    gevent.config.monitor_thread = True
    gevent.config.max_blocking_time = threshold_seconds
    # The block profile aggregates what gevent would otherwise print to stderr: a dump of every thread and
    # greenlet for each threshold's worth of blocking.
    gevent.config.print_blocking_reports = False
    if _record_blocking not in zope.event.subscribers:
        zope.event.subscribers.append(_record_blocking)
    # Starting the monitor here rather than when the hub first runs makes this work after start-up too.
    # Its memory watcher is unused and would only warn that psutil is missing.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unable to monitor memory usage")
        gevent.get_hub().start_periodic_monitoring_thread()


def profiling_app(environ, start_response):
    """WSGI application serving the index and the profiles under /debug/pprof/."""
    path = environ.get("PATH_INFO", "")
    if path == PREFIX.rstrip("/"):
        return _respond(start_response, 301, _TEXT, b"", [("Location", PREFIX)])
    if not path.startswith(PREFIX):
        return _respond(start_response, 404, _TEXT, b"not found: try /debug/pprof/\n")
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        return _respond(start_response, 405, _TEXT, b"method not allowed\n", [("Allow", "GET, HEAD")])
    name = path[len(PREFIX):]
    try:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if name == "":
            return _respond(start_response, 200, "text/html; charset=utf-8", _index().encode())
        if name not in _ENDPOINTS:
            raise _HTTPError(404, f"Unknown profile: {name}\n")
        debug = _int_parameter(query, "debug", 0, 0, sys.maxsize)
        result = _ENDPOINTS[name][0](query, debug)
    except _HTTPError as error:
        return _respond(start_response, error.status, _TEXT, error.message.encode())
    if isinstance(result, str):
        return _respond(start_response, 200, _TEXT, result.encode())
    if debug:
        return _respond(start_response, 200, _TEXT, _in_worker(result.text, f"{name} profile").encode())
    return _respond(start_response, 200, "application/octet-stream", _in_worker(result.encode),
                    [("Content-Disposition", f'attachment; filename="{name}"')])


def _cpu(query: dict, _debug: int) -> Profile:
    global _cpu_profile_running
    seconds = _int_parameter(query, "seconds", CPU_DEFAULT_SECONDS, 1, MAX_SECONDS)
    # As in Go, one CPU profile at a time: a second sampler would slow the hub for the same answer.
    if _cpu_profile_running:
        raise _HTTPError(409, "a CPU profile is already being taken; retry when it ends\n")
    _cpu_profile_running = True
    try:
        return _in_worker(_sample_hub_thread, _real_get_ident(), seconds)
    finally:
        _cpu_profile_running = False


def _sample_hub_thread(hub_thread: int, seconds: int) -> Profile:
    profile = _profile([("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"),
                       round(CPU_INTERVAL_SECONDS * 1e9))
    profile.comments.append(
        f"hub thread sampled every {CPU_INTERVAL_SECONDS * 1000:g} ms; ticks idle in the event loop are dropped; "
        "samples/count is on-hub time, including calls that block the hub; "
        "cpu/nanoseconds is the hub thread's CPU time per tick")
    clock = time.pthread_getcpuclockid(hub_thread)
    ticks: dict[tuple, list[int]] = {}
    started = time.monotonic()
    last_cpu = time.clock_gettime_ns(clock)
    while time.monotonic() - started < seconds:
        _real_sleep(CPU_INTERVAL_SECONDS)
        frame = sys._current_frames().get(hub_thread)
        cpu = time.clock_gettime_ns(clock)
        used, last_cpu = cpu - last_cpu, cpu
        if frame is not None and frame.f_code is not _HUB_LOOP:
            totals = ticks.setdefault(_stack_key(frame), [0, 0])
            totals[0] += 1
            totals[1] += used
    profile.duration_nanos = round((time.monotonic() - started) * 1e9)
    for stack, totals in ticks.items():
        profile.add(_frames(stack), totals)
    return profile


def _heap(query: dict, _debug: int) -> Profile:
    return _memory(query, "inuse_space")


def _allocs(query: dict, _debug: int) -> Profile:
    return _memory(query, "alloc_space")


def _memory(query: dict, default_sample_type: str) -> Profile:
    global _tracing_since
    seconds = _int_parameter(query, "seconds", 0, 0, MAX_SECONDS)
    if not tracemalloc.is_tracing():
        # Heap walks go first: once tracemalloc runs, every allocation costs microseconds.
        _in_worker(_index_code)
        untraced = None if seconds else _in_worker(
            _objects_by_type, default_sample_type, "tracemalloc starts with this request; ask again, or pass seconds=N")
        tracemalloc.start(TRACEMALLOC_FRAMES)
        _tracing_since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        if untraced:
            return untraced
    gevent.sleep(seconds)
    profile = _in_worker(_traced_allocations, default_sample_type)
    profile.duration_nanos = seconds * 1_000_000_000
    return profile


def _traced_allocations(default_sample_type: str) -> Profile:
    statistics = tracemalloc.take_snapshot().statistics("traceback")
    _index_code()
    profile = _profile(_HEAP_TYPES, ("space", "bytes"), default_sample_type=default_sample_type)
    since = f" since {_tracing_since}" if _tracing_since else ""
    profile.comments.append(
        f"source: tracemalloc, Python allocations made{since} and still alive, {TRACEMALLOC_FRAMES} frames deep; "
        "alloc_* equal inuse_* because tracemalloc forgets freed blocks")
    modules = _module_names()
    frames: dict[tracemalloc.Frame, Frame] = {}
    for statistic in statistics:
        stack = []
        for frame in reversed(statistic.traceback):
            if frame not in frames:
                frames[frame] = _source_frame(modules, frame.filename, frame.lineno)
            stack.append(frames[frame])
        # Snapshots still held by concurrent requests are the profiler's memory, not the program's.
        if stack[0].filename != tracemalloc.__file__:
            profile.add(stack, (statistic.count, statistic.size, statistic.count, statistic.size))
    if not profile.samples:
        return _objects_by_type(default_sample_type, "tracemalloc holds no live allocations yet")
    return profile


def _objects_by_type(default_sample_type: str, reason: str) -> Profile:
    totals: dict[type, list[int]] = {}
    for obj in gc.get_objects():
        entry = totals.setdefault(type(obj), [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(obj, 0)
    profile = _profile(_HEAP_TYPES, ("space", "bytes"), default_sample_type=default_sample_type)
    profile.comments.append(
        f"source: live objects by type from gc.get_objects(), no allocation stacks ({reason}); "
        "only objects the garbage collector tracks, sized by sys.getsizeof")
    for kind, (count, size) in totals.items():
        profile.add([Frame(_qualified(kind.__module__, kind.__qualname__))], (count, size, count, size))
    return profile


def _goroutine(_query: dict, debug: int) -> Profile | str:
    live = _live_stacks()
    if debug >= 2:
        return "\n".join(
            f"{label}:\n" + "".join(f"{frame.function}()\n\t{frame.filename}:{frame.line}\n" for frame in stack)
            for label, stack in live)
    profile = _profile([("goroutine", "count")], ("goroutine", "count"))
    profile.comments.append("one sample per greenlet with a stack, and per OS thread other than the hub's")
    for _, stack in live:
        profile.add(stack, (1,))
    return profile


def _live_stacks() -> list[tuple[str, list[Frame]]]:
    # Runs on the hub thread so that no greenlet moves while the stacks are read, as Go stops the world.
    current = greenlet.getcurrent()
    live = [(f"greenlet {current!r} [running]", _frames(_stack_key(sys._getframe())))]
    for obj in gc.get_objects():
        # gr_frame is None for greenlets that are dead, not started, or running on another thread.
        if isinstance(obj, greenlet.greenlet) and obj is not current and obj.gr_frame is not None:
            live.append((f"greenlet {obj!r} [suspended]", _frames(_stack_key(obj.gr_frame))))
    hub_thread = _real_get_ident()
    for ident, frame in sys._current_frames().items():
        if ident != hub_thread:
            live.append((f"thread {ident:#x} [running]", _frames(_stack_key(frame))))
    return live


def _block(query: dict, _debug: int) -> Profile:
    seconds = _int_parameter(query, "seconds", 0, 0, MAX_SECONDS)
    totals = _blocking_totals()
    if seconds:
        # As in Go, seconds=N asks for what happened during the next N seconds only.
        before = totals
        gevent.sleep(seconds)
        totals = {}
        for stack, (count, delay) in _blocking_totals().items():
            earlier = before.get(stack, (0, 0))
            if count > earlier[0]:
                totals[stack] = [count - earlier[0], delay - earlier[1]]
    profile = _in_worker(_blocking_profile, totals)
    profile.duration_nanos = seconds * 1_000_000_000
    return profile


def _blocking_profile(totals: dict) -> Profile:
    profile = _profile([("contentions", "count"), ("delay", "nanoseconds")], ("contentions", "count"))
    if gevent.config.monitor_thread and _record_blocking in zope.event.subscribers:
        threshold = gevent.config.max_blocking_time
        profile.comments.append(
            f"gevent monitor thread: a contention is one check, every {threshold:g}s, that found no greenlet switch "
            f"since the previous one; delay counts {threshold:g}s per contention")
    else:
        profile.comments.append("block profiling is off: the server did not call enable_block_profiling()")
    _index_code()
    modules = _module_names()
    for stack, values in totals.items():
        profile.add([_source_frame(modules, *frame) for frame in stack], values)
    return profile


def _record_blocking(event) -> None:
    # Runs on the monitor thread, while the hub thread may be running anything.
    if not IEventLoopBlocked.providedBy(event):
        return
    stack = _blocked_stack(event.info)
    with _blocked_lock:
        totals = _blocked.setdefault(stack, [0, 0])
        totals[0] += 1
        totals[1] += round(event.blocking_time * 1e9)


def _blocked_stack(info: list[str]) -> tuple[tuple[str, int, str], ...]:
    # gevent's report holds "Blocked Stack ..." followed by traceback.format_stack() of the hub thread.
    for heading, text in zip(info, info[1:], strict=False):
        if heading.startswith("Blocked Stack"):
            return tuple((filename, int(line), name)
                         for filename, line, name in reversed(_TRACEBACK_LINE.findall(text)))
    return (("", 0, "<stack unavailable>"),)


def _blocking_totals() -> dict:
    with _blocked_lock:
        return {stack: list(values) for stack, values in _blocked.items()}


def _cmdline(_query: dict, _debug: int) -> str:
    return "\x00".join(sys.argv)


def _profile(sample_types, period_type, period=1, default_sample_type=None) -> Profile:
    return Profile(sample_types, period_type, period, default_sample_type, os.path.basename(sys.argv[0]))


def _stack_key(frame: types.FrameType | None) -> tuple[tuple[str, types.CodeType, int], ...]:
    stack = []
    while frame is not None:
        stack.append((frame.f_globals.get("__name__", ""), frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return tuple(stack)


def _frames(stack: tuple[tuple[str, types.CodeType, int], ...]) -> list[Frame]:
    return [Frame(_qualified(module, code.co_qualname), code.co_filename, line, code.co_firstlineno)
            for module, code, line in stack]


def _source_frame(modules: dict[str, str], filename: str, line: int, name: str = "") -> Frame:
    """A frame known only by file and line, as tracemalloc and gevent's reports give them."""
    extents = _code_extents.get(filename)
    if extents is None:
        qualname, start_line = name or f"{os.path.basename(filename)}:{line}", 0
    else:
        qualname, start_line = "<module>", 0
        # Nested functions start after the functions holding them: the nearest start before the line whose
        # code reaches the line is the innermost function. A function's first line (its def) runs in the
        # enclosing code, so a one-line lambda or comprehension counts as part of its parent.
        for first, last, candidate in reversed(extents[:bisect.bisect_left(extents, (line,))]):
            if last >= line:
                qualname, start_line = candidate, first
                break
    return Frame(_qualified(modules.get(filename, ""), qualname), filename, line, start_line)


def _index_code() -> None:
    """Record the line extent of every function's code, for _source_frame.

    Reading or compiling source files instead would allocate heavily, and tracemalloc makes allocating slow.
    Code seen once is not walked again; nested code is reached through its parent's constants.
    """
    with _code_lock:
        pending = [obj.__code__ for obj in gc.get_objects() if isinstance(obj, types.FunctionType)]
        added: dict[str, list[tuple[int, int, str]]] = {}
        while pending:
            code = pending.pop()
            if id(code) in _indexed_code:
                continue
            _indexed_code[id(code)] = code
            last = max((line for *_, line in code.co_lines() if line is not None), default=0)
            added.setdefault(code.co_filename, []).append((code.co_firstlineno, last, code.co_qualname))
            pending.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
        # Published lists are never changed, so readers need no lock.
        for filename, extents in added.items():
            _code_extents[filename] = sorted(_code_extents.get(filename, []) + extents)


def _module_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        filename = getattr(module, "__file__", None)
        if isinstance(filename, str):
            names.setdefault(filename, name)
        # Code of frozen modules, such as importlib's, names its file this way.
        names.setdefault(f"<frozen {name}>", name)
    return names


def _qualified(module: str, qualname: str) -> str:
    # pprof merges functions by name alone, so the name carries the module, like Go's "package.Function".
    return f"{module}.{qualname}" if module else qualname


def _in_worker(function: Callable, *args):
    return gevent.get_hub().threadpool.spawn(function, *args).get()


def _int_parameter(query: dict, name: str, default: int, low: int, high: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise _HTTPError(400, f"invalid value for {name!r}: {values[-1]!r}\n") from None
    if not low <= value <= high:
        raise _HTTPError(400, f"{name} must be between {low} and {high}\n")
    return value


_ENDPOINTS: dict[str, tuple[Callable[[dict, int], Profile | str], str]] = {
    "allocs": (_allocs, "Python allocations still alive, by allocation stack (tracemalloc), shown as alloc_space. "
                        "seconds=N starts tracing if needed and waits N seconds before the snapshot."),
    "block": (_block, "Stack traces of code that blocked the gevent hub past the monitor's threshold. "
                      "seconds=N reports only the next N seconds."),
    "cmdline": (_cmdline, "The command line of the current program, arguments separated by NUL bytes."),
    "goroutine": (_goroutine, "Stack traces of all greenlets and of the other OS threads. "
                              "debug=2 lists each one separately."),
    "heap": (_heap, "Live Python memory by allocation stack (tracemalloc), shown as inuse_space. "
                    "seconds=N starts tracing if needed and waits N seconds before the snapshot."),
    "profile": (_cpu, "CPU profile of the hub thread. seconds=N sets the duration (default 30, at most 300). "
                      "After you get the profile file, use the go tool pprof command to investigate it."),
}


def _index() -> str:
    rows = []
    for name, (_, description) in sorted(_ENDPOINTS.items()):
        link = name if name in ("cmdline", "profile") else f"{name}?debug=1"
        rows.append(f"<tr><td><a href='{link}'>{name}</a></td><td>{description}</td></tr>")
    return (
        "<html><head><title>/debug/pprof/</title></head><body>\n"
        "<p>/debug/pprof/</p>\n<p>Types of profiles available:</p>\n<table>\n"
        + "\n".join(rows)
        + "\n</table>\n<p><a href='goroutine?debug=2'>full goroutine stack dump</a></p>\n"
        "<p>Profiles are in pprof's format: <code>go tool pprof http://HOST/debug/pprof/heap</code>; "
        "add <code>?debug=1</code> for text.</p>\n</body></html>\n"
    )


_REASONS = {200: "OK", 301: "Moved Permanently", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict"}


def _respond(start_response, status: int, content_type: str, body: bytes, headers=()):
    start_response(
        f"{status} {_REASONS[status]}",
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("X-Content-Type-Options", "nosniff"),
         *headers],
    )
    return [body]
