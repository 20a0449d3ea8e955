"""``scd``: parse configuration, run the server until SIGTERM or SIGINT; SIGHUP reopens the log files.
``scd admin ...`` manages admin accounts instead (superchat/admin.py), ``scd backup PATH`` copies the
database (superchat/backup.py), ``scd import-upstream PATH`` takes over an upstream server's database
(superchat/upstream_import.py)."""

from __future__ import annotations

import os
import signal
import sys

import gevent
from gevent.event import Event

from .config import ConfigError, load_config
from .observability import logs
from .storage import StorageError

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["admin"]:
        from .admin import main as admin_main

        return admin_main(argv[1:])
    if argv[:1] == ["import-upstream"]:
        from .upstream_import import main as import_main

        return import_main(argv[1:])
    if argv[:1] == ["backup"]:
        from .backup import main as backup_main

        return backup_main(argv[1:])
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        print(f"scd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if config is None:  # --version or --help answered
        return 0
    try:
        logs.configure(config.data_dir, config.debug, config.log_format, config.node_id)
    except OSError as exc:
        print(f"scd: cannot open log files: {exc}", file=sys.stderr)
        return 1
    # logrotate's postrotate (systemctl reload) sends SIGHUP, whose default action would kill the server.
    gevent.signal_handler(signal.SIGHUP, logs.reopen)

    from .server import runtime
    from .server.app import Server

    runtime.settle()

    # Installed before the listener opens, so a signal never finds the default handler.
    stopping = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    try:
        server = Server(config)
        server.start()
    except (OSError, StorageError) as exc:
        print(f"scd: cannot start: {exc}", file=sys.stderr)
        return 1
    logs.flush_pending()  # the start-up lines are in the files before anyone looks
    stopping.wait()
    server.stop()
    return 0
