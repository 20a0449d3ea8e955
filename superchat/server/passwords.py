"""Password hashing off the hub, and a brake on password guessing.

Clients send a hash of the password (argon2id, 40-50 characters); the server stores
bcrypt of that hash. bcrypt is slow on purpose, so it runs on a small pool of OS
threads (the library releases the GIL): a burst of logins never stalls the hub.
"""

from __future__ import annotations

import logging
import os
import time

import bcrypt
from gevent.threadpool import ThreadPool

log = logging.getLogger("superchat.accounts")

BCRYPT_COST = 10
# bcrypt reads at most 72 bytes; longer input is refused rather than silently cut.
BCRYPT_MAX_INPUT = 72
CLIENT_HASH_LENGTHS = range(40, 51)
# Checked against when a login names no account, so that answer costs as long as a wrong password.
_NO_ACCOUNT_HASH = "$2b$10$49tvVqrcDrZc4E3Oa45XQu0MPXD4TgUseXUdrilJ2a45sg7ZMeQPS"

_pool = ThreadPool(max(2, os.cpu_count() or 2))


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
    """Refuses logins from an address for a while after repeated failures."""

    def __init__(self, max_failures: int = 5, window_seconds: float = 300.0, block_seconds: float = 300.0):
        self._max_failures = max_failures
        self._window = window_seconds
        self._block = block_seconds
        self._failures: dict[str, list[float]] = {}
        self._blocked_until: dict[str, float] = {}

    def seconds_blocked(self, host: str) -> int:
        """How long logins from ``host`` stay refused (0 = allowed)."""
        until = self._blocked_until.get(host)
        if until is None:
            return 0
        remaining = until - time.monotonic()
        if remaining <= 0:
            del self._blocked_until[host]
            return 0
        return int(remaining) + 1

    def failed(self, host: str, nickname: str) -> None:
        now = time.monotonic()
        recent = [t for t in self._failures.get(host, ()) if now - t < self._window]
        recent.append(now)
        if len(recent) >= self._max_failures:
            self._failures.pop(host, None)
            self._blocked_until[host] = now + self._block
            log.warning("Login throttled for %s: %d failed attempts (last for %s); refused for %d seconds",
                        host, len(recent), nickname, int(self._block))
        else:
            self._failures[host] = recent

    def succeeded(self, host: str) -> None:
        self._failures.pop(host, None)
