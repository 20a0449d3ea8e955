"""What the operator's commands (``scd admin``, ``scd backup``) share: the configuration read as scd
reads it, and every failure as one line on standard error with its exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config

EXIT_FAILED = 1
EXIT_USAGE = 2


class Failed(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED):
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Failed(message.removeprefix("argument "), EXIT_USAGE)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH, metavar="PATH",
                        help=f"config file, as for scd (default: {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--db", metavar="PATH|URL", help="SQLite database file or postgresql:// URL, as for scd")


def load(args: argparse.Namespace) -> Config:
    """The configuration scd would run with, given the command's --config and --db."""
    try:
        config = load_config(["--config", args.config] + (["--db", args.db] if args.db is not None else []),
                             os.environ)
    except ConfigError as exc:
        raise Failed(str(exc), EXIT_USAGE) from None
    assert config is not None  # only --help and --version answer without one
    return config


def run(name: str, parser: Parser, command: Callable[[argparse.Namespace], str], argv: list[str]) -> int:
    """Parse ``argv``, run ``command`` and print what it says: 0, or the failure's line and status."""
    try:
        print(command(parser.parse_args(argv)))
    except Failed as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return exc.status
    return 0
