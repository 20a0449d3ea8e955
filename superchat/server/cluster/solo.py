"""A server of one node: nothing shared, nothing to tell."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..limits import PerAddressLimit
from .link import RemoteSession

if TYPE_CHECKING:
    from ..event import Event
    from ..session import Session


class Solo:
    """Stands in for the cluster when no Redis is configured."""

    shared = False
    node_id = ""
    first_session_id = 1

    def start(self, apply_remote: Callable[[Event], None], local_sessions: Callable[[], Iterable[Session]],
              missed: Callable[[], None]) -> None:
        pass

    def stop(self) -> None:
        pass

    def publish(self, event: Event) -> None:
        pass

    def roster_changed(self, session: Session) -> None:
        pass

    def roster_left(self, session: Session) -> None:
        pass

    def connection_opened(self, host: str) -> None:
        pass

    def connection_closed(self, host: str) -> None:
        pass

    def remote_sessions(self) -> list[RemoteSession]:
        return []

    def connections_elsewhere(self, host: str) -> int:
        return 0

    def limit(self, name: str, limit: int, seconds: float) -> PerAddressLimit:
        return PerAddressLimit(limit, seconds)

    def window_allows(self, key: str, limit: int, window_ms: int, record: bool) -> bool | None:
        return None

    def forget_window(self, key: str) -> None:
        pass

    def block(self, key: str, seconds: float) -> None:
        pass

    def seconds_blocked(self, key: str) -> float:
        return 0.0

    def status(self) -> dict | None:
        return None
