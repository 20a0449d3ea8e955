"""conf/grafana: the dashboard as Grafana imports it, and every query it and the operations guide
make, run by the real Prometheus while it scrapes a busy scd every second."""

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from superchat.protocol import ErrorCode
from tests.client import Client
from tests.redis_server import RedisServer
from tests.server_process import REPO, ServerProcess, free_port
from tests.tools import require

pytestmark = pytest.mark.timeout(180)

GRAFANA = REPO / "conf" / "grafana"
DASHBOARD = json.loads((GRAFANA / "superchat-dashboard.json").read_text())
RULES = REPO / "conf" / "prometheus" / "alerts.yml"
# The guide's panels: query, visualisation, unit, thresholds past the base colour.
GUIDE_PANELS = {
    "Active Sessions": ("superchat_active_sessions", "stat", "short", []),
    "Message Rate": ("rate(superchat_messages_broadcast_total[5m])", "timeseries", "suffix: msg/s", []),
    "Broadcast Latency (P95)": ("histogram_quantile(0.95, rate(superchat_broadcast_duration_seconds_bucket[5m]))",
                                "timeseries", "s", [0.5, 1]),
    "CPU Usage": ("rate(process_cpu_seconds_total[5m]) * 100", "gauge", "percent", [70, 90]),
    "Memory Usage": ("process_resident_memory_bytes / 1024 / 1024", "gauge", "decmbytes", []),
    "Connection Rate": ("rate(superchat_sessions_created_total[5m]) * 60", "timeseries", "suffix: conn/min", []),
    "Top Channels by Subscribers": ("topk(10, superchat_channel_subscribers)", "barchart", "short", []),
    # The guide's goroutine count, for a Go server: scd counts greenlets.
    "Greenlet Count": ("superchat_greenlets", "timeseries", "short", []),
}
# The guide's example queries ("Example Queries", "Available Metrics"), go_goroutines read as superchat_greenlets.
GUIDE_QUERIES = [
    "superchat_active_sessions",
    "rate(superchat_messages_broadcast_total[5m])",
    "rate(superchat_sessions_created_total[1m]) * 60",
    "rate(superchat_messages_delivered_total[5m]) / ignoring(channel_id, thread_id) group_left"
    " rate(superchat_messages_broadcast_total[5m])",
    "sum(rate(superchat_messages_delivered_total[5m])) / sum(rate(superchat_messages_broadcast_total[5m]))",
    "histogram_quantile(0.95, rate(superchat_broadcast_duration_seconds_bucket[5m]))",
    "histogram_quantile(0.95, superchat_broadcast_fanout_bucket)",
    "rate(process_cpu_seconds_total[5m]) * 100",
    "process_resident_memory_bytes / 1024 / 1024",
    "deriv(superchat_greenlets[5m])",
    "rate(superchat_sessions_created_total[5m])",
]


def panels() -> list[dict]:
    return [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]


def test_the_dashboard_imports_as_it_is():
    assert DASHBOARD["uid"] == "superchat-server" and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 36
    # Import asks for the Prometheus data source, which every panel and query then names.
    (source,) = DASHBOARD["__inputs"]
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    wanted = {"type": "prometheus", "uid": "${" + source["name"] + "}"}
    for panel in panels():
        assert panel["datasource"] == wanted, panel["title"]
        assert all(target["datasource"] == wanted for target in panel["targets"]), panel["title"]
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    # No two panels share a cell of the grid.
    cells = set()
    for panel in DASHBOARD["panels"]:
        box = panel["gridPos"]
        taken = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
        assert box["x"] + box["w"] <= 24 and not cells & taken, panel["title"]
        cells |= taken
    provider = yaml.safe_load((GRAFANA / "provisioning.yml").read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"


def test_every_panel_of_the_guide_is_there_with_its_query_unit_and_thresholds():
    by_title = {panel["title"]: panel for panel in panels()}
    for title, (query, kind, unit, thresholds) in GUIDE_PANELS.items():
        panel = by_title[title]
        assert [target["expr"] for target in panel["targets"]] == [query], title
        assert panel["type"] == kind, title
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] == unit, title
        assert [step["value"] for step in defaults["thresholds"]["steps"][1:]] == thresholds, title
    cpu = by_title["CPU Usage"]["fieldConfig"]["defaults"]
    assert (cpu["min"], cpu["max"]) == (0, 100)
    titles = set(by_title)
    assert {"Sessions by Transport", "Database Size", "Redis Up", "Cluster Events"} <= titles


class Prometheus:
    def __init__(self, root: Path, metrics_port: int):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "superchat",
                                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [require("prometheus"), f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def get(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def query(self, expr: str) -> list:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def busy(server: ServerProcess, stop: threading.Event) -> None:
    """Posts to three subscribers, sessions coming and going, and an error now and then."""
    subscribers = [Client(server.port) for _ in range(3)]
    with Client(server.port) as poster:
        poster.handshake("poster")
        general = poster.channel_id("general")
        for subscriber in subscribers:
            subscriber.handshake()
            subscriber.subscribe_channel(general)
        count = 0
        while not stop.is_set():
            poster.post(general, f"post {count}")
            if count % 5 == 0:
                with Client(server.port) as passer_by:
                    passer_by.handshake()
                poster.send_frame(0x08, b"")  # not implemented: an ERROR frame
                poster.expect_error(ErrorCode.UNSUPPORTED)
            count += 1
            stop.wait(0.1)
    for subscriber in subscribers:
        subscriber.close()


def test_prometheus_answers_every_panel_and_guide_query_and_evaluates_the_rules(tmp_path, postgres):
    # A node of several, on PostgreSQL and Redis: the cluster panels have series too.
    redis = RedisServer().start()
    postgres.create_database("grafana")
    server = ServerProcess(tmp_path / "scd", {
        "server": {"database_url": postgres.url("grafana")},
        "cluster": {"redis_url": redis.url, "node_id": "dash"},
        "limits": {"message_rate_limit": 65535},
    }).start()
    prometheus = Prometheus(tmp_path, server.metrics_port)
    stop = threading.Event()
    load = threading.Thread(target=busy, args=(server, stop), daemon=True)
    load.start()
    try:
        queries = [target["expr"] for panel in panels() for target in panel["targets"]] + GUIDE_QUERIES
        deadline = time.monotonic() + 60
        while True:
            try:
                empty = [expr for expr in queries if not prometheus.query(expr)]
            except OSError:  # Prometheus still starting
                empty = queries
            if not empty:
                break
            assert time.monotonic() < deadline, f"no data for {empty}"
            time.sleep(1)
        assert [sample["value"][1] for sample in prometheus.query('up{job="superchat"}')] == ["1"]
        while True:  # until every rule has been evaluated once
            groups = prometheus.get("/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            if rules and all(rule["health"] != "unknown" for rule in rules):
                break
            assert time.monotonic() < deadline + 60, rules
            time.sleep(1)
        assert len(rules) == 8
        for rule in rules:
            assert rule["health"] == "ok" and not rule.get("lastError"), rule
    finally:
        stop.set()
        load.join(timeout=10)
        prometheus.stop()
        server.kill()
        redis.destroy()
