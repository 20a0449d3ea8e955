"""Copies of an SQLite database taken while it is in use: before a migration, and on the operator's
request (``scd backup PATH``)."""

import logging
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from .rows import StorageError

log = logging.getLogger("superchat.storage")


def backup_sqlite(source: Path, target: Path) -> None:
    """Copy the database at ``source``, what its WAL holds included, to the new file ``target``, through
    SQLite's online backup (one consistent snapshot, writers go on meanwhile), and check the copy
    whole. ``target`` appears complete or not at all, and an existing file is never replaced."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        reading = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
        with closing(reading) as reader, closing(sqlite3.connect(partial)) as copy:
            reader.backup(copy)
            problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise StorageError(f"the copy of {source} failed its integrity check: {'; '.join(problems[:3])}")
            # The copy stands alone: no WAL beside it to lose when it is moved.
            copy.execute("PRAGMA journal_mode = DELETE")
        # A link, unlike a rename, refuses to replace a file that appeared meanwhile.
        os.link(partial, target)
    except FileExistsError:
        raise StorageError(f"{target} exists: name a new file") from None
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot back up {source} to {target}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


def backup_before_migrating(path: Path, version: int) -> Path:
    """The copy of the database at ``path``, still at schema ``version``, beside it."""
    target = path.with_name(f"{path.name}.backup-v{version}-{time.strftime('%Y%m%d-%H%M%S')}")
    backup_sqlite(path, target)
    log.info("Database backed up before its migration from schema version %d: %s", version, target)
    return target
