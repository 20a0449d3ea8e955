"""``scd admin create NAME``: the operator makes an admin account on the host, or takes one back.

No network client may make an account under a name in admin_users (REGISTER_USER, SSH sign-up and
renames refuse it), so admin accounts are made here. The password is hashed as SuperChat clients hash
it and stored as REGISTER_USER stores it, so a client's ordinary login opens the account.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import NoReturn

from .client_password import client_password_hash
from .config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from .protocol import flags
from .server import passwords
from .server.handlers.accounts import MAX_NICKNAME_BYTES, MIN_NICKNAME_BYTES, acceptable_nickname
from .storage import NicknameTaken, StorageError, Store

EXIT_FAILED = 1
EXIT_USAGE = 2
# What the reference client accepts when a password is chosen; counted in bytes, as it counts them.
PASSWORD_BYTES = range(8, 129)


class _Failed(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Failed(message.removeprefix("argument "), EXIT_USAGE)


def _parser() -> _Parser:
    parser = _Parser(prog="scd admin", description="Make admin accounts on the host.", allow_abbrev=False)
    actions = parser.add_subparsers(dest="action", required=True, metavar="create")
    create = actions.add_parser(
        "create", allow_abbrev=False,
        help="make the admin account NAME, or give the existing one a new password (its SSH keys are removed)",
    )
    create.add_argument("name", metavar="NAME", help="a nickname listed in server.admin_users")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input instead of asking twice")
    create.add_argument("--config", default=DEFAULT_CONFIG_PATH, metavar="PATH",
                        help=f"config file, as for scd (default: {DEFAULT_CONFIG_PATH})")
    create.add_argument("--db", metavar="PATH|URL", help="SQLite database file or postgresql:// URL, as for scd")
    return parser


def main(argv: list[str]) -> int:
    try:
        print(_create(_parser().parse_args(argv)))
    except _Failed as exc:
        print(f"scd admin: {exc}", file=sys.stderr)
        return exc.status
    return 0


def _create(args: argparse.Namespace) -> str:
    name = args.name
    config_args = ["--config", args.config] + (["--db", args.db] if args.db is not None else [])
    try:
        config = load_config(config_args, os.environ)
    except ConfigError as exc:
        raise _Failed(str(exc), EXIT_USAGE) from None
    if not acceptable_nickname(config, name):
        longest = min(MAX_NICKNAME_BYTES, config.max_nickname_length)
        raise _Failed(f"invalid nickname {name!r}: {MIN_NICKNAME_BYTES}-{longest} characters, "
                      "letters, digits, - and _", EXIT_USAGE)
    if name not in config.admin_users:
        spelled = [listed for listed in config.admin_users if listed.lower() == name.lower()]
        hint = f" (it lists {spelled[0]})" if spelled else ": add it there first"
        raise _Failed(f"{name} is not in server.admin_users{hint}", EXIT_USAGE)
    try:
        store = Store(config.database_url or config.database_path)
    except (OSError, StorageError) as exc:
        raise _Failed(f"cannot open the database: {exc}") from None
    try:
        return _claim(store, name, args.password_stdin)
    except StorageError as exc:
        raise _Failed(f"database error: {exc}") from None
    finally:
        store.close()


def _claim(store: Store, name: str, from_stdin: bool) -> str:
    holder = store.get_user_by_folded_nickname(name)
    if holder is not None and holder.nickname != name:
        raise _Failed(_held_in_another_case(holder.nickname, holder.id))
    described = f"the new admin account {name}" if holder is None else f"the admin account {name} (user {holder.id})"
    password = _read_password(from_stdin, f"Password for {described}: ")
    stored_hash = passwords.hash_password(client_password_hash(password, name))
    try:
        user, created, keys_removed = store.claim_account(name, stored_hash, flags.ADMIN)
    except NicknameTaken:  # a case variant registered since the check above
        holder = store.get_user_by_folded_nickname(name)
        raise _Failed(_held_in_another_case(holder.nickname, holder.id)) from None
    if created:
        return f"Admin account {name} created (user {user.id}): sign in as {name} from any SuperChat client"
    keys = f", {keys_removed} SSH key{'s' if keys_removed != 1 else ''} removed" if keys_removed else ""
    return f"Admin account {name} (user {user.id}): new password set{keys}"


def _held_in_another_case(nickname: str, user_id: int) -> str:
    return (f"account {nickname} (user {user_id}) holds this name in another case: list {nickname} in "
            "server.admin_users to take that account, or have an admin delete it")


def _read_password(from_stdin: bool, prompt: str) -> str:
    if from_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    elif not sys.stdin.isatty():
        raise _Failed("no terminal to ask for the password on: give it on standard input with --password-stdin")
    else:
        try:
            password = getpass.getpass(prompt)
            again = getpass.getpass("The same password again: ")
        except (EOFError, KeyboardInterrupt):
            raise _Failed("cancelled: no account made or changed") from None
        if password != again:
            raise _Failed("the passwords differ: no account made or changed")
    if len(password.encode()) not in PASSWORD_BYTES:
        raise _Failed(f"the password must be {PASSWORD_BYTES.start}-{PASSWORD_BYTES.stop - 1} bytes long, "
                      "as SuperChat clients require")
    return password
