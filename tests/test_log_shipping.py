"""conf/filebeat.yml and conf/rsyslog/superchat.conf against log files scd's own logging writes.

Filebeat is not in Debian: its multiline and ndjson settings are read from the file and applied
here as Filebeat applies them, to a server.log that holds a traceback. rsyslog checks its file itself.
"""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.server_process import REPO
from tests.tools import require

pytestmark = pytest.mark.timeout(60)

FILEBEAT = yaml.safe_load((REPO / "conf" / "filebeat.yml").read_text())
RSYSLOG = REPO / "conf" / "rsyslog" / "superchat.conf"
# What the script below logs: four records, the third with a traceback.
RECORDS = 4

WRITE_LOGS = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    from superchat.observability import logs

    logs.configure(Path(sys.argv[1]), log_format=sys.argv[2])
    log = logging.getLogger("superchat.dispatch")
    log.info("Session 1 set nickname: alice")
    log.warning("Session 1 (alice): message rate limit exceeded")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("Session 1: post_message handler failed")
    log.info("Session 1 (alice) closed: client closed the connection")
    logging.shutdown()
""")


def scd_log_files(tmp_path: Path, log_format: str) -> Path:
    subprocess.run([sys.executable, "-c", WRITE_LOGS, str(tmp_path), log_format], cwd=REPO, check=True,
                   capture_output=True, timeout=30)
    return tmp_path


def filebeat_input(input_id: str) -> dict:
    (found,) = [entry for entry in FILEBEAT["filebeat.inputs"] if entry["id"] == input_id]
    return found


def parser(input_id: str, kind: str) -> dict:
    (found,) = [entry[kind] for entry in filebeat_input(input_id)["parsers"] if kind in entry]
    return found


def multiline_events(text: str, settings: dict) -> list[str]:
    """The events Filebeat's multiline parser of ``type: pattern`` makes of ``text``."""
    assert settings["type"] == "pattern"
    pattern = re.compile(settings["pattern"])
    events: list[str] = []
    for line in text.splitlines():
        # With negate, the lines the pattern does not match continue an event, else those it matches;
        # match: after joins them to the event before.
        continues = bool(pattern.search(line)) != settings["negate"]
        if continues and events and settings["match"] == "after":
            events[-1] += "\n" + line
        else:
            events.append(line)
    return events


def test_the_inputs_are_the_guides_one_for_each_format():
    inputs = FILEBEAT["filebeat.inputs"]
    assert sorted(entry["id"] for entry in inputs) == ["superchat-json", "superchat-text"]
    for entry in inputs:
        assert entry["type"] == "filestream"
        assert entry["paths"] == ["/var/lib/superchat/server.log", "/var/lib/superchat/errors.log"]
        assert entry["fields"] == {"app": "superchat", "type": "server_log"}
    assert [entry["enabled"] for entry in inputs if entry["id"] == "superchat-text"] == [True]
    assert [entry["enabled"] for entry in inputs if entry["id"] == "superchat-json"] == [False]
    assert FILEBEAT["output.elasticsearch"] == {"hosts": ["localhost:9200"], "index": "superchat-%{+yyyy.MM.dd}"}
    assert FILEBEAT["setup.template.pattern"] == "superchat-*"
    # The service's data directory, where Filebeat's paths look.
    assert "Environment=XDG_DATA_HOME=/var/lib" in (REPO / "conf" / "superchat.service").read_text()


def test_a_traceback_stays_one_event_with_its_line(tmp_path):
    files = scd_log_files(tmp_path, "text")
    events = multiline_events((files / "server.log").read_text(), parser("superchat-text", "multiline"))
    assert len(events) == RECORDS, events
    failed = events[2]
    assert failed.splitlines()[0].endswith("[ERROR] Session 1: post_message handler failed")
    assert "\nTraceback (most recent call last):\n" in failed and failed.endswith("ZeroDivisionError: division by zero")
    assert all("\n" not in event for event in events[:2] + events[3:])
    # errors.log: its start marker, then the error with its traceback.
    errors = multiline_events((files / "errors.log").read_text(), parser("superchat-text", "multiline"))
    assert len(errors) == 2 and errors[1] == failed


def test_json_lines_are_one_event_each_with_the_message_key(tmp_path):
    files = scd_log_files(tmp_path, "json")
    settings = parser("superchat-json", "ndjson")
    assert settings["target"] == ""  # the keys become the event's own
    lines = (files / "server.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == RECORDS
    assert all(settings["message_key"] in record for record in records)
    assert records[2]["level"] == "error"
    assert "Traceback (most recent call last)" in records[2]["exception"]
    # A multiline parser would be wrong here: no line of a JSON file continues another.
    assert all(set(entry) == {"ndjson"} for entry in filebeat_input("superchat-json")["parsers"])


def test_rsyslog_accepts_the_forwarding_rule_for_scds_lines(tmp_path):
    rsyslogd = require("rsyslogd")
    checked = subprocess.run([rsyslogd, "-N1", "-f", str(RSYSLOG)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rule = [line for line in RSYSLOG.read_text().splitlines() if line and not line.startswith("#")]
    assert rule == [':programname, isequal, "scd" @@remote-syslog-server:514']
    assert "SyslogIdentifier=scd\n" in (REPO / "conf" / "superchat.service").read_text()
    # The check is a real one: a misspelt rule fails it.
    broken = tmp_path / "broken.conf"
    broken.write_text(RSYSLOG.read_text().replace("isequal", "isequl"))
    assert subprocess.run([rsyslogd, "-N1", "-f", str(broken)], capture_output=True, timeout=30).returncode != 0
