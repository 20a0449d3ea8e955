"""The builder of upstream-format databases (tests/upstream_db.py) against the facts of upstream's
server, and against the schema and row kinds recorded from a database a real upstream server wrote
(tests/upstream_schema.json: how it was recorded is in its "_recorded" field)."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import bcrypt
import pytest

from superchat.sshkeys import parse_public_key
from tests import upstream_db as up

pytestmark = pytest.mark.timeout(60)

RECORDED = json.loads((Path(__file__).parent / "upstream_schema.json").read_text())
MIGRATION_NAMES = ["initial", "add_user_table", "user_created_channels", "add_discovered_server", "add_ssh_keys",
                   "add_channel_count_to_discovered_server", "add_admin_tables", "add_user_channel_state",
                   "fix_user_channel_state_nulls"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A community written and closed as a stopped upstream server leaves it."""
    path = tmp_path_factory.mktemp("upstream") / "superchat.db"
    db = up.UpstreamDatabase(path, up.now_ms() - 41 * 86_400_000)  # set up before the first account
    community = up.fill_community(db)
    db.close()
    return path, community


def read(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    db = up.open_copy(path, path.parent / "read")
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


@pytest.fixture(autouse=True)
def _read_folder(built):
    folder = built[0].parent / "read"
    folder.mkdir(exist_ok=True)
    yield
    for child in folder.iterdir():
        child.unlink()


def test_snowflakes_and_times_round_trip():
    at = up.ms("2025-03-04T05:06:07.089Z")
    assert at == up.ms("2025-03-04T05:06:07.089+00:00") == up.ms("2025-03-04 05:06:07.089")
    assert up.snowflake(at) == (at - 1704067200000) << 22
    for seq, worker in ((0, 0), (1, 0), (4095, 0), (7, 3)):
        message_id = up.snowflake(at, worker, seq)
        assert up.snowflake_ms(message_id) == at and message_id & 0xFFF == seq and (message_id >> 12) & 0x3FF == worker
    assert up.snowflake(at) < up.snowflake(at, seq=1) < up.snowflake(at + 1)
    # An id the real upstream server gave a message it stamped 1796365651590 ms.
    assert up.snowflake(1796365651590) == 387127764697743360


def test_helpers_make_what_upstream_stores():
    secret = up.client_hash("someone")
    assert secret == up.client_hash("someone") != up.client_hash("another")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    stored = up.upstream_bcrypt(secret)
    assert stored.startswith("$2a$10$") and len(stored) == 60 and bcrypt.checkpw(secret.encode(), stored.encode())
    line = up.ed25519_public_key("me@home")
    assert line.startswith("ssh-ed25519 ") and line.endswith(" me@home") and line != up.ed25519_public_key("me@home")
    # The fingerprint a server that reads OpenSSH keys computes; the one the real upstream stored for its key.
    assert up.ssh_fingerprint(line) == parse_public_key(line).fingerprint
    real = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE08OZEk5fdvr190AP1nCHQp+Jyi+ZnMx3XfLc1pOmLx alice@laptop"
    assert up.ssh_fingerprint(real) == "SHA256:Zhv94W+yUiwsCBSiJhdpi9UklGpzp++NXpP+WMsI6iA"


def test_the_schema_is_the_one_the_real_upstream_server_makes(built):
    path, _ = built
    assert up.schema_summary(path) == {"tables": RECORDED["tables"]}


def test_rows_hold_the_kinds_of_value_the_real_upstream_server_writes(built):
    """Every kind of value a column holds is one the real server wrote there, or NULL in a nullable
    column, or the column's default 0; columns the real run left empty or NULL are not compared."""
    path, _ = built
    ours = up.row_patterns(path)
    for table, columns in RECORDED["row_patterns"].items():
        info = {name: (notnull, default) for name, _, notnull, default, _ in RECORDED["tables"][table]["columns"]}
        for column, kinds in columns.items():
            if set(kinds) <= {"null"}:
                continue
            notnull, default = info[column]
            extra = set(ours[table][column]) - set(kinds)
            allowed = ({"null"} if not notnull else set()) | ({"int"} if default == "0" else set())
            assert extra <= allowed, (table, column, ours[table][column], kinds)


def test_the_wal_is_left_uncheckpointed_with_the_data_in_it(built):
    path, community = built
    assert path.stat().st_size == 4096  # the header page alone, as upstream leaves it
    assert path.with_name("superchat.db-wal").stat().st_size > 100_000
    assert path.with_name("superchat.db-shm").exists()
    # The main file alone holds no table; with its log, everything.
    alone = path.parent / "read" / "alone.db"
    alone.write_bytes(path.read_bytes())
    with sqlite3.connect(alone) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    db.close()
    assert read(path, "PRAGMA journal_mode") == [("wal",)]
    assert read(path, "SELECT count(*) FROM Message") == [(len(community.messages_by_id),)]


def test_checkpoint_folds_the_wal_into_the_main_file(tmp_path):
    db = up.UpstreamDatabase(tmp_path / "superchat.db")
    db.add_user("solo", up.client_hash("solo"))
    db.checkpoint()
    db.close()
    assert tmp_path.joinpath("superchat.db-wal").stat().st_size == 0
    with sqlite3.connect(tmp_path / "superchat.db") as plain:
        assert plain.execute("SELECT nickname FROM User").fetchall() == [("solo",)]
    plain.close()


def test_schema_version_9_as_upstream_records_it(built):
    path, _ = built
    rows = read(path, "SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
    assert [(version, name) for version, name, _ in rows] == list(enumerate(MIGRATION_NAMES, 1))
    assert all(applied > 10**12 for _, _, applied in rows)  # milliseconds
    assert read(path, "PRAGMA user_version") == [(0,)]


def test_default_channels_and_what_each_restart_does_to_the_ids(tmp_path):
    db = up.UpstreamDatabase(tmp_path / "superchat.db")
    assert db.channels == {"chat": 1, "general": 2, "tech": 3, "random": 4, "feedback": 5}
    assert db.add_channel("first") == 6
    db.restart()
    assert db.add_channel("second") == 12  # the restart's five ignored inserts took 7-11
    db.restart()
    db.restart()
    assert db.add_channel("third") == 23
    assert db.db.execute("SELECT name, channel_type, message_retention_hours FROM Channel WHERE id <= 2").fetchall() \
        == [("chat", 0, 24), ("general", 1, 168)]
    db.close()
    bare = up.UpstreamDatabase(tmp_path / "bare.db", seed_channels=False)
    assert bare.channels == {}
    bare.close()


def test_messages_threads_and_deletions_follow_upstream(built):
    path, community = built
    rows = read(path, "SELECT id, parent_id, thread_root_id, created_at, content, deleted_at FROM Message ORDER BY id")
    by_id = {row[0]: row for row in rows}
    for message_id, parent_id, root_id, created_at, content, _ in rows:
        assert up.snowflake_ms(message_id) == created_at
        assert root_id == (message_id if parent_id is None else by_id[parent_id][2])
        assert content == community.messages_by_id[message_id].content
    thread = community.deep_thread
    assert len(thread) == 7 and community.depth(thread[-1]) == 6
    assert [by_id[m][1] for m in thread] == [None, *thread[:-1]]
    for root, replies in community.deleted_roots.items():
        assert by_id[root][5] is not None and by_id[root][4] != ""  # deleted, its content kept
        assert replies and all(by_id[r][5] is None and by_id[r][1] == root for r in replies)
    assert read(path, "SELECT count(*) FROM MessageVersion") == [(community.message_versions,)]
    edited = read(path, "SELECT id, content, edited_at FROM Message WHERE edited_at IS NOT NULL ORDER BY id")
    assert [row[0] for row in edited] == sorted(community.edited)


def test_the_community_holds_every_kind_of_row(built):
    path, c = built
    users = {row[1]: row for row in read(path, 'SELECT id, nickname, user_flags, password_hash, created_at, last_seen'
                                               ' FROM "User"')}
    assert set(users) == {a.nickname for a in c.accounts.values()} and c.admin in users
    assert all(flags == 0 for _, _, flags, *_ in users.values())  # admin status is in upstream's config
    for role in c.ssh_only:
        assert users[c.accounts[role].nickname][3] is None
    alice = c.accounts[c.renamed]
    assert alice.nickname == "alicia" and alice.posted_as == ["alice"]
    assert {"guest42", "frank"} <= set(c.anonymous) and "frank" in c.ssh_only  # upstream lets a guest take it
    assert read(path, "SELECT count(*) FROM SSHKey") == [(sum(len(keys) for keys in c.ssh_keys.values()),)]
    assert c.channels["bakery"]["created_by"] == alice.id and c.channels["bakery"]["channel_type"] == 1
    assert c.channels["lounge"]["retention_hours"] == 720 and c.channels["lounge"]["id"] == 17
    bans = read(path, "SELECT id, ban_type, shadowban, banned_at, banned_until FROM Ban ORDER BY id")
    assert [row[0] for row in bans] == sorted(ban["id"] for ban in c.bans.values())
    assert c.lifted_ban not in [row[0] for row in bans]
    assert set(c.bans) == {"expired", "shadow", "timed", "permanent", "nickname", "ip", "cidr", "expired_ip"}
    assert c.bans["expired"]["banned_until"] < c.now < c.bans["timed"]["banned_until"]
    shadow = c.bans["shadow"]
    assert all(c.messages_by_id[m].created_at < shadow["banned_at"] for m in c.shadowban_before)
    assert all(c.messages_by_id[m].created_at >= shadow["banned_at"] for m in c.shadowban_after)
    assert len(read(path, "SELECT * FROM AdminAction")) == len(c.admin_actions)
    assert read(path, "SELECT user_id, channel_id, subchannel_id, last_read_at FROM UserChannelState ORDER BY 1, 2") \
        == sorted(c.read_states)
    assert all(10**9 < at < 10**11 for (at,) in read(path, "SELECT updated_at FROM UserChannelState"))
    servers = read(path, "SELECT hostname, source_ip, heartbeat_interval FROM DiscoveredServer ORDER BY id")
    assert servers == [("chat.example.org", "203.0.113.5:40122", 300), ("gossip.example.net", None, 300)]
    assert read(path, "SELECT count(*) FROM Session") == [(c.sessions,)]
