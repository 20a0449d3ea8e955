"""Prometheus metrics and the health endpoint, as the operations guide documents them."""

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client
from tests.tools import require

pytestmark = pytest.mark.timeout(90)

GUIDE_METRICS = {
    "superchat_active_sessions": "gauge",
    "superchat_sessions_created": "counter",
    "superchat_sessions_disconnected": "counter",
    "superchat_messages_received": "counter",
    "superchat_messages_sent": "counter",
    "superchat_messages_broadcast": "counter",
    "superchat_messages_delivered": "counter",
    "superchat_channel_subscribers": "gauge",
    "superchat_thread_subscribers": "gauge",
    "superchat_broadcast_fanout": "histogram",
    "superchat_broadcast_duration_seconds": "histogram",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "superchat_greenlets": "gauge",
}


def scrape(server) -> dict:
    status, headers, body = server.http_get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def value(families: dict, name: str, sample: str | None = None, **labels) -> float | None:
    family = families.get(name)
    if family is None:
        return None
    wanted = sample or name
    for s in family.samples:
        if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def label_values(families: dict, name: str, label: str) -> set:
    family = families.get(name)
    return {s.labels[label] for s in family.samples} if family else set()


def test_every_guide_metric_is_exposed_with_its_type(server):
    with Client(server.port) as client:
        client.handshake("typist")
        families = scrape(server)
    for name, kind in GUIDE_METRICS.items():
        assert name in families, f"{name} missing"
        assert families[name].type == kind, (name, families[name].type)


def test_sessions_and_frames_are_counted_by_type(server):
    before = scrape(server)
    with Client(server.port) as a, Client(server.port) as b:
        a.handshake("counter")
        b.handshake()
        a.send(m.Ping(timestamp=1))
        a.expect(m.Pong)
        a.send_frame(0x08, b"")
        a.expect_error(ErrorCode.UNSUPPORTED)
        general = a.channel_id("general")
        a.send(m.ListMessages(channel_id=general, limit=5))
        a.expect(m.MessageList)
        during = scrape(server)
    assert value(during, "superchat_active_sessions") == 2
    assert value(during, "superchat_greenlets") >= value(before, "superchat_greenlets") + 2  # a greenlet per client
    created = "superchat_sessions_created_total"
    assert value(during, "superchat_sessions_created", created) - (value(before, "superchat_sessions_created",
                                                                          created) or 0) == 2
    received = "superchat_messages_received_total"
    for type_name in ("SET_NICKNAME", "PING", "LIST_CHANNELS", "LIST_MESSAGES", "CREATE_SUBCHANNEL"):
        assert value(during, "superchat_messages_received", received, type=type_name) >= 1, type_name
    sent = "superchat_messages_sent_total"
    for type_name in ("SERVER_CONFIG", "NICKNAME_RESPONSE", "PONG", "ERROR", "CHANNEL_LIST", "MESSAGE_LIST"):
        assert value(during, "superchat_messages_sent", sent, type=type_name) >= 1, type_name
    assert value(during, "superchat_messages_sent", sent, type="SERVER_CONFIG") >= 2

    deadline = time.monotonic() + 10
    while value(scrape(server), "superchat_active_sessions") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = scrape(server)
    gone = "superchat_sessions_disconnected_total"
    assert value(after, "superchat_sessions_disconnected", gone) - (
        value(before, "superchat_sessions_disconnected", gone) or 0) == 2


def test_one_broadcast_to_n_subscribers_is_one_broadcast_and_n_deliveries(server):
    subscribers = [Client(server.port) for _ in range(3)]
    author = Client(server.port)
    try:
        author.handshake("author")
        general = author.channel_id("general")
        for number, client in enumerate(subscribers):
            client.handshake(f"reader{number}")
            client.subscribe_channel(general)
        root = author.post(general, "to three")
        for client in subscribers:
            client.expect(m.NewMessage)
        subscribers[0].subscribe_thread(root)
        author.post(general, "to one", parent_id=root)
        subscribers[0].expect(m.NewMessage)
        families = scrape(server)
    finally:
        for client in [*subscribers, author]:
            client.close()

    assert value(families, "superchat_messages_broadcast", "superchat_messages_broadcast_total") == 2
    delivered = "superchat_messages_delivered_total"
    assert value(families, "superchat_messages_delivered", delivered, channel_id=str(general), thread_id="") == 3
    assert value(families, "superchat_messages_delivered", delivered,
                 channel_id=str(general), thread_id=str(root)) == 1
    assert value(families, "superchat_messages_sent", "superchat_messages_sent_total", type="NEW_MESSAGE") == 4
    fanout = "superchat_broadcast_fanout"
    assert value(families, fanout, fanout + "_count", type="channel") == 1
    assert value(families, fanout, fanout + "_sum", type="channel") == 3
    assert value(families, fanout, fanout + "_bucket", type="channel", le="1.0") == 0
    assert value(families, fanout, fanout + "_bucket", type="channel", le="5.0") == 1
    assert value(families, fanout, fanout + "_sum", type="thread") == 1
    buckets = sorted(float(s.labels["le"]) for s in families[fanout].samples
                     if s.name == fanout + "_bucket" and s.labels["type"] == "channel")
    assert buckets == [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, float("inf")]
    duration = "superchat_broadcast_duration_seconds"
    assert value(families, duration, duration + "_count", type="thread") == 1


def test_subscriber_gauges_follow_subscriptions_and_do_not_pile_up(server):
    with Client(server.port) as a, Client(server.port) as b:
        a.handshake("gauge-a")
        b.handshake("gauge-b")
        general, tech = a.channel_id("general"), a.channel_id("tech")
        a.subscribe_channel(general)
        b.subscribe_channel(general)
        b.subscribe_channel(tech)
        families = scrape(server)
        assert value(families, "superchat_channel_subscribers", channel_id=str(general)) == 2
        assert value(families, "superchat_channel_subscribers", channel_id=str(tech)) == 1
        b.send(m.UnsubscribeChannel(channel_id=general))
        b.expect(m.SubscribeOk)
        assert value(scrape(server), "superchat_channel_subscribers", channel_id=str(general)) == 1

        # Threads come and go: only the ones with subscribers right now have a series.
        random = a.channel_id("random")  # nobody subscribed: no NEW_MESSAGE to read in between
        threads = [a.post(random, f"thread {i}") for i in range(8)]
        for thread_id in threads:
            b.subscribe_thread(thread_id)
            b.send(m.UnsubscribeThread(thread_id=thread_id))
            b.expect(m.SubscribeOk)
        a.subscribe_thread(threads[0])
        assert label_values(scrape(server), "superchat_thread_subscribers", "thread_id") == {str(threads[0])}
    deadline = time.monotonic() + 10
    while True:  # a closed session leaves no subscriber series behind
        families = scrape(server)
        if not label_values(families, "superchat_channel_subscribers", "channel_id") and not label_values(
                families, "superchat_thread_subscribers", "thread_id"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def promtool_problems(exposition: bytes) -> str:
    promtool = require("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30)
    return "" if result.returncode == 0 and not (result.stdout + result.stderr).strip() else (
        f"exit {result.returncode}: " + result.stdout.decode() + result.stderr.decode())


def samples_of(families: dict, name: str, sample: str) -> dict[tuple[str, ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples if s.name == sample}


def test_thread_series_are_capped_and_what_they_leave_counts_under_other(start_server):
    server = start_server({"observability": {"max_thread_series": 3}, "limits": {"message_rate_limit": 1000}})
    with Client(server.port) as author, Client(server.port) as reader, Client(server.port) as second:
        author.handshake("author")
        reader.handshake("reader")
        second.handshake("second")
        general, tech = author.channel_id("general"), author.channel_id("tech")
        # Nobody follows the channels themselves: only the replies are delivered, one per reply.
        g1, g2, g3 = (author.post(general, f"general thread {n}") for n in range(3))
        t1, t2 = (author.post(tech, f"tech thread {n}") for n in range(2))
        for thread in (g1, g2, g3, t1, t2):
            reader.subscribe_thread(thread)
        for thread in (g3, t2):
            second.subscribe_thread(thread)
        # Least recently delivered to leaves first: g1, then g2, then g3 (g2 comes back on its own).
        for thread, replies in ((g1, 1), (g2, 2), (g3, 3), (t1, 4), (t2, 5), (g2, 1)):
            for n in range(replies):
                author.post(general if thread in (g1, g2, g3) else tech, f"reply {n}", parent_id=thread)
                for client in (reader, second) if thread in (g3, t2) else (reader,):
                    assert client.expect(m.NewMessage).parent_id == thread
        status, _, body = server.http_get("/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}

    delivered = samples_of(families, "superchat_messages_delivered", "superchat_messages_delivered_total")
    assert delivered == {
        (("channel_id", str(general)), ("thread_id", "other")): 1 + 2 + 2 * 3,  # g1, g2 before it came back, g3
        (("channel_id", str(general)), ("thread_id", str(g2))): 1,
        (("channel_id", str(tech)), ("thread_id", str(t1))): 4,
        (("channel_id", str(tech)), ("thread_id", str(t2))): 2 * 5,
    }
    assert sum(delivered.values()) == 1 + 2 + 2 * 3 + 4 + 2 * 5 + 1  # every delivery, once

    subscribers = samples_of(families, "superchat_thread_subscribers", "superchat_thread_subscribers")
    assert len(subscribers) == 3 + 1
    assert subscribers[(("thread_id", str(g3)),)] == subscribers[(("thread_id", str(t2)),)] == 2
    assert sum(subscribers.values()) == 5 + 2
    assert subscribers[(("thread_id", "other"),)] == 2  # two of the threads followed by one session only

    assert promtool_problems(body) == ""


def test_promtool_finds_no_problem_in_the_exposition(server):
    with Client(server.port) as client:
        client.handshake("linted")
        general = client.channel_id("general")
        client.subscribe_channel(general)
        client.post(general, "for the histograms")
        client.expect(m.NewMessage)
        status, _, body = server.http_get("/metrics")
    assert status == 200
    assert promtool_problems(body) == ""


def test_health_reports_the_guides_fields(server):
    with Client(server.port) as client:
        client.handshake("healthy")
        status, headers, body = server.http_get("/health")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["database"] == "ok"
    assert health["sessions"] == 1
    assert health["directory_enabled"] is True
    assert isinstance(health["uptime"], int) and health["uptime"] >= 0


def test_health_says_so_when_the_database_is_unusable(server):
    database = server.data_dir / "superchat.db"
    with Client(server.port) as client:
        client.handshake("witness")
        for suffix in ("-wal", "-shm", ""):
            Path(str(database) + suffix).unlink(missing_ok=True)
        status, _, body = server.http_get("/health")
        health = json.loads(body)
        assert status == 503
        assert health["status"] != "ok"
        assert health["database"].startswith("error")
        client.send(m.Ping(timestamp=3))  # everyone else is still served
        assert client.expect(m.Pong).client_timestamp == 3


def test_database_size_is_the_sqlite_file_with_its_wal(server):
    database = server.data_dir / "superchat.db"

    def on_disk() -> int:
        return sum(path.stat().st_size for path in (database, Path(f"{database}-wal")) if path.exists())

    def measured_size() -> float:
        """The gauge once it has caught up with the files (it is measured every few seconds)."""
        deadline = time.monotonic() + 20
        while (size := value(scrape(server), "superchat_database_size_bytes")) != on_disk():
            assert time.monotonic() < deadline, (size, on_disk())
            time.sleep(0.2)
        return size

    before = measured_size()
    with Client(server.port) as client:
        client.handshake("writer")
        general = client.channel_id("general")
        for n in range(5):
            client.post(general, str(n) * 4000)
    assert measured_size() >= before + 5 * 4000


def test_unknown_paths_and_methods(server):
    assert server.http_get("/nothing")[0] == 404
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request, timeout=5)
    assert failure.value.code == 405


def test_metrics_listen_where_configured(start_server):
    server = start_server({"observability": {"metrics_bind": "127.0.0.2"}})
    assert any("Metrics server listening on 127.0.0.2:" in line for line in server.output)
    with urllib.request.urlopen(f"http://127.0.0.2:{server.metrics_port}/health", timeout=5) as response:
        assert response.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/health", timeout=5)


def run_healthcheck(server) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parent.parent / "conf" / "healthcheck.sh"
    for program in ("nc", "curl", "jq"):
        require(program)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HEALTHCHECK_HOST": "127.0.0.1",
           "HEALTHCHECK_TCP_PORT": str(server.port), "HEALTHCHECK_METRICS_PORT": str(server.metrics_port)}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)


def test_the_guides_healthcheck_script_passes_then_fails_on_a_broken_database(server):
    healthy = run_healthcheck(server)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.strip() == "OK: SuperChat server is healthy"
    database = server.data_dir / "superchat.db"
    for suffix in ("-wal", "-shm", ""):
        Path(str(database) + suffix).unlink(missing_ok=True)
    broken = run_healthcheck(server)
    assert broken.returncode == 1
    assert broken.stdout.startswith("ERROR: Server status:"), broken.stdout


def test_the_healthcheck_script_fails_when_the_server_is_down(server):
    server.stop()
    down = run_healthcheck(server)
    assert down.returncode == 1
    assert "not listening" in down.stdout
