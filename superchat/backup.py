"""``scd backup PATH``: a consistent copy of the database a server runs on, taken while it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .operator import EXIT_USAGE, Failed, Parser, add_config_arguments, load, run
from .storage import StorageError
from .storage.backup import backup_sqlite


def _parser() -> Parser:
    parser = Parser(prog="scd backup", allow_abbrev=False,
                    description="Copy the SQLite database of scd, running or not, to a new file.")
    parser.add_argument("path", metavar="PATH", help="the new file (an existing one is never replaced)")
    add_config_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    return run("scd backup", _parser(), _backup, argv)


def _backup(args: argparse.Namespace) -> str:
    config = load(args)
    if config.database_url:
        raise Failed("the database is on PostgreSQL: back it up with pg_dump (pg_dump -Fc URL > FILE)", EXIT_USAGE)
    source = config.database_path
    if not source.is_file():
        raise Failed(f"no database at {source}")
    target = Path(args.path)
    try:
        backup_sqlite(source, target)
    except StorageError as exc:
        raise Failed(str(exc)) from None
    return f"Backed up {source} to {target} ({target.stat().st_size} bytes, checked whole)"
