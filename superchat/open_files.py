"""The process's open-files limit, which bounds its sessions: each holds one file (its socket)."""

from __future__ import annotations

import resource


def open_files_limit() -> int:
    """The open-files limit in force (RLIMIT_NOFILE's soft limit)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> int:
    """Lift this process's RLIMIT_NOFILE soft limit to the hard limit (as Go programs do at start);
    returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return open_files_limit()
