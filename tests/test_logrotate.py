"""Rotation with the real logrotate and our logrotate/superchat while clients keep posting:
no POST_MESSAGE line may be lost or written twice."""

from __future__ import annotations

import grp
import gzip
import os
import pwd
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.client import Client
from tests.server_process import REPO, ServerProcess
from tests.tools import require

pytestmark = pytest.mark.timeout(120)

ROTATIONS = 4
NICKNAMES = ("alice", "bob", "carol")
POST_LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} \[INFO\] (\S+) POST_MESSAGE channel=\d+ message=(\d+) ")
LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} \[(INFO|WARN|ERROR|DEBUG)\] .*")
# Far above what the poster sends: rotation, not rate limiting, is under test.
UNLIMITED = {"limits": {"message_rate_limit": 65535}}


def swap(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


def derived_config(tmp_path: Path, data_dir: Path, pid: int | None) -> Path:
    """Our logrotate/superchat, aimed at the test server: its data directory, the current user
    instead of superchat, and SIGHUP to its pid instead of systemctl. ``pid=None``: copytruncate."""
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    text = (REPO / "logrotate" / "superchat").read_text()
    text = swap(text, "/var/lib/superchat/*.log", f"{data_dir}/*.log")
    text = swap(text, "create 640 superchat superchat", f"create 640 {user} {group}")
    text = swap(text, "su superchat superchat", f"su {user} {group}")
    if pid is None:
        text, replaced = re.subn(r"\n *postrotate\n.*?endscript", "\n    copytruncate", text, flags=re.S)
        assert replaced == 1
    else:
        text = swap(text, "systemctl reload superchat", f"kill -HUP {pid}")
    path = tmp_path / "logrotate.conf"
    path.write_text(text)
    path.chmod(0o644)  # logrotate ignores a config others may write
    return path


def rotate(config: Path) -> None:
    result = subprocess.run([require("logrotate"), "-f", "-s", str(config.parent / "logrotate.state"), str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "error" not in result.stderr, result


class Poster(threading.Thread):
    """Posts from three clients in turn until stopped; ``posted`` maps message id to nickname.
    One thread, one post at a time: message ids grow in the order the lines are logged."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.posted: dict[int, str] = {}
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            clients = [(nickname, Client(self.port)) for nickname in NICKNAMES]
            for nickname, client in clients:
                client.handshake(nickname)
            general = clients[0][1].channel_id("general")
            n = 0
            while not self.stopping.is_set():
                for nickname, client in clients:
                    n += 1
                    self.posted[client.post(general, f"post {n}")] = nickname
                time.sleep(0.005)
            for _, client in clients:
                client.close()
        except BaseException as exc:  # surfaced by finish()
            self.failure = exc

    def wait_for_posts(self, count: int = 20) -> None:
        target = len(self.posted) + count
        deadline = time.monotonic() + 10
        while len(self.posted) < target:
            assert self.failure is None and time.monotonic() < deadline, self.failure
            time.sleep(0.01)

    def finish(self) -> dict[int, str]:
        self.stopping.set()
        self.join(20)
        assert self.failure is None, self.failure
        return self.posted


def log_files(data_dir: Path, name: str) -> dict[str, bytes]:
    files = {}
    for path in sorted(data_dir.glob(name + "*")):
        data = path.read_bytes()
        files[path.name] = gzip.decompress(data) if path.suffix == ".gz" else data
    return files


def post_ids(files: dict[str, bytes]) -> Counter:
    found = Counter()
    for data in files.values():
        for line in data.decode().splitlines():
            if "POST_MESSAGE" in line:
                found[int(POST_LINE.match(line)[2])] += 1
    return found


def start(tmp_path: Path) -> tuple[ServerProcess, Poster]:
    server = ServerProcess(tmp_path / "scd", UNLIMITED).start()
    poster = Poster(server.port)
    poster.start()
    poster.wait_for_posts()
    return server, poster


def test_sighup_reopens_for_appending(start_server):
    server = start_server()
    with Client(server.port) as client:
        client.handshake("alice")
        client.post(client.channel_id("general"), "before the reopen")
    before = server.log_text()
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "Log files reopened" not in server.log_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert server.log_text().startswith(before)
    assert server.log_text("errors.log").count("=== scd ") == 1  # a reopen is no restart
    with Client(server.port) as client:
        client.handshake("bob")
    assert server.stop() == 0


def test_rotation_with_sighup_loses_and_repeats_nothing(tmp_path):
    server, poster = start(tmp_path)
    try:
        config = derived_config(tmp_path, server.data_dir, server.proc.pid)
        for n in range(1, ROTATIONS + 1):
            rotate(config)
            # The next rotation may only start once scd writes to the new files: until then it
            # still writes to server.log.1, which that rotation compresses and deletes.
            deadline = time.monotonic() + 10
            while "Log files reopened" not in (server.data_dir / "server.log").read_text():
                assert time.monotonic() < deadline, f"no reopen after rotation {n}"
                time.sleep(0.01)
            poster.wait_for_posts()
        posted = poster.finish()
        assert server.stop() == 0
    finally:
        poster.stopping.set()
        server.kill()

    files = log_files(server.data_dir, "server.log")
    assert sorted(files) == ["server.log", "server.log.1", *(f"server.log.{n}.gz" for n in range(2, ROTATIONS + 1))]
    for name, data in files.items():
        assert b"\0" not in data, name
        assert all(LINE.fullmatch(line) for line in data.decode().splitlines()), name
    assert sum(data.count(b"Log files reopened") for data in files.values()) == ROTATIONS
    found = post_ids(files)
    assert set(found) == set(posted) and set(found.values()) == {1}
    for data in files.values():
        for match in POST_LINE.finditer(data.decode()):
            assert posted[int(match[2])] == match[1]
    assert (server.data_dir / "server.log").stat().st_mode & 0o777 == 0o640
    errors = log_files(server.data_dir, "errors.log")
    assert sum(data.count(b"=== scd ") for data in errors.values()) == 1


def test_copytruncate_leaves_no_holes_and_no_duplicates(tmp_path):
    server, poster = start(tmp_path)
    try:
        config = derived_config(tmp_path, server.data_dir, None)
        for _ in range(ROTATIONS):
            rotate(config)
            poster.wait_for_posts()
        posted = poster.finish()
        assert server.stop() == 0
    finally:
        poster.stopping.set()
        server.kill()

    files = log_files(server.data_dir, "server.log")
    assert sorted(files) == ["server.log", "server.log.1", *(f"server.log.{n}.gz" for n in range(2, ROTATIONS + 1))]
    for name, data in files.items():
        # scd writes with O_APPEND, so after the truncate its next line lands at offset 0, not at
        # the old offset behind a run of NUL bytes.
        assert b"\0" not in data, name
        assert all(LINE.fullmatch(line) for line in data.decode().splitlines()), name
    found = post_ids(files)
    assert set(found) <= set(posted) and set(found.values()) == {1}
    # copytruncate itself loses whatever scd writes between logrotate's copy and its truncate,
    # one stretch of consecutive posts per rotation at most.
    order = sorted(posted)
    lost_stretches = sum(1 for i, mid in enumerate(order) if mid not in found and (i == 0 or order[i - 1] in found))
    assert lost_stretches <= ROTATIONS
