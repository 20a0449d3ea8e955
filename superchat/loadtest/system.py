"""What the operating system can tell about the server process: its resident memory."""

from __future__ import annotations


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
