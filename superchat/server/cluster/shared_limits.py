"""Rate limits and blocks every node shares, kept in Redis."""

from __future__ import annotations

import secrets

from ..limits import PerAddressLimit
from .keys import block_key, limit_key
from .redis_link import RedisLink

# A sliding window shared by every node: at most ARGV[2] events in ARGV[1] milliseconds per key.
# Redis's own clock, so nodes whose clocks differ still agree.
_WINDOW_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window_ms = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now_ms, now[1] .. now[2] .. ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window_ms)
end
return 1
"""


class SharedWindows:
    """Sliding windows and blocks by key, in Redis; no answer (None, 0) while Redis is away."""

    def __init__(self, link: RedisLink):
        self._link = link
        self._window = link.redis.register_script(_WINDOW_SCRIPT)

    def window_allows(self, key: str, limit: int, window_ms: int, record: bool) -> bool | None:
        """Whether the shared window ``key`` has room (and take it when ``record``); None when
        Redis cannot tell."""
        allowed = self._link.quietly(lambda: self._window(
            keys=[limit_key(key)], args=[window_ms, limit, "1" if record else "0", secrets.token_hex(4)]))
        return None if allowed is None else bool(allowed)

    def forget_window(self, key: str) -> None:
        self._link.quietly(lambda: self._link.redis.delete(limit_key(key)))

    def block(self, key: str, seconds: float) -> None:
        """Refuse ``key`` on every node for ``seconds``."""
        self._link.quietly(lambda: self._link.redis.set(block_key(key), 1, px=int(seconds * 1000)))

    def seconds_blocked(self, key: str) -> float:
        remaining_ms = self._link.quietly(lambda: self._link.redis.pttl(block_key(key)))
        return max(0, remaining_ms or 0) / 1000


class SharedLimit:
    """A per-key sliding window every node shares; each node's own window while Redis is away."""

    def __init__(self, windows: SharedWindows, name: str, limit: int, seconds: float):
        self._windows = windows
        self._name = name
        self._limit = limit
        self._window_ms = int(seconds * 1000)
        self._local = PerAddressLimit(limit, seconds)

    def allow(self, key: str) -> bool:
        return self._ask(key, record=True)

    def has_room(self, key: str) -> bool:
        return self._ask(key, record=False)

    def _ask(self, key: str, record: bool) -> bool:
        local = self._local.allow(key) if record else self._local.has_room(key)
        shared = self._windows.window_allows(f"{self._name}:{key}", self._limit, self._window_ms, record)
        return local if shared is None else shared
