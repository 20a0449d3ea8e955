"""Server configuration: defaults < TOML file < SUPERCHAT_* environment < flags.

Every setting is declared once in ``_KEYS``; that table drives the TOML reader,
the environment and flag parser, range checking and the default-file writer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..files import create_whole
from .values import (
    BOOL,
    CHANNELS,
    DATABASE_URL,
    INT,
    LOG_FORMAT,
    NAMES,
    POSTGRESQL_SCHEMES,
    REDIS_URL,
    STR,
    U16,
    URL_SCHEME,
    Invalid,
    Kind,
    SeedChannel,
    directory_address,
    masked_url,
    parse_names,
    show,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "POSTGRESQL_SCHEMES",
    "Config",
    "ConfigError",
    "SeedChannel",
    "default_file_text",
    "directory_address",
    "load_config",
    "masked_url",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "~/.superchat/config.toml"


class ConfigError(Exception):
    """Bad configuration input; str() is a single line naming the culprit."""

    def __init__(self, message: str):
        # Callers put this straight into a one-line log record or stderr.
        super().__init__(message.replace("\n", "\\n"))



@dataclass(frozen=True)
class Config:
    # [server]
    tcp_port: int
    ssh_port: int
    http_port: int
    ssh_host_key: str
    bind_address: str
    database_path: Path
    database_url: str
    admin_users: tuple[str, ...]
    # [limits]
    max_connections_per_ip: int
    message_rate_limit: int
    max_channel_creates: int
    max_registrations_per_hour: int
    max_message_length: int
    max_nickname_length: int
    session_timeout_seconds: int
    partial_frame_memory_mb: int
    max_thread_subscriptions: int
    max_channel_subscriptions: int
    # [retention]
    default_retention_hours: int
    cleanup_interval_minutes: int
    # [channels]
    seed_channels: tuple[SeedChannel, ...]
    # [discovery]
    directory_enabled: bool
    public_hostname: str
    server_name: str
    server_description: str
    max_users: int
    heartbeat_interval_seconds: int
    health_check_interval_seconds: int
    # [observability]
    metrics_port: int
    metrics_bind: str
    pprof_port: int
    pprof_bind: str
    log_format: str
    max_thread_series: int
    # [cluster]
    redis_url: str
    node_id: str
    # run-time
    config_path: Path
    data_dir: Path
    debug: bool
    announce_to: tuple[str, ...]


def _announce_to(text: str) -> tuple[str, ...]:
    entries = parse_names(text)
    for entry in entries:
        try:
            directory_address(entry)
        except Invalid as e:
            raise ConfigError(f"--announce-to: {e}") from None
    return entries





@dataclass(frozen=True)
class _Key:
    section: str
    name: str
    kind: Kind
    default: Any
    doc: str
    low: int | None = None
    high: int | None = None
    env: bool = True

    @property
    def env_var(self) -> str:
        return f"SUPERCHAT_{self.section}_{self.name}".upper()

    def convert(self, value: Any, from_text: bool) -> Any:
        value = self.kind.parse(value) if from_text else self.kind.check(value)
        if self.high is not None and not self.low <= value <= self.high:
            raise Invalid(f"must be between {self.low} and {self.high}, got {value}")
        if self.low is not None and value < self.low:
            raise Invalid(f"must be at least {self.low}, got {value}")
        return value


_DEFAULT_CHANNELS = (
    SeedChannel("general", "General discussion"),
    SeedChannel("tech", "Technical topics"),
    SeedChannel("random", "Off-topic chat"),
    SeedChannel("feedback", "Bug reports and feature requests"),
)

# Upper bounds come from the integer widths upstream uses for these settings
# (u8 connections per IP, u16 counters, u32 max_users) and from the wire format
# (nicknames of at most 20 bytes, 1 MiB frames).
_KEYS: tuple[_Key, ...] = (
    _Key("server", "tcp_port", INT, 6465, "TCP port of the binary protocol (0 = any free port).", 0, U16),
    _Key("server", "ssh_port", INT, 6466, "SSH port (0 = SSH disabled).", 0, U16),
    _Key("server", "http_port", INT, 8080, "HTTP port for /servers.json and /ws (0 = disabled).", 0, U16),
    _Key("server", "ssh_host_key", STR, "~/.superchat/ssh_host_key", "SSH host key file; ~ is expanded."),
    _Key("server", "bind_address", STR, "0.0.0.0", "Address the TCP listener binds to."),
    _Key(
        "server", "database_path", STR, "",
        "SQLite database file; empty = $XDG_DATA_HOME/superchat/superchat.db "
        "(else ~/.local/share/superchat/superchat.db).",
    ),
    _Key(
        "server", "database_url", DATABASE_URL, "",
        "PostgreSQL database, e.g. postgresql://user:password@host:5432/superchat; empty = SQLite at database_path.",
    ),
    _Key("server", "admin_users", NAMES, (),
         "Nicknames with admin rights, e.g. [\"alice\", \"bob\"]; make their accounts with: scd admin create NAME"),
    _Key("limits", "max_connections_per_ip", INT, 10, "Concurrent connections allowed from one IP.", 1, 255),
    _Key("limits", "message_rate_limit", INT, 10, "Messages per minute per session.", 1, U16),
    _Key("limits", "max_channel_creates", INT, 5, "Channels one user may create per hour.", 1, U16),
    _Key("limits", "max_registrations_per_hour", INT, 10,
         "Accounts one address (IPv6: its /64) may create per hour, by REGISTER_USER or SSH key.", 1, U16),
    _Key("limits", "max_message_length", INT, 4096, "Longest message body, in bytes.", 1, U16),
    _Key("limits", "max_nickname_length", INT, 20, "Longest nickname, in bytes.", 3, 20),
    _Key("limits", "session_timeout_seconds", INT, 120,
         "Idle seconds before a session is dropped; also the time one frame may take to arrive whole.", 1),
    _Key("limits", "partial_frame_memory_mb", INT, 64,
         "MiB that the unfinished frames of all clients may hold together (past 64 KiB each); "
         "a client whose frame would pass it is disconnected.", 1),
    _Key("limits", "max_thread_subscriptions", INT, 50, "Thread subscriptions per session.", 1, U16),
    _Key("limits", "max_channel_subscriptions", INT, 10, "Channel subscriptions per session.", 1, U16),
    _Key("retention", "default_retention_hours", INT, 168, "Hours messages are kept (168 = 7 days).", 1),
    _Key("retention", "cleanup_interval_minutes", INT, 60, "Minutes between expired-message sweeps.", 1),
    _Key(
        "channels", "seed_channels", CHANNELS, _DEFAULT_CHANNELS,
        "Channels created when the database is new; [] for none.", env=False,
    ),
    _Key("discovery", "directory_enabled", BOOL, True, "Accept registrations from other servers."),
    _Key("discovery", "public_hostname", STR, "", "Hostname clients should use; empty = auto-detect."),
    _Key("discovery", "server_name", STR, "SuperChat Server", "Name shown in server lists."),
    _Key("discovery", "server_description", STR, "A SuperChat community server", "Server list description."),
    _Key("discovery", "max_users", INT, 0, "Capacity shown in server lists (0 = unlimited).", 0, 2**32 - 1),
    _Key(
        "discovery", "heartbeat_interval_seconds", INT, 300,
        "Seconds between the heartbeats this directory asks listed servers for; "
        "a server silent for 3 intervals is dropped.", 1, 2**32 - 1,
    ),
    _Key(
        "discovery", "health_check_interval_seconds", INT, 300,
        "Seconds between this directory's reachability checks of each listed server.", 1,
    ),
    # Metrics and profiling expose internals: they listen on loopback unless told otherwise.
    _Key("observability", "metrics_port", INT, 9090, "Port of /metrics and /health (0 = any free port).", 0, U16),
    _Key("observability", "metrics_bind", STR, "127.0.0.1", "Address of the metrics server; keep it internal."),
    _Key("observability", "pprof_port", INT, 6060, "Port of /debug/pprof/ (0 = any free port).", 0, U16),
    _Key("observability", "pprof_bind", STR, "127.0.0.1", "Address of the profiling server; keep it internal."),
    _Key("observability", "log_format", LOG_FORMAT, "text", "Log line format: text or json (one object a line)."),
    _Key("observability", "max_thread_series", INT, 1000,
         "Series naming a thread in each per-thread metric; the rest count under thread_id=\"other\".", 0),
    _Key("cluster", "redis_url", REDIS_URL, "",
         "Redis shared by the nodes of one server (redis://host:6379/0); empty = a single node."),
    _Key("cluster", "node_id", STR, "", "This node's name in /health, metrics and logs; empty = hostname:tcp_port."),
)
_BY_NAME = {key.name: key for key in _KEYS}
_SECTIONS = {key.section: [k for k in _KEYS if k.section == key.section] for key in _KEYS}


# --- the default file --------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, SeedChannel):
        return f"{{ name = {_toml_value(value.name)}, description = {_toml_value(value.description)} }}"
    if value and isinstance(value[0], SeedChannel):
        return "[\n" + "".join(f"  {_toml_value(v)},\n" for v in value) + "]"
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def default_file_text() -> str:
    """The annotated TOML written when no config file exists."""
    out = [
        "# SuperChat server (scd) configuration, written with default values.",
        "# Edit and restart the server to apply changes.",
        "# SUPERCHAT_<SECTION>_<KEY> environment variables override this file",
        "# (e.g. SUPERCHAT_SERVER_TCP_PORT=7000); command-line flags override both.",
    ]
    for section, keys in _SECTIONS.items():
        out += ["", f"[{section}]"]
        for key in keys:
            out += [f"# {key.doc}", f"{key.name} = {_toml_value(key.default)}", ""]
        out.pop()
    return "\n".join(out) + "\n"


def _write_default_file(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_whole(path, default_file_text().encode("utf-8"), 0o666)
    except OSError as e:
        log.warning("cannot write default config %s (%s); using defaults", path, e.strerror or e)
    else:
        log.info("wrote default config to %s", path)


# --- reading sources ------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        text = str(e)
        m = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", text)
        if m:
            text = f"{m[2]}: {m[1][:1].lower()}{m[1][1:]}"
        raise ConfigError(f"{path}: {text}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None


def _file_values(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in _SECTIONS:
            log.warning("%s: ignoring unknown section or key %r", path, section)
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section}: expected a [{section}] table, got {show(table)}")
        for name, value in table.items():
            key = _BY_NAME.get(name)
            if key is None or key.section != section:
                log.warning("%s: ignoring unknown key %s.%s", path, section, name)
                continue
            try:
                values[name] = key.convert(value, from_text=False)
            except Invalid as e:
                raise ConfigError(f"{path}: {section}.{name}: {e}") from None
    return values


def _text_value(key: _Key, text: str, source: str) -> Any:
    try:
        return key.convert(text, from_text=True)
    except Invalid as e:
        raise ConfigError(f"{source}: {e}") from None


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    # Like upstream, an empty variable counts as unset.
    return {
        key.name: _text_value(key, environ[key.env_var], key.env_var)
        for key in _KEYS
        if key.env and environ.get(key.env_var)
    }


# --- flags ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message.removeprefix("argument "))


# flag -> key whose value it overrides, parsed and range-checked like the env var
_VALUE_FLAGS = {
    "port": "tcp_port",
    "bind": "bind_address",
    "server_name": "server_name",
    "server_description": "server_description",
    "metrics_port": "metrics_port",
    "metrics_bind": "metrics_bind",
    "pprof_port": "pprof_port",
    "pprof_bind": "pprof_bind",
    "log_format": "log_format",
    "redis": "redis_url",
    "node_id": "node_id",
}


def _parser() -> _Parser:
    p = _Parser(prog="scd", description="SuperChat server", add_help=False, allow_abbrev=False)
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, metavar="PATH",
                   help=f"config file, created with defaults if missing (default: {DEFAULT_CONFIG_PATH})")
    p.add_argument("--port", metavar="PORT", help="TCP port (overrides tcp_port)")
    p.add_argument("--bind", metavar="ADDR", help="address to listen on (overrides bind_address)")
    p.add_argument("--db", metavar="PATH|URL",
                   help="SQLite database file or postgresql:// URL (overrides database_path or database_url)")
    p.add_argument("--debug", action="store_true", help="enable debug logging")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("--disable-directory", action="store_true",
                   help="do not accept server registrations (directory_enabled = false)")
    p.add_argument("--announce-to", metavar="HOST:PORT,...", default="",
                   help="comma-separated directory servers to announce this server to (port 6465 if left out)")
    p.add_argument("--server-name", metavar="NAME", help="name in server lists (overrides server_name)")
    p.add_argument("--server-description", metavar="TEXT",
                   help="description in server lists (overrides server_description)")
    p.add_argument("--metrics-port", metavar="PORT", help="port of /metrics and /health (overrides metrics_port)")
    p.add_argument("--metrics-bind", metavar="ADDR",
                   help="address of /metrics and /health (overrides metrics_bind; never expose it publicly)")
    p.add_argument("--pprof-port", metavar="PORT", help="port of /debug/pprof/ (overrides pprof_port)")
    p.add_argument("--pprof-bind", metavar="ADDR",
                   help="address of /debug/pprof/ (overrides pprof_bind; never expose it publicly)")
    p.add_argument("--log-format", metavar="FORMAT", help="text or json (overrides log_format)")
    p.add_argument("--redis", metavar="URL", help="Redis shared by the nodes of one server (overrides redis_url)")
    p.add_argument("--node-id", metavar="ID", help="this node's name (overrides node_id)")
    return p


# --- putting it together ----------------------------------------------------------


def _expand(text: str, home: str) -> Path:
    if text == "~" or text.startswith("~/"):
        text = home + text[1:]
    else:
        text = os.path.expanduser(text)
    return Path(os.path.abspath(text))


def _data_dir(environ: Mapping[str, str], home: str) -> Path:
    xdg = environ.get("XDG_DATA_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    if os.path.isabs(xdg):
        return Path(xdg) / "superchat"
    return Path(home) / ".local" / "share" / "superchat"


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config | None:
    """Parse flags, read/write the file, apply env. Returns None when --version
    (or --help) was given, after printing to stdout. Raises ConfigError on any bad input."""
    parser = _parser()
    args = parser.parse_args(list(argv))
    if args.version:
        print(f"SuperChat Server {__version__}")
        return None
    if args.help:
        parser.print_help(sys.stdout)
        return None

    home = environ.get("HOME") or str(Path.home())
    config_path = _expand(args.config, home)

    values = {key.name: key.default for key in _KEYS}
    if config_path.exists():
        values.update(_file_values(config_path, _read_file(config_path)))
    else:
        _write_default_file(config_path)
    values.update(_env_values(environ))
    for flag, name in _VALUE_FLAGS.items():
        text = getattr(args, flag)
        if text is not None:
            values[name] = _text_value(_BY_NAME[name], text, "--" + flag.replace("_", "-"))
    if args.db is not None:
        # Either kind of database, so it also overrides a setting of the other kind.
        if URL_SCHEME.match(args.db):
            values["database_url"] = _text_value(_BY_NAME["database_url"], args.db, "--db")
        else:
            values["database_path"], values["database_url"] = args.db, ""
    if args.disable_directory:
        values["directory_enabled"] = False

    data_dir = _data_dir(environ, home)
    db = values["database_path"]
    values["database_path"] = _expand(db, home) if db else data_dir / "superchat.db"
    values["ssh_host_key"] = str(_expand(values["ssh_host_key"], home)) if values["ssh_host_key"] else ""
    if values["redis_url"] and not values["database_url"]:
        # Each node would keep its own SQLite file: they would not be one server.
        raise ConfigError("cluster.redis_url: the nodes of one server share one database: "
                          "set server.database_url (or --db) to a postgresql:// URL")
    if values["redis_url"] and not values["node_id"]:
        # Port 0 picks a port only at start: the process id tells such nodes apart instead.
        values["node_id"] = f"{socket.gethostname()}:{values['tcp_port'] or os.getpid()}"
    return Config(
        **values,
        config_path=config_path,
        data_dir=data_dir,
        debug=args.debug,
        announce_to=_announce_to(args.announce_to),
    )
