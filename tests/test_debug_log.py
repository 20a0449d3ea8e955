"""debug.log under --debug: every frame in and out, broadcasts, group commits, sessions, cluster
events, never a secret; and nothing of it without --debug."""

import re
import sqlite3
import time
from contextlib import closing

import pytest

from superchat.protocol import messages as m
from tests.client import Client
from tests.redis_server import RedisServer
from tests.server_process import ServerProcess

pytestmark = pytest.mark.timeout(90)

PASSWORD = "secret-client-hash-" + "x" * 24


def session_of(client: Client, server: ServerProcess, nickname: str) -> int:
    line = server.wait_for_log(f"set nickname: {nickname}")
    return int(re.findall(rf"Session (\d+) set nickname: {nickname}\n", line)[-1])


def test_debug_log_tells_every_frame_broadcast_commit_and_session(start_server):
    server = start_server({"limits": {"message_rate_limit": 1000}}, ("--debug",))
    with Client(server.port) as poster, Client(server.port) as reader:
        poster.handshake("poster")
        reader.handshake("reader")
        poster_id, reader_id = session_of(poster, server, "poster"), session_of(reader, server, "reader")
        general = reader.channel_id("general")
        reader.subscribe_channel(general)
        poster.register("poster", PASSWORD)
        posted = poster.post(general, "hello")
        reader.expect(m.NewMessage)
        # A post that waits 300 ms for the database, held by another writer, is a slow request.
        with closing(sqlite3.connect(server.database, isolation_level=None)) as other_writer:
            other_writer.execute("BEGIN IMMEDIATE")
            poster.send(m.PostMessage(channel_id=general, content="held up"))
            time.sleep(0.3)
            other_writer.execute("ROLLBACK")
        poster.expect(m.MessagePosted)
    server.stop()
    debug = (server.data_dir / "debug.log").read_text()
    for line in (
        f"Session {poster_id} opened: 127.0.0.1:",
        f"Session {poster_id} <- SET_NICKNAME flags=0x00 length=",
        f"Session {poster_id} <- REGISTER_USER flags=0x00 length=",
        f"Session {poster_id} <- POST_MESSAGE flags=0x00 length=",
        f"Session {poster_id} -> SERVER_CONFIG flags=0x00 length=",
        f"Session {poster_id} -> MESSAGE_POSTED flags=0x00 length=",
        f"Session {reader_id} -> NEW_MESSAGE flags=0x00 length=",
        f"Broadcast NEW_MESSAGE message={posted} to 1 sessions in ",
        "Group commit: 1 posts (1 stored) in ",
        f"Session {poster_id} (poster) closed after ",
    ):
        assert f"[DEBUG] {line}" in debug, line
    # Frames are told by type and size, never by what they hold.
    for name in ("server.log", "debug.log", "errors.log"):
        text = (server.data_dir / name).read_text()
        assert PASSWORD not in text, name
    assert "[DEBUG]" not in (server.data_dir / "server.log").read_text()
    (slow,) = re.findall(rf"\[DEBUG\] Session {poster_id}: POST_MESSAGE took (\d+\.\d) ms", debug)
    assert float(slow) >= 300


def test_no_debug_line_anywhere_without_debug(start_server):
    server = start_server()
    with Client(server.port) as client:
        client.handshake("quiet")
        client.post(client.channel_id("general"), "hello")
    output = "\n".join(server.output)
    server.stop()
    assert not (server.data_dir / "debug.log").exists()
    assert "[DEBUG]" not in (server.data_dir / "server.log").read_text() and "[DEBUG]" not in output


def test_cluster_events_are_told_both_ways(tmp_path, postgres):
    redis = RedisServer().start()
    postgres.create_database("tracing")
    nodes: dict[str, ServerProcess] = {}
    try:
        nodes = {
            name: ServerProcess(tmp_path / name, {
                "server": {"database_url": postgres.url("tracing")},
                "cluster": {"redis_url": redis.url, "node_id": name},
            }, ("--debug",) if name == "a" else ()).start()
            for name in "ab"
        }
        with Client(nodes["a"].port) as on_a, Client(nodes["b"].port) as on_b:
            on_a.handshake("alpha")
            on_b.handshake("bravo")
            general = on_a.channel_id("general")
            on_a.subscribe_channel(general)
            on_a.post(general, "from a")
            on_b.post(general, "from b")
            on_a.expect(m.NewMessage)
            on_a.expect(m.NewMessage)
        for node in nodes.values():
            node.stop()
        debug = (nodes["a"].data_dir / "debug.log").read_text()
        assert "[DEBUG] Cluster event out: deliver (node a)" in debug
        assert "[DEBUG] Cluster event in: deliver (node b)" in debug
    finally:
        for node in nodes.values():
            node.kill()
        redis.destroy()
