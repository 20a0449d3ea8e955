"""tests/tools.py and bin/test: the tools the suite drives, and the one command that sets them up."""

import subprocess
import sys

import pytest

from tests import tools
from tests.server_process import REPO

pytestmark = pytest.mark.timeout(120)


def test_every_tool_the_suite_drives_is_installed():
    # bin/test installed them (or said which are missing): this names any it could not.
    assert tools.missing_packages() == []


def test_a_missing_tool_fails_its_test_with_one_line_naming_the_package(monkeypatch):
    monkeypatch.setitem(tools.PACKAGES, "no-such-tool", "no-such-package")
    with pytest.raises(AssertionError) as failure:
        tools.require("no-such-tool")
    assert str(failure.value).splitlines() == ["no-such-tool (Debian package no-such-package) is required"]
    assert tools.missing_packages() == ["no-such-package"]


def test_postgresql_is_found_off_path_newest_version_first():
    initdb = tools.require("initdb")
    assert initdb.startswith("/usr/lib/postgresql/") and initdb.endswith("/bin/initdb")


def test_bin_test_passes_its_arguments_to_pytest():
    done = subprocess.run([sys.executable, str(REPO / "bin" / "test"), "--collect-only", "-q",
                           "tests/test_protocol.py"], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    # -q twice (pyproject's and this one): one line per file collected, only the one named.
    assert done.stdout.split()[:1] == ["tests/test_protocol.py:"], done.stdout
