"""What the operating system can tell about the two processes: file limits and resident memory."""

from __future__ import annotations

import resource


def raise_open_files_limit() -> int:
    """Lift this process's RLIMIT_NOFILE soft limit to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` from /proc in KiB; None if the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
