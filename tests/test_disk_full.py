"""A full disk under the data directory, on a real filesystem: a small tmpfs (mounting one needs
root, so these tests skip themselves otherwise), filled to the last byte by a filler file.

The log files live on the same full disk as the database. What could not be written to them
while it was full is written when space returns: the warnings and errors themselves (the one
that says the disk is full among them), and a count of the other lines lost.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from superchat.protocol import ErrorCode
from superchat.protocol import messages as m
from superchat.storage import DiskFull, NewPost, Store
from tests.client import Client
from tests.server_process import REPO, ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)

DISK_SIZE = "8m"
REFUSED_POSTS = 40
# Sent without waiting for answers: the writer commits them together, and they fail together.
REFUSED_BURST = 20
SAYS_DISK_FULL = re.compile(r"disk is full")
LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} \[(INFO|WARN|ERROR|DEBUG)\] .*")


@pytest.fixture
def small_disk(mount_tmpfs):
    return mount_tmpfs(DISK_SIZE)


def fill(disk: Path) -> Path:
    """Write a filler file until the filesystem has no byte left; returns it, to remove later."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    chunk = b"\0" * (1 << 20)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def password(word: str) -> str:
    return base64.b64encode(hashlib.sha256(word.encode()).digest()).decode().rstrip("=")


def listed(client: Client, channel_id: int) -> dict[int, str]:
    client.send(m.ListMessages(channel_id=channel_id, limit=1000))
    return {entry.id: entry.content for entry in client.expect(m.MessageList).messages}


def lines_saying_disk_full(server: ServerProcess, name: str) -> list[str]:
    return [line for line in server.log_text(name).splitlines() if SAYS_DISK_FULL.search(line)]


LOGGING_SCRIPT = """
import logging, sys
from pathlib import Path
from superchat.observability import logs

logs.configure(Path(sys.argv[1]))
log = logging.getLogger("superchat.test")

def flushed():
    logs.flush_pending()
    print("flushed", flush=True)
    sys.stdin.readline()

log.info("before the disk filled")
flushed()  # the disk is full after this
for n in range(int(sys.argv[2])):
    log.info("line %d of the full disk", n)
log.error("the disk is full")
flushed()  # space has returned after this
log.info("after space returned")
logs.flush_pending()
"""


def test_a_log_file_on_a_full_disk_never_raises_and_says_what_it_lost(small_disk):
    data_dir, count = small_disk / "logs", 2000
    logging = subprocess.Popen([sys.executable, "-c", LOGGING_SCRIPT, str(data_dir), str(count)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Each time the script has flushed its logs, it says so and waits for the next step.
        assert "flushed\n" in logging.stdout, logging.stderr.read()
        filler = fill(small_disk)
        logging.stdin.write("\n")
        logging.stdin.flush()
        assert "flushed\n" in logging.stdout, logging.stderr.read()
        filler.unlink()
        _, stderr = logging.communicate("\n", timeout=30)
    finally:
        logging.kill()
    assert logging.returncode == 0, stderr

    server_log = (data_dir / "server.log").read_text().splitlines()
    assert all(LINE.fullmatch(line) for line in server_log), "a line was cut short or broken"
    written = sum(" of the full disk" in line for line in server_log)
    (notice,) = [line for line in server_log if "log lines were not written" in line]
    lost = int(re.search(r"\[WARN\] (\d+) log lines were not written: No space left on device$", notice)[1])
    assert lost > 0 and written + lost == count
    texts = [line.split("] ", 1)[1] for line in server_log]
    assert texts[0] == "before the disk filled" and texts[-1] == "after space returned"
    # The error was kept and written once the disk had space, ahead of the count of lost lines.
    assert texts.index("the disk is full") < texts.index(notice.split("] ", 1)[1])
    errors_log = (data_dir / "errors.log").read_text().splitlines()
    assert len(errors_log) == 2 and errors_log[0].startswith("=== scd ") and errors_log[1].endswith("the disk is full")

    # Standard error hears of a file once as it fails and once as it recovers; errors.log may never
    # have failed, its one line of the time fitting in what its last block had left.
    told = stderr.splitlines()
    for name, allowed in (("server.log", (1,)), ("errors.log", (0, 1))):
        path = data_dir / name
        failed = sum(line.startswith(f"scd: cannot write {path}: No space left on device") for line in told)
        assert failed in allowed and told.count(f"scd: writing {path} again") == failed, told
    assert all(line.startswith("scd: ") for line in told), told


def contents(store: Store, channel_id: int) -> list[str]:
    return [row.content for row in store.list_root_messages(channel_id, None, 1000, None, None, None)]


def new_post(channel_id: int, content: str) -> NewPost:
    return NewPost(channel_id, None, None, None, "alice", content)


@pytest.fixture
def store_and_channel(small_disk):
    store = Store(small_disk / "superchat.db")
    store.seed_channels([("general", "")], 24)
    yield store, next(channel.id for channel in store.list_channels() if channel.name == "general")
    store.close()


def test_the_store_names_a_full_disk_and_writes_again_once_space_returns(small_disk, store_and_channel):
    store, general = store_and_channel
    store.post_messages([new_post(general, "kept")])
    filler = fill(small_disk)
    with pytest.raises(DiskFull):
        store.post_messages([new_post(general, "refused")])
    # Through peewee's transactions too, whose ROLLBACK after SQLite's own must not hide the cause.
    with pytest.raises(DiskFull):
        store.create_channel("refused", "#refused", None, 1, 24, None)
    assert contents(store, general) == ["kept"]

    filler.unlink()
    # The failed COMMIT left no transaction open on the writer connection: the next post begins
    # its own, and the refused one is not committed along with it.
    store.post_messages([new_post(general, "after")])
    assert store.create_channel("later", "#later", None, 1, 24, None).name == "later"
    store.close()
    reopened = Store(small_disk / "superchat.db")
    assert contents(reopened, general) == ["kept", "after"]
    reopened.close()


def test_a_checkpoint_the_full_disk_stops_costs_no_commit(small_disk, store_and_channel):
    store, general = store_and_channel
    wal = small_disk / "superchat.db-wal"
    # A WAL file is a 32-byte header, then frames of a 24-byte header and a 4096-byte page.
    posted = 0
    while (wal.stat().st_size - 32) // (24 + 4096) < 985:
        store.post_messages([new_post(general, f"small {posted}")])
        posted += 1
    filler = fill(small_disk)
    os.truncate(filler, filler.stat().st_size - 256 * 1024)
    # This commit fits in what is left and passes SQLite's 1000 frames, so that it checkpoints: the
    # checkpoint cannot grow the database file for the pages it would copy, and SQLite leaves them
    # in the WAL. The commit stands.
    store.post_messages([new_post(general, "x" * 60_000)])
    with pytest.raises(DiskFull):
        store.post_messages([new_post(general, "y" * 300_000)])
    filler.unlink()
    store.close()
    reopened = Store(small_disk / "superchat.db")
    assert len(contents(reopened, general)) == posted + 1
    reopened.close()


def test_a_full_disk_refuses_each_post_keeps_every_session_and_loses_nothing(small_disk):
    server = ServerProcess(small_disk / "scd", {"limits": {"message_rate_limit": 1000}})
    clients: list[Client] = []

    def connect(nickname: str | None = None) -> Client:
        client = Client(server.port)
        clients.append(client)
        client.handshake(nickname)
        return client

    try:
        server.start()
        connect().register("carol", password("carol"))
        alice, bystander = connect("alice"), connect("bob")
        general = alice.channel_id("general")
        acknowledged = {alice.post(general, f"before {n}"): f"before {n}" for n in range(5)}

        filler = fill(small_disk)
        # Connections come and go until server.log has used what its last block had left, so that
        # the line saying the disk is full cannot be written when it is logged.
        server_log = server.data_dir / "server.log"
        while not any(line.startswith(f"scd: cannot write {server_log}: ") for line in server.output):
            Client(server.port).close()
        for n in range(REFUSED_POSTS):
            alice.send(m.PostMessage(channel_id=general, content=f"refused {n}"))
            alice.expect_error(ErrorCode.DATABASE_ERROR)
        for n in range(REFUSED_BURST):
            alice.send(m.PostMessage(channel_id=general, content=f"refused in a burst {n}"))
        for _ in range(REFUSED_BURST):
            alice.expect_error(ErrorCode.DATABASE_ERROR)
        assert listed(alice, general) == acknowledged
        bystander.send(m.Ping(timestamp=12345))
        assert bystander.expect(m.Pong).client_timestamp == 12345
        # Signing in reads the account; the last-seen time it would also write is left out.
        assert connect().login("carol", password("carol")).success
        status, _, _ = server.http_get("/health")
        assert status == 200
        assert server.proc.poll() is None
        # The console (the journal under systemd) has the line at once.
        wait_until(lambda: any(SAYS_DISK_FULL.search(line) for line in server.output))

        filler.unlink()
        for n in range(3):
            acknowledged[alice.post(general, f"after {n}")] = f"after {n}"
        server.wait_for_log("has space again")
        # Counted now that the log files could take the lines held back while the disk was full.
        (said,) = lines_saying_disk_full(server, "server.log")
        assert "[ERROR]" in said
        assert re.search(r"\] \d+ log lines were not written: No space left on device$", server.log_text(), re.M)
        assert lines_saying_disk_full(server, "errors.log") == [said]
        assert all(LINE.fullmatch(line) for line in server.log_text().splitlines())
        assert not any("Traceback" in line for line in server.output), server.output

        for client in clients:
            client.close()
        server.kill()  # SIGKILL: only what was committed survives
        server.start()
        assert listed(connect(), general) == acknowledged
    finally:
        for client in clients:
            client.close()
        server.kill()


def test_an_ssh_host_key_the_full_disk_cuts_short_is_not_left_behind(small_disk, tmp_path):
    # Only the key on the full disk: SQLite cannot open its database on one (no room for its -shm).
    key = small_disk / "keys" / "ssh_host_key"
    server = ServerProcess(tmp_path / "scd", {"server": {"ssh_port": free_port(), "ssh_host_key": str(key)}})
    key.parent.mkdir()
    filler = fill(small_disk)
    with pytest.raises(RuntimeError):
        server.start()
    assert server.proc.returncode == 1
    assert [line for line in server.output if line.startswith("scd:")] == [
        f"scd: cannot start: cannot create SSH host key {key}: No space left on device"]
    # Neither a key cut short, which would stop every later start, nor the file it was written in.
    assert list(key.parent.iterdir()) == []

    filler.unlink()
    server.start()
    try:
        assert paramiko.PKey.from_path(key).get_name() == "ssh-ed25519"
    finally:
        server.kill()
