"""``scd admin create NAME``: the operator makes an admin account on the host, or takes one back.

No network client may make an account under a name in admin_users (REGISTER_USER, SSH sign-up and
renames refuse it), so admin accounts are made here. The password is hashed as SuperChat clients hash
it and stored as REGISTER_USER stores it, so a client's ordinary login opens the account.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from .client_password import client_password_hash
from .operator import EXIT_USAGE, Failed, Parser, add_config_arguments, load, run
from .protocol import flags
from .server import passwords
from .server.handlers.accounts import MAX_NICKNAME_BYTES, MIN_NICKNAME_BYTES, acceptable_nickname
from .storage import NicknameTaken, StorageError, Store

# What the reference client accepts when a password is chosen; counted in bytes, as it counts them.
PASSWORD_BYTES = range(8, 129)


def _parser() -> Parser:
    parser = Parser(prog="scd admin", description="Make admin accounts on the host.", allow_abbrev=False)
    actions = parser.add_subparsers(dest="action", required=True, metavar="create")
    create = actions.add_parser(
        "create", allow_abbrev=False,
        help="make the admin account NAME, or give the existing one a new password (its SSH keys are removed)",
    )
    create.add_argument("name", metavar="NAME", help="a nickname listed in server.admin_users")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input instead of asking twice")
    add_config_arguments(create)
    return parser


def main(argv: list[str]) -> int:
    return run("scd admin", _parser(), _create, argv)


def _create(args: argparse.Namespace) -> str:
    name = args.name
    config = load(args)
    if not acceptable_nickname(config, name):
        longest = min(MAX_NICKNAME_BYTES, config.max_nickname_length)
        raise Failed(f"invalid nickname {name!r}: {MIN_NICKNAME_BYTES}-{longest} characters, "
                      "letters, digits, - and _", EXIT_USAGE)
    if name not in config.admin_users:
        spelled = [listed for listed in config.admin_users if listed.lower() == name.lower()]
        hint = f" (it lists {spelled[0]})" if spelled else ": add it there first"
        raise Failed(f"{name} is not in server.admin_users{hint}", EXIT_USAGE)
    try:
        store = Store(config.database_url or config.database_path)
    except (OSError, StorageError) as exc:
        raise Failed(f"cannot open the database: {exc}") from None
    try:
        return _claim(store, name, args.password_stdin)
    except StorageError as exc:
        raise Failed(f"database error: {exc}") from None
    finally:
        store.close()


def _claim(store: Store, name: str, from_stdin: bool) -> str:
    holder = store.get_user_by_folded_nickname(name)
    if holder is not None and holder.nickname != name:
        raise Failed(_held_in_another_case(holder.nickname, holder.id))
    described = f"the new admin account {name}" if holder is None else f"the admin account {name} (user {holder.id})"
    password = _read_password(from_stdin, f"Password for {described}: ")
    stored_hash = passwords.hash_password(client_password_hash(password, name))
    try:
        user, created, keys_removed = store.claim_account(name, stored_hash, flags.ADMIN)
    except NicknameTaken:  # a case variant registered since the check above
        holder = store.get_user_by_folded_nickname(name)
        raise Failed(_held_in_another_case(holder.nickname, holder.id)) from None
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
        raise Failed("no terminal to ask for the password on: give it on standard input with --password-stdin")
    else:
        try:
            password = getpass.getpass(prompt)
            again = getpass.getpass("The same password again: ")
        except (EOFError, KeyboardInterrupt):
            raise Failed("cancelled: no account made or changed") from None
        if password != again:
            raise Failed("the passwords differ: no account made or changed")
    if len(password.encode()) not in PASSWORD_BYTES:
        raise Failed(f"the password must be {PASSWORD_BYTES.start}-{PASSWORD_BYTES.stop - 1} bytes long, "
                      "as SuperChat clients require")
    return password
