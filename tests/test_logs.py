"""Log files against the operations guide (MONITORING.md): its grep/awk recipes, run with the real
tools on a real server's logs, must return the right lines; JSON mode, the journal's priority
prefixes, and the systemd unit."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from tests.client import Client
from tests.server_process import REPO, SCD, ServerProcess

pytestmark = pytest.mark.timeout(90)

GUIDE_DIR = "~/.local/share/superchat"
# The guide's recipes, verbatim ("Log Files" and "Common Patterns").
GREP_ERRORS = f"grep ERROR {GUIDE_DIR}/server.log"
COUNT_CONNECTIONS = f'grep "Connection from" {GUIDE_DIR}/server.log | wc -l'
RATE_LIMITS = f'grep "rate limit exceeded" {GUIDE_DIR}/server.log'
RECENT_ERRORS = f"tail -n 50 {GUIDE_DIR}/errors.log"
ERRORS_TODAY = f'grep "$(date +%Y/%m/%d)" {GUIDE_DIR}/errors.log | wc -l'
DATABASE_ERRORS = f'grep "database" {GUIDE_DIR}/errors.log'
TOP_SENDERS = (f'grep "POST_MESSAGE" {GUIDE_DIR}/server.log | \\\n'
               "  awk '{print $4}' | sort | uniq -c | sort -rn | head -10")

LINE = re.compile(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}) \[(INFO|WARN|ERROR|DEBUG)\] (.*)")
START_MARKER = re.compile(r"=== scd \S+ started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d, pid \d+ ===")
ISO_MICROS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d")
SENDERS = {"alice": 3, "bob": 2, "carol": 1}  # different counts, all within the rate limit of 3


def recipe(command: str, data_dir: Path) -> str:
    result = subprocess.run(["bash", "-c", command.replace(GUIDE_DIR, shlex.quote(str(data_dir)))],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode in (0, 1) and not result.stderr, result  # grep exits 1 when nothing matches
    return result.stdout


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def lines(server: ServerProcess, name: str = "server.log") -> list[str]:
    return server.log_text(name).splitlines()


def stop_and_collect_output(server: ServerProcess) -> list[str]:
    assert server.stop() == 0
    wait_for(lambda: any("Graceful shutdown complete" in line for line in server.output))
    return server.output


def post_from_senders(server: ServerProcess) -> tuple[dict[str, Client], dict[int, str]]:
    """The SENDERS post their counts, interleaved; returns the clients and message id -> nickname."""
    clients = {nickname: Client(server.port) for nickname in SENDERS}
    for nickname, client in clients.items():
        client.handshake(nickname)
    general = clients["alice"].channel_id("general")
    posted = {}
    for turn in range(max(SENDERS.values())):
        for nickname, count in SENDERS.items():
            if turn < count:
                posted[clients[nickname].post(general, f"{nickname} says {turn}")] = nickname
    return clients, posted


def database_error(server: ServerProcess, client: Client) -> None:
    """A real storage failure: the User table vanishes under the running server, SET_NICKNAME's
    lookup fails and dispatch logs it at ERROR. The table then comes back, so posting and
    restarting still work."""
    database = server.data_dir / "superchat.db"
    with sqlite3.connect(database) as db:
        db.execute("ALTER TABLE User RENAME TO UserAway")
    client.send(m.SetNickname(nickname="renamed"))
    client.expect_error(ErrorCode.DATABASE_ERROR)
    with sqlite3.connect(database) as db:
        db.execute("ALTER TABLE UserAway RENAME TO User")


def test_guide_recipes_return_the_right_lines(start_server):
    server = start_server({"limits": {"message_rate_limit": 3}})
    clients, posted = post_from_senders(server)
    alice = clients["alice"]
    alice.send(m.PostMessage(channel_id=alice.channel_id("general"), parent_id=None, content="one too many"))
    alice.expect_error(ErrorCode.MESSAGE_RATE_LIMITED)
    database_error(server, clients["carol"])
    data_dir = server.data_dir

    log = wait_for(lambda: len([line for line in lines(server) if "[ERROR]" in line]) == 2 and lines(server))
    assert all(LINE.fullmatch(line) for line in log), log
    # Abuse shows among the errors, as the guide's sample line shows it.
    rate_limited, error = [line for line in log if "[ERROR]" in line]
    assert "set_nickname failed: database error: no such table: User" in error
    assert recipe(GREP_ERRORS, data_dir).splitlines() == [rate_limited, error]

    assert recipe(COUNT_CONNECTIONS, data_dir).strip() == str(len(SENDERS))

    assert recipe(RATE_LIMITS, data_dir).splitlines() == [rate_limited]
    assert re.fullmatch(r"Rate limit exceeded for session \d+ \(alice\): message rate limit exceeded "
                        r"\(max 3 per minute\)", LINE.fullmatch(rate_limited)[3])

    top = [line.split() for line in recipe(TOP_SENDERS, data_dir).splitlines()]
    assert top == [[str(count), nickname] for nickname, count in SENDERS.items()]
    post_lines = [line for line in log if "POST_MESSAGE" in line]
    assert sorted(int(re.search(r" message=(\d+) ", line)[1]) for line in post_lines) == sorted(posted)
    for line in post_lines:
        assert posted[int(re.search(r" message=(\d+) ", line)[1])] == line.split()[3]

    errors = lines(server, "errors.log")
    assert len(errors) == 3 and START_MARKER.fullmatch(errors[0]) and errors[1:] == [rate_limited, error]
    assert recipe(RECENT_ERRORS, data_dir).splitlines() == errors
    assert recipe(ERRORS_TODAY, data_dir).strip() == "2"
    assert recipe(DATABASE_ERRORS, data_dir).splitlines() == [error]

    for client in clients.values():
        client.close()
    assert stop_and_collect_output(server) == lines(server)  # the console mirrors server.log
    assert not (data_dir / "debug.log").exists()
    for name in ("server.log", "errors.log"):
        assert (data_dir / name).stat().st_mode & 0o777 == 0o640


def test_a_failed_post_does_not_count_as_a_sender(start_server):
    server = start_server()
    with Client(server.port) as client:
        client.handshake("alice")
        general = client.channel_id("general")
        client.post(general, "kept")
        with sqlite3.connect(server.data_dir / "superchat.db") as db:
            db.execute("DROP TABLE Message")
        client.send(m.PostMessage(channel_id=general, parent_id=None, content="lost"))
        client.expect_error(ErrorCode.DATABASE_ERROR)
    wait_for(lambda: "database" in server.log_text("errors.log"))
    assert [line.split() for line in recipe(TOP_SENDERS, server.data_dir).splitlines()] == [["1", "alice"]]


def test_timestamps_are_local_time_with_microseconds(tmp_path):
    india = timezone(timedelta(hours=5, minutes=30))
    server = ServerProcess(tmp_path / "scd")
    server.env_overrides["TZ"] = "IST-5:30"  # POSIX form: no tzdata needed
    try:
        server.start()
        server.wait_for_log("Server started")
        stamp = LINE.fullmatch(lines(server)[0])[1]
    finally:
        server.kill()
    logged = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=india)
    assert abs(datetime.now(india) - logged) < timedelta(minutes=1)


def test_errors_log_appends_with_a_marker_per_start_and_server_log_starts_empty(start_server):
    server = start_server()
    ports = []
    for run in (1, 2):
        ports.append(server.port)
        with Client(server.port) as client:
            client.handshake()
            database_error(server, client)
        wait_for(lambda expected=run: server.log_text("errors.log").count("[ERROR]") == expected)
        assert server.stop() == 0
        if run == 1:
            first_log = lines(server)
            server.start()

    errors = lines(server, "errors.log")
    assert [bool(START_MARKER.fullmatch(line)) for line in errors] == [True, False, True, False], errors
    first_error, second_error = errors[1], errors[3]
    assert first_error in first_log and second_error in lines(server)
    assert "database error" in first_error and "database error" in second_error
    assert [line for line in lines(server) if "Server started on port" in line][0].endswith(str(ports[1]))
    assert first_error not in lines(server) and not any(f"port {ports[0]}" in line for line in lines(server))


def test_debug_log_only_with_debug_and_appended(start_server):
    server = start_server()
    assert server.stop() == 0
    assert not (server.data_dir / "debug.log").exists()

    server.args = ("--debug",)
    for _ in range(2):
        server.start()
        clients, _ = post_from_senders(server)
        for client in clients.values():
            client.close()
        # DEBUG lines (every frame, POST_MESSAGE ones too) stay in debug.log: the top-senders
        # recipe on server.log still sees only the senders.
        wait_for(lambda: server.log_text().count("POST_MESSAGE") == sum(SENDERS.values()))
        top = [line.split() for line in recipe(TOP_SENDERS, server.data_dir).splitlines()]
        assert top == [[str(count), nickname] for nickname, count in SENDERS.items()]
        assert stop_and_collect_output(server) == lines(server)
    debug = lines(server, "debug.log")
    assert sum("Server started on port" in line for line in debug) == 2
    assert all(LINE.fullmatch(line) for line in debug)
    assert set(lines(server)) < set(debug)
    assert not any("[DEBUG]" in line for line in lines(server))

    server.args = ()
    size = (server.data_dir / "debug.log").stat().st_size
    server.start()
    assert server.stop() == 0
    assert (server.data_dir / "debug.log").stat().st_size == size


def test_json_lines_carry_the_fields_elk_ingests(start_server, tmp_path):
    server = ServerProcess(tmp_path / "scd", {"limits": {"message_rate_limit": 3}}, ("--log-format", "json", "--debug"))
    server.env_overrides["TZ"] = "IST-5:30"
    try:
        server.start()
        clients, posted = post_from_senders(server)
        alice = clients["alice"]
        alice.send(m.PostMessage(channel_id=alice.channel_id("general"), parent_id=None, content="one too many"))
        alice.expect_error(ErrorCode.MESSAGE_RATE_LIMITED)
        database_error(server, clients["bob"])
        for client in clients.values():
            client.close()
        output = stop_and_collect_output(server)
    finally:
        server.kill()

    records = {}
    for name in ("server.log", "errors.log", "debug.log"):
        records[name] = [json.loads(line) for line in lines(server, name)]
        for record in records[name]:
            assert {"timestamp", "level", "logger", "message"} <= record.keys(), record
            assert ISO_MICROS.fullmatch(record["timestamp"]) and record["timestamp"].endswith("+05:30"), record
    assert [json.loads(line) for line in output] == records["server.log"]

    by_message = {record["message"]: record for record in records["server.log"]}
    for message_id, nickname in posted.items():
        record = next(r for text, r in by_message.items() if f" message={message_id} " in text)
        assert record["message"].split()[0] == nickname and record["logger"] == "superchat.posts"
        assert record["level"] == "info"
    levels = {record["level"] for record in records["server.log"]}
    assert {"info", "error"} <= levels
    rate_limited, error = [r for r in records["server.log"] if r["level"] == "error"]
    assert rate_limited["message"].startswith("Rate limit exceeded for session ")
    assert records["errors.log"][1:] == [rate_limited, error] and "database error" in error["message"]
    assert records["errors.log"][0]["message"].startswith("=== scd ")


def test_journal_lines_carry_their_syslog_priority(start_server, tmp_path):
    server = ServerProcess(tmp_path / "scd", {"limits": {"message_rate_limit": 3}})
    server.env_overrides["JOURNAL_STREAM"] = "8:1234"
    try:
        server.start()
        with Client(server.port) as client:
            client.handshake("alice")
            general = client.channel_id("general")
            for n in range(4):
                client.send(m.PostMessage(channel_id=general, parent_id=None, content=f"post {n}"))
            client.expect(m.MessagePosted)
            client.expect(m.MessagePosted)
            client.expect(m.MessagePosted)
            client.expect_error(ErrorCode.MESSAGE_RATE_LIMITED)
            database_error(server, client)
        # A frame announcing more than the protocol allows: a warning, and the connection closes.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(b"\xff\xff\xff\xff\x01\x10\x00")
            while raw.recv(65536):
                pass
        server.wait_for_log("sent an invalid frame")
        output = stop_and_collect_output(server)
    finally:
        server.kill()

    priorities = {"DEBUG": "7", "INFO": "6", "WARN": "4", "ERROR": "3"}
    unprefixed = []
    for line in output:
        prefixed = re.fullmatch(r"<(\d)>(.*)", line)
        assert prefixed, line
        assert prefixed[1] == priorities[LINE.fullmatch(prefixed[2])[2]], line
        unprefixed.append(prefixed[2])
    assert {line[:3] for line in output} == {"<6>", "<4>", "<3>"}
    assert unprefixed == lines(server)
    assert not any(line.startswith("<") for name in ("server.log", "errors.log") for line in lines(server, name))


def test_both_call_styles_render_alike_with_context_and_tracebacks(tmp_path):
    script = """
import logging, sys
from pathlib import Path
from superchat.observability import logs

logs.configure(Path(sys.argv[1]), log_format=sys.argv[2])
stdlib, structured = logging.getLogger("superchat.test"), logs.get_logger("superchat.test")
stdlib.info("Connection from %s", "127.0.0.1:5555", extra={"session": 3, "peer": "a b"})
structured.info("Connection from %s", "127.0.0.1:5555", session=3, peer="a b")
for log in (stdlib, structured):
    try:
        {}["missing"]
    except KeyError:
        log.exception("Session %d: handler failed", 4)
stdlib.info("forged\\n2025/10/08 14:30:15.123456 [ERROR] database gone")
"""
    rendered = {}
    for log_format in ("text", "json"):
        data_dir = tmp_path / log_format
        subprocess.run([sys.executable, "-c", script, str(data_dir), log_format], cwd=REPO, check=True,
                       capture_output=True, timeout=30)
        rendered[log_format] = (data_dir / "server.log").read_text().splitlines()

    text = rendered["text"]
    assert [LINE.fullmatch(line).groups()[1:] for line in text[:2]] == [
        ("INFO", 'Connection from 127.0.0.1:5555 session=3 peer="a b"')
    ] * 2
    tracebacks = "\n".join(text[2:-1]).split("Traceback (most recent call last):")
    assert len(tracebacks) == 3 and all("KeyError: 'missing'" in block for block in tracebacks[1:])
    assert LINE.fullmatch(text[2]).groups()[1:] == ("ERROR", "Session 4: handler failed")
    assert text[-1].endswith("[INFO] forged\\n2025/10/08 14:30:15.123456 [ERROR] database gone")

    records = [json.loads(line) for line in rendered["json"]]
    first, second = ({k: v for k, v in r.items() if k != "timestamp"} for r in records[:2])
    assert first == second == {"level": "info", "logger": "superchat.test", "message": "Connection from 127.0.0.1:5555",
                               "session": 3, "peer": "a b"}
    assert all("KeyError: 'missing'" in r["exception"] and r["level"] == "error" for r in records[2:4])


def test_unwritable_log_file_is_one_clear_line(tmp_path):
    server = ServerProcess(tmp_path / "scd")
    (server.data_dir / "server.log").mkdir(parents=True)
    result = subprocess.run([sys.executable, str(SCD), "--config", str(server.config_path)], env=server.env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("scd: cannot open log files: ") and result.stderr.count("\n") == 1, result


def test_systemd_unit_is_valid(tmp_path):
    unit = (REPO / "conf" / "superchat.service").read_text()
    settings = re.findall(r"^(\w+)=(.*)$", unit, re.MULTILINE)
    for expected in [("User", "superchat"), ("Environment", "XDG_DATA_HOME=/var/lib"), ("StateDirectory", "superchat"),
                     ("ExecReload", "/bin/kill -HUP $MAINPID"), ("SyslogIdentifier", "scd"),
                     ("Restart", "on-failure")]:
        assert expected in settings
    assert re.search(r"^ExecStart=/opt/superchat/bin/scd\b", unit, re.MULTILINE)
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart to exist: point it at this checkout.
    (tmp_path / "superchat.service").write_text(unit.replace("/opt/superchat/bin/scd", str(REPO / "bin" / "scd")))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "superchat.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result
