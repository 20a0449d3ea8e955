"""A full disk under the data directory, on a real filesystem: a small tmpfs (mounting one needs
root, so these tests skip themselves otherwise), filled to the last byte by a filler file."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_process import REPO

pytestmark = pytest.mark.timeout(120)

DISK_SIZE = "8m"
LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} \[(INFO|WARN|ERROR|DEBUG)\] .*")


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of DISK_SIZE, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    yield mount_point
    # Lazily: a file a failed test left open must not leave the mount behind.
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


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
