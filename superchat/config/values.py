"""What a setting's value may be: the kinds of values, each checked as a TOML value or parsed
from an environment variable or flag."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

log = logging.getLogger("superchat.config")

DEFAULT_DIRECTORY_PORT = 6465
U16 = 65535


@dataclass(frozen=True)
class SeedChannel:
    name: str
    description: str


class Invalid(ValueError):
    """A value problem, without saying where the value came from."""


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# --- value kinds: check a TOML value, parse an environment/flag string ------


def check_int(value: Any) -> int:
    # bool is an int subclass in Python but a distinct type in TOML.
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected an integer, got {show(value)}")
    return value


def parse_int(text: str) -> int:
    # int() would also accept "1_000" and non-ASCII digits.
    if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
        raise Invalid(f"expected an integer, got {text!r}")
    return int(text)


def check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {show(value)}")
    return value


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_bool(text: str) -> bool:
    try:
        return _BOOL_WORDS[text.strip().lower()]
    except KeyError:
        raise Invalid(f"expected true/false/1/0/yes/no, got {text!r}") from None


def check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {show(value)}")
    return value


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
LOG_FORMATS = ("text", "json")


def check_log_format(value: Any) -> str:
    value = check_str(value)
    if value not in LOG_FORMATS:
        raise Invalid(f"expected one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return value


POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")
# What --db takes for a database URL rather than a file name.
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def masked_url(url: str) -> str:
    """``url`` without its password (user:password@ or ?password=), for logs."""
    url = re.sub(r"^([^:/?#]+://[^:@/?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"([?&])password=[^&#]*", r"\1password=***", url)


def url_checker(schemes: tuple[str, ...]) -> Callable[[Any], str]:
    """A check for a URL of one of ``schemes``, or empty."""

    def check(value: Any) -> str:
        value = check_str(value).strip()
        if value and not value.startswith(schemes):
            # Only the scheme is named: the rest of a URL may hold a password.
            scheme = URL_SCHEME.match(value)
            got = f"a {scheme[1]}:// URL" if scheme else "no URL scheme"
            raise Invalid(f"expected a URL starting with {' or '.join(schemes)}, got {got}")
        return value

    return check


def check_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid(f"expected a list of strings, got {show(value)}")
    names = tuple(check_str(item) for item in value)
    if "" in names:
        raise Invalid("empty name in list")
    return names


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def check_channels(value: Any) -> tuple[SeedChannel, ...]:
    if not isinstance(value, list):
        raise Invalid("expected an array of {name, description} tables")
    channels: list[SeedChannel] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise Invalid(f"entry {i}: expected a {{name, description}} table, got {show(item)}")
        if "name" not in item:
            raise Invalid(f"entry {i}: missing 'name'")
        try:
            name = check_str(item["name"])
            description = check_str(item.get("description", ""))
        except Invalid as e:
            raise Invalid(f"entry {i}: {e}") from None
        # Same bounds the server applies to user-created channels.
        if not 3 <= len(name.encode()) <= 50:
            raise Invalid(f"entry {i}: name must be 3-50 bytes, got {name!r}")
        if len(description.encode()) > 500:
            raise Invalid(f"entry {i}: description is longer than 500 bytes")
        if any(c.name == name for c in channels):
            raise Invalid(f"duplicate channel name {name!r}")
        unknown = sorted(set(item) - {"name", "description"})
        if unknown:
            log.warning("ignoring unknown seed channel keys %s", ", ".join(unknown))
        channels.append(SeedChannel(name, description))
    return tuple(channels)


def directory_address(text: str) -> tuple[str, int]:
    """An --announce-to entry as (host, port): ``host``, ``host:port``, ``[ipv6]`` or ``[ipv6]:port``,
    the port 6465 when left out. Raises ValueError naming the problem."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise Invalid(f"expected [ipv6]:port, got {text!r}")
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise Invalid(f"missing host in {text!r}")
    if not port:
        return host, DEFAULT_DIRECTORY_PORT
    number = parse_int(port)
    if not 1 <= number <= U16:
        raise Invalid(f"port must be between 1 and {U16}, got {number}")
    return host, number


def _no_text(text: str) -> NoReturn:
    raise AssertionError("seed_channels has no string form")


@dataclass(frozen=True)
class Kind:
    check: Callable[[Any], Any]  # a value from the TOML file
    parse: Callable[[str], Any]  # a string from the environment or a flag


INT = Kind(check_int, parse_int)
BOOL = Kind(check_bool, parse_bool)
STR = Kind(check_str, lambda text: text)
LOG_FORMAT = Kind(check_log_format, check_log_format)
NAMES = Kind(check_names, parse_names)
CHANNELS = Kind(check_channels, _no_text)
REDIS_URL = Kind(url_checker(REDIS_SCHEMES), url_checker(REDIS_SCHEMES))
DATABASE_URL = Kind(url_checker(POSTGRESQL_SCHEMES), url_checker(POSTGRESQL_SCHEMES))
