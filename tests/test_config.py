import dataclasses
import tomllib
from pathlib import Path

import pytest

from superchat import __version__
from superchat.config import Config, ConfigError, SeedChannel, directory_address, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "config.example.toml"

DEFAULT_CHANNELS = (
    SeedChannel("general", "General discussion"),
    SeedChannel("tech", "Technical topics"),
    SeedChannel("random", "Off-topic chat"),
    SeedChannel("feedback", "Bug reports and feature requests"),
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fake home; both the environ mapping and os.environ point at it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def cfg_file(tmp_path):
    return tmp_path / "etc" / "config.toml"


def load(home, *argv, **env):
    return load_config(list(argv), {"HOME": str(home), **env})


def load_file(home, path, text, *argv, **env):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return load(home, "--config", str(path), *argv, **env)


def config_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def assert_defaults(c: Config, home: Path):
    assert (c.tcp_port, c.ssh_port, c.http_port) == (6465, 6466, 8080)
    assert c.ssh_host_key == str(home / ".superchat" / "ssh_host_key")
    assert c.bind_address == "0.0.0.0"
    assert c.database_path == home / ".local" / "share" / "superchat" / "superchat.db"
    assert c.admin_users == ()
    assert c.max_connections_per_ip == 10
    assert c.message_rate_limit == 10
    assert c.max_channel_creates == 5
    assert c.max_message_length == 4096
    assert c.max_nickname_length == 20
    assert c.session_timeout_seconds == 120
    assert c.max_thread_subscriptions == 50
    assert c.max_channel_subscriptions == 10
    assert c.default_retention_hours == 168
    assert c.cleanup_interval_minutes == 60
    assert c.seed_channels == DEFAULT_CHANNELS
    assert c.directory_enabled is True
    assert c.public_hostname == ""
    assert c.server_name == "SuperChat Server"
    assert c.server_description == "A SuperChat community server"
    assert c.max_users == 0
    assert c.max_thread_series == 1000
    assert c.data_dir == home / ".local" / "share" / "superchat"
    assert c.debug is False
    assert c.announce_to == ()


# --- default file ---------------------------------------------------------------


def test_missing_default_path_is_written_and_reread_identically(home):
    first = load(home)
    written = home / ".superchat" / "config.toml"
    assert first.config_path == written
    assert written.is_file()
    assert_defaults(first, home)
    text = written.read_text()
    second = load(home)
    assert second == first
    assert written.read_text() == text  # not rewritten once it exists


def test_written_file_lists_every_key_but_does_not_pin_database_path(home, cfg_file):
    load(home, "--config", str(cfg_file))
    data = tomllib.loads(cfg_file.read_text())
    assert data["server"]["database_path"] == ""
    assert data["server"]["bind_address"] == "0.0.0.0"
    assert data["limits"]["max_nickname_length"] == 20
    assert len(data["channels"]["seed_channels"]) == 4
    assert data["discovery"]["directory_enabled"] is True
    # A later XDG_DATA_HOME still decides where the database lives.
    c = load(home, "--config", str(cfg_file), XDG_DATA_HOME="/srv/data")
    assert c.database_path == Path("/srv/data/superchat/superchat.db")


def test_unwritable_config_location_falls_back_to_defaults(home, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = blocker / "config.toml"
    c = load(home, "--config", str(path))
    assert not path.exists()
    assert c.config_path == path
    assert c.tcp_port == 6465
    assert c.seed_channels == DEFAULT_CHANNELS


def test_config_path_tilde_is_expanded_with_environ_home(home):
    c = load(home, "--config", "~/custom/scd.toml")
    assert c.config_path == home / "custom" / "scd.toml"
    assert c.config_path.is_file()


def test_example_file_parses_to_the_defaults(home):
    example = load(home, "--config", str(EXAMPLE))
    assert_defaults(example, home)
    defaults = load(home)
    assert dataclasses.replace(example, config_path=defaults.config_path) == defaults


def test_example_file_sets_every_key_explicitly():
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    set_keys = {key for table in data.values() for key in table}
    fields = {f.name for f in dataclasses.fields(Config)}
    runtime = {"config_path", "data_dir", "debug", "announce_to"}
    assert set_keys == fields - runtime
    for key in set_keys:
        line = next(line for line in text.splitlines() if line.startswith(f"{key} ="))
        before = text[: text.index(line)].rstrip().splitlines()[-1]
        assert before.startswith("#"), f"{key} has no explanation"


# --- file values -------------------------------------------------------------------

FULL_FILE = """
[server]
tcp_port = 7000
ssh_port = 0
http_port = 0
ssh_host_key = "/etc/scd/host_key"
bind_address = "127.0.0.1"
database_path = "~/chat/db.sqlite"
admin_users = ["alice", "bob"]

[limits]
max_connections_per_ip = 50
message_rate_limit = 30
max_channel_creates = 2
max_message_length = 65535
max_nickname_length = 3
session_timeout_seconds = 5
max_thread_subscriptions = 7
max_channel_subscriptions = 8

[retention]
default_retention_hours = 24
cleanup_interval_minutes = 1

[channels]
seed_channels = [
  { name = "lobby", description = "Say hi" },
  { name = "dev" },
]

[discovery]
directory_enabled = false
public_hostname = "chat.example.com"
server_name = "Test Server"
server_description = "Just testing"
max_users = 4294967295
"""


def test_file_values(home, cfg_file):
    c = load_file(home, cfg_file, FULL_FILE)
    assert (c.tcp_port, c.ssh_port, c.http_port) == (7000, 0, 0)
    assert c.ssh_host_key == "/etc/scd/host_key"
    assert c.bind_address == "127.0.0.1"
    assert c.database_path == home / "chat" / "db.sqlite"
    assert c.admin_users == ("alice", "bob")
    assert c.max_connections_per_ip == 50
    assert c.message_rate_limit == 30
    assert c.max_channel_creates == 2
    assert c.max_message_length == 65535
    assert c.max_nickname_length == 3
    assert c.session_timeout_seconds == 5
    assert c.max_thread_subscriptions == 7
    assert c.max_channel_subscriptions == 8
    assert c.default_retention_hours == 24
    assert c.cleanup_interval_minutes == 1
    assert c.seed_channels == (SeedChannel("lobby", "Say hi"), SeedChannel("dev", ""))
    assert c.directory_enabled is False
    assert c.public_hostname == "chat.example.com"
    assert c.server_name == "Test Server"
    assert c.server_description == "Just testing"
    assert c.max_users == 4294967295
    assert c.config_path == cfg_file


def test_partial_file_keeps_other_defaults(home, cfg_file):
    c = load_file(home, cfg_file, "[limits]\nmessage_rate_limit = 99\n")
    assert c.message_rate_limit == 99
    assert c.tcp_port == 6465
    assert c.seed_channels == DEFAULT_CHANNELS
    assert cfg_file.read_text() == "[limits]\nmessage_rate_limit = 99\n"


def test_empty_seed_channels(home, cfg_file):
    assert load_file(home, cfg_file, "[channels]\nseed_channels = []\n").seed_channels == ()


def test_seed_channels_as_array_of_tables(home, cfg_file):
    text = (
        '[[channels.seed_channels]]\nname = "one"\ndescription = "first"\n'
        '[[channels.seed_channels]]\nname = "two"\n'
    )
    c = load_file(home, cfg_file, text)
    assert c.seed_channels == (SeedChannel("one", "first"), SeedChannel("two", ""))


def test_unknown_keys_are_ignored_with_a_warning(home, cfg_file, caplog):
    text = (
        '[server]\ntcp_prot = 1\n[extra]\nx = 1\n'
        '[channels]\nseed_channels = [{name = "abc", colour = "red"}]\n'
    )
    c = load_file(home, cfg_file, text)
    assert c.tcp_port == 6465
    assert c.seed_channels == (SeedChannel("abc", ""),)
    assert "server.tcp_prot" in caplog.text
    assert "'extra'" in caplog.text
    assert "colour" in caplog.text


def test_key_in_the_wrong_section_is_ignored(home, cfg_file):
    assert load_file(home, cfg_file, "[limits]\ntcp_port = 1\n").tcp_port == 6465


def test_relative_database_path_is_resolved_against_cwd(home, cfg_file, tmp_path):
    c = load_file(home, cfg_file, '[server]\ndatabase_path = "data/chat.db"\n')
    assert c.database_path == tmp_path / "data" / "chat.db"
    assert c.database_path.is_absolute()


# --- data directory --------------------------------------------------------------------


def test_data_dir_without_xdg(home):
    c = load(home)
    assert c.data_dir == home / ".local" / "share" / "superchat"
    assert c.database_path == c.data_dir / "superchat.db"


def test_data_dir_with_xdg(home, tmp_path):
    xdg = tmp_path / "xdg"
    c = load(home, XDG_DATA_HOME=str(xdg))
    assert c.data_dir == xdg / "superchat"
    assert c.database_path == xdg / "superchat" / "superchat.db"


@pytest.mark.parametrize("value", ["", "relative/dir"])
def test_empty_or_relative_xdg_is_ignored(home, value):
    assert load(home, XDG_DATA_HOME=value).data_dir == home / ".local" / "share" / "superchat"


def test_empty_database_path_in_file_means_data_dir(home, cfg_file, tmp_path):
    c = load_file(home, cfg_file, '[server]\ndatabase_path = ""\n', XDG_DATA_HOME=str(tmp_path / "x"))
    assert c.database_path == tmp_path / "x" / "superchat" / "superchat.db"


# --- environment ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "field", "expected"),
    [
        ("SUPERCHAT_SERVER_TCP_PORT", "7001", "tcp_port", 7001),
        ("SUPERCHAT_SERVER_SSH_PORT", "0", "ssh_port", 0),
        ("SUPERCHAT_SERVER_HTTP_PORT", "9000", "http_port", 9000),
        ("SUPERCHAT_SERVER_SSH_HOST_KEY", "/k", "ssh_host_key", "/k"),
        ("SUPERCHAT_SERVER_BIND_ADDRESS", "127.0.0.1", "bind_address", "127.0.0.1"),
        ("SUPERCHAT_SERVER_DATABASE_PATH", "/var/db/x.db", "database_path", Path("/var/db/x.db")),
        ("SUPERCHAT_SERVER_ADMIN_USERS", "alice, bob,,carol ", "admin_users", ("alice", "bob", "carol")),
        ("SUPERCHAT_LIMITS_MAX_CONNECTIONS_PER_IP", "255", "max_connections_per_ip", 255),
        ("SUPERCHAT_LIMITS_MESSAGE_RATE_LIMIT", "30", "message_rate_limit", 30),
        ("SUPERCHAT_LIMITS_MAX_CHANNEL_CREATES", "1", "max_channel_creates", 1),
        ("SUPERCHAT_LIMITS_MAX_MESSAGE_LENGTH", "100", "max_message_length", 100),
        ("SUPERCHAT_LIMITS_MAX_NICKNAME_LENGTH", "12", "max_nickname_length", 12),
        ("SUPERCHAT_LIMITS_SESSION_TIMEOUT_SECONDS", "3600", "session_timeout_seconds", 3600),
        ("SUPERCHAT_LIMITS_MAX_THREAD_SUBSCRIPTIONS", "3", "max_thread_subscriptions", 3),
        ("SUPERCHAT_LIMITS_MAX_CHANNEL_SUBSCRIPTIONS", "4", "max_channel_subscriptions", 4),
        ("SUPERCHAT_RETENTION_DEFAULT_RETENTION_HOURS", "720", "default_retention_hours", 720),
        ("SUPERCHAT_RETENTION_CLEANUP_INTERVAL_MINUTES", "15", "cleanup_interval_minutes", 15),
        ("SUPERCHAT_DISCOVERY_DIRECTORY_ENABLED", "false", "directory_enabled", False),
        ("SUPERCHAT_DISCOVERY_PUBLIC_HOSTNAME", "h.example", "public_hostname", "h.example"),
        ("SUPERCHAT_DISCOVERY_SERVER_NAME", "Env Name", "server_name", "Env Name"),
        ("SUPERCHAT_DISCOVERY_SERVER_DESCRIPTION", "Env desc", "server_description", "Env desc"),
        ("SUPERCHAT_DISCOVERY_MAX_USERS", "1000", "max_users", 1000),
        ("SUPERCHAT_OBSERVABILITY_MAX_THREAD_SERIES", "0", "max_thread_series", 0),
    ],
)
def test_env_overrides_file(home, cfg_file, var, value, field, expected):
    c = load_file(home, cfg_file, FULL_FILE, **{var: value})
    assert getattr(c, field) == expected
    untouched = "max_users" if field != "max_users" else "tcp_port"
    assert getattr(c, untouched) == getattr(load_file(home, cfg_file, FULL_FILE), untouched)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("true", True), ("1", True), ("yes", True), ("TRUE", True),
        ("false", False), ("0", False), ("No", False),
    ],
)
def test_env_booleans(home, cfg_file, word, expected):
    start = "false" if expected else "true"
    text = f"[discovery]\ndirectory_enabled = {start}\n"
    c = load_file(home, cfg_file, text, SUPERCHAT_DISCOVERY_DIRECTORY_ENABLED=word)
    assert c.directory_enabled is expected


def test_empty_env_var_counts_as_unset(home, cfg_file):
    c = load_file(home, cfg_file, FULL_FILE, SUPERCHAT_SERVER_TCP_PORT="", SUPERCHAT_DISCOVERY_SERVER_NAME="")
    assert c.tcp_port == 7000
    assert c.server_name == "Test Server"


def test_env_is_read_from_the_mapping_not_os_environ(home, monkeypatch):
    monkeypatch.setenv("SUPERCHAT_SERVER_TCP_PORT", "1234")
    assert load(home).tcp_port == 6465


# --- flags ---------------------------------------------------------------------------


def test_flags_override_env_and_file(home, cfg_file, tmp_path):
    env = {
        "SUPERCHAT_SERVER_TCP_PORT": "7001",
        "SUPERCHAT_SERVER_DATABASE_PATH": "/env/db",
        "SUPERCHAT_SERVER_BIND_ADDRESS": "10.0.0.1",
        "SUPERCHAT_DISCOVERY_DIRECTORY_ENABLED": "true",
        "SUPERCHAT_DISCOVERY_SERVER_NAME": "Env Name",
        "SUPERCHAT_DISCOVERY_SERVER_DESCRIPTION": "Env desc",
    }
    c = load_file(
        home, cfg_file, FULL_FILE,
        "--port", "7002", "--db", "~/flag.db", "--bind", "::1", "--disable-directory",
        "--server-name", "Flag Name", "--server-description", "Flag desc",
        "--debug", "--announce-to", "superchat.win:6465, other.example:7000,",
        **env,
    )
    assert c.tcp_port == 7002
    assert c.database_path == home / "flag.db"
    assert c.bind_address == "::1"
    assert c.directory_enabled is False
    assert c.server_name == "Flag Name"
    assert c.server_description == "Flag desc"
    assert c.debug is True
    assert c.announce_to == ("superchat.win:6465", "other.example:7000")
    # Without the flags, the environment wins over the file.
    c = load_file(home, cfg_file, FULL_FILE, **env)
    assert (c.tcp_port, c.database_path, c.bind_address) == (7001, Path("/env/db"), "10.0.0.1")
    assert c.directory_enabled is True
    assert c.debug is False


def test_port_zero_flag_means_ephemeral(home):
    assert load(home, "--port", "0", "--bind", "127.0.0.1").tcp_port == 0


def test_empty_db_flag_means_data_dir(home, cfg_file):
    c = load_file(home, cfg_file, FULL_FILE, "--db", "")
    assert c.database_path == home / ".local" / "share" / "superchat" / "superchat.db"


def test_version_prints_and_returns_none(home, capsys):
    assert load(home, "--version") is None
    assert capsys.readouterr().out == f"SuperChat Server {__version__}\n"
    assert not (home / ".superchat").exists()


def test_version_wins_over_a_broken_config(home, cfg_file, capsys):
    assert load_file(home, cfg_file, "not toml at all", "--version") is None
    assert capsys.readouterr().out.startswith("SuperChat Server ")


def test_help_prints_and_returns_none(home, capsys):
    assert load(home, "--help") is None
    out = capsys.readouterr().out
    assert "--announce-to" in out and "--bind" in out


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\ntcp_port = 1\nfoo bar\n", "line 3"),
        ("[server]\ntcp_port = \n", "line 2"),
        ('[server]\nname = "unterminated\n', "line 2"),
        ('[server]\ntcp_port = "6465"\n', "server.tcp_port: expected an integer, got '6465'"),
        ("[server]\ntcp_port = 6465.0\n", "server.tcp_port: expected an integer"),
        ("[discovery]\nmax_users = true\n", "discovery.max_users: expected an integer, got true"),
        ("[discovery]\ndirectory_enabled = 1\n", "directory_enabled: expected true or false, got 1"),
        ("[discovery]\nserver_name = 5\n", "discovery.server_name: expected a string, got 5"),
        ("[server]\ntcp_port = 65536\n", "server.tcp_port: must be between 0 and 65535, got 65536"),
        ("[server]\nhttp_port = -1\n", "server.http_port: must be between 0 and 65535"),
        ("[limits]\nmax_nickname_length = 21\n", "limits.max_nickname_length: must be between 3 and 20"),
        ("[limits]\nmax_nickname_length = 2\n", "limits.max_nickname_length: must be between 3 and 20"),
        ("[limits]\nmax_message_length = 0\n", "limits.max_message_length: must be between 1 and 65535"),
        ("[limits]\nmax_message_length = 65536\n", "limits.max_message_length"),
        ("[limits]\nmessage_rate_limit = 0\n", "limits.message_rate_limit: must be between 1 and 65535"),
        ("[limits]\nsession_timeout_seconds = 0\n", "session_timeout_seconds: must be at least 1, got 0"),
        ("[limits]\nmax_connections_per_ip = 256\n", "limits.max_connections_per_ip"),
        ("[retention]\ncleanup_interval_minutes = -5\n", "cleanup_interval_minutes: must be at least 1"),
        ("[discovery]\nmax_users = -1\n", "discovery.max_users"),
        ('[server]\nadmin_users = "alice"\n', "server.admin_users: expected a list of strings"),
        ("[server]\nadmin_users = [1]\n", "server.admin_users: expected a string, got 1"),
        ('[server]\nadmin_users = ["alice", ""]\n', "server.admin_users: empty name in list"),
        ("[channels]\nseed_channels = 3\n", "channels.seed_channels: expected an array"),
        ('[channels]\nseed_channels = ["general"]\n', "channels.seed_channels: entry 0: expected a"),
        ('[channels]\nseed_channels = [{description = "x"}]\n', "entry 0: missing 'name'"),
        ("[channels]\nseed_channels = [{name = 5}]\n", "entry 0: expected a string, got 5"),
        ('[channels]\nseed_channels = [{name = "abc", description = 1}]\n', "entry 0: expected a string"),
        ('[channels]\nseed_channels = [{name = "ab"}]\n', "entry 0: name must be 3-50 bytes"),
        (
            '[channels]\nseed_channels = [{name = "abc"}, {name = "abc"}]\n',
            "channels.seed_channels: duplicate channel name 'abc'",
        ),
        ("server = 5\n", "server: expected a [server] table"),
    ],
)
def test_bad_file_content(home, cfg_file, text, expected):
    message = config_error(load_file, home, cfg_file, text)
    assert message.startswith(f"{cfg_file}: ")
    assert expected in message


def test_syntax_error_message_is_readable(home, cfg_file):
    message = config_error(load_file, home, cfg_file, "[server]\ntcp_port = 1\nfoo bar\n")
    assert message == f"{cfg_file}: line 3, column 5: expected '=' after a key in a key/value pair"


def test_file_that_is_not_utf8(home, cfg_file):
    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_bytes(b'[server]\nssh_host_key = "\xff"\n')
    message = config_error(load, home, "--config", str(cfg_file))
    assert message.startswith(f"{cfg_file}: ")
    assert "UTF-8" in message


def test_config_path_that_is_a_directory(home, tmp_path):
    message = config_error(load, home, "--config", str(tmp_path))
    assert message.startswith(f"{tmp_path}: cannot read")


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("SUPERCHAT_LIMITS_MESSAGE_RATE_LIMIT", "abc", "expected an integer, got 'abc'"),
        ("SUPERCHAT_SERVER_TCP_PORT", "1_000", "expected an integer, got '1_000'"),
        ("SUPERCHAT_SERVER_TCP_PORT", "1\n2", "expected an integer, got '1\\n2'"),
        ("SUPERCHAT_SERVER_TCP_PORT", "99999", "must be between 0 and 65535, got 99999"),
        ("SUPERCHAT_LIMITS_MAX_NICKNAME_LENGTH", "2", "must be between 3 and 20, got 2"),
        ("SUPERCHAT_LIMITS_SESSION_TIMEOUT_SECONDS", "0", "must be at least 1, got 0"),
        ("SUPERCHAT_DISCOVERY_DIRECTORY_ENABLED", "maybe", "expected true/false/1/0/yes/no, got 'maybe'"),
        ("SUPERCHAT_DISCOVERY_MAX_USERS", "4294967296", "must be between 0 and 4294967295, got 4294967296"),
        ("SUPERCHAT_OBSERVABILITY_MAX_THREAD_SERIES", "-1", "must be at least 0, got -1"),
    ],
)
def test_bad_env_value(home, var, value, expected):
    assert config_error(load, home, **{var: value}) == f"{var}: {expected}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "abc"], "--port: expected an integer, got 'abc'"),
        (["--port", "65536"], "--port: must be between 0 and 65535, got 65536"),
        (["--port", "-1"], "--port: must be between 0 and 65535, got -1"),
        (["--port"], "--port: expected one argument"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--debug=yes"], "--debug: ignored explicit argument 'yes'"),
        (["extra"], "unrecognized arguments: extra"),
    ],
)
def test_bad_flags(home, argv, expected):
    assert config_error(load, home, *argv) == expected


# --- discovery intervals and directories to announce to -------------------------------------------


def test_discovery_interval_defaults(home):
    c = load(home)
    assert (c.heartbeat_interval_seconds, c.health_check_interval_seconds) == (300, 300)


def test_discovery_intervals_from_file_and_environment(home, cfg_file):
    text = "[discovery]\nheartbeat_interval_seconds = 60\nhealth_check_interval_seconds = 30\n"
    c = load_file(home, cfg_file, text)
    assert (c.heartbeat_interval_seconds, c.health_check_interval_seconds) == (60, 30)
    c = load_file(home, cfg_file, text, SUPERCHAT_DISCOVERY_HEARTBEAT_INTERVAL_SECONDS="1",
                  SUPERCHAT_DISCOVERY_HEALTH_CHECK_INTERVAL_SECONDS="2")
    assert (c.heartbeat_interval_seconds, c.health_check_interval_seconds) == (1, 2)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("SUPERCHAT_DISCOVERY_HEARTBEAT_INTERVAL_SECONDS", "0", "must be between 1 and 4294967295, got 0"),
        ("SUPERCHAT_DISCOVERY_HEARTBEAT_INTERVAL_SECONDS", "4294967296", "must be between 1 and 4294967295"),
        ("SUPERCHAT_DISCOVERY_HEALTH_CHECK_INTERVAL_SECONDS", "0", "must be at least 1, got 0"),
        ("SUPERCHAT_DISCOVERY_HEALTH_CHECK_INTERVAL_SECONDS", "soon", "expected an integer, got 'soon'"),
    ],
)
def test_bad_discovery_intervals(home, var, value, expected):
    assert config_error(load, home, **{var: value}).startswith(f"{var}: {expected}")


def test_bad_discovery_interval_in_file(home, cfg_file):
    message = config_error(load_file, home, cfg_file, "[discovery]\nhealth_check_interval_seconds = 0\n")
    assert message == f"{cfg_file}: discovery.health_check_interval_seconds: must be at least 1, got 0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("superchat.win", ("superchat.win", 6465)),
        ("superchat.win:7000", ("superchat.win", 7000)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("[2001:db8::1]:7000", ("2001:db8::1", 7000)),
        ("[2001:db8::1]", ("2001:db8::1", 6465)),
        ("2001:db8::1", ("2001:db8::1", 6465)),
    ],
)
def test_directory_addresses(text, expected):
    assert directory_address(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("dir.example:http", "--announce-to: expected an integer, got 'http'"),
        ("dir.example:0", "--announce-to: port must be between 1 and 65535, got 0"),
        ("ok.example, dir.example:65536", "--announce-to: port must be between 1 and 65535, got 65536"),
        (":6465", "--announce-to: missing host in ':6465'"),
        ("[::1]x", "--announce-to: expected [ipv6]:port, got '[::1]x'"),
    ],
)
def test_bad_announce_to_flag(home, value, expected):
    assert config_error(load, home, "--announce-to", value) == expected


def test_redis_without_a_shared_database_is_refused(home, cfg_file):
    message = config_error(load, home, "--config", str(cfg_file), "--redis", "redis://127.0.0.1:6379")
    assert message.startswith("cluster.redis_url: ") and "database_url" in message
    clustered = load(home, "--config", str(cfg_file), "--redis", "redis://127.0.0.1:6379",
                     "--db", "postgresql://scd@127.0.0.1/superchat", "--port", "7000")
    assert clustered.redis_url == "redis://127.0.0.1:6379" and clustered.node_id.endswith(":7000")
