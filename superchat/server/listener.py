"""The client ports' listening sockets, which go on when the process runs out of files.

Every session holds one file, its socket, so past the open-files limit (LimitNOFILE=, ulimit -n)
accepting fails. gevent would print a traceback for each failed attempt and keep retrying; here
the listener pauses for a moment instead, the connections wait in the backlog, the sessions
already open go on, and the log says once when it started and once when it ended.
"""

from __future__ import annotations

import errno
import logging
import time

import gevent
from gevent.server import StreamServer

from ..open_files import open_files_limit

log = logging.getLogger("superchat.server")

OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
RETRY_SECONDS = 0.25


class Listener(StreamServer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._out_of_files_since: float | None = None
        self._retry: gevent.Greenlet | None = None

    def do_read(self):
        try:
            accepted = super().do_read()
        except OSError as exc:
            if exc.errno not in OUT_OF_FILES:
                raise
            self._pause(exc)
            return None
        if accepted and self._out_of_files_since is not None:
            log.warning("Accepting connections on port %d again, after %.1f s out of files", self.server_port,
                        time.monotonic() - self._out_of_files_since)
            self._out_of_files_since = None
        return accepted

    def _pause(self, exc: OSError) -> None:
        if self._out_of_files_since is None:
            self._out_of_files_since = time.monotonic()
            log.error("Cannot accept connections on port %d: %s (open files limit %d): new connections wait "
                      "until sessions end; raise LimitNOFILE= or ulimit -n", self.server_port, exc.strerror,
                      open_files_limit())
        self.stop_accepting()
        if self._retry is None:
            self._retry = gevent.spawn_later(RETRY_SECONDS, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if self.started and not self.closed:
            self.start_accepting()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.kill()
            self._retry = None
        super().close()
