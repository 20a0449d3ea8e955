"""Password hashing off the hub, and a brake on password guessing.

Clients send a hash of the password (argon2id, 40-50 characters); the server stores
bcrypt of that hash. bcrypt is slow on purpose, so it runs on a small pool of OS
threads (the library releases the GIL): a burst of logins never stalls the hub.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from typing import TYPE_CHECKING

import bcrypt
from gevent.lock import Semaphore
from gevent.threadpool import ThreadPool

if TYPE_CHECKING:
    from .cluster.link import ClusterLink

log = logging.getLogger("superchat.accounts")

BCRYPT_COST = 10
# bcrypt reads at most 72 bytes; longer input is refused rather than silently cut.
BCRYPT_MAX_INPUT = 72
# Counted in bytes, as the reference server does: 50 bytes stay well under bcrypt's 72.
CLIENT_HASH_LENGTHS = range(40, 51)
# Checked against when a login names no account, so that answer costs as long as a wrong password.
_NO_ACCOUNT_HASH = "$2b$10$49tvVqrcDrZc4E3Oa45XQu0MPXD4TgUseXUdrilJ2a45sg7ZMeQPS"

_pool = ThreadPool(max(2, os.cpu_count() or 2))

# Held from the check to the write of every change that could leave an account with neither a
# password nor an SSH key (removing the password, deleting a key). Each check reads the database
# and the write then waits for the writer thread; without the lock, two sessions of one account
# (or a removal and a deletion) could both pass their checks and together lock the account out.
sign_in_methods = Semaphore()


def well_formed(client_hash: str) -> bool:
    """A client hash of acceptable length; characters are not counted, bytes are (bcrypt reads bytes)."""
    return len(client_hash.encode()) in CLIENT_HASH_LENGTHS


def hash_password(client_hash: str) -> str:
    return _pool.apply(_hash, (client_hash.encode(),))


def password_matches(client_hash: str, stored: str | None) -> bool:
    """``stored`` None means no such account: the check still runs and fails."""
    data = client_hash.encode()
    if len(data) > BCRYPT_MAX_INPUT:
        return False
    matched = _pool.apply(_check, (data, (stored or _NO_ACCOUNT_HASH).encode()))
    return matched and stored is not None


def _hash(data: bytes) -> str:
    return bcrypt.hashpw(data, bcrypt.gensalt(BCRYPT_COST)).decode()


def _check(data: bytes, stored: bytes) -> bool:
    try:
        return bcrypt.checkpw(data, stored)
    except ValueError:  # a stored value that is not a bcrypt hash matches nothing
        return False


class LoginThrottle:
    """Refuses logins from an address for a while after repeated failures.

    IPv6 clients are counted per /64, the block a single host is usually given: counting each
    address alone would let one machine guess without limit. Entries expire and are swept, so
    failures from many addresses cannot grow the tables without bound. On a node of several,
    failures and blocks are also kept in the cluster, so guesses spread over nodes add up.
    """

    SWEEP_THRESHOLD = 1024

    def __init__(self, cluster: ClusterLink, max_failures: int = 5, window_seconds: float = 300.0,
                 block_seconds: float = 300.0):
        self._cluster = cluster
        self._max_failures = max_failures
        self._window = window_seconds
        self._block = block_seconds
        self._failures: dict[str, list[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self._sweep_at = self.SWEEP_THRESHOLD

    def __len__(self) -> int:
        """How many addresses are remembered (failing or blocked)."""
        return len(self._failures) + len(self._blocked_until)

    @staticmethod
    def source(host: str) -> str:
        """The unit logins are counted by: the address, or its /64 for IPv6."""
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host
        if ip.version == 4:
            return str(ip)
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))

    def seconds_blocked(self, host: str) -> int:
        """How long logins from ``host`` stay refused (0 = allowed)."""
        key = self.source(host)
        until = self._blocked_until.get(key)
        remaining = 0.0 if until is None else until - time.monotonic()
        if until is not None and remaining <= 0:
            del self._blocked_until[key]
        if remaining <= 0:
            remaining = self._cluster.seconds_blocked(f"login:{key}")
        return int(remaining) + 1 if remaining > 0 else 0

    def failed(self, host: str, nickname: str) -> None:
        key = self.source(host)
        now = time.monotonic()
        recent = [t for t in self._failures.get(key, ()) if now - t < self._window]
        recent.append(now)
        # Room for one failure less than the limit: no room means this failure is the last allowed.
        cluster_room = self._cluster.window_allows(f"login-failures:{key}", self._max_failures - 1,
                                                   int(self._window * 1000), record=True)
        if len(recent) >= self._max_failures or cluster_room is False:
            self._failures.pop(key, None)
            self._blocked_until[key] = now + self._block
            self._cluster.forget_window(f"login-failures:{key}")
            self._cluster.block(f"login:{key}", self._block)
            log.warning("Login throttled for %s: %d failed attempts (last for %s); refused for %d seconds",
                        key, len(recent), nickname, int(self._block))
        else:
            self._failures[key] = recent
        if len(self) >= self._sweep_at:
            self._sweep(now)

    def succeeded(self, host: str) -> None:
        key = self.source(host)
        self._failures.pop(key, None)
        self._cluster.forget_window(f"login-failures:{key}")

    def _sweep(self, now: float) -> None:
        """Forget expired failures and blocks; the next sweep waits until the tables double."""
        self._failures = {k: v for k, v in self._failures.items() if now - v[-1] < self._window}
        self._blocked_until = {k: v for k, v in self._blocked_until.items() if v > now}
        self._sweep_at = max(self.SWEEP_THRESHOLD, 2 * len(self))
