"""Log files in the data directory, named here and nowhere else.

server.log  every record at INFO and above (DEBUG too with --debug), truncated at each start
errors.log  ERROR records only, appended across restarts after a start marker
debug.log   DEBUG and above, only with --debug, appended
Console output mirrors server.log.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

SERVER_LOG = "server.log"
ERRORS_LOG = "errors.log"
DEBUG_LOG = "debug.log"


class GuideFormatter(logging.Formatter):
    """``2025/10/08 14:30:15.123456 [INFO] message``: the line shape the operations guide greps."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        line = f"{stamp}.{micros:06d} [{record.levelname}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(data_dir: Path, debug: bool) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    formatter = GuideFormatter()
    root = logging.getLogger("superchat")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False

    def add(handler: logging.Handler, level: int) -> None:
        handler.setLevel(level)
        handler.setFormatter(formatter)
        root.addHandler(handler)

    add(logging.StreamHandler(sys.stdout), logging.INFO)
    add(logging.FileHandler(data_dir / SERVER_LOG, mode="w", encoding="utf-8"), logging.INFO)
    errors = logging.FileHandler(data_dir / ERRORS_LOG, mode="a", encoding="utf-8")
    errors.stream.write(f"=== Server started at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ===\n")
    errors.stream.flush()
    add(errors, logging.ERROR)
    if debug:
        add(logging.FileHandler(data_dir / DEBUG_LOG, mode="a", encoding="utf-8"), logging.DEBUG)
