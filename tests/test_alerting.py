"""The alert rules, Prometheus and Alertmanager files in conf/, checked by the real promtool and amtool."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.client import Client
from tests.tools import require

pytestmark = pytest.mark.timeout(90)

CONF = Path(__file__).resolve().parents[1] / "conf"
RULES = CONF / "prometheus" / "alerts.yml"
GUIDE_ALERTS = {
    "SuperChatServerDown", "HighConnectionRate", "HighErrorRate", "HighBroadcastLatency", "DatabaseGrowthRapid",
    "GoroutineLeakSuspected", "SessionsNearCapacity", "HighCPUUsage",
}


def run(*command, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_rules_are_the_guides_and_promtool_passes_them():
    checked = run(require("promtool"), "check", "rules", RULES.name, cwd=RULES.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M)) == GUIDE_ALERTS


def test_each_alert_fires_after_its_for_and_not_on_healthy_series():
    tested = run(require("promtool"), "test", "rules", "alerts_test.yml", cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tests = (RULES.parent / "alerts_test.yml").read_text()
    for alert in GUIDE_ALERTS:
        # Each alert is expected both silent and firing somewhere in the tests.
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts: \[\]", tests), alert
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", tests), alert


def test_the_rule_tests_fail_when_a_threshold_moves(tmp_path):
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(RULES.parent / name, tmp_path / name)
    moved = RULES.read_text().replace("superchat_active_sessions > 9000", "superchat_active_sessions > 9900")
    (tmp_path / "alerts.yml").write_text(moved)
    tested = run(require("promtool"), "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "SessionsNearCapacity" in tested.stdout + tested.stderr


def test_prometheus_and_alertmanager_configurations_pass_their_checks():
    prometheus = run(require("promtool"), "check", "config", "prometheus.yml", cwd=RULES.parent)
    assert prometheus.returncode == 0, prometheus.stdout + prometheus.stderr
    assert "1 rule files found" in prometheus.stdout
    alertmanager = run(require("amtool"), "check-config", "config.yml",
                       cwd=CONF / "alertmanager")
    assert alertmanager.returncode == 0, alertmanager.stdout + alertmanager.stderr


def test_every_metric_the_rules_read_is_one_scd_exports(server):
    with Client(server.port) as client:
        client.handshake("watcher")
        general = client.channel_id("general")
        client.subscribe_channel(general)
        client.post(general, "a broadcast, so that its histogram has samples")
        _, _, body = server.http_get("/metrics")
    samples = {sample.name for family in text_string_to_metric_families(body.decode()) for sample in family.samples}
    expressions = "\n".join(re.findall(r"expr: ([^\n]*(?:\n {10}.*)*)", RULES.read_text()))
    read = set(re.findall(r"\b((?:superchat|process)_[a-z_]+)", expressions))
    assert read, "no metric found in the rules"
    # up is Prometheus's own series for every target.
    assert read <= samples, sorted(read - samples)
