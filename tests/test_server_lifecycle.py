"""Start, stop, crash and restart: nothing acknowledged is lost; bad configuration is one clear line."""

import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from superchat.protocol import messages as m
from tests.client import Client, ConnectionClosed
from tests.server_process import SCD, ServerProcess, isolated_env

pytestmark = pytest.mark.timeout(120)


def listing(client: Client, channel_id: int) -> list:
    client.send(m.ListMessages(channel_id=channel_id, limit=1000))
    return client.expect(m.MessageList).messages


def test_messages_survive_a_clean_restart(start_server, tmp_path):
    server = start_server()
    with Client(server.port) as client:
        client.handshake("keeper")
        general = client.channel_id("general")
        root = client.post(general, "before restart")
        reply = client.post(general, "a reply", parent_id=root)
    assert server.stop() == 0

    server.start()
    with Client(server.port) as client:
        client.handshake("keeper")
        entries = listing(client, general)
        assert [(e.id, e.content, e.reply_count) for e in entries] == [(root, "before restart", 1)]
        client.send(m.ListMessages(channel_id=general, limit=10, parent_id=root))
        assert [e.id for e in client.expect(m.MessageList).messages] == [reply]
        assert client.post(general, "after restart") > reply


def test_kill_9_loses_no_acknowledged_post(start_server):
    server = start_server({"limits": {"message_rate_limit": 60000}})
    acknowledged: set[int] = set()
    lock = threading.Lock()

    def post_until_killed(name: str, channel_id: int) -> None:
        with Client(server.port) as client:
            client.handshake(name)
            try:
                for i in range(2000):
                    # Pipelined, so acknowledgements come from batched commits.
                    client.send(m.PostMessage(channel_id=channel_id, content=f"{name} {i}"))
                    if i % 10 == 9:
                        for _ in range(10):
                            posted = client.expect(m.MessagePosted, timeout=10)
                            with lock:
                                acknowledged.add(posted.message_id)
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError, TimeoutError, OSError):
                pass

    with Client(server.port) as probe:
        probe.handshake("probe")
        general = probe.channel_id("general")
    posters = [threading.Thread(target=post_until_killed, args=(f"poster{n}", general)) for n in range(4)]
    for thread in posters:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    for thread in posters:
        thread.join(30)
    assert len(acknowledged) >= 300

    server.start()
    with Client(server.port) as client:
        client.handshake("auditor")
        stored = {e.id for e in listing(client, general)}
    missing = acknowledged - stored
    assert not missing, f"{len(missing)} acknowledged posts lost"


def test_sigterm_tells_clients_and_exits_cleanly(start_server):
    server = start_server()
    client = Client(server.port)
    client.handshake("leaver")
    assert server.stop(signal.SIGTERM) == 0
    goodbye = client.expect(m.Disconnect)
    assert goodbye.reason == "Server shutting down"
    client.wait_closed()
    log = server.log_text()
    assert "Graceful shutdown complete" in log


def test_the_server_runs_with_its_interpreter_settings_and_says_so(start_server):
    # CPython's own are a 5 ms switch interval and thresholds 700, 10, 10 (superchat/server/runtime.py).
    server = start_server()
    log = server.wait_for_log("Interpreter: ")
    assert "the hub polls its sockets at least every 1 ms" in log
    assert "garbage collection thresholds 20000, 10, 10" in log


def test_sigint_also_shuts_down_cleanly(start_server):
    server = start_server()
    assert server.stop(signal.SIGINT) == 0


def test_retention_removes_expired_threads_at_start(start_server):
    server = start_server()
    with Client(server.port) as client:
        client.handshake("ancient")
        chat, general = client.channel_id("chat"), client.channel_id("general")
        old_chat = client.post(chat, "old chat line")
        fresh_chat = client.post(chat, "fresh chat line")
        old_root = client.post(general, "two days old")
        old_reply = client.post(general, "reply to it", parent_id=old_root)
    server.stop()

    two_days_ago = int((time.time() - 2 * 86400) * 1000)
    database = sqlite3.connect(server.data_dir / "superchat.db")
    with database:
        database.execute("UPDATE message SET created_at = ? WHERE id IN (?, ?, ?)",
                         (two_days_ago, old_chat, old_root, old_reply))
    database.close()

    server.start()
    with Client(server.port) as client:
        client.handshake("ancient")
        assert [e.id for e in listing(client, chat)] == [fresh_chat]  # chat keeps 24 hours
        assert [e.id for e in listing(client, general)] == [old_root]  # forums keep 7 days
    server.wait_for_log("Cleaned up 1 expired messages")


def run_scd(tmp_path, *args, config_text=None):
    config = tmp_path / "config.toml"
    if config_text is not None:
        config.write_text(config_text)
    return subprocess.run([sys.executable, str(SCD), "--config", str(config), *args],
                          env=isolated_env(tmp_path), capture_output=True, text=True, timeout=30)


def test_version_flag(tmp_path):
    result = run_scd(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("SuperChat Server ")


@pytest.mark.parametrize("args, config_text, culprit", [
    (("--port", "abc"), None, "--port"),
    (("--no-such-flag",), None, "--no-such-flag"),
    ((), "[limits\nmax_message_length = 5\n", "config.toml"),
    ((), "[limits]\nmessage_rate_limit = \"lots\"\n", "message_rate_limit"),
])
def test_bad_configuration_is_one_line_and_exit_2(tmp_path, args, config_text, culprit):
    result = run_scd(tmp_path, *args, config_text=config_text)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], result.stderr


def test_environment_overrides_reach_the_wire(tmp_path):
    server = ServerProcess(tmp_path)
    server.env_overrides = {"SUPERCHAT_LIMITS_MESSAGE_RATE_LIMIT": "77"}
    server.start()
    try:
        with Client(server.port) as client:
            assert client.expect(m.ServerConfig).max_message_rate == 77
    finally:
        server.kill()


def test_disable_directory_flag_reaches_the_wire(start_server):
    server = start_server(args=("--disable-directory",))
    with Client(server.port) as client:
        assert client.expect(m.ServerConfig).directory_enabled is False


def test_an_unusable_database_stops_the_start_with_one_line(tmp_path):
    database = tmp_path / "broken.db"
    database.write_bytes(b"this is not an SQLite database, not even close" * 100)
    result = run_scd(tmp_path, "--db", str(database), "--port", "0", "--bind", "127.0.0.1",
                     "--metrics-port", "0", "--pprof-port", "0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["scd: cannot start: file is not a database"]
