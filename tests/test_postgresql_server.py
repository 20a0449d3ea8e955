"""The real scd on PostgreSQL: the protocol works as on SQLite, several servers share one database
without losing or reordering anything, and the server rides out an outage of the database."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing

import psycopg2
import pytest

from superchat.config import ConfigError, load_config
from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client
from tests.postgres_server import PostgresServer
from tests.server_process import REPO, SCD, ServerProcess, free_port, isolated_env

pytestmark = pytest.mark.timeout(120)

ADMIN = "boss"
SETTINGS = {
    "server": {"admin_users": [ADMIN]},
    "limits": {"message_rate_limit": 65535, "max_channel_creates": 65535},
}
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def postgres():
    # Commit timestamps tell in which order posts committed.
    server = PostgresServer(track_commit_timestamp="on").start()
    yield server
    server.stop()


@pytest.fixture
def database(postgres) -> str:
    """A fresh, empty database on the module's server."""
    name = f"chat_{next(_databases)}"
    postgres.create_database(name)
    return name


@pytest.fixture
def start_scd(start_server, postgres, database):
    """Start another scd on the test's database (or on ``url``)."""

    def start(url: str | None = None) -> ServerProcess:
        return start_server(SETTINGS, ("--db", url or postgres.url(database)))

    return start


@pytest.fixture
def open_client():
    clients: list[Client] = []

    def open_(server: ServerProcess, nickname: str | None = None, register: bool = False) -> Client:
        client = Client(server.port)
        clients.append(client)
        client.handshake(None if register else nickname)
        if register:
            client.register(nickname, pw(nickname))
        return client

    yield open_
    for client in clients:
        client.close()


def pw(word: str) -> str:
    return base64.b64encode(hashlib.sha256(word.encode()).digest()).decode().rstrip("=")


def query(postgres: PostgresServer, database: str, sql: str) -> list[tuple]:
    with closing(psycopg2.connect(**postgres.connect_args(database))) as db, db.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def roots(client: Client, channel_id: int) -> list:
    client.send(m.ListMessages(channel_id=channel_id, limit=1000))
    return client.expect(m.MessageList).messages


def wait_for_blocked_writes(postgres: PostgresServer, database: str, count: int, *statements: str) -> None:
    """Until ``count`` backends wait on a lock, each in a statement starting with one of ``statements``."""
    starts = " OR ".join(f"query LIKE '{statement}%'" for statement in statements)
    waiting = f"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND ({starts})"
    deadline = time.monotonic() + 10
    while query(postgres, database, waiting) != [(count,)]:
        assert time.monotonic() < deadline, f"{count} writes never waited together"
        time.sleep(0.02)


def test_posts_threads_edits_and_deletes(postgres, database, start_scd, open_client):
    # postgres:// is libpq's other spelling; trust authentication never asks for the password.
    server = start_scd(f"postgres://postgres:hunter2@127.0.0.1:{postgres.port}/{database}")
    log = server.wait_for_log("Database: ")
    assert f"Database: postgres://postgres:***@127.0.0.1:{postgres.port}/{database}\n" in log
    assert "hunter2" not in log

    author = open_client(server, "author", register=True)
    general = author.channel_id("general")
    root = author.post(general, "root")
    reply = author.post(general, "reply", parent_id=root)
    nested = author.post(general, "nested", parent_id=reply)
    second = author.post(general, "second root")
    assert root < reply < nested < second

    author.send(m.EditMessage(message_id=root, new_content="root, edited"))
    edited = author.expect(m.MessageEdited)
    assert (edited.success, edited.message_id, edited.new_content) == (True, root, "root, edited")
    author.send(m.DeleteMessage(message_id=second))
    assert author.expect(m.MessageDeleted).message_id == second

    (listed,) = roots(author, general)
    assert (listed.id, listed.content, listed.reply_count, listed.edited_at) == (root, "root, edited", 1,
                                                                                 edited.edited_at)
    author.send(m.ListMessages(channel_id=general, limit=50, parent_id=root))
    thread = author.expect(m.MessageList).messages
    assert [(entry.id, entry.parent_id, entry.content) for entry in thread] == [
        (reply, root, "reply"), (nested, reply, "nested")]


def test_database_size_is_what_postgresql_counts(postgres, database, start_scd, open_client):
    server = start_scd()
    author = open_client(server, "author")
    general = author.channel_id("general")
    for n in range(100):
        author.post(general, str(n % 10) * 4000)
    deadline = time.monotonic() + 20
    while True:
        _, _, body = server.http_get("/metrics")
        (line,) = [line for line in body.decode().splitlines() if line.startswith("superchat_database_size_bytes ")]
        reported = float(line.split()[1])
        ((counted,),) = query(postgres, database, "SELECT pg_database_size(current_database())")
        # Measured every few seconds; only what PostgreSQL writes back meanwhile (hint bits,
        # autovacuum) can keep the two apart once it has caught up with the posts.
        if abs(reported - counted) <= 64 * 1024:
            break
        assert time.monotonic() < deadline, (reported, counted)
        time.sleep(0.2)


def test_data_survives_a_restart_and_a_deleted_seed_channel_stays_deleted(start_scd, open_client):
    server = start_scd()
    server.create_admin(ADMIN, pw(ADMIN))
    admin = open_client(server)
    assert admin.login(ADMIN, pw(ADMIN)).success
    general, tech = admin.channel_id("general"), admin.channel_id("tech")
    before = [admin.post(general, f"before {number}") for number in range(3)]
    admin.send(m.DeleteChannel(channel_id=tech, reason="unused"))
    assert admin.expect(m.ChannelDeleted).success
    admin.close()
    assert server.stop() == 0

    server.start()
    client = open_client(server, "returning")
    assert client.channel_id("general") == general
    with pytest.raises(AssertionError, match="no channel named tech"):
        client.channel_id("tech")
    after = client.post(general, "after")
    assert after > before[-1]
    assert [entry.id for entry in roots(client, general)] == [*before, after]


def test_two_servers_creating_one_channel_at_once(postgres, database, start_scd, open_client):
    first, second = start_scd(), start_scd()
    alice, bob = open_client(first, "alice", register=True), open_client(second, "bob", register=True)
    # Each round, both servers find the name free before either inserts it: a lock held here makes
    # both inserts wait, so the database itself must turn one away.
    for round_number in range(3):
        name = f"race{round_number}"
        with closing(psycopg2.connect(**postgres.connect_args(database))) as blocker:
            with blocker.cursor() as cursor:
                cursor.execute('LOCK TABLE "Channel" IN SHARE ROW EXCLUSIVE MODE')
                for client in (alice, bob):
                    client.send(m.CreateChannel(name=name, display_name=f"#{name}", channel_type=1,
                                                retention_hours=24))
                wait_for_blocked_writes(postgres, database, 2, 'INSERT INTO "Channel"')
            blocker.commit()
        replies = sorted((alice.expect(m.ChannelCreated), bob.expect(m.ChannelCreated)), key=lambda r: r.success)
        assert [reply.success for reply in replies] == [False, True]
        assert replies[0].message == "Channel name already exists"
        assert replies[1].name == name
    assert query(postgres, database, "SELECT count(*) FROM \"Channel\" WHERE name LIKE 'race%'") == [(3,)]


def test_two_servers_registering_one_nickname_at_once(postgres, database, start_scd, open_client):
    first, second = start_scd(), start_scd()
    clients = open_client(first, "twin"), open_client(second, "twin")
    with closing(psycopg2.connect(**postgres.connect_args(database))) as blocker:
        with blocker.cursor() as cursor:
            cursor.execute('LOCK TABLE "User" IN SHARE ROW EXCLUSIVE MODE')
            for client in clients:
                client.send(m.RegisterUser(password=pw("twin")))
            # The first waits to insert; the second waits for the nickname lock the first holds.
            wait_for_blocked_writes(postgres, database, 2, 'INSERT INTO "User"', "SELECT pg_advisory_xact_lock")
        blocker.commit()
    replies = sorted((client.expect(m.RegisterResponse) for client in clients), key=lambda r: r.success)
    assert [reply.success for reply in replies] == [False, True]
    assert replies[0].message == "Nickname already registered"


def test_posts_from_two_servers_into_one_channel_keep_commit_order(postgres, database, start_scd, open_client):
    servers = start_scd(), start_scd()
    posters = [open_client(server, f"p{index}{number}") for index, server in enumerate(servers) for number in range(3)]
    general = posters[0].channel_id("general")
    acknowledged: list[int] = []

    def post_all(client: Client) -> None:
        acknowledged.extend(client.post(general, f"{number}") for number in range(25))

    threads = [threading.Thread(target=post_all, args=(client,)) for client in posters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(acknowledged) == len(set(acknowledged)) == 6 * 25

    for server in servers:
        listed = [entry.id for entry in roots(open_client(server, "reader"), general)]
        assert listed == sorted(acknowledged)  # every post once, and in id order on both servers
    # The order the posts committed in is their id order: a reader paging by id misses none.
    committed = query(postgres, database, 'SELECT pg_xact_commit_timestamp(xmin) FROM "Message" ORDER BY id')
    assert [stamp for (stamp,) in committed] == sorted(stamp for (stamp,) in committed)


# As scd runs it: gevent's monkey-patching, and psycopg2 waiting through gevent.
GREENLETS = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from superchat.storage import green; green.install()
    import gevent, psycopg2
    from superchat.storage import Store

    store = Store(sys.argv[2])
    blocker = psycopg2.connect(sys.argv[2])
    cursor = blocker.cursor()
    cursor.execute('LOCK TABLE "User" IN SHARE ROW EXCLUSIVE MODE')
    stuck = [gevent.spawn(store.create_user, f"stuck{number}", "", 0) for number in range(30)]
    gevent.sleep(1)
    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    (waiting,) = cursor.fetchone()
    running = sum(not greenlet.dead for greenlet in stuck)
    gevent.killall(stuck)
    blocker.commit()
    again = [gevent.spawn(store.create_user, f"again{number}", "", 0) for number in range(30)]
    gevent.joinall(again, timeout=5)
    cursor.execute('SELECT count(*) FROM "User"')
    print(json.dumps({"waiting": waiting, "running": running, "killed_cleanly": all(g.successful() for g in stuck),
                      "again": sum(g.successful() for g in again), "users": cursor.fetchone()[0]}))
""")


def test_greenlets_share_the_pool_and_killed_ones_give_their_connection_back(postgres, database):
    done = subprocess.run([sys.executable, "-c", GREENLETS, str(REPO), postgres.url(database)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr
    # 20 calls hold the pool's 20 connections, the other 10 wait for one rather than fail; killed,
    # they leave nothing behind: no connection held, no user half made.
    assert json.loads(done.stdout) == {"waiting": 20, "running": 30, "killed_cleanly": True, "again": 30,
                                       "users": 30}


# The database goes silent: the store's connection is cut, and the server, stopped, takes new
# connections without ever answering them. 25 callers then each need a connection of their own.
SILENT_DATABASE = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from superchat.storage import green; green.install()
    import gevent, psycopg2
    from superchat.storage import StorageError, Store

    store = Store(sys.argv[2])
    admin = psycopg2.connect(sys.argv[2])
    admin.autocommit = True
    admin.cursor().execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                           " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    admin.close()

    def call():
        try:
            store.list_users(1)
        except StorageError as exc:
            return round(time.monotonic() - started, 1), str(exc)
        return round(time.monotonic() - started, 1), None

    os.kill(int(sys.argv[3]), signal.SIGSTOP)
    try:
        started = time.monotonic()
        callers = [gevent.spawn(call) for _ in range(25)]
        gevent.joinall(callers, timeout=50)
    finally:
        os.kill(int(sys.argv[3]), signal.SIGCONT)
    print(json.dumps([caller.value for caller in callers]))
""")


def test_callers_of_a_silent_database_fail_together_not_one_after_another(postgres, database):
    postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
    try:
        done = subprocess.run([sys.executable, "-c", SILENT_DATABASE, str(REPO), postgres.url(database),
                               str(postmaster)], capture_output=True, text=True, timeout=60)
    finally:
        os.kill(postmaster, signal.SIGCONT)
    assert done.returncode == 0 and not done.stderr, done.stderr
    calls = json.loads(done.stdout)
    assert [error for _, error in calls] == ["PostgreSQL did not answer within 5 s (connecting)"] * 25
    # The pool's 20 connections are opened together, each failing at the 5 s bound, not one after
    # the other (5, 10 ... 100 s); the other 5 callers wait for a place, and then fail together too.
    seconds = sorted(seconds for seconds, _ in calls)
    assert seconds[19] < 1.5 * 5 <= seconds[20] and seconds[-1] < 3 * 5, calls


# A name server that knows db.example.test, and answers for it only when told to.
STALLED_NAME_SERVER = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from superchat.storage import green; green.install()
    import gevent, gevent.event
    from gevent.resolver.thread import Resolver
    from superchat.storage import Store

    class StalledNameServer(Resolver):
        asked = gevent.event.Event()
        answer = gevent.event.Event()

        def getaddrinfo(self, host, *args, **kwargs):
            if host != "db.example.test":
                return super().getaddrinfo(host, *args, **kwargs)
            self.asked.set()
            self.answer.wait()
            return super().getaddrinfo("127.0.0.1", *args, **kwargs)

    names = gevent.get_hub().resolver = StalledNameServer()
    opening = gevent.spawn(Store, sys.argv[2])
    # This greenlet runs on while the other waits for the name: the lookup does not hold the hub.
    asked = names.asked.wait(timeout=10)
    names.answer.set()
    store = opening.get(timeout=10)
    store.create_user("alice", "", 0)
    print(json.dumps({"asked": asked, "user": store.get_user_by_nickname("alice").nickname}))
""")


def test_the_database_host_is_looked_up_without_holding_up_other_greenlets(postgres, database):
    url = f"postgresql://postgres@db.example.test:{postgres.port}/{database}"
    done = subprocess.run([sys.executable, "-c", STALLED_NAME_SERVER, str(REPO), url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert json.loads(done.stdout) == {"asked": True, "user": "alice"}


def test_the_server_rides_out_a_database_outage(tmp_path, open_client):
    postgres = PostgresServer().start()
    try:
        postgres.create_database("outage")
        server = ServerProcess(tmp_path / "scd", SETTINGS, ("--db", postgres.url("outage"))).start()
        client = open_client(server, "survivor")
        general = client.channel_id("general")
        before = client.post(general, "before the outage")

        postgres.shut_down()
        for number in range(3):  # pipelined: they fail together, or one after the other
            client.send(m.PostMessage(channel_id=general, content=f"during the outage {number}"))
        for _ in range(3):
            assert client.expect_error(ErrorCode.DATABASE_ERROR).message == "Database error"
        client.assert_silent()  # nothing acknowledged
        client.send(m.Ping(timestamp=5))
        assert client.expect(m.Pong).client_timestamp == 5
        status, _, body = server.http_get("/health")
        health = json.loads(body)
        assert (status, health["status"]) == (503, "error")
        assert health["database"].startswith("error: connection to server on socket"), health
        assert "post_message failed: database error: " in server.wait_for_log("post_message failed")
        # The size, which cannot be read now, is NaN within a measuring interval.
        deadline = time.monotonic() + 20
        while "\nsuperchat_database_size_bytes NaN\n" not in server.http_get("/metrics")[2].decode():
            assert time.monotonic() < deadline, "the database size stayed a number"
            time.sleep(0.2)

        postgres.start_again()
        after = client.post(general, "after the outage")
        assert [entry.id for entry in roots(client, general)] == [before, after]
        assert server.http_get("/health")[0] == 200
        while "\nsuperchat_database_size_bytes NaN\n" in server.http_get("/metrics")[2].decode():
            assert time.monotonic() < deadline + 20, "the database size stayed NaN after the outage"
            time.sleep(0.2)
        assert server.stop() == 0
    finally:
        postgres.stop()


def test_an_unreachable_database_stops_the_start_with_one_line(tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    result = subprocess.run([sys.executable, str(SCD), "--config", str(tmp_path / "config.toml"), "--db", url,
                             "--port", "0", "--metrics-port", "0", "--pprof-port", "0", "--bind", "127.0.0.1"],
                            env=isolated_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"scd: cannot start: {url}: Connection refused"]


def test_a_database_that_never_answers_stops_the_start_within_seconds(tmp_path):
    # It takes connections and says nothing, as a host behind a firewall that drops packets seems to.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/nowhere"
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(SCD), "--config", str(tmp_path / "config.toml"), "--db", url,
                                 "--port", "0", "--metrics-port", "0", "--pprof-port", "0", "--bind", "127.0.0.1"],
                                env=isolated_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"scd: cannot start: {url}: PostgreSQL did not answer within 5 s (connecting)"]
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("argv, environ, url, path", [
    (["--db", "postgresql://u@db.example/chat"], {}, "postgresql://u@db.example/chat", None),
    (["--db", "postgres://u@db.example/chat"], {}, "postgres://u@db.example/chat", None),
    ([], {"SUPERCHAT_SERVER_DATABASE_URL": "postgresql://env/chat"}, "postgresql://env/chat", None),
    # A file named on the command line wins over a URL from the environment.
    (["--db", "/srv/chat.db"], {"SUPERCHAT_SERVER_DATABASE_URL": "postgresql://env/chat"}, "", "/srv/chat.db"),
])
def test_db_flag_and_variable_choose_the_database(tmp_path, argv, environ, url, path):
    config = load_config(["--config", str(tmp_path / "config.toml"), *argv], {"HOME": str(tmp_path), **environ})
    assert config.database_url == url
    assert str(config.database_path) == (path or str(tmp_path / ".local/share/superchat/superchat.db"))


def test_a_database_url_of_another_kind_is_one_line_without_the_password(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_config(["--config", str(tmp_path / "config.toml"), "--db", "mysql://root:secret@db/chat"],
                    {"HOME": str(tmp_path)})
    assert str(refused.value) == "--db: expected a URL starting with postgresql:// or postgres://, got a mysql:// URL"
