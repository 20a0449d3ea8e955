"""``bin/scd import-upstream``: a community of the upstream server, built in its database format
(tests/upstream_db.py), imported into the database scd is configured for and then used through a
started scd over real sockets, as its users and its admin would.

The refusals, the all-or-nothing transaction and the untouched upstream files are in
tests/test_import_upstream_refusals.py.
"""

from __future__ import annotations

import re

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from superchat.storage import Store
from tests import upstream_db as up
from tests.client import Client
from tests.import_run import file_digests, import_upstream, scd, target_rows
from tests.moderation.helpers import assert_accepted, assert_refused_at_connect
from tests.server_process import ServerProcess, free_port
from tests.ssh_client import OpenSshStream, make_key

pytestmark = pytest.mark.timeout(120)

DAY = 86_400_000
# The password the operator gives warden with ``scd admin create``, and what a SuperChat client sends
# for it as warden (superchat.client_password_hash, itself checked against another implementation
# in tests/test_admin_accounts.py); computed once here, as the hash takes seconds.
WARDEN_PASSWORD = "correct horse"
WARDEN_HASH = "z1jSa1G0p9Zp0RpFy0NsG6SP-XFlsNGStu_gnFsxahI"
ADMIN_FLAG = 0x01


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The community imported, warden made admin by the operator, and scd started on it."""
    root = tmp_path_factory.mktemp("import")
    (root / "upstream").mkdir()
    upstream = root / "upstream" / "superchat.db"
    db = up.UpstreamDatabase(upstream, up.now_ms() - 41 * DAY)
    community = up.fill_community(db)
    db.close()
    upstream_before = file_digests(upstream)
    server = ServerProcess(root / "scd", {"server": {"admin_users": [community.admin]}})
    result = import_upstream(server, upstream)
    assert result.returncode == 0, result
    times = {user.id: (user.created_at, user.last_seen) for user in _users(server)}
    made_admin = scd(server, "admin", "create", community.admin, "--password-stdin", stdin=WARDEN_PASSWORD + "\n")
    server.start()
    yield dict(server=server, community=community, result=result, upstream=upstream,
               upstream_before=upstream_before, times=times, made_admin=made_admin)
    server.kill()


def _users(server: ServerProcess):
    store = Store(server.database)
    try:
        return store.list_users(1000)
    finally:
        store.close()


@pytest.fixture
def c(imported):
    return imported["community"]


@pytest.fixture
def client(imported):
    opened: list[Client] = []

    def open_client(role: str | None = None, source: str | None = None) -> Client:
        """Connected; signed in as ``role`` with its upstream password when given."""
        new = Client(imported["server"].port, source=source)
        opened.append(new)
        new.handshake()
        if role is not None:
            account = imported["community"].account(role)
            reply = new.login(account.nickname, account.client_hash)
            assert reply.success, reply
        return new

    yield open_client
    for each in opened:
        each.close()


def roots(client: Client, channel_id: int) -> list:
    client.send(m.ListMessages(channel_id=channel_id, subchannel_id=None, limit=1000, before_id=None,
                               parent_id=None, after_id=None))
    return client.expect(m.MessageList).messages


def thread(client: Client, channel_id: int, parent_id: int) -> list:
    client.send(m.ListMessages(channel_id=channel_id, subchannel_id=None, limit=1000, before_id=None,
                               parent_id=parent_id, after_id=None))
    return client.expect(m.MessageList).messages


def visible(c: up.Community, post: up.Post, viewer: str | None) -> bool:
    """Listed for ``viewer`` (a role): neither deleted nor shadowed, or shadowed but the viewer's own."""
    if post.deleted_at is not None:
        return False
    return not post.shadowed or (viewer is not None and post.author_user_id == c.account(viewer).id)


def entry(c: up.Community, post: up.Post, reply_count: int) -> m.MessageEntry:
    """What LIST_MESSAGES shows of ``post``: the account's current nickname, ~name for a guest."""
    registered = post.author_user_id is not None
    return m.MessageEntry(id=post.id, channel_id=post.channel_id, subchannel_id=None, parent_id=post.parent_id,
                          author_user_id=post.author_user_id,
                          author_nickname=c.shown_name(post) if registered else "~" + post.author_nickname,
                          content=post.content, created_at=post.created_at, edited_at=post.edited_at,
                          reply_count=reply_count)


def expected_roots(c: up.Community, channel_id: int, viewer: str | None) -> list:
    posts = sorted((p for p in c.messages_by_id.values() if p.channel_id == channel_id and p.parent_id is None
                    and visible(c, p, viewer)), key=lambda p: p.id)
    return [entry(c, p, sum(1 for r in c.children(p.id) if r.deleted_at is None and not r.shadowed))
            for p in posts]


def expected_thread(c: up.Community, parent_id: int, viewer: str | None) -> list:
    """Depth first, replies in the order of posting; a hidden reply's answers stay."""
    found = []
    for child in c.children(parent_id):
        if visible(c, child, viewer):
            found.append(entry(c, child, 0))
        found += expected_thread(c, child.id, viewer)
    return found


# -- the summary and the progress --


def test_the_summary_counts_each_kind_and_names_what_was_not_carried(imported, c):
    result = imported["result"]
    counts = (f"{len(c.accounts)} accounts, {sum(map(len, c.ssh_keys.values()))} SSH keys, {len(c.channels)} "
              f"channels, {len(c.messages_by_id)} messages, {len(c.bans)} bans, {len(c.admin_actions)} admin actions, "
              f"{len(c.read_states)} read states, {len(c.discovered_servers)} discovered servers.")
    assert result.stdout.splitlines() == [
        f"Imported {imported['upstream']} into {imported['server'].database}: {counts}",
        "Not carried over:",
        "  earlier versions of edited messages (scd keeps the current text and the time of the last edit): "
        f"{c.message_versions}",
        f"  records of the upstream server's connections (Session): {c.sessions}",
    ]


def test_progress_is_told_in_plain_lines_when_not_on_a_terminal(imported, tmp_path):
    db = up.open_copy(imported["upstream"], tmp_path)  # opening the file itself would write its -shm
    total = sum(db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in (
        "Channel", "Message", "MessageVersion", "User", "SSHKey", "Ban", "AdminAction", "UserChannelState",
        "DiscoveredServer"))
    db.close()
    lines = imported["result"].stderr.splitlines()
    assert "\r" not in imported["result"].stderr and lines
    assert all(re.fullmatch(r"importing: +\d+% [\d,]+/[\d,]+ rows, \d+ s", line) for line in lines), lines
    assert re.fullmatch(rf"importing: 100% {total}/{total} rows, \d+ s", lines[-1])


# -- accounts --


def test_accounts_keep_their_flags_and_times(imported, c):
    # Read before anyone signed in (signing in moves last_seen).
    assert imported["times"] == {a.id: (a.created_at, a.last_seen) for a in c.accounts.values()}
    users = {user.id: user for user in _users(imported["server"])}
    assert {user.nickname for user in users.values()} == {a.nickname for a in c.accounts.values()}
    for account in c.accounts.values():
        assert users[account.id].user_flags == (ADMIN_FLAG if account.nickname == c.admin else 0), account
        if account.role in c.ssh_only:
            assert users[account.id].password_hash == ""


def test_accounts_sign_in_with_their_upstream_passwords(client, c):
    for account in c.accounts.values():
        if account.client_hash is None or account.role in ("warden", "carol", "dave"):
            continue  # no password, the operator's new one, banned (below)
        session = client()
        reply = session.login(account.nickname, account.client_hash)
        assert (reply.success, reply.user_id, reply.nickname, reply.user_flags) == (
            True, account.id, account.nickname, 0), account
        # Each failure from an address of its own: failed logins slow their address down.
        wrong = client(source=f"127.0.3.{account.id}").login(account.nickname, up.client_hash("not " + account.role))
        assert (wrong.success, wrong.message) == (False, "Invalid credentials")
    for role in c.ssh_only:
        reply = client().login(c.account(role).nickname, up.client_hash(role))
        assert not reply.success and "SSH" in reply.message


def test_the_renamed_account_posts_under_its_new_name(client, c):
    alice = c.account(c.renamed)
    assert alice.posted_as == ["alice"] and alice.nickname == "alicia"
    listed = roots(client("grace"), c.channels["bakery"]["id"])
    assert [e.author_nickname for e in listed if e.author_user_id == alice.id] == ["alicia"]


def test_the_operator_makes_the_upstream_admin_an_admin_of_scd(imported, client, c):
    made = imported["made_admin"]
    assert (made.returncode, made.stderr) == (0, "")
    warden = c.account("warden")
    assert made.stdout == f"Admin account warden (user {warden.id}): new password set\n"
    # The operator's password replaced upstream's.
    assert not client(source="127.0.3.200").login("warden", warden.client_hash).success
    reply = client().login("warden", WARDEN_HASH)
    assert (reply.success, reply.user_id, reply.user_flags) == (True, warden.id, ADMIN_FLAG)


# -- channels, threads, keys --


def test_the_channels_are_upstreams_with_their_ids_and_no_others(client, c):
    session = client()
    session.send(m.ListChannels(from_channel_id=0, limit=0))
    listed = {(e.id, e.name, e.description, e.type, e.retention_hours) for e in session.expect(m.ChannelList).channels}
    assert listed == {(ch["id"], name, ch["description"] or "", ch["channel_type"], ch["retention_hours"])
                      for name, ch in c.channels.items()}
    assert {"bakery", "lounge"} <= {name for _, name, *_ in listed}


def test_root_listings_are_upstreams_for_every_channel(client, c):
    grace, bob, guest = client("grace"), client("bob"), client()
    for name, channel in c.channels.items():
        assert roots(grace, channel["id"]) == expected_roots(c, channel["id"], "grace"), name
        assert roots(bob, channel["id"]) == expected_roots(c, channel["id"], "bob"), name
        assert roots(guest, channel["id"]) == expected_roots(c, channel["id"], None), name
    general = roots(grace, c.channels["general"]["id"])
    assert [e.id for e in general] == sorted(e.id for e in general)  # ids are the upstream snowflakes
    assert all(up.snowflake_ms(e.id) == e.created_at for e in general)
    deep = next(e for e in general if e.id == c.deep_thread[0])
    assert deep.edited_at == c.messages_by_id[deep.id].edited_at and "(edited" in deep.content
    assert not set(c.deleted_roots) & {e.id for name in ("tech", "random")
                                       for e in roots(grace, c.channels[name]["id"])}


def test_the_deep_thread_is_listed_depth_first_with_its_depths(client, c):
    grace = client("grace")
    root = c.deep_thread[0]
    listed = thread(grace, c.channels["general"]["id"], root)
    assert listed == expected_thread(c, root, "grace")
    by_id = {e.id: e for e in listed}
    depths = [c.depth(e.id) for e in listed]
    assert depths[:6] == [1, 2, 3, 4, 5, 6] and [e.id for e in listed[:6]] == c.deep_thread[1:]
    assert [by_id[i].parent_id for i in c.deep_thread[2:]] == c.deep_thread[1:-1]
    assert {"guest42", "frank"} <= {e.author_nickname.lstrip("~") for e in listed if e.author_user_id is None}
    # A deleted reply is hidden, its answer stays.
    for gone, answers in c.deleted_replies.items():
        assert gone not in by_id and all(a in by_id for a in answers)


def test_deleted_roots_keep_their_live_replies(client, c):
    grace = client("grace")
    for root, replies in c.deleted_roots.items():
        channel_id = c.messages_by_id[root].channel_id
        assert [e.id for e in thread(grace, channel_id, root)] == replies
        assert thread(grace, channel_id, root) == expected_thread(c, root, "grace")


def test_shadowed_posts_are_seen_by_their_author_alone(client, c):
    general, root = c.channels["general"]["id"], c.deep_thread[0]
    grace, bob, guest = client("grace"), client("bob"), client()
    hidden = set(c.shadowban_after)
    for viewer in (grace, guest):
        assert not hidden & {e.id for e in roots(viewer, general) + thread(viewer, general, root)}
    assert hidden <= {e.id for e in roots(bob, general) + thread(bob, general, root)}
    assert thread(bob, general, root) == expected_thread(c, root, "bob")
    # What bob posted before the ban is seen by all.
    assert set(c.shadowban_before) <= {e.id for e in roots(guest, general) + thread(guest, general, root)}


def test_ssh_keys_are_listed_to_their_owner_as_upstream_had_them(client, c):
    grace = client("grace")
    grace.send(m.ListSSHKeys())
    listed = {(k.id, k.fingerprint, k.key_type, k.label) for k in grace.expect(m.SSHKeyList).keys}
    assert listed == {(k.id, k.fingerprint, "ssh-ed25519", k.label or "") for k in c.ssh_keys["grace"]}
    assert all(k.fingerprint == up.ssh_fingerprint(k.public_key) for keys in c.ssh_keys.values() for k in keys)


# -- bans and read state --


def test_bans_in_force_refuse_as_scd_refuses_banned_users(imported, client, c):
    for kind, span in (("timed", "until "), ("permanent", "permanently")):
        account = c.account(next(r for r, a in c.accounts.items() if a.id == c.bans[kind]["user_id"]))
        reply = client().login(account.nickname, account.client_hash)
        assert not reply.success and reply.message.startswith(f"Account banned {span}"), reply
        assert c.bans[kind]["reason"] in reply.message
    # The expired ban is over: erin signs in and posts.
    erin = client("erin")
    assert erin.post(c.channels["feedback"]["id"], "erin is back") > c.deep_thread[0]
    # A ban of a nickname stops a guest going by it.
    guest = client()
    guest.send(m.SetNickname(nickname="spammer"))
    guest.expect(m.NicknameResponse)
    guest.send(m.PostMessage(channel_id=c.channels["feedback"]["id"], parent_id=None, content="buy now"))
    answer = guest.recv()
    assert isinstance(answer, m.Error) and answer.error_code == ErrorCode.PERMISSION_DENIED and "ads" in answer.message
    # IP bans, an address and a range; the expired one lets its address in.
    server = imported["server"]
    assert_refused_at_connect(server, "banned", c.bans["ip"]["reason"], source="127.0.0.2")
    assert_refused_at_connect(server, "banned", c.bans["cidr"]["reason"], source="127.0.1.5")
    assert_accepted(server, source="127.0.0.4")
    assert_accepted(server, source="127.0.0.3")


def test_a_shadowbanned_account_still_posts_unseen(client, c):
    feedback = c.channels["feedback"]["id"]
    bob = client("bob")
    posted = bob.post(feedback, "bob, still shadowbanned")
    assert posted in {e.id for e in roots(bob, feedback)}
    assert posted not in {e.id for e in roots(client("grace"), feedback)}


def test_the_admin_lists_the_bans_as_upstream_had_them(client, c):
    warden = client()
    assert warden.login("warden", WARDEN_HASH).success
    wanted = {kind: m.BanEntry(id=ban["id"], type=ban["ban_type"], user_id=ban["user_id"], nickname=ban["nickname"],
                               ip_cidr=ban["ip_cidr"], reason=ban["reason"], shadowban=ban["shadowban"],
                               banned_at=ban["banned_at"], banned_until=ban["banned_until"],
                               banned_by=ban["banned_by"]) for kind, ban in c.bans.items()}
    warden.send(m.ListBans(include_expired=True))
    everything = warden.expect(m.BanList).bans
    assert sorted(everything, key=lambda b: b.id) == sorted(wanted.values(), key=lambda b: b.id)
    warden.send(m.ListBans(include_expired=False))
    active = {b.id for b in warden.expect(m.BanList).bans}
    assert active == {ban.id for kind, ban in wanted.items() if kind not in ("expired", "expired_ip")}
    assert c.lifted_ban not in {b.id for b in everything}


def test_the_audit_trail_keeps_upstreams_admin_actions(imported, c):
    rows = target_rows(imported["server"], 'SELECT admin_user_id, admin_nickname, action, details, performed_at'
                                           ' FROM "AdminAction" ORDER BY id')
    warden = c.account("warden").id
    wanted = []
    for action in c.admin_actions:
        target = f"{action['target_type']} {action['target_identifier']}".strip()
        if action["target_id"] is not None:
            target += f" (ban {action['target_id']})"  # upstream's ban actions name the ban
        details = f"{target}: {action['details']}" if action["details"] else target
        wanted.append((warden, "warden", action["action_type"].upper(), f"{details} (from {action['ip_address']})",
                       action["performed_at"]))
    assert rows == wanted


def test_unread_counts_start_where_each_user_stopped_reading(client, c):
    for user_id, channel_id, _, last_read in c.read_states:
        role = next(r for r, a in c.accounts.items() if a.id == user_id)
        session = client(role)
        session.send(m.GetUnreadCounts(since_timestamp=None, targets=[
            m.UnreadTarget(channel_id=channel_id, subchannel_id=None, thread_id=None)]))
        (count,) = session.expect(m.UnreadCounts).counts
        unread = sum(1 for p in c.messages_by_id.values() if p.channel_id == channel_id
                     and p.created_at > last_read and p.deleted_at is None and not p.shadowed)
        assert count.unread_count == unread, (role, channel_id)
    grace_general = next(s for s in c.read_states if s[0] == c.account("grace").id)
    assert 0 < sum(1 for p in c.messages_by_id.values() if p.channel_id == grace_general[1]
                   and p.created_at > grace_general[3]) < len(c.messages_by_id)


def test_the_directory_keeps_the_servers_upstream_had_discovered(imported, client, c, tmp_path):
    columns = ("id", "hostname", "port", "name", "description", "user_count", "max_users", "uptime_seconds",
               "is_public", "channel_count")
    db = up.open_copy(imported["upstream"], tmp_path)
    upstream_rows = db.execute(f"SELECT {', '.join(columns)}, last_heartbeat, COALESCE(source_ip, '') "
                               "FROM DiscoveredServer ORDER BY id").fetchall()
    db.close()
    store = Store(imported["server"].database)
    try:
        rows = store.list_discovered_servers(None, 0)
    finally:
        store.close()
    assert len(upstream_rows) == len(c.discovered_servers) == 2
    assert sorted((*(int(getattr(row, k)) if k == "is_public" else getattr(row, k) for k in columns),
                   row.last_seen, row.source_ip) for row in rows) == upstream_rows
    # LIST_SERVERS lists this server first, then those heard from within three heartbeats: the
    # registered one, not the one gossip told of a day ago.
    session = client()
    session.send(m.ListServers(limit=0))
    listed = session.expect(m.ServerList).servers
    fresh = c.discovered_servers[0]
    assert [(s.hostname, s.port) for s in listed[1:]] == [(fresh["hostname"], fresh["port"])]
    assert listed[1] == m.ServerInfo(hostname=fresh["hostname"], port=fresh["port"], name=fresh["name"],
                                     description=fresh["description"], user_count=fresh["user_count"],
                                     max_users=fresh["max_users"], uptime_seconds=fresh["uptime_seconds"],
                                     is_public=True, channel_count=fresh["channel_count"])


def test_the_upstream_files_were_not_written(imported):
    assert file_digests(imported["upstream"]) == imported["upstream_before"]
    assert imported["upstream_before"]["superchat.db-wal"] is not None


def test_an_upstream_admin_listed_in_admin_users_is_an_admin_with_the_upstream_password(tmp_path):
    """The README's third step alone: the account keeps its password, and admin_users makes it an admin."""
    upstream = tmp_path / "upstream.db"
    db = up.UpstreamDatabase(upstream)
    keeper_hash = up.client_hash("keeper")
    keeper = db.add_user("keeper", keeper_hash)
    db.close()
    server = ServerProcess(tmp_path / "scd", {"server": {"admin_users": ["keeper"]}})
    assert import_upstream(server, upstream).returncode == 0
    server.start()
    try:
        with Client(server.port) as admin:
            admin.handshake()
            reply = admin.login("keeper", keeper_hash)
            assert (reply.success, reply.user_id, reply.user_flags) == (True, keeper, ADMIN_FLAG)
            admin.send(m.ListBans(include_expired=True))
            assert admin.expect(m.BanList).bans == []
    finally:
        server.kill()


def test_imported_keys_sign_in_over_ssh_to_their_accounts(tmp_path):
    """A key as an SSH sign-up stored it (as Go marshals it: no comment, a newline) and one added
    with its comment each open a session on their upstream account."""
    keys = tmp_path / "keys"
    keys.mkdir()
    upstream = tmp_path / "upstream.db"
    db = up.UpstreamDatabase(upstream)
    accounts = {}
    for nickname, stored_as_go_does in (("frank", True), ("grace", False)):
        key = make_key(keys, nickname)
        line = key.with_suffix(".pub").read_text().strip()
        if stored_as_go_does:
            line = " ".join(line.split()[:2]) + "\n"
        accounts[nickname] = (db.add_user(nickname, None if stored_as_go_does else up.client_hash(nickname)), key)
        db.add_ssh_key(accounts[nickname][0], line, label="Auto-registered" if stored_as_go_does else "laptop")
    db.close()
    server = ServerProcess(tmp_path / "scd", {"server": {"ssh_port": free_port()}})
    assert import_upstream(server, upstream).returncode == 0
    server.start()
    try:
        for nickname, (user_id, key) in accounts.items():
            session = OpenSshStream(server.ssh_port, nickname, key, keys / "known_hosts")
            client = Client(0, sock=session, timeout=15)
            try:
                assert isinstance(client.recv(), m.ServerConfig)
                auth = client.expect(m.AuthResponse)
                assert (auth.success, auth.user_id, auth.nickname) == (True, user_id, nickname)
            finally:
                session.close()
    finally:
        server.kill()
