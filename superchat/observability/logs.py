"""Log files and console output, rendered by structlog for stdlib and structlog call sites alike.

server.log  everything the server logs but DEBUG lines, truncated at each start
errors.log  ERROR and above, appended across restarts; each start writes a marker line
debug.log   everything including DEBUG, only with --debug, appended
The console mirrors server.log.

Text lines have the shape the operations guide greps and awks:
``2025/10/08 14:30:15.123456 [INFO] Connection from 127.0.0.1:5555 session=3``.
With ``log_format = "json"`` every file and the console carry one JSON object a line instead.

Logging never fails the code that logs. A file that cannot be written (its disk full) keeps its
warnings and errors and writes them, with their own time, when it can again, followed by one line
counting the other lines it lost: ``[WARN] 1234 log lines were not written: No space left on device``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import gevent
import structlog
from gevent import monkey
from structlog.stdlib import ProcessorFormatter
from structlog.typing import EventDict, Processor

from .. import __version__
from . import trace

__all__ = ["DEBUG_LOG", "ERRORS_LOG", "SERVER_LOG", "configure", "get_logger", "reopen"]

SERVER_LOG = "server.log"
ERRORS_LOG = "errors.log"
DEBUG_LOG = "debug.log"

log = logging.getLogger("superchat.logs")

# The guide's tags; CRITICAL shares ERROR's so `grep ERROR server.log` finds it too.
_TAGS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "ERROR": "ERROR", "CRITICAL": "ERROR"}

# A client-supplied string in a message must not be able to start a forged line of its own.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}

_files: list[_LogFile] = []
_flusher: gevent.Greenlet | None = None


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger whose lines look exactly like those of ``logging.getLogger(name)``.

    ``log.info("Connection from %s", peer, session=3)``: %-style arguments as in the stdlib,
    keyword arguments become ``key=value`` context.
    """
    return structlog.stdlib.get_logger(name)


# --- rendering -----------------------------------------------------------------------------


def _from_record(_: Any, __: str, event_dict: EventDict) -> EventDict:
    # Taken from the LogRecord, not the clock, so every file and the console show the same instant.
    record: logging.LogRecord = event_dict["_record"]
    event_dict["timestamp"] = record.created
    event_dict["level"] = record.levelname
    event_dict["logger"] = record.name
    return event_dict


class _SecondStamps:
    """Local-time stamps of POSIX times, the part up to the second formatted once per second:
    strftime and the time zone lookup were a fifth of the cost of a log line."""

    def __init__(self, seconds_format: Callable[[datetime], tuple[str, str]]):
        self._format = seconds_format
        self._second = -1
        self._parts = ("", "")

    def __call__(self, created: float) -> str:
        second = int(created)
        micro = round((created - second) * 1_000_000)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._parts = self._format(datetime.fromtimestamp(second).astimezone())
            self._second = second
        head, tail = self._parts
        return f"{head}.{micro:06d}{tail}"


# 2025/10/08 14:30:15.123456
_text_stamp = _SecondStamps(lambda moment: (moment.strftime("%Y/%m/%d %H:%M:%S"), ""))
# 2025-10-08T14:30:15.123456+02:00
_iso_stamp = _SecondStamps(lambda moment: (moment.strftime("%Y-%m-%dT%H:%M:%S"), moment.isoformat()[19:]))


def _one_line(text: str) -> str:
    # isprintable() is false for every character _ESCAPES names (and for some harmless ones):
    # most lines need no translation at all.
    return text if text.isprintable() else text.translate(_ESCAPES)


def _value(value: Any) -> str:
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "='):
        return text
    return json.dumps(text, ensure_ascii=False)


# Set when the server is one node of several, so a line says which node wrote it.
_node_fields: dict[str, str] = {}


def _render_text(_: Any, __: str, event_dict: EventDict) -> str:
    stamp = _text_stamp(event_dict.pop("timestamp"))
    tag = _TAGS.get(event_dict.pop("level"), "INFO")
    del event_dict["logger"]
    line = f"{stamp} [{tag}] {_one_line(str(event_dict.pop('event')))}"
    exception = event_dict.pop("exception", None)
    for key, value in (*event_dict.items(), *_node_fields.items()):
        line += f" {key}={_value(value)}"
    return f"{line}\n{exception}" if exception else line


def _json_fields(_: Any, __: str, event_dict: EventDict) -> EventDict:
    return {
        "timestamp": _iso_stamp(event_dict.pop("timestamp")),
        "level": event_dict.pop("level").lower(),
        "logger": event_dict.pop("logger"),
        "message": event_dict.pop("event"),
        **_node_fields,
        **event_dict,
    }


class _RenderOnce(ProcessorFormatter):
    """Renders a record once for all its handlers (console, server.log, errors.log ...): the
    structlog chain is the costliest step of logging a line, and every handler would repeat it.

    A plain record of a ``logging.getLogger()`` call site (no traceback, no stack) goes through
    the same processors without ProcessorFormatter's copy of the whole record, which was a
    quarter of the cost of the one line logged for every post.
    """

    log_format = "text"
    plain_chain: tuple[Processor, ...] = ()

    def format(self, record: logging.LogRecord) -> str:
        rendered = record.__dict__.get("_superchat_rendered")
        if rendered is not None and rendered[0] == self.log_format:
            return rendered[1]
        if record.exc_info or record.stack_info or "_logger" in record.__dict__:
            line = super().format(record)
        else:
            method = record.levelname.lower()
            event: Any = {"event": record.getMessage(), "_record": record, "_from_structlog": False}
            for processor in self.plain_chain:
                event = processor(None, method, event)
            line = event
        record._superchat_rendered = (self.log_format, line)
        return line


def _formatter(log_format: str, cls: type[_RenderOnce] = _RenderOnce) -> _RenderOnce:
    renderer: list[Processor]
    if log_format == "json":
        renderer = [_json_fields, structlog.processors.JSONRenderer(ensure_ascii=False)]
    else:
        renderer = [_render_text]
    # Records from logging.getLogger() call sites: context comes in through ``extra=``.
    pre_chain: list[Processor] = [structlog.stdlib.ExtraAdder()]
    processors: list[Processor] = [
        _from_record,
        ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,
        *renderer,
    ]
    formatter = cls(foreign_pre_chain=pre_chain, processors=processors)
    formatter.log_format = log_format
    formatter.plain_chain = (*pre_chain, *processors)
    return formatter


def _priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class _JournalFormatter(_RenderOnce):
    """Prefixes every line with its sd-daemon(3) priority, which journald strips and records,
    so ``journalctl -p err`` works; traceback lines get it too since journald splits on newlines."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


# --- files ---------------------------------------------------------------------------------

# Lines reach the files and the console at most this long after they were logged. Flushing
# after every record (the logging default) made the one-line-per-post log cost as much as
# committing the post; warnings and errors are still flushed at once.
FLUSH_SECONDS = 0.05
# Warnings and errors a log file could not take are kept, up to this many, and written once it
# takes lines again: on a full disk the line saying so is among them. Other lines are counted.
HELD_LINES = 1000
_os_rlock = monkey.get_original("_thread", "RLock")
_unflushed: set[_LineWriter] = set()
# A line with text no encoding can hold (a lone surrogate) is written with an escape, not dropped.
_ENCODING = ("utf-8", "backslashreplace")


class _LineWriter(logging.Handler):
    """Writes rendered lines to a file descriptor in batches, and never raises into the code that
    logged: a log line must not break a session or the server.

    A batch that cannot be written (a full disk, a failing device) is not lost at once: its
    warnings and errors are kept, the rest counted, and a line cut short is finished first when
    writing works again. Then come the kept lines, and one line saying how many others were lost
    and why. Standard error (the journal under systemd) hears once that the target cannot be
    written and once that it can again, not once a line.
    """

    def __init__(self, target: str, fd: int, level: int, formatter: logging.Formatter):
        super().__init__(level)
        self.setFormatter(formatter)
        self.target = target
        self._fd = fd
        self._pending: list[tuple[int, str]] = []  # (level, line) logged since the last flush
        self._held: list[tuple[int, str]] = []  # warnings and errors that could not be written
        self._tail = b""  # the rest of a line a failed write cut short
        self._lost = 0
        self._failure: str | None = None  # why writing fails, while it does

    def createLock(self) -> None:
        # An OS lock, not gevent's: nothing yields while a line is written, so greenlets of the
        # hub never contend for it, and it still guards against the writer and sampler threads.
        self.lock = _os_rlock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._pending.append((record.levelno, line))
        if record.levelno >= logging.WARNING:
            self.flush()
        else:
            _unflushed.add(self)

    def write_line(self, line: str) -> None:
        """A line of no level (errors.log's start marker), written at once and kept like an error."""
        self.acquire()
        try:
            self._pending.append((logging.CRITICAL, line + "\n"))
            self.flush()
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._pending or self._held or self._tail or self._lost:
                self._write_out()
        finally:
            self.release()

    def _write_out(self) -> None:
        # Oldest first: the end of a line cut short, the kept lines, the count of the lost ones.
        if self._tail:
            written, error = _write_all(self._fd, self._tail)
            self._tail = self._tail[written:]
            if error is not None:
                self._keep_or_count(self._pending)
                self._pending = []
                self._cannot_write(error)
                return
        notice_at = len(self._held) if self._lost else -1
        queue = [*self._held, *([(logging.WARNING, self._lost_notice())] if self._lost else []), *self._pending]
        self._held, self._pending = [], []
        written, error = _write_all(self._fd, "".join(line for _, line in queue).encode(*_ENCODING))
        lost_before, self._lost = self._lost, 0
        if error is None:
            if self._failure is not None:
                self._failure = None
                _tell_stderr(f"scd: writing {self.target} again")
            return
        end = 0
        for index, (levelno, line) in enumerate(queue):
            encoded = line.encode(*_ENCODING)
            start, end = end, end + len(encoded)
            if end <= written:
                continue
            if start < written:
                self._tail = encoded[written - start:]
            elif index == notice_at:
                self._lost += lost_before  # told at the next write, with the lines lost meanwhile
            else:
                self._keep_or_count([(levelno, line)])
        self._cannot_write(error)

    def _keep_or_count(self, lines: list[tuple[int, str]]) -> None:
        for levelno, line in lines:
            if levelno >= logging.WARNING and len(self._held) < HELD_LINES:
                self._held.append((levelno, line))
            else:
                self._lost += 1

    def _cannot_write(self, error: OSError) -> None:
        if self._failure is None:
            self._failure = error.strerror or str(error)
            _tell_stderr(f"scd: cannot write {self.target}: {self._failure}; its warnings and errors are kept, "
                         "the other lines counted, until it can")
        _unflushed.add(self)  # tried again at the next periodic flush

    def _lost_notice(self) -> str:
        record = logging.makeLogRecord({
            "name": log.name, "levelname": "WARNING", "levelno": logging.WARNING,
            "msg": "%d log lines were not written: %s", "args": (self._lost, self._failure),
        })
        return self.format(record) + "\n"


def _write_all(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Write ``data``; returns how many bytes were written, and the error that stopped it."""
    view = memoryview(data)
    written = 0
    while written < len(data):
        try:
            written += os.write(fd, view[written:])
        except OSError as exc:
            return written, exc
    return written, None


def _tell_stderr(text: str) -> None:
    try:
        os.write(sys.stderr.fileno(), (text + "\n").encode(*_ENCODING))
    except (OSError, ValueError, AttributeError):  # no standard error to tell, or none that works
        pass


def flush_pending() -> None:
    """Write out what the handlers hold; called every FLUSH_SECONDS and before reopening."""
    # Only those waiting now: a handler that cannot write puts itself back, for the next round.
    for _ in range(len(_unflushed)):
        _unflushed.pop().flush()


def _flush_periodically() -> None:
    while True:
        gevent.sleep(FLUSH_SECONDS)
        flush_pending()


class _Console(_LineWriter):
    def __init__(self, level: int, formatter: logging.Formatter):
        super().__init__("standard output", sys.stdout.fileno(), level, formatter)


class _LogFile(_LineWriter):
    """A log file always written with O_APPEND: after logrotate's copytruncate, writes land at the
    new end of the file instead of leaving a hole of NUL bytes up to the old offset."""

    def __init__(self, path: Path, level: int, formatter: logging.Formatter, truncate: bool = False):
        self.path = path
        self._truncate = truncate
        super().__init__(str(path), self._open(), level, formatter)

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if self._truncate else 0)
        # 0640 as logrotate's `create 640` makes them: peer addresses and nicknames are not for everyone.
        fd = os.open(self.path, flags, 0o640)
        # Only the start truncates: a reopen after rotation must keep what was written meanwhile.
        self._truncate = False
        return fd

    def reopen(self) -> None:
        fd = self._open()
        self.acquire()
        try:
            old, self._fd = self._fd, fd
            if self._tail:  # its beginning is in the old file: the rest would start the new one mid-line
                self._tail = b""
                self._lost += 1
        finally:
            self.release()
        os.close(old)

    def close(self) -> None:
        self.acquire()
        try:
            if self._fd >= 0:
                self.flush()
                os.close(self._fd)
                self._fd = -1
        finally:
            self.release()
        super().close()


def _start_marker(log_format: str, formatter: logging.Formatter) -> str:
    node = f", node {_node_fields['node']}" if _node_fields else ""
    text = f"=== scd {__version__} started, pid {os.getpid()}{node} ==="
    if log_format == "json":
        return formatter.format(logging.makeLogRecord({"name": "superchat", "levelname": "INFO",
                                                       "levelno": logging.INFO, "msg": text}))
    # An ISO date rather than the YYYY/MM/DD of log lines: `grep "$(date +%Y/%m/%d)" errors.log`
    # counts today's errors and must not count restarts.
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    return f"=== scd {__version__} started {started}, pid {os.getpid()}{node} ==="


def configure(data_dir: Path, debug: bool = False, log_format: str = "text", node_id: str = "") -> None:
    """Open the log files in ``data_dir`` and route every record to them and to stdout.
    ``node_id`` (a node of several) goes into every line (JSON "node", text ``node=``) and the start marker.

    Raises OSError when a log file cannot be opened.
    """
    _node_fields.clear()
    if node_id:
        _node_fields["node"] = node_id
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # No line shows its caller, thread or process: collecting them was a third of the cost of a
    # record (the logging HOWTO's "Optimization" section names these switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    data_dir.mkdir(parents=True, exist_ok=True)
    level = logging.DEBUG if debug else logging.INFO
    trace.enabled = debug
    formatter = _formatter(log_format)
    errors = _LogFile(data_dir / ERRORS_LOG, logging.ERROR, formatter)
    errors.write_line(_start_marker(log_format, formatter))
    # DEBUG lines go to debug.log alone: server.log and the console stay what the guide's recipes
    # read (one POST_MESSAGE line per post), --debug or not.
    files = [_LogFile(data_dir / SERVER_LOG, logging.INFO, formatter, truncate=True), errors]
    if debug:
        files.append(_LogFile(data_dir / DEBUG_LOG, logging.DEBUG, formatter))

    # systemd sets JOURNAL_STREAM for a service whose stdout goes to the journal.
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    console = _Console(logging.INFO, _formatter(log_format, _JournalFormatter if journal else _RenderOnce))

    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in (console, *files):
        root.addHandler(handler)
    # Other libraries only when something is wrong: peewee's DEBUG query log would swamp debug.log.
    root.setLevel(logging.WARNING)
    logging.getLogger("superchat").setLevel(level)
    _files[:] = files
    global _flusher
    if _flusher is None:
        _flusher = gevent.spawn(_flush_periodically)


def reopen() -> None:
    """Reopen every log file by name, appending: after logrotate renamed them, writes go to the new files."""
    flush_pending()
    failed = False
    for handler in _files:
        try:
            handler.reopen()
        except OSError as exc:
            failed = True
            log.error("Cannot reopen log file %s: %s", handler.path, exc.strerror or exc)
    if not failed:
        log.info("Log files reopened")
