"""``scd import-upstream PATH``: the database of an upstream SuperChat server moves into the database
scd is configured for (the same --config, --db and environment as scd), all of it or nothing."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from .operator import Failed, Parser, add_config_arguments, load, run
from .storage import StorageError, Store
from .storage.imports import TargetNotEmpty
from .storage.upstream import Carried, NotUpstream, UpstreamSource

BAR_WIDTH = 30
# How often the progress is told: redrawn on a terminal, one line otherwise.
TERMINAL_SECONDS = 0.2
LINE_SECONDS = 5.0


def _parser() -> Parser:
    parser = Parser(prog="scd import-upstream", allow_abbrev=False,
                    description="Import the SQLite database of an upstream SuperChat server (stopped) into the "
                                "empty database scd is configured for.")
    parser.add_argument("path", metavar="PATH", help="the upstream server's superchat.db (its -wal file beside it)")
    add_config_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    return run("scd import-upstream", _parser(), _import, argv)


class Progress:
    """A bar redrawn on a terminal; plain periodic lines in a log or a pipe."""

    def __init__(self, total: int, out: TextIO):
        self.total = max(total, 1)
        self.done = 0
        self._out = out
        self._terminal = out.isatty()
        self._every = TERMINAL_SECONDS if self._terminal else LINE_SECONDS
        self._started = self._told = time.monotonic()

    def __call__(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self._told >= self._every:
            self._told = now
            self._tell(now)

    def finish(self) -> None:
        self.done = self.total
        self._tell(time.monotonic())
        if self._terminal:
            self._out.write("\n")
        self._out.flush()

    def _tell(self, now: float) -> None:
        share = min(self.done / self.total, 1.0)
        figures = f"{share:4.0%} {self.done:,}/{self.total:,} rows, {now - self._started:.0f} s"
        if self._terminal:
            filled = round(share * BAR_WIDTH)
            self._out.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {figures}")
        else:
            self._out.write(f"importing: {figures}\n")
        self._out.flush()


def _import(args: argparse.Namespace) -> str:
    config = load(args)
    upstream = Path(args.path)
    target = config.database_url or config.database_path
    # No URL (an empty one) means the SQLite file database_path.
    on_sqlite = not config.database_url
    if on_sqlite and _same_file(upstream, config.database_path):
        raise Failed(f"{upstream} is the database scd is configured for: name another with --db")
    try:
        source = UpstreamSource(upstream)
    except NotUpstream as exc:
        raise Failed(str(exc)) from None
    except OSError as exc:
        raise Failed(f"cannot read {upstream}: {exc.strerror or exc}") from None
    # A file this command made is removed again if the import fails: the target stays as it was.
    made = on_sqlite and not config.database_path.exists()
    try:
        try:
            store = Store(target)
        except (OSError, StorageError) as exc:
            raise Failed(f"cannot open the database: {exc}") from None
        try:
            progress = Progress(source.total_rows(), sys.stderr)
            carried = store.import_upstream(source, progress)
            progress.finish()
        except TargetNotEmpty as exc:
            raise Failed(f"refusing to import into {store.location}: {exc}") from None
        except StorageError as exc:
            raise Failed(f"database error, nothing imported: {exc}") from None
        finally:
            store.close()
    except Failed:
        if made:
            _remove_sqlite(config.database_path)
        raise
    finally:
        source.close()
    return summary(upstream, store.location, carried)


def summary(upstream: Path, location: str, carried: Carried) -> str:
    kinds = ", ".join(f"{count:,} {kind}" for kind, count in carried.counts.items()) or "nothing"
    lines = [f"Imported {upstream} into {location}: {kinds}."]
    if carried.left_behind or carried.refused:
        lines.append("Not carried over:")
        lines += [f"  {reason}: {count:,}" for reason, count in carried.left_behind.items()]
        lines += [f"  {reason}" for reason in carried.refused]
    else:
        lines.append("Everything was carried over.")
    if carried.changed:
        lines.append("Carried over with a change:")
        lines += [f"  {change}" for change in carried.changed]
    return "\n".join(lines)


def _same_file(one: Path, other: Path) -> bool:
    try:
        return one.resolve() == other.resolve() or (other.exists() and one.samefile(other))
    except OSError:
        return False


def _remove_sqlite(path: Path) -> None:
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        path.with_name(name).unlink(missing_ok=True)
