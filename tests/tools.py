"""The programs the tests drive for real, each with the Debian package that provides it.

``bin/test`` installs the packages of those missing; a test that finds one missing fails with one
line naming its package. Only the standard library here: bin/test reads this before anything is
installed.
"""

from __future__ import annotations

import glob
import shutil

PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "go": "golang-go",
    "logrotate": "logrotate",
    "curl": "curl",
    "jq": "jq",
    "nc": "netcat-openbsd",
    "chromium": "chromium",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "redis-server": "redis-server",
    "rsyslogd": "rsyslog",
    # Debian keeps PostgreSQL's server programs off PATH, under /usr/lib/postgresql/VERSION/bin.
    "initdb": "postgresql",
}
_OFF_PATH = {"initdb": "/usr/lib/postgresql/*/bin/initdb"}


def find(program: str) -> str | None:
    if program in _OFF_PATH:
        # The newest version's, when several are installed.
        found = sorted(glob.glob(_OFF_PATH[program]), key=lambda path: int(path.split("/")[4]))
        return found[-1] if found else None
    return shutil.which(program)


def require(program: str) -> str:
    """The path of ``program``; a missing one fails the test with one line naming its package."""
    found = find(program)
    assert found, f"{program} (Debian package {PACKAGES[program]}) is required"
    return found


def missing_packages() -> list[str]:
    return sorted({package for program, package in PACKAGES.items() if find(program) is None})
