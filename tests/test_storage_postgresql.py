"""The Store on a real PostgreSQL server: the schema migrations (the same migration text as
SQLite's), how it finds the server, and what it makes of a connection lost at commit."""

from __future__ import annotations

import itertools
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import peewee
import psycopg2
import pytest

from superchat.storage import MessageRow, NewPost, PostRejected, StorageError, Store, models, schema
from tests.tcp_relay import Relay

pytestmark = pytest.mark.timeout(120)

LATEST = len(schema.MIGRATIONS)
MODELS = (
    models.Channel,
    models.User,
    models.Message,
    models.SSHKey,
    models.Ban,
    models.AdminAction,
    models.ReadState,
    models.DiscoveredServer,
    models.NodeRun,
)
_names = itertools.count(1)


def new_database(postgres) -> str:
    """A fresh, empty database on the module's server; returns its name."""
    name = f"scd_{next(_names)}"
    postgres.create_database(name)
    return name


@pytest.fixture
def database(postgres):
    """A fresh, empty database on the module's server."""
    name = new_database(postgres)
    db = peewee.PostgresqlDatabase(**postgres.connect_args(name))
    db.connect()
    yield db
    db.close()


def version(db) -> int:
    return db.execute_sql('SELECT version FROM "SchemaVersion"').fetchone()[0]


def test_a_fresh_database_gets_every_table_as_the_models_read_them(database):
    schema.migrate(database)
    assert version(database) == LATEST
    for model in MODELS:
        table = model._meta.table_name
        columns = [row[0] for row in database.execute_sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
            (table,),
        ).fetchall()]
        assert columns == [f.column_name for f in model._meta.sorted_fields], table
    indexes = {row[0] for row in database.execute_sql("SELECT indexname FROM pg_indexes").fetchall()}
    assert {"idx_message_roots", "idx_message_parent", "idx_message_unread", "idx_ban_ip",
            "idx_discovered_server_last_seen"} <= indexes


def test_the_models_work_on_the_migrated_tables(database):
    schema.migrate(database)
    with database.bind_ctx(MODELS):
        channel = models.Channel.create(name="general", display_name="#general", channel_type=1,
                                          retention_hours=168, created_at=1)
        user = models.User.create(nickname="alice", password_hash="", created_at=2)
        message = models.Message.create(channel_id=channel.id, author_user_id=user.id, author_nickname="alice",
                                          content="hi", created_at=3_000_000_000_000, shadowed=True)
        models.Ban.create(ban_type="user", user_id=user.id, reason="r", shadowban=True, banned_at=4,
                            banned_by="boss")
        stored = models.Message.get_by_id(message.id)
    # Identity columns number each table's rows from 1; flags are booleans; milliseconds fit.
    assert (channel.id, user.id, message.id) == (1, 1, 1)
    assert (stored.shadowed, stored.created_at) == (True, 3_000_000_000_000)


def test_migrating_again_changes_nothing_and_a_newer_schema_is_refused(database):
    schema.migrate(database)
    schema.migrate(database)
    assert version(database) == LATEST
    database.execute_sql('UPDATE "SchemaVersion" SET version = 99')
    with pytest.raises(StorageError, match="newer"):
        schema.migrate(database)


def test_servers_starting_together_migrate_once(postgres):
    name = new_database(postgres)

    def start_one(_):
        db = peewee.PostgresqlDatabase(**postgres.connect_args(name))
        db.connect()
        try:
            schema.migrate(db)
            return version(db)
        finally:
            db.close()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(start_one, range(4))) == [LATEST] * 4


def query(postgres, name: str, sql: str) -> list[tuple]:
    with closing(psycopg2.connect(**postgres.connect_args(name))) as db, db.cursor() as cursor:
        db.autocommit = True
        cursor.execute(sql)
        return cursor.fetchall()


# The message psycopg2 sends for cursor.execute("COMMIT"): a simple query, 11 bytes long.
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class Network(Relay):
    """TCP between the Store and PostgreSQL. Told what to lose, it breaks the next connection that
    sends COMMIT: before the server gets it ("commit"), once the server has it, whether or not it is
    done ("connection"), or after the server answered it ("reply"). "link" breaks only the Store's
    side before the server gets the COMMIT: the server's side stays open, as behind a lost route."""

    lose: str | None = None
    stranded: list[socket.socket] = []

    def passing(self, data: bytes, server: socket.socket) -> bool:
        if COMMIT not in data or not self.lose:
            return True
        lose, self.lose = self.lose, None
        if lose == "link":
            self.stranded.append(server.dup())
        elif lose != "commit":
            server.sendall(data)
        if lose == "reply":
            server.recv(65536)  # the server has committed, and its answer goes nowhere
        return False


@pytest.fixture
def network(postgres):
    carrier = Network(postgres.port)
    yield carrier
    carrier.close()
    while carrier.stranded:
        carrier.stranded.pop().close()


@pytest.fixture
def store_over_network(postgres, network):
    """A Store whose connections cross ``network``, with a channel; returns the Store and its database."""
    name = new_database(postgres)
    store = Store(f"postgresql://postgres@127.0.0.1:{network.port}/{name}")
    store.create_channel("general", "#general", None, 1, 24, None)
    yield store, name
    store.close()


def batch(channel_id: int, *contents: str) -> list[NewPost]:
    return [NewPost(channel_id, None, None, None, "alice", content) for content in contents]


def test_a_batch_whose_commit_reply_is_lost_is_found_committed(postgres, network, store_over_network):
    store, name = store_over_network
    general = store.list_channels()[0].id
    network.lose = "reply"
    results = store.post_messages([*batch(general, "first", "second"), *batch(general + 1, "nowhere")])
    assert network.lose is None  # the reply was lost indeed
    first, second, rejected = results
    assert rejected is PostRejected.NO_CHANNEL
    assert isinstance(first, MessageRow) and isinstance(second, MessageRow)
    assert query(postgres, name, 'SELECT id, content FROM "Message" ORDER BY id') == [
        (first.id, "first"), (second.id, "second")]
    assert store.get_message(second.id) == second


def test_a_batch_whose_connection_breaks_while_the_server_commits_is_found_committed(
        postgres, network, store_over_network):
    store, name = store_over_network
    general = store.list_channels()[0].id
    # The commit takes a second: the connection is gone long before the server is done with it.
    query(postgres, name, """
        CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON "Message" DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION slow_commit();
        SELECT 1""")
    network.lose = "connection"
    (row,) = store.post_messages(batch(general, "slow"))
    assert network.lose is None
    assert query(postgres, name, 'SELECT id, content FROM "Message"') == [(row.id, "slow")]


def test_a_batch_whose_commit_never_reached_the_server_fails_and_stores_nothing(
        postgres, network, store_over_network):
    store, name = store_over_network
    general = store.list_channels()[0].id
    network.lose = "commit"
    with pytest.raises(StorageError, match="server closed the connection unexpectedly"):
        store.post_messages(batch(general, "lost"))
    assert network.lose is None
    assert query(postgres, name, 'SELECT content FROM "Message"') == []
    (after,) = store.post_messages(batch(general, "after"))
    assert query(postgres, name, 'SELECT id, content FROM "Message"') == [(after.id, "after")]


def test_a_batch_whose_link_broke_before_the_commit_is_rolled_back_without_waiting_for_the_server(
        postgres, network, store_over_network):
    """The server never hears of the COMMIT nor of the broken link: its backend would hold the
    batch's locks for hours. The check ends that backend instead of waiting behind it."""
    store, name = store_over_network
    general = store.list_channels()[0].id
    network.lose = "link"
    with pytest.raises(StorageError):
        store.post_messages(batch(general, "lost"))
    assert network.stranded and network.lose is None
    assert query(postgres, name, 'SELECT content FROM "Message"') == []
    assert query(postgres, name, "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'") == [
        (0,)]
    (after,) = store.post_messages(batch(general, "after"))
    assert query(postgres, name, 'SELECT id, content FROM "Message"') == [(after.id, "after")]


def test_a_host_name_is_looked_up_and_libpq_still_names_it(postgres):
    name = new_database(postgres)
    store = Store(f"postgresql://postgres@localhost:{postgres.port}/{name}")
    try:
        store.create_user("alice", "", 0)
        assert store.get_user_by_nickname("alice").nickname == "alice"
    finally:
        store.close()
    with pytest.raises(StorageError) as refused:
        Store(f"postgresql://postgres@nonexistent.invalid:{postgres.port}/{name}")
    (line,) = str(refused.value).splitlines()
    assert 'could not translate host name "nonexistent.invalid" to address' in line


def test_node_serials_grow_and_are_never_handed_out_again(postgres):
    name = new_database(postgres)
    store = Store(postgres.url(name))
    first, second = store.claim_node_serial("node-a"), store.claim_node_serial("node-a")
    store.close()
    assert 0 < first < second
    assert query(postgres, name, 'SELECT id, node_id FROM "node_runs" ORDER BY id') == [
        (first, "node-a"), (second, "node-a")]
    # Even when the newest runs are forgotten, their numbers stay used.
    query(postgres, name, 'DELETE FROM "node_runs" RETURNING id')
    reopened = Store(postgres.url(name))
    try:
        assert reopened.claim_node_serial("node-b") > second
    finally:
        reopened.close()
