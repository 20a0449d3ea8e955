"""``bin/scd import-upstream`` tells its progress while it goes: on a terminal one bar redrawn, ending
on a full bar and a newline; elsewhere a plain line every few seconds. Its summary goes to stdout
either way. (The lines' form is tested with the import of the whole community in
test_import_upstream.py.)"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from superchat.upstream_import import LINE_SECONDS
from tests import upstream_db as up
from tests.import_run import import_upstream
from tests.server_process import SCD, ServerProcess

pytestmark = pytest.mark.timeout(180)

# Enough for the bar to be redrawn while it goes, and, off a terminal, for the import to outlast
# LINE_SECONDS twice over on a machine a few times faster than these (2 cores: 10 to 15 s).
MESSAGES_DRAWN = 30_000
MESSAGES_TOLD = 200_000
BAR = re.compile(r"\[([#.]{30})\] +(\d+)% ([\d,]+)/([\d,]+) rows, \d+ s")


def upstream(tmp_path: Path, messages: int) -> Path:
    path = tmp_path / "upstream" / "superchat.db"
    path.parent.mkdir()
    db = up.UpstreamDatabase(path, up.now_ms() - 10 * 3_600_000)
    up.big_community(db, messages, 20)
    db.close()
    return path


def test_a_terminal_sees_a_bar_redrawn_as_the_import_goes(tmp_path):
    path = upstream(tmp_path, MESSAGES_DRAWN)
    target = ServerProcess(tmp_path / "scd")
    controller, terminal = pty.openpty()
    importing = subprocess.Popen([sys.executable, str(SCD), "import-upstream", str(path), "--config",
                                  str(target.config_path)], env=target.env, stdout=subprocess.PIPE,
                                 stderr=terminal, text=True)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the import closed its end
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    summary = importing.stdout.read()
    assert importing.wait(timeout=60) == 0, drawn
    assert summary.startswith(f"Imported {path} into "), summary

    text = drawn.decode()
    assert text.startswith("\r") and text.endswith("\r\n"), text[-200:]  # the terminal turns \n into \r\n
    draws = text[1:-2].split("\r")
    bars = [BAR.fullmatch(draw) for draw in draws]
    assert all(bars), draws
    total = int(bars[-1][4].replace(",", ""))
    assert total > MESSAGES_DRAWN
    shares = [int(bar[2]) for bar in bars]
    done = [int(bar[3].replace(",", "")) for bar in bars]
    assert len(bars) >= 2 and shares[0] < 100, draws  # redrawn while it went, not only at the end
    assert shares == sorted(shares) and done == sorted(done)
    assert (bars[-1][1], shares[-1], done[-1]) == ("#" * 30, 100, total)
    # The bar and the figure beside it tell the same share (each rounded on its own).
    assert all(abs(bar[1].count("#") - share * 30 / 100) <= 1 for bar, share in zip(bars, shares, strict=True))


def test_elsewhere_a_line_comes_every_few_seconds(tmp_path):
    path = upstream(tmp_path, MESSAGES_TOLD)
    target = ServerProcess(tmp_path / "scd")
    started = time.monotonic()
    result = import_upstream(target, path)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    shares = [int(re.match(r"importing: +(\d+)%", line)[1]) for line in lines]
    assert shares[-1] == 100 and shares == sorted(shares)
    # One line per LINE_SECONDS that passed, give or take the start-up before the first rows.
    assert 1 <= len(lines) - 1 <= took / LINE_SECONDS, (lines, took)
