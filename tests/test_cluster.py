"""Three scd nodes sharing one PostgreSQL database and one Redis behave as one server.

Every node is the real bin/scd on loopback; PostgreSQL and Redis are throwaway servers of the
test's own (tests/postgres_server.py, tests/redis_server.py).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client, ConnectionClosed
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer
from tests.server_process import ServerProcess
from tests.tcp_relay import Relay

pytestmark = pytest.mark.timeout(120)

PERMISSION_DENIED = int(ErrorCode.PERMISSION_DENIED)
TOO_MANY_CONNECTIONS = int(ErrorCode.TOO_MANY_CONNECTIONS)

ADMIN = "root"
# What a client sends: the base64 of a SHA-256 digest, without padding.
PASSWORD = base64.b64encode(hashlib.sha256(b"secret").digest()).decode().rstrip("=")
# Nodes declare a dead peer after its heartbeat key expires (10 s) and their next heartbeat (2 s).
NODE_DEPARTURE_SECONDS = 20
_databases = itertools.count(1)


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.destroy()


class Cluster:
    """Nodes a, b, c (and more on demand) on one database and one Redis."""

    def __init__(self, root, postgres: PostgresServer, redis_server: RedisServer):
        self.root = root
        self.redis = redis_server
        self.database = f"cluster{next(_databases)}"
        postgres.create_database(self.database)
        self.database_url = postgres.url(self.database)
        self.nodes: dict[str, ServerProcess] = {}
        self.clients: list[Client] = []

    def start(self, name: str, limits: dict | None = None, redis_url: str | None = None) -> ServerProcess:
        settings = {
            "server": {"database_url": self.database_url, "admin_users": [ADMIN]},
            "cluster": {"redis_url": redis_url or self.redis.url, "node_id": name},
            "limits": {"message_rate_limit": 1000, **(limits or {})},
        }
        node = ServerProcess(self.root / name, settings).start()
        self.nodes[name] = node
        return node

    def client(self, node: str, nickname: str | None = None, source: str | None = None) -> Client:
        client = Client(self.nodes[node].port, source=source)
        self.clients.append(client)
        client.handshake(nickname)
        return client

    def admin(self, node: str) -> Client:
        """A session of the admin, whose account the operator makes (or makes again) on the host."""
        self.nodes[node].create_admin(ADMIN, PASSWORD)
        client = self.client(node)
        assert client.login(ADMIN, PASSWORD).success
        return client

    def health(self, node: str) -> tuple[int, dict]:
        status, _, body = self.nodes[node].http_get("/health")
        return status, json.loads(body)

    def metrics(self, node: str) -> str:
        return self.nodes[node].http_get("/metrics")[2].decode()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for node in self.nodes.values():
            node.kill()


@pytest.fixture
def cluster(tmp_path, postgres, redis_server):
    nodes = Cluster(tmp_path, postgres, redis_server)
    try:
        for name in "abc":
            nodes.start(name)
        wait_for(lambda: all(len(nodes.health(name)[1]["peers"]) == 2 for name in "abc"), "every node sees its peers")
        yield nodes
    finally:
        nodes.close()


def wait_for(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def roster(client: Client) -> set[str]:
    """Nicknames of LIST_USERS (which also makes the client a roster watcher)."""
    client.send(m.ListUsers(limit=500))
    return {user.nickname for user in client.expect(m.UserList).users}


def departure(watcher: Client, timeout: float) -> m.ServerPresence:
    """The next SERVER_PRESENCE saying someone went offline. A user's arrival may be told after the
    watcher already found them in the roster (the two travel separately), so arrivals are passed over."""
    deadline = time.monotonic() + timeout
    while True:
        msg = watcher.expect(m.ServerPresence, timeout=max(0.01, deadline - time.monotonic()), skip=())
        if not msg.online:
            return msg


def received_posts(client: Client, count: int, timeout: float = 20.0) -> list[m.NewMessage]:
    found = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        msg = client.recv(max(0.05, deadline - time.monotonic()))
        if isinstance(msg, m.NewMessage):
            found.append(msg)
    return found


def refused_at_connect(node: ServerProcess, source: str, code: int) -> str:
    """A new connection gets SERVER_CONFIG, then ERROR ``code``, then is closed; returns the error text."""
    with Client(node.port, source=source) as client:
        assert isinstance(client.recv(), m.ServerConfig)
        error = client.recv()
        assert isinstance(error, m.Error) and error.error_code == code, error
        with pytest.raises(ConnectionClosed):
            client.recv(3.0)
        return error.message


def first_reply_is_an_error(node: ServerProcess, source: str) -> bool:
    with Client(node.port, source=source) as client:
        client.expect(m.ServerConfig)
        try:
            return isinstance(client.recv(0.5), m.Error)
        except TimeoutError:
            return False


def general(client: Client) -> int:
    return client.channel_id("general")


# -- deliveries ----------------------------------------------------------------------------------


def test_posts_on_one_node_reach_subscribers_on_every_node_in_order(cluster):
    poster = cluster.client("a", "poster")
    channel = general(poster)
    watchers = [cluster.client(node, f"watcher{node}") for node in "abc"]
    for watcher in watchers:
        watcher.subscribe_channel(channel)
    ids = [poster.post(channel, f"message {n}") for n in range(60)]
    assert ids == sorted(ids) and len(set(ids)) == 60
    for watcher in watchers:
        got = received_posts(watcher, 60)
        assert [msg.id for msg in got] == ids
        assert [msg.content for msg in got] == [f"message {n}" for n in range(60)]
        assert {msg.author_nickname for msg in got} == {"~poster"}
        watcher.assert_silent(0.3)


def test_replies_edits_and_deletions_reach_other_nodes(cluster):
    admin = cluster.admin("a")
    channel = general(admin)
    root = admin.post(channel, "a thread")
    follower = cluster.client("b", "follower")
    follower.subscribe_thread(root)
    follower.send(m.JoinChannel(channel_id=channel))
    assert follower.expect(m.JoinResponse).success
    reply = admin.post(channel, "a reply", parent_id=root)
    (new,) = received_posts(follower, 1)
    assert (new.id, new.parent_id, new.content) == (reply, root, "a reply")
    admin.send(m.EditMessage(message_id=reply, new_content="edited"))
    assert admin.expect(m.MessageEdited).success
    edited = follower.expect(m.MessageEdited)
    assert (edited.message_id, edited.new_content) == (reply, "edited")
    admin.send(m.DeleteMessage(message_id=reply))
    assert admin.expect(m.MessageDeleted).success
    assert follower.expect(m.MessageDeleted).message_id == reply


def test_a_channel_created_on_one_node_is_announced_and_usable_on_the_others(cluster):
    creator = cluster.admin("a")
    bystander = cluster.client("c", "bystander")
    creator.send(m.CreateChannel(name="newroom", display_name="#newroom", description="made on a",
                                 channel_type=1, retention_hours=24))
    created = creator.expect(m.ChannelCreated)
    assert created.success, created
    announced = bystander.expect(m.ChannelCreated)
    assert (announced.channel_id, announced.name) == (created.channel_id, "newroom")
    # Node c learnt of the channel from the event, not from a restart: it takes posts at once.
    assert bystander.post(created.channel_id, "first on c") > 0
    assert bystander.channel_id("newroom") == created.channel_id


def test_shadowed_posts_reach_only_their_author_and_admins_on_other_nodes(cluster):
    admin = cluster.admin("a")
    channel = general(admin)
    admin.subscribe_channel(channel)
    troll = cluster.client("b", "troll")
    marker = cluster.client("b", "marker")
    bystander = cluster.client("c", "bystander")
    bystander.subscribe_channel(channel)
    admin.send(m.BanUser(nickname="troll", reason="spam", shadowban=True, duration_seconds=None))
    assert admin.expect(m.UserBanned).success
    # Node b applies events in order: once the second ban expels the marker, the first is in force
    # there, with nothing more read from the database.
    admin.send(m.BanUser(nickname="marker", reason="spam", shadowban=False, duration_seconds=None))
    assert admin.expect(m.UserBanned).success
    assert marker.expect(m.Error, skip=()).error_code == PERMISSION_DENIED
    shadowed = troll.post(channel, "nobody sees this")
    assert received_posts(admin, 1)[0].id == shadowed
    bystander.assert_silent(1.0)


# -- presence and roster -------------------------------------------------------------------------


def test_roster_and_presence_span_the_nodes(cluster):
    watcher = cluster.client("b", "watcher")
    assert roster(watcher) == {"watcher"}
    cluster.client("a", "alice")
    cluster.client("c", "carol")
    arrivals = {watcher.recv(), watcher.recv()}
    assert {(msg.nickname, msg.online) for msg in arrivals} == {("alice", True), ("carol", True)}
    assert roster(watcher) == {"watcher", "alice", "carol"}
    late = cluster.client("c", "late")
    online = watcher.recv()
    assert isinstance(online, m.ServerPresence) and (online.nickname, online.online) == ("late", True)
    late.send(m.Disconnect(reason="bye"))
    offline = watcher.recv()
    assert isinstance(offline, m.ServerPresence) and (offline.nickname, offline.online) == ("late", False)
    assert offline.session_id == online.session_id

    watcher.send(m.GetUserInfo(nickname="carol"))
    assert watcher.expect(m.UserInfo).online


def test_channel_presence_and_channel_roster_span_the_nodes(cluster):
    first = cluster.client("a", "first")
    channel = general(first)
    first.send(m.JoinChannel(channel_id=channel))
    assert first.expect(m.JoinResponse).success
    own = first.recv()
    assert isinstance(own, m.ChannelPresence) and own.nickname == "first"
    second = cluster.client("b", "second")
    second.send(m.JoinChannel(channel_id=channel))
    assert second.expect(m.JoinResponse).success
    joined = first.recv()
    assert isinstance(joined, m.ChannelPresence) and (joined.nickname, joined.joined) == ("second", True)
    assert joined.session_id != own.session_id

    def members() -> set[str]:
        first.send(m.ListChannelUsers(channel_id=channel))
        return {user.nickname for user in first.expect(m.ChannelUserList).users}

    assert wait_for(lambda: members() == {"first", "second"}, "node a lists node b's member")


def test_a_killed_node_leaves_the_roster_and_the_others_keep_serving(cluster):
    watcher = cluster.client("a", "watcher")
    cluster.client("b", "doomed")
    assert wait_for(lambda: "doomed" in roster(watcher), "node b's user is listed")
    cluster.nodes["b"].kill()  # SIGKILL: no goodbye
    started = time.monotonic()
    assert departure(watcher, NODE_DEPARTURE_SECONDS).nickname == "doomed"
    assert time.monotonic() - started < NODE_DEPARTURE_SECONDS
    # Whichever node buried b, node a drops b and b's user in the same moment.
    assert cluster.health("a")[1]["peers"] == ["c"]
    assert "doomed" not in roster(watcher)
    # a and c still serve, and still reach each other.
    poster = cluster.client("c", "poster")
    channel = general(poster)
    watcher.subscribe_channel(channel)
    posted = poster.post(channel, "still here")
    assert received_posts(watcher, 1)[0].id == posted


# -- moderation ----------------------------------------------------------------------------------


def test_bans_and_deletions_take_effect_on_every_node(cluster):
    admin = cluster.admin("a")
    victim = cluster.client("b", "victim")
    victim.send(m.RegisterUser(password=PASSWORD))
    victim_id = victim.expect(m.RegisterResponse).user_id
    admin.send(m.BanUser(nickname="victim", reason="rude", shadowban=False, duration_seconds=None))
    assert admin.expect(m.UserBanned).success
    error = victim.expect(m.Error, skip=())
    assert error.error_code == PERMISSION_DENIED and "banned" in error.message
    victim.wait_closed()
    # The ban holds on node c as well, which never saw the victim.
    again = cluster.client("c")
    assert not again.login("victim", PASSWORD).success

    doomed = cluster.client("c", "doomed")
    doomed.send(m.RegisterUser(password=PASSWORD))
    doomed_id = doomed.expect(m.RegisterResponse).user_id
    bystander = cluster.client("b", "bystander")
    admin.send(m.DeleteUser(user_id=doomed_id))
    deleted = admin.expect(m.UserDeleted)
    assert deleted.success and "1 sessions disconnected" in deleted.message
    assert doomed.expect(m.Error, skip=()).message == "Your account has been deleted"
    doomed.wait_closed()
    assert bystander.expect(m.UserDeleted).success
    assert victim_id != doomed_id


def test_an_ip_ban_expels_matching_sessions_on_other_nodes(cluster):
    admin = cluster.admin("a")
    victim = cluster.client("c", "victim", source="127.0.0.7")
    admin.send(m.BanIP(ip_cidr="127.0.0.7", reason="abuse", duration_seconds=None))
    assert admin.expect(m.IPBanned).success
    assert "banned" in victim.expect(m.Error, skip=()).message
    victim.wait_closed()
    # Refused at the door of node b too (as soon as b has read the event, in the same moment).
    wait_for(lambda: first_reply_is_an_error(cluster.nodes["b"], "127.0.0.7"), "node b refuses the address", 5)
    assert "banned" in refused_at_connect(cluster.nodes["b"], "127.0.0.7", PERMISSION_DENIED)


def test_a_node_that_missed_events_makes_them_good_from_the_database(tmp_path, postgres, redis_server):
    """Node b is cut off from Redis while a bans, deletes an account and deletes a channel, and the
    events are trimmed from the stream before b is back. b finds the gap and acts on what the
    database says."""
    nodes = Cluster(tmp_path, postgres, redis_server)
    network = Relay(redis_server.port)
    try:
        nodes.start("a")
        node_b = nodes.start("b", redis_url=f"redis://127.0.0.1:{network.port}/0")
        wait_for(lambda: nodes.health("a")[1]["peers"] == ["b"], "node a sees node b")
        admin = nodes.admin("a")
        victim = nodes.client("b", "victim")
        doomed = nodes.client("b", "doomed")
        doomed.send(m.RegisterUser(password=PASSWORD))
        doomed_id = doomed.expect(m.RegisterResponse).user_id
        bystander = nodes.client("b", "bystander")
        tech = bystander.channel_id("tech")
        network.cut()
        wait_for(lambda: nodes.health("b")[1]["status"] == "degraded", "node b finds Redis gone")
        admin.send(m.BanUser(nickname="victim", reason="rude", shadowban=False, duration_seconds=None))
        assert admin.expect(m.UserBanned).success
        admin.send(m.DeleteUser(user_id=doomed_id))
        assert admin.expect(m.UserDeleted).success
        admin.send(m.DeleteChannel(channel_id=tech, reason="gone"))
        assert admin.expect(m.ChannelDeleted).success
        wait_for(lambda: "channel_deleted" in nodes.redis.command("XREVRANGE", "superchat:events", "+", "-",
                                                                  "COUNT", "1"), "node a wrote its events")
        nodes.redis.command("XTRIM", "superchat:events", "MAXLEN", "0")
        network.restore()
        # Each hears of the channel's deletion, then of its own fate.
        error = victim.expect(m.Error, timeout=15, skip=(m.ChannelDeleted,))
        assert error.error_code == PERMISSION_DENIED and error.message.startswith("You have been banned"), error
        victim.wait_closed()
        assert doomed.expect(m.Error, timeout=15, skip=(m.ChannelDeleted,)).message == "Your account has been deleted"
        doomed.wait_closed()
        notice = bystander.expect(m.ChannelDeleted, timeout=15)
        assert (notice.success, notice.channel_id) == (True, tech)
        assert notice.message == "Channel 'tech' deleted successfully"
        node_b.wait_for_log("were trimmed from the stream before this node read them", name="errors.log", timeout=15)
        assert "superchat_cluster_stream_gaps_total 1.0" in nodes.metrics("b")
        with pytest.raises(AssertionError, match="no channel named tech"):
            nodes.client("b", "still").channel_id("tech")
    finally:
        nodes.close()
        network.close()


# -- limits --------------------------------------------------------------------------------------


def test_connection_cap_and_registration_limit_hold_across_the_nodes(tmp_path, postgres, redis_server):
    nodes = Cluster(tmp_path, postgres, redis_server)
    try:
        limits = {"max_connections_per_ip": 3, "max_registrations_per_hour": 2}
        for name in "abc":
            nodes.start(name, limits)
        wait_for(lambda: all(len(nodes.health(name)[1]["peers"]) == 2 for name in "abc"), "peers")
        held = [nodes.client(node, source="127.0.0.5") for node in "ab"]
        held.append(nodes.client("a", source="127.0.0.5"))
        time.sleep(0.5)  # the connection counts reach Redis
        assert "max 3" in refused_at_connect(nodes.nodes["c"], "127.0.0.5", TOO_MANY_CONNECTIONS)
        for client in held:
            client.close()

        def register(node: str, nickname: str) -> m.RegisterResponse:
            client = nodes.client(node, nickname, source="127.0.0.6")
            client.send(m.RegisterUser(password=PASSWORD))
            return client.expect(m.RegisterResponse)

        assert register("a", "first").success
        assert register("b", "second").success
        third = register("c", "third")
        assert not third.success and "Too many registrations" in third.message
    finally:
        nodes.close()


def test_failed_logins_spread_over_the_nodes_add_up(cluster):
    owner = cluster.client("a", "owner")
    owner.send(m.RegisterUser(password=PASSWORD))
    assert owner.expect(m.RegisterResponse).success
    wrong = base64.b64encode(hashlib.sha256(b"guess").digest()).decode().rstrip("=")
    # Five failures within five minutes block an address: three on node a, two on node b.
    for node in "aaabb":
        guesser = cluster.client(node, source="127.0.0.8")
        reply = guesser.login("owner", wrong)
        assert not reply.success and reply.message == "Invalid credentials", reply
    blocked = cluster.client("c", source="127.0.0.8").login("owner", PASSWORD)
    assert not blocked.success and "Too many failed login attempts" in blocked.message
    assert cluster.client("c", source="127.0.0.9").login("owner", PASSWORD).success


# -- operations ----------------------------------------------------------------------------------


def test_health_and_metrics_name_the_node_and_its_peers(cluster):
    status, body = cluster.health("b")
    assert status == 200
    assert (body["status"], body["node"], body["redis"], sorted(body["peers"])) == ("ok", "b", "ok", ["a", "c"])
    text = cluster.metrics("b")
    assert 'superchat_cluster_node_info{node="b"} 1.0' in text
    assert "superchat_redis_up 1.0" in text
    assert "superchat_cluster_peers 2.0" in text
    joined = [line for line in cluster.nodes["b"].log_text().splitlines() if "Cluster node b joined" in line]
    assert len(joined) == 1 and joined[0].endswith(" node=b"), joined


def test_json_log_lines_carry_the_node_id(tmp_path, postgres, redis_server):
    nodes = Cluster(tmp_path, postgres, redis_server)
    try:
        node = ServerProcess(tmp_path / "json", {
            "server": {"database_url": nodes.database_url},
            "cluster": {"redis_url": redis_server.url, "node_id": "jsonnode"},
            "observability": {"log_format": "json"},
        }).start()
        nodes.nodes["json"] = node
        line = json.loads(node.wait_for_log("Server started").splitlines()[-1])
        assert line["node"] == "jsonnode"
    finally:
        nodes.close()


def test_redis_outage_degrades_health_and_loses_no_delivery(cluster):
    poster = cluster.client("a", "poster")
    channel = general(poster)
    local = cluster.client("a", "local")
    remote = cluster.client("b", "remote")
    for watcher in (local, remote):
        watcher.subscribe_channel(channel)
    ids = [poster.post(channel, f"before {n}") for n in range(10)]
    cluster.redis.stop()
    # Without Redis node a still serves its own sessions, live.
    ids += [poster.post(channel, f"during {n}") for n in range(20)]
    assert [msg.id for msg in received_posts(local, 30)] == ids
    status, body = wait_for(lambda: (lambda h: h if h[1]["status"] == "degraded" else None)(cluster.health("a")),
                            "node a reports Redis missing")
    assert status == 200 and body["redis"].startswith("error: ")
    assert "superchat_redis_up 0.0" in cluster.metrics("a")
    cluster.redis.start()
    ids += [poster.post(channel, f"after {n}") for n in range(10)]
    # Node b gets everything, in order, the outage's posts included.
    assert [msg.id for msg in received_posts(remote, 40, timeout=30)] == ids
    wait_for(lambda: cluster.health("a")[1]["status"] == "ok", "node a reports Redis back")
    assert "superchat_redis_up 1.0" in cluster.metrics("a")
    remote.assert_silent(0.5)


def test_a_node_started_without_redis_serves_and_joins_when_redis_comes(tmp_path, postgres, redis_server):
    nodes = Cluster(tmp_path, postgres, redis_server)
    try:
        nodes.start("a")
        redis_server.stop()
        nodes.start("b")  # Redis unreachable: b starts anyway
        status, body = nodes.health("b")
        assert (status, body["status"], body["peers"]) == (200, "degraded", [])
        alone = nodes.client("b", "alone")
        channel = general(alone)
        alone.subscribe_channel(channel)
        posted = alone.post(channel, "posted while b has no Redis")
        assert received_posts(alone, 1)[0].id == posted
        redis_server.start()
        wait_for(lambda: nodes.health("b")[1]["peers"] == ["a"], "node b finds node a", timeout=20)
        assert nodes.health("b")[1]["status"] == "ok"
        watcher = nodes.client("a", "watcher")
        assert wait_for(lambda: "alone" in roster(watcher), "node a lists node b's user")
    finally:
        nodes.close()


def test_a_node_restarted_at_once_reports_its_old_sessions_gone(cluster):
    watcher = cluster.client("a", "watcher")
    cluster.client("c", "ghost")
    assert wait_for(lambda: "ghost" in roster(watcher), "node c's user is listed")
    cluster.nodes["c"].kill()
    cluster.nodes["c"].start()  # the same node id, well before its heartbeat key expires
    assert departure(watcher, 10).nickname == "ghost"
    assert "ghost" not in roster(watcher)


def test_a_node_stopped_cleanly_leaves_at_once(cluster):
    watcher = cluster.client("a", "watcher")
    cluster.client("b", "leaving")
    assert wait_for(lambda: "leaving" in roster(watcher), "node b's user is listed")
    assert cluster.nodes["b"].stop() == 0  # SIGTERM
    assert departure(watcher, 3).nickname == "leaving"
    # Gone from the node list at once, not after its heartbeat key expired, nor at node a's next
    # heartbeat: in the same moment as its user.
    assert cluster.health("a")[1]["peers"] == ["c"]
    assert "leaving" not in roster(watcher)
