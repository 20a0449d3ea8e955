"""The schema migrations on a real PostgreSQL server: the same migration text as SQLite's."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import peewee
import pytest

from superchat import storage

pytestmark = pytest.mark.timeout(120)

LATEST = len(storage._MIGRATIONS)
MODELS = (
    storage._Channel,
    storage._User,
    storage._Message,
    storage._SSHKey,
    storage._Ban,
    storage._AdminAction,
    storage._ReadState,
    storage._DiscoveredServer,
)
_names = itertools.count(1)


@pytest.fixture
def database(postgres):
    """A fresh, empty database on the module's server."""
    name = f"scd_{next(_names)}"
    postgres.create_database(name)
    db = peewee.PostgresqlDatabase(**postgres.connect_args(name))
    db.connect()
    yield db
    db.close()


def version(db) -> int:
    return db.execute_sql('SELECT version FROM "SchemaVersion"').fetchone()[0]


def test_a_fresh_database_gets_every_table_as_the_models_read_them(database):
    storage._migrate(database)
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
    storage._migrate(database)
    with database.bind_ctx(MODELS):
        channel = storage._Channel.create(name="general", display_name="#general", channel_type=1,
                                          retention_hours=168, created_at=1)
        user = storage._User.create(nickname="alice", password_hash="", created_at=2)
        message = storage._Message.create(channel_id=channel.id, author_user_id=user.id, author_nickname="alice",
                                          content="hi", created_at=3_000_000_000_000, shadowed=True)
        storage._Ban.create(ban_type="user", user_id=user.id, reason="r", shadowban=True, banned_at=4,
                            banned_by="boss")
        stored = storage._Message.get_by_id(message.id)
    # Identity columns number each table's rows from 1; flags are booleans; milliseconds fit.
    assert (channel.id, user.id, message.id) == (1, 1, 1)
    assert (stored.shadowed, stored.created_at) == (True, 3_000_000_000_000)


def test_migrating_again_changes_nothing_and_a_newer_schema_is_refused(database):
    storage._migrate(database)
    storage._migrate(database)
    assert version(database) == LATEST
    database.execute_sql('UPDATE "SchemaVersion" SET version = 99')
    with pytest.raises(storage.StorageError, match="newer"):
        storage._migrate(database)


def test_servers_starting_together_migrate_once(postgres):
    name = f"scd_{next(_names)}"
    postgres.create_database(name)

    def start_one(_):
        db = peewee.PostgresqlDatabase(**postgres.connect_args(name))
        db.connect()
        try:
            storage._migrate(db)
            return version(db)
        finally:
            db.close()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(start_one, range(4))) == [LATEST] * 4
